"""The record model: one unit of work (a request or a job) and its statements, loops and
shapes, and the context variable that holds the current one."""

from __future__ import annotations

import contextvars
import dataclasses
import math
import threading
import typing as t
from math import frexp
from time import perf_counter
from time import time as wall_time

from sqlalchemy.engine import Engine

from .._stats import _EXP_OFFSET
from .._stats import _HIST_BASE
from .._stats import MAX_BUCKET as _MAX_BUCKET
from .._stats import bucket_index
from ..fingerprint import Fingerprint
from ._views import RecordView

if t.TYPE_CHECKING:
    from .._config import Settings


class CallSite(t.NamedTuple):
    """Where application code issued a statement."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class QueryInfo:
    """One captured statement.

    A slotted class with a positional constructor rather than a dataclass: one is made
    per statement, and most fields start at the same value."""

    __slots__ = (
        "fingerprint",
        "start",
        "duration",
        "rows",
        "error",
        "site",
        "relationship",
        "batch_size",
        "params_hash",
        "done",
        "last_activity",
        "fetched",
        "kept",
        "sample",
        "bump",
        "sample_min",
    )

    #: (statement, parameters, engine URL, the DBAPI connection of an in-memory SQLite
    #: database or None) of a slow read; set only then.
    sample: tuple[str, t.Any, t.Any, t.Any]
    #: The tables of an autocommit write, bumped in the cache once it has run; set only
    #: then.
    bump: frozenset[str]
    #: A timed read this slow keeps its :attr:`sample` (its record's threshold); set on
    #: timed reads only.
    sample_min: float

    def __init__(
        self,
        fingerprint: Fingerprint,
        site: CallSite | None,
        relationship: str | None,
        params_hash: int,
        batch_size: int = 1,
    ) -> None:
        self.fingerprint = fingerprint
        #: ``time.perf_counter()`` when the cursor was asked to execute.
        self.start = 0.0
        #: Seconds from execute until the result was exhausted or closed.
        self.duration = 0.0
        #: Rows fetched (reads) or affected (writes), as far as the driver tells.
        self.rows = 0
        #: The exception's class name when the statement failed.
        self.error: str | None = None
        self.site = site
        #: ``Model.attr`` when an ORM lazy load issued the statement.
        self.relationship = relationship
        #: Parameter sets of an ``executemany``; 1 otherwise.
        self.batch_size = batch_size
        #: Hash of the bound parameters (never the values themselves).
        self.params_hash = params_hash
        #: Set once the duration is final.
        self.done = False
        #: ``perf_counter()`` of the last fetch, used if the result is never closed.
        self.last_activity = 0.0
        self.fetched = False
        #: Kept in :attr:`Record.queries`, and so aggregated when the unit of work ends;
        #: statements past the cap are aggregated as soon as they end.
        self.kept = True
        # ``sample``: (statement, parameters, engine URL, ...) of a slow read, set only then
        # (read it with ``getattr(q, "sample", None)``): no cost for the others.

    def __repr__(self) -> str:
        return (
            f"<QueryInfo {self.fingerprint.id} {self.duration * 1000:.3f} ms"
            f" {self.rows} rows{' ' + self.error if self.error else ''}>"
        )


class LoopStats:
    """What one unit of work did with one (shape, call site): the input of the N+1 and
    repeated-query detectors and of the per-shape aggregates.

    A slotted class with a positional constructor: one is made per (shape, call site) of
    every request."""

    __slots__ = (
        "fingerprint",
        "site",
        "relationship",
        "calls",
        "total",
        "errors",
        "rows",
        "min",
        "max",
        "hist",
        "params",
    )

    def __init__(
        self,
        fingerprint: Fingerprint,
        site: CallSite | None,
        relationship: str | None = None,
        calls: int = 0,
        total: float = 0.0,
        errors: int = 0,
        rows: int = 0,
        min: float = math.inf,
        max: float = 0.0,
        hist: dict[int, int] | None = None,
        params: dict[int, int] | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.site = site
        self.relationship = relationship
        self.calls = calls
        self.total = total
        self.errors = errors
        self.rows = rows
        self.min = min
        self.max = max
        #: Latency histogram, bucket index (:func:`querywatch._stats.bucket_index`) to count.
        self.hist: dict[int, int] = {} if hist is None else hist
        #: Hash of each distinct parameter set -> executions with it, up to
        #: :data:`MAX_PARAM_HASHES` sets: the input of the N+1 detector (how many distinct)
        #: and of the repeated-query detector (how often the same).
        self.params: dict[int, int] = {} if params is None else params

    def __repr__(self) -> str:
        return f"<LoopStats {self.fingerprint.id} at {self.site} x{self.calls}>"


@dataclasses.dataclass(slots=True)
class ShapeStats:
    """Per-shape aggregates of one unit of work; exact whatever the query count."""

    fingerprint: Fingerprint
    calls: int = 0
    errors: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = 0.0
    rows: int = 0
    #: Latency histogram, bucket index (:func:`querywatch._stats.bucket_index`) to count.
    hist: dict[int, int] = dataclasses.field(default_factory=dict)
    site: CallSite | None = None


class StatementBudget(t.Protocol):
    """What capture asks of a statement budget (the guard's): set it on the statement's
    connection before the statement runs, and hear of a statement that failed."""

    def apply(self, cursor: t.Any, context: t.Any) -> None: ...

    def failed(self, shape: str, exc: BaseException) -> None: ...


class Record:
    """Everything captured during one request or job.

    A plain class with ``__slots__`` rather than a dataclass: one is made per request, and
    a dataclass's ``default_factory`` fields cost a call each.
    """

    __slots__ = (
        "name",
        "kind",
        "settings",
        "engines",
        "started",
        "started_wall",
        "duration",
        "status",
        "queries",
        "dropped",
        "query_count",
        "db_time",
        "errors",
        "overflow",
        "loops",
        "token",
        "slow",
        "open_dropped",
        "closed",
        "max_queries",
        "slow_seconds",
        "sample_min",
        "packages",
        "user",
        "setup",
        "commit_site",
        "budget",
        "held",
        "trace_id",
        "spans",
        "_view",
    )

    def __init__(
        self,
        name: str,
        kind: str,
        settings: Settings,
        engines: frozenset[Engine] | None = None,
        started_wall: float | None = None,
    ) -> None:
        #: ``"GET /orders/<int:id>"`` for a request, ``"job:nightly-sync"`` for a job.
        self.name = name
        self.kind = kind
        self.settings = settings
        #: Restricts capture to these engines when not ``None``.
        self.engines = engines
        self.started = perf_counter()
        self.started_wall = wall_time() if started_wall is None else started_wall
        self.duration = 0.0
        self.status = 0
        #: The statements, capped at ``settings.max_queries_per_request``.
        self.queries: list[QueryInfo] = []
        #: Statements not kept in :attr:`queries` because of the cap (still aggregated).
        self.dropped = 0
        self.query_count = 0
        self.db_time = 0.0
        self.errors = 0
        #: Per (shape, call site): exact counts, for the first 1,000 of them.
        #: Keyed by shape, call site and relationship (or refresh): a lazy load and the
        #: same statement run by hand at one line are two things.
        self.loops: dict[tuple[str, CallSite | None, str | None], LoopStats] = {}
        #: Per shape, the statements past the cap on :attr:`loops` (exact, without the
        #: per-site detail), up to 2,000 shapes and then under "other".
        self.overflow: dict[str, ShapeStats] = {}
        #: The context variable's token while the record is the current one.
        self.token: contextvars.Token[Record | None] | None = None
        self.slow: list[QueryInfo] = []
        #: Statements past the cap whose result is still open.
        self.open_dropped: list[QueryInfo] = []
        self.closed = False
        self.max_queries = settings.max_queries_per_request
        self.slow_seconds = settings.slow_query_seconds
        #: A read at least this slow keeps a sample of its statement and parameters for
        #: the advisor: this app's slow-query threshold when it advises, every read while
        #: a CI gate collector is open (:func:`sample_every_read`).
        self.sample_min = (
            0.0
            if _collectors_open
            else (settings.slow_query_seconds if settings.advise else math.inf)
        )
        self.packages = settings.app_packages
        #: Who made the request, when the app names its users (``QUERYWATCH_USER``).
        self.user: str | None = None
        #: SQLAlchemy's own statements of a first connection made during this unit
        #: of work (the server's version, its default schema...), apart from its own.
        self.setup: Record | None = None
        #: Where the app last committed an ORM session in this unit of work (a commit
        #: expires the session's objects, and reading them again reloads each one).
        self.commit_site: CallSite | None = None
        #: The endpoint's statement budget (the guard's), applied before each statement.
        self.budget: StatementBudget | None = None
        #: What the guard holds for this unit of work (a bulkhead's permit), given back
        #: when it ends.
        self.held: t.Any = None
        #: The trace this unit of work is part of (32 hex digits), when the app traces
        #: with OpenTelemetry; ``spans``: a statement had a span of its own.
        self.trace_id: str | None = None
        self.spans = False
        self._view: RecordView | None = None

    def __repr__(self) -> str:
        return (
            f"<Record {self.name!r} {self.query_count} queries"
            f" {self.db_time * 1000:.1f} ms in the database>"
        )

    def view(self) -> RecordView:
        """The read-only view of this record that users are handed (one per record)."""
        view = self._view
        if view is None:
            view = self._view = RecordView(self)
        return view

    @property
    def shapes(self) -> dict[str, ShapeStats]:
        """Per-shape aggregates of the unit of work (built on each access): the loop
        entries of each shape added together, with the statements past the cap."""
        shapes = {fp: dataclasses.replace(s, hist=dict(s.hist)) for fp, s in self.overflow.items()}
        for loop in self.loops.values():
            fp = loop.fingerprint
            shape = shapes.get(fp.id)
            if shape is None:
                if len(shapes) >= _MAX_SHAPES_PER_RECORD:
                    fp = _OTHER_FINGERPRINT
                    shape = shapes.get(fp.id)
                if shape is None:
                    shape = shapes[fp.id] = ShapeStats(fp, site=loop.site)
            shape.calls += loop.calls
            shape.total += loop.total
            shape.rows += loop.rows
            shape.errors += loop.errors
            shape.min = min(shape.min, loop.min)
            shape.max = max(shape.max, loop.max)
            for k, v in loop.hist.items():
                shape.hist[k] = shape.hist.get(k, 0) + v
        return shapes

    def finish(self, status: int = 0) -> None:
        """Close the unit of work: end results left open, aggregate, fix the duration.

        Kept statements are aggregated here, in one pass, rather than one at a time while
        the request runs: the pass touches the aggregates while they are hot in the CPU's
        caches, which measured several microseconds a statement cheaper."""
        now = perf_counter()
        for q in self.queries:
            if not q.done:
                _end_left_open(q, now)
            _aggregate(self, q)
        for q in self.open_dropped:
            if not q.done:  # the others were aggregated when they ended
                _end_left_open(q, now)
                _aggregate(self, q)
        self.open_dropped.clear()
        self.status = status
        self.duration = now - self.started
        self.closed = True


_current_record: contextvars.ContextVar[Record | None] = contextvars.ContextVar(
    "querywatch_record", default=None
)

#: Caps on per-request bookkeeping so a request with 15,000 queries stays bounded.
_MAX_LOOP_KEYS = 1000
#: Distinct shapes per unit of work; past it, statements count under "other" (exactly).
_MAX_SHAPES_PER_RECORD = 2000
#: Stands for the shapes past the per-record cap; the stats fold it into their own "other".
_OTHER_FINGERPRINT = Fingerprint(id="other", shape="(other query shapes)", operation="")
MAX_PARAM_HASHES = 64
_MAX_SLOW_PER_RECORD = 100


#: CI gate collectors open in the process (:mod:`querywatch.ci.gate`): while one is, every
#: read of every record keeps its sample, so that its plan can be asked for.
_collectors_open = 0
_collectors_lock = threading.Lock()


def sample_every_read(on: bool) -> None:
    """Open (``True``) or close (``False``) one CI gate collector: records made while any
    is open keep a sample of every read."""
    global _collectors_open
    with _collectors_lock:
        _collectors_open = max(0, _collectors_open + (1 if on else -1))


def current_record() -> Record | None:
    """The record of the unit of work running in this context, if any."""
    return _current_record.get()


def start_record(record: Record) -> contextvars.Token[Record | None]:
    return _current_record.set(record)


def end_record(token: contextvars.Token[Record | None]) -> None:
    try:
        _current_record.reset(token)
    except ValueError:
        # The token was made in another context (a request torn down elsewhere): clear ours.
        _current_record.set(None)


def _end_left_open(q: QueryInfo, now: float) -> None:
    """A result never exhausted nor closed ends at its last fetch (or now)."""
    if not q.done:
        q.done = True
        end = q.last_activity or now
        q.duration = end - q.start if end > q.start else 0.0


def _aggregate(record: Record, q: QueryInfo) -> None:
    """Fold one ended statement into the record's per-(shape, call site) aggregates."""
    d = q.duration
    record.db_time += d
    error = q.error is not None
    if error:
        record.errors += 1
    # bucket_index(d), inlined: this runs for every statement.
    m, e = frexp(d)
    idx = (e + _EXP_OFFSET) * 4 + int((m - 0.5) * 8.0) if d > _HIST_BASE else 0
    if idx > _MAX_BUCKET:
        idx = _MAX_BUCKET
    key = (q.fingerprint.id, q.site, q.relationship)
    loop = record.loops.get(key)
    if loop is None:
        if len(record.loops) >= _MAX_LOOP_KEYS:
            _add_to_shape(record, q)  # exact per shape, without loop detail
            return
        # Most (shape, site) pairs run once a request: built whole, in one call.
        record.loops[key] = LoopStats(
            q.fingerprint, q.site, q.relationship, 1, d, int(error), q.rows, d, d,
            {idx: 1}, {q.params_hash: 1},
        )  # fmt: skip
    else:
        loop.calls += 1
        loop.total += d
        loop.rows += q.rows
        if d < loop.min:
            loop.min = d
        if d > loop.max:
            loop.max = d
        if error:
            loop.errors += 1
        hist = loop.hist
        hist[idx] = hist.get(idx, 0) + 1
        params = loop.params
        n = params.get(q.params_hash)
        if n is not None:
            params[q.params_hash] = n + 1
        elif len(params) < MAX_PARAM_HASHES:
            params[q.params_hash] = 1
        if loop.relationship is None:
            loop.relationship = q.relationship
    if d >= record.slow_seconds and len(record.slow) < _MAX_SLOW_PER_RECORD:
        record.slow.append(q)


def _add_to_shape(record: Record, q: QueryInfo) -> None:
    """The overflow path of :func:`_aggregate`, past the cap on loop entries."""
    shape = _shape_for(record, q.fingerprint, q.site)
    d = q.duration
    shape.calls += 1
    shape.total += d
    shape.rows += q.rows
    shape.min = min(shape.min, d)
    shape.max = max(shape.max, d)
    if q.error is not None:
        shape.errors += 1
    idx = bucket_index(d)
    shape.hist[idx] = shape.hist.get(idx, 0) + 1
    if d >= record.slow_seconds and len(record.slow) < _MAX_SLOW_PER_RECORD:
        record.slow.append(q)


def _shape_for(record: Record, fp: Fingerprint, site: CallSite | None) -> ShapeStats:
    """The record's overflow aggregate for ``fp``; past the cap, the shared "other" one."""
    shape = record.overflow.get(fp.id)
    if shape is None:
        if len(record.overflow) >= _MAX_SHAPES_PER_RECORD:
            fp, site = _OTHER_FINGERPRINT, None
            shape = record.overflow.get(fp.id)
        if shape is None:
            shape = record.overflow[fp.id] = ShapeStats(fp, site=site)
    return shape
