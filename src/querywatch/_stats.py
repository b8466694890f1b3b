"""pg_stat_statements-like aggregates, per process, in minute buckets, with bounded memory.

Units of work are folded in when they end (one lock acquisition a request). The flusher
drains the pending buckets to the store every few seconds; a failed flush puts them back.

Memory is bounded: at most ``max_shapes`` distinct fingerprints are pending at once
(the long tail folds into the :data:`OTHER` row until the next flush), at most
``max_endpoints`` endpoints per bucket, buckets of at most :data:`MAX_PENDING_SECONDS`
(three hours, whatever the bucket width) and :data:`MAX_PENDING_ENTRIES` entries while
the store is unreachable, and :data:`MAX_PENDING_FINDINGS` findings. What a cap drops is
counted (:attr:`Stats.dropped_requests`), logged once and exported.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import threading
import typing as t

if t.TYPE_CHECKING:
    from ._detectors import Finding
    from .alerts import Objective
    from .capture import CallSite
    from .capture import LoopStats
    from .capture import Record
    from .capture import ShapeStats

__all__ = [
    "OTHER",
    "Aggregate",
    "EndpointAggregate",
    "Stats",
    "bucket_bounds",
    "bucket_index",
    "percentile",
]

#: The fingerprint id that stands for every shape past the cap.
OTHER = "other"
OTHER_SHAPE = "(other query shapes, past QUERYWATCH_MAX_SHAPES)"
#: How far back pending buckets are kept while the store is unreachable, in seconds
#: (not buckets: 1 s buckets keep three hours too).
MAX_PENDING_SECONDS = 3 * 3600
#: Shape and endpoint entries of all pending buckets together: the memory bound of an
#: outage, whatever the traffic.
MAX_PENDING_ENTRIES = 200_000
MAX_PENDING_FINDINGS = 2000
#: Distinct users tracked per objective and bucket; past it, new users are not counted.
MAX_USERS_PER_BUCKET = 5000
#: Finished units of work waiting to be folded in, and the (shape, call site) entries
#: they hold; past either, the queue is folded at once.
MAX_QUEUED = 1000
MAX_QUEUED_ENTRIES = 10_000
#: Seconds between the flusher thread's folds of the queue.
FOLD_INTERVAL = 0.25

# Histogram: 4 linear buckets per power of two. A duration d = m * 2**e (0.5 <= m < 1,
# math.frexp) falls in bucket (e + _EXP_OFFSET) * 4 + floor((m - 0.5) * 8), so a bucket is
# found with one C call and no logarithm; bucket 0 holds everything up to _HIST_BASE
# (about 1 microsecond). The relative width of a bucket is at most 25%, so a percentile
# read from it is within 12.5% of the true value; 121 buckets reach past 30 minutes.
_EXP_OFFSET = 19
_HIST_BASE = 2.0**-20
MAX_BUCKET = 120


def bucket_index(seconds: float) -> int:
    """The histogram bucket of a duration in seconds."""
    if seconds <= _HIST_BASE:
        return 0
    m, e = math.frexp(seconds)
    idx = (e + _EXP_OFFSET) * 4 + int((m - 0.5) * 8.0)
    return idx if idx < MAX_BUCKET else MAX_BUCKET


def bucket_bounds(idx: int) -> tuple[float, float]:
    """The ``[lower, upper)`` bounds in seconds of bucket ``idx`` (bucket 0 starts at 0)."""
    octave, sub = divmod(max(idx, 0), 4)
    scale = 2.0 ** (octave - _EXP_OFFSET)
    lower = scale * (0.5 + sub / 8.0) if idx > 0 else 0.0
    return lower, scale * (0.5 + (sub + 1) / 8.0)


def percentile(hist: t.Mapping[int, int], q: float, lo: float, hi: float) -> float:
    """The ``q`` quantile (0..1) of a histogram, in seconds, clamped to ``[lo, hi]``."""
    total = sum(hist.values())
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for idx in sorted(hist):
        seen += hist[idx]
        if seen >= rank:
            low, high = bucket_bounds(idx)
            return min(max((low + high) / 2.0, lo), hi)
    return hi


def merge_hist(into: dict[int, int], other: t.Mapping[int, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


@dataclasses.dataclass(slots=True)
class Aggregate:
    """Calls and latency of one query shape (optionally within one endpoint)."""

    calls: int = 0
    errors: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = 0.0
    rows: int = 0
    hist: dict[int, int] = dataclasses.field(default_factory=dict)
    #: The trace of the slowest call, when the app traces (OpenTelemetry).
    max_trace: str | None = None

    def merge(self, o: Aggregate) -> None:
        self.calls += o.calls
        self.errors += o.errors
        self.total += o.total
        self.rows += o.rows
        self.min = min(self.min, o.min)
        if o.max > self.max:
            self.max = o.max
            self.max_trace = o.max_trace
        merge_hist(self.hist, o.hist)

    def quantile(self, q: float) -> float:
        return percentile(self.hist, q, self.min if self.calls else 0.0, self.max)


@dataclasses.dataclass(slots=True)
class EndpointAggregate:
    """Requests (or job runs) of one endpoint."""

    requests: int = 0
    #: Count by status class: "2xx", "3xx", "4xx", "5xx" (jobs: "ok" or "error").
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    total: float = 0.0
    max: float = 0.0
    hist: dict[int, int] = dataclasses.field(default_factory=dict)
    queries: int = 0
    max_queries: int = 0
    db_time: float = 0.0
    db_errors: int = 0
    dropped_queries: int = 0

    def merge(self, o: EndpointAggregate) -> None:
        self.requests += o.requests
        for k, v in o.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        self.total += o.total
        self.max = max(self.max, o.max)
        merge_hist(self.hist, o.hist)
        self.queries += o.queries
        self.max_queries = max(self.max_queries, o.max_queries)
        self.db_time += o.db_time
        self.db_errors += o.db_errors
        self.dropped_queries += o.dropped_queries


@dataclasses.dataclass(slots=True)
class ShapeInfo:
    """What is shown for a fingerprint: its normalized text and first call site."""

    shape: str
    operation: str
    site: CallSite | None
    #: A runnable statement of the shape (see :attr:`Fingerprint.sample`).
    sample: str = ""


@dataclasses.dataclass(slots=True)
class FindingAggregate:
    """One finding, deduplicated by (kind, endpoint, fingerprint), since the last flush."""

    kind: str
    endpoint: str
    fingerprint: str
    first_seen: float
    last_seen: float
    occurrences: int = 0
    queries: int = 0
    total: float = 0.0
    site: CallSite | None = None
    relationship: str | None = None
    fix: str = ""
    #: The trace of its last occurrence that was traced (OpenTelemetry).
    trace_id: str | None = None


@dataclasses.dataclass(slots=True)
class MinuteBucket:
    queries: dict[tuple[str, str], Aggregate] = dataclasses.field(default_factory=dict)
    endpoints: dict[str, EndpointAggregate] = dataclasses.field(default_factory=dict)
    #: (objective, endpoint) -> [requests counted, bad ones].
    slo: dict[tuple[str, str], list[int]] = dataclasses.field(default_factory=dict)
    #: objective -> user digest -> 1 if one of the user's requests was bad, else 0
    #: (bounded: :data:`MAX_USERS_PER_BUCKET` users an objective).
    users: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: Requests that started in the bucket, counted as each starts (see
    #: :meth:`Stats.arrive`): the traffic, with the requests still running.
    arrivals: int = 0


@dataclasses.dataclass(slots=True)
class Snapshot:
    """What a flush writes: pending buckets, shapes and findings."""

    buckets: dict[int, MinuteBucket]
    shapes: dict[str, ShapeInfo]
    findings: dict[tuple[str, str, str], FindingAggregate]

    def is_empty(self) -> bool:
        return not (self.buckets or self.shapes or self.findings)


def status_class(status: int, kind: str) -> str:
    if kind != "request":
        return "error" if status >= 500 else "ok"
    if 100 <= status < 600:
        return f"{status // 100}xx"
    return "5xx"


class Stats:
    """The aggregates of one process, waiting for the next flush."""

    def __init__(
        self,
        *,
        max_shapes: int = 2000,
        max_endpoints: int = 500,
        bucket_seconds: int = 60,
        objectives: t.Sequence[Objective] = (),
    ) -> None:
        self.max_shapes = max_shapes
        self.max_endpoints = max_endpoints
        #: The width of a bucket (``QUERYWATCH_BUCKET_SECONDS``): a minute by default.
        self.bucket_seconds = bucket_seconds
        #: The service level objectives each request is counted against.
        self.objectives = tuple(objectives)
        self._lock = threading.Lock()
        #: Finished units of work not folded in yet (see :meth:`add`).
        self._queue: collections.deque[tuple[t.Any, ...]] = collections.deque()
        #: Start times of requests that arrived since the last fold.
        self._arrivals: collections.deque[float] = collections.deque()
        self._queued_entries = 0
        self._buckets: dict[int, MinuteBucket] = {}
        self._shapes: dict[str, ShapeInfo] = {}
        self._findings: dict[tuple[str, str, str], FindingAggregate] = {}
        #: Fingerprints pending in any bucket: the set the cap counts.
        self._pending_fps: set[str] = set()
        #: Counters of what the caps folded or dropped.
        self.folded_shapes = 0
        #: Requests whose buckets were dropped while the store was unreachable.
        self.dropped_requests = 0
        self.dropped_findings = 0
        self.dropped_users = 0

    def add(self, record: Record, findings: t.Sequence[Finding]) -> None:
        """Queue a finished unit of work to be folded in.

        The request does not wait for the folding: the flusher thread folds the queue a
        few times a second (as a batch span processor exports spans), and a full queue
        is folded at once by whoever fills it. The queue holds what the aggregates need
        (the loop entries, not the statements), bounded by :data:`MAX_QUEUED` units of work
        and :data:`MAX_QUEUED_ENTRIES` loop entries."""
        self._queue.append(
            (
                record.started_wall,
                record.name,
                record.kind,
                record.status,
                record.duration,
                record.query_count,
                record.db_time,
                record.errors,
                record.dropped,
                record.loops,
                record.overflow,
                findings,
                record.user,
                record.trace_id,
            )
        )
        # Counted without the lock: a close count is enough to bound the queue.
        self._queued_entries += len(record.loops) + len(record.overflow)
        if len(self._queue) >= MAX_QUEUED or self._queued_entries >= MAX_QUEUED_ENTRIES:
            self.fold()

    def arrive(self, started_wall: float) -> None:
        """Count a request as it starts. Requests are counted again when they end, in
        the bucket they started in; a count of arrivals also holds the ones still
        running, so the traffic an alert compares does not seem to fall while requests
        are slow (which is when it is read)."""
        arrivals = self._arrivals
        arrivals.append(started_wall)
        if len(arrivals) >= MAX_QUEUED:
            self.fold()

    def fold(self) -> None:
        """Fold the queued units of work into the minute aggregates."""
        with self._lock:
            self._fold_queue()

    def _fold_queue(self) -> None:
        queue = self._queue
        self._queued_entries = 0
        arrivals = self._arrivals
        width = self.bucket_seconds
        while True:
            try:
                started = arrivals.popleft()  # thread-safe against appends
            except IndexError:
                break
            minute = int(started // width) * width
            bucket = self._buckets.get(minute)
            if bucket is None:
                bucket = self._buckets[minute] = MinuteBucket()
                self._bound_pending(minute)
            bucket.arrivals += 1
        while True:
            try:
                item = queue.popleft()  # thread-safe against appends
            except IndexError:
                return
            self._fold(*item)

    def _fold(
        self,
        started_wall: float,
        name: str,
        kind: str,
        status: int,
        duration: float,
        query_count: int,
        db_time: float,
        errors: int,
        dropped: int,
        loops: dict[t.Any, LoopStats],
        overflow: dict[str, ShapeStats],
        findings: t.Sequence[Finding],
        user: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        width = self.bucket_seconds
        minute = int(started_wall // width) * width
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = MinuteBucket()
            self._bound_pending(minute)
        endpoint = name
        ep = bucket.endpoints.get(endpoint)
        if ep is None:
            if len(bucket.endpoints) >= self.max_endpoints:
                endpoint = OTHER
                ep = bucket.endpoints.get(endpoint)
            if ep is None:
                ep = bucket.endpoints[endpoint] = EndpointAggregate()
        ep.requests += 1
        cls = status_class(status, kind)
        ep.statuses[cls] = ep.statuses.get(cls, 0) + 1
        ep.total += duration
        ep.max = max(ep.max, duration)
        idx = bucket_index(duration)
        ep.hist[idx] = ep.hist.get(idx, 0) + 1
        ep.queries += query_count
        ep.max_queries = max(ep.max_queries, query_count)
        ep.db_time += db_time
        ep.db_errors += errors
        ep.dropped_queries += dropped
        if kind == "request" and self.objectives:
            slo = bucket.slo
            for o in self.objectives:
                if o.applies_to(endpoint):
                    counts = slo.get((o.name, endpoint))
                    if counts is None:
                        counts = slo[(o.name, endpoint)] = [0, 0]
                    counts[0] += 1
                    bad = o.is_bad(status, duration)
                    if bad:
                        counts[1] += 1
                    if user is not None:
                        self._count_user(bucket, o.name, user, bad)
        queries = bucket.queries
        pending = self._pending_fps
        for part in (loops.values(), overflow.values()):
            for shape in part:
                fp_id = shape.fingerprint.id
                if fp_id not in pending:
                    fp_id = self._admit(shape)
                key = (endpoint, fp_id)
                agg = queries.get(key)
                if agg is None:
                    agg = queries[key] = Aggregate()
                # Aggregate.merge, inlined for a loop entry: this runs for every shape
                # of every request.
                agg.calls += shape.calls
                agg.errors += shape.errors
                agg.total += shape.total
                agg.rows += shape.rows
                if shape.min < agg.min:
                    agg.min = shape.min
                if shape.max > agg.max:
                    agg.max = shape.max
                    agg.max_trace = trace_id
                hist = agg.hist
                for k, v in shape.hist.items():
                    hist[k] = hist.get(k, 0) + v
        for f in findings:
            self._add_finding(f, endpoint, started_wall, trace_id)

    def _count_user(self, bucket: MinuteBucket, objective: str, user: str, bad: bool) -> None:
        users = bucket.users.get(objective)
        if users is None:
            users = bucket.users[objective] = {}
        digest = hashlib.blake2b(user.encode(), digest_size=8).hexdigest()
        seen = users.get(digest)
        if seen is None:
            if len(users) >= MAX_USERS_PER_BUCKET:
                self.dropped_users += 1
                return
            users[digest] = int(bad)
        elif bad and not seen:
            users[digest] = 1

    def _admit(self, shape: ShapeStats | LoopStats) -> str:
        fp_id = shape.fingerprint.id
        if fp_id in self._pending_fps:
            return fp_id
        if len(self._pending_fps) >= self.max_shapes:
            self.folded_shapes += 1
            return OTHER
        self._pending_fps.add(fp_id)
        if fp_id not in self._shapes:
            fp = shape.fingerprint
            self._shapes[fp_id] = ShapeInfo(fp.shape, fp.operation, shape.site, fp.sample)
        return fp_id

    def _add_finding(
        self, f: Finding, endpoint: str, when: float, trace_id: str | None = None
    ) -> None:
        key = (f.kind, endpoint, f.fingerprint.id)
        agg = self._findings.get(key)
        if agg is None:
            if len(self._findings) >= MAX_PENDING_FINDINGS:
                self.dropped_findings += 1
                return
            agg = self._findings[key] = FindingAggregate(
                f.kind,
                endpoint,
                f.fingerprint.id,
                when,
                when,
                site=f.site,
                relationship=f.relationship,
                fix=f.fix,
            )
            if f.fingerprint.id not in self._shapes:
                fp = f.fingerprint
                self._shapes[fp.id] = ShapeInfo(fp.shape, fp.operation, f.site, fp.sample)
        if trace_id is not None and when >= agg.last_seen:
            agg.trace_id = trace_id
        agg.last_seen = max(agg.last_seen, when)
        agg.occurrences += 1
        agg.queries += f.count
        agg.total += f.total

    def _bound_pending(self, newest: int) -> None:
        """Drop the oldest pending buckets past :data:`MAX_PENDING_SECONDS` before
        ``newest`` or past :data:`MAX_PENDING_ENTRIES` entries; count and say what went."""
        entries = sum(len(b.queries) + len(b.endpoints) for b in self._buckets.values())
        dropped = 0
        while self._buckets:
            oldest = min(self._buckets)
            if oldest > newest - MAX_PENDING_SECONDS and entries <= MAX_PENDING_ENTRIES:
                break
            gone = self._buckets.pop(oldest)
            entries -= len(gone.queries) + len(gone.endpoints)
            dropped += sum(ep.requests for ep in gone.endpoints.values())
        if dropped:
            self.dropped_requests += dropped
            from ._failopen import log_limited

            log_limited(
                "stats.dropped",
                "querywatch dropped the aggregates of %d requests, older than %d h or past"
                " %d entries, that the store could not take (%d so far): the store has"
                " been unreachable that long.",
                dropped,
                MAX_PENDING_SECONDS // 3600,
                MAX_PENDING_ENTRIES,
                self.dropped_requests,
            )

    def drain(self) -> Snapshot:
        """Take everything pending; the caller writes it or gives it back with
        :meth:`restore`."""
        with self._lock:
            self._fold_queue()
            snap = Snapshot(self._buckets, self._shapes, self._findings)
            self._buckets = {}
            self._shapes = {}
            self._findings = {}
            self._pending_fps = set()
            return snap

    def restore(self, snap: Snapshot) -> None:
        """Put back a snapshot whose flush failed, merging with what came since."""
        with self._lock:
            for minute, old in snap.buckets.items():
                bucket = self._buckets.setdefault(minute, MinuteBucket())
                for qkey, agg in old.queries.items():
                    cur = bucket.queries.get(qkey)
                    if cur is None:
                        bucket.queries[qkey] = agg
                    else:
                        cur.merge(agg)
                    self._pending_fps.add(qkey[1])
                for ep_name, ep in old.endpoints.items():
                    cur_ep = bucket.endpoints.get(ep_name)
                    if cur_ep is None:
                        bucket.endpoints[ep_name] = ep
                    else:
                        cur_ep.merge(ep)
                for skey, counts in old.slo.items():
                    cur_c = bucket.slo.setdefault(skey, [0, 0])
                    cur_c[0] += counts[0]
                    cur_c[1] += counts[1]
                for objective, users in old.users.items():
                    cur_u = bucket.users.setdefault(objective, {})
                    for digest, bad in users.items():
                        cur_u[digest] = max(cur_u.get(digest, 0), bad)
                bucket.arrivals += old.arrivals
            if self._buckets:
                self._bound_pending(max(self._buckets))
            for fp_id, info in snap.shapes.items():
                self._shapes.setdefault(fp_id, info)
            for fkey, f in snap.findings.items():
                cur_f = self._findings.get(fkey)
                if cur_f is None:
                    if len(self._findings) >= MAX_PENDING_FINDINGS:
                        self.dropped_findings += 1
                        continue
                    self._findings[fkey] = f
                else:
                    cur_f.first_seen = min(cur_f.first_seen, f.first_seen)
                    if f.trace_id is not None and (
                        cur_f.trace_id is None or f.last_seen > cur_f.last_seen
                    ):
                        cur_f.trace_id = f.trace_id
                    cur_f.last_seen = max(cur_f.last_seen, f.last_seen)
                    cur_f.occurrences += f.occurrences
                    cur_f.queries += f.queries
                    cur_f.total += f.total
