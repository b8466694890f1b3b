"""Prometheus metrics (``prometheus_client``).

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (:class:`AppMetrics`),
served at ``QUERYWATCH_METRICS_PATH`` (``/metrics``). Names and bucket boundaries follow
the OpenTelemetry semantic conventions, as Prometheus exports them:

* ``http_server_request_duration_seconds{http_request_method, http_route,
  http_response_status_code}``: the url rule, never the raw path;
* ``db_client_operation_duration_seconds{db_operation_name, db_query_shape}``: the shape
  is a fingerprint id for the first ``QUERYWATCH_METRICS_MAX_SHAPES`` shapes seen, then
  ``other``; never SQL text;
* ``querywatch_request_queries{http_route}``: statements a request;
* ``querywatch_n_plus_one_total{http_route}``, ``querywatch_slow_queries_total{http_route}``;
* ``querywatch_internal_errors_total{where}``: querywatch's own swallowed errors;
* ``querywatch_dropped_total{what}``: what the bounded aggregates let go of (``requests``
  kept while the store was unreachable past three hours, ``findings``, ``users``,
  ``shapes_folded`` into ``other``);
* ``db_client_connection_wait_time_seconds{pool_name}`` (histogram) and
  ``db_client_connection_timeouts_total{pool_name}``: checkouts, timed by wrapping the
  pool's ``_do_get`` (no pool event fires before a checkout);
* ``db_client_connections_usage{pool_name, state}``, ``db_client_connections_max{pool_name}``
  (OpenTelemetry's earlier names: the current ``db.client.connection.count`` exports as
  ``..._count``, which Prometheus reserves for histograms),
  ``querywatch_db_pool_overflow{pool_name}``: the SQLAlchemy pools, read at scrape time;
* the result cache's counters below.

Requests cost a queue append: finished units of work are observed by the flusher thread
(and by a scrape, first), off the request path.

The result cache's counters, per app and cached function, are collected from
querywatch's own counters at scrape time (nothing is counted twice, nothing costs a
request anything):

* ``querywatch_cache_lookups_total{app, function, result}``, ``result`` ``hit`` or
  ``miss``;
* ``querywatch_cache_stale_served_total{app, function}``: previous values served while
  another caller recomputed (``stale_while_revalidate``);
* ``querywatch_cache_invalidations_total{app, function}``: entries found stale;
* ``querywatch_cache_races_total{app, function}``: results not kept because a table they
  read was written while they were computed;
* ``querywatch_cache_coalesced_total{app, function}``: callers that waited for another's
  computation;
* ``querywatch_cache_errors_total{app, function}``;
* ``querywatch_cache_backend_up{app}`` (0 while Redis is bypassed after repeated
  failures), ``querywatch_cache_backend_trips_total{app}`` (times it was) and
  ``querywatch_cache_backend_refused_total{app}`` (Redis calls not made meanwhile).

Function names are bounded (200 a cache, the rest as ``other``). The collector is
registered on ``prometheus_client``'s default registry when the first cache is made, so
any ``/metrics`` exporter of the process shows it; each app's registry has its own.
"""

from __future__ import annotations

import collections
import threading
import typing as t
from bisect import bisect_left
from time import monotonic
from time import time

from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.registry import CollectorRegistry

from .._compat import FAST
from .._compat import wrap_checkout
from ._collectors import CacheCollector
from ._collectors import _DroppedCollector
from ._collectors import _InternalErrors
from ._collectors import _PoolCollector
from ._collectors import pool_status

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from .._detectors import Finding
    from ..capture import Record

from ..signals import takes_live_record
from ._collectors import register_cache_collector
from ._health import METRICS_ENDPOINT
from ._health import OWN_PREFIX
from ._health import READY_ENDPOINT
from ._health import app_engines
from ._health import check_database
from ._health import readiness

__all__ = [
    "METRICS_ENDPOINT",
    "OWN_PREFIX",
    "READY_ENDPOINT",
    "AppMetrics",
    "CacheCollector",
    "app_engines",
    "check_database",
    "readiness",
    "register_cache_collector",
]

#: OpenTelemetry's boundaries for ``http.server.request.duration``.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: OpenTelemetry's boundaries for ``db.client.operation.duration``.
DB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
QUERY_COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: HTTP methods kept as they are; any other is ``_OTHER`` (OpenTelemetry's rule).
HTTP_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
#: Operations kept as they are; any other first keyword is ``other``.
DB_OPERATIONS = frozenset(
    ("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "CALL", "CREATE", "ALTER", "DROP")
)
#: Finished units of work waiting to be observed, at most; past it, the oldest go.
MAX_QUEUED = 10_000
OTHER = "other"
#: Seconds between two looks for pools whose checkouts are not timed yet.
POOL_CHECK_INTERVAL = 1.0
#: Fingerprint ids remembered with their series entry (a cache; cleared when full).
MAX_SHAPE_ENTRIES = 10_000


def _method_route(name: str) -> tuple[str, str]:
    """``("GET", "/orders/<int:id>")`` of a request's unit name; unknown methods are
    ``_OTHER`` (OpenTelemetry's rule)."""
    method, _, route = name.partition(" ")
    return (method if method in HTTP_METHODS else "_OTHER"), route


def _operation(fp: t.Any) -> str:
    return str(fp.operation) if fp.operation in DB_OPERATIONS else OTHER


class _Unit(t.NamedTuple):
    name: str
    kind: str
    status: int
    duration: float
    query_count: int
    queries: list[t.Any]
    loops: list[t.Any]
    dropped: int
    n_plus_one: int
    slow: int
    trace_id: str | None = None


class _Histograms:
    """Cumulative histograms by label values, bucketed with one ``bisect`` an
    observation: an observation costs a fraction of a ``prometheus_client.Histogram``'s
    (a labels lookup and a lock each), which matters at one a statement."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: label values -> [counts by bucket (the last is +Inf), sum, exemplars (None,
        #: or by bucket the last traced observation: trace id, value, time)].
        self.series: dict[tuple[str, ...], list[t.Any]] = {}

    def entry(self, labels: tuple[str, ...]) -> list[t.Any]:
        e = self.series.get(labels)
        if e is None:
            e = self.series[labels] = [[0] * (len(self.bounds) + 1), 0.0, None]
        return e

    @staticmethod
    def exemplar(e: list[t.Any], bucket: int, trace_id: str, value: float) -> None:
        """Keep a traced observation as its bucket's exemplar (OpenMetrics: the last
        one a bucket; bounded by the series' buckets)."""
        if e[2] is None:
            e[2] = {}
        e[2][bucket] = (trace_id, value, time())

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        from prometheus_client.samples import Exemplar

        fam = HistogramMetricFamily(name, doc, labels=label_names)
        bounds = [*(str(float(b)) for b in self.bounds), "+Inf"]
        for labels, (counts, total, exemplars) in sorted(self.series.items()):
            cumulative: list[t.Any] = []
            running = 0
            for i, (le, n) in enumerate(zip(bounds, counts, strict=True)):
                running += n
                ex = exemplars.get(i) if exemplars else None
                if ex is None:
                    cumulative.append((le, running))
                else:
                    cumulative.append((le, running, Exemplar({"trace_id": ex[0]}, ex[1], ex[2])))
            fam.add_metric(list(labels), cumulative, total)
        return fam


class AppMetrics(Collector):
    """One app's Prometheus metrics, in a registry of its own.

    :param name: the app's name (the cache counters' ``app`` label).
    :param engines: returns the app's engines (by bind name) when a scrape reads the
        pools.
    :param states: returns the querywatch state of every app of the process (the cache
        and dropped counters sum over the apps of one name).
    :param max_shapes: query shapes with a series of their own; the rest are ``other``.
    """

    def __init__(
        self,
        name: str,
        engines: Callable[[], dict[str, t.Any]],
        states: Callable[[], Iterable[t.Any]],
        *,
        max_shapes: int = 50,
    ) -> None:
        self.name = name
        self.http = _Histograms(HTTP_BUCKETS)
        self.db = _Histograms(DB_BUCKETS)
        self.queries = _Histograms(QUERY_COUNT_BUCKETS)
        self.n_plus_one: dict[str, int] = {}
        self.slow: dict[str, int] = {}
        self.max_shapes = max_shapes
        #: Shapes with a series of their own (fingerprint ids).
        self.shapes: set[str] = set()
        #: Fingerprint id -> its series' entry (several ids share ``other``'s).
        self._db_entries: dict[str, list[t.Any]] = {}
        self._queue: collections.deque[_Unit] = collections.deque(maxlen=MAX_QUEUED)
        self._lock = threading.Lock()
        #: Per pool: time waited to check a connection out, and checkouts that timed out.
        self.pool_wait = _Histograms(DB_BUCKETS)
        self.pool_timeouts: dict[str, int] = {}
        #: Per pool: the (checkouts, wait, timeouts) already handed to the store.
        self._pool_marks: dict[str, tuple[int, float, int]] = {}
        self._pool_lock = threading.Lock()
        self._pools_checked = -POOL_CHECK_INTERVAL
        #: Whether another exporter of the app already exports
        #: ``http_server_request_duration_seconds`` (OpenTelemetry's Flask
        #: instrumentation, with the stable HTTP conventions): querywatch leaves its own
        #: out rather than export a second series of the name. The extension sets it.
        self.http_exported_elsewhere: Callable[[], bool] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        self.registry.register(_InternalErrors())
        self.registry.register(_PoolCollector(engines))
        self.registry.register(CacheCollector(states, app=name))
        self.registry.register(_DroppedCollector(name, states))
        self._engines = engines
        #: prometheus_client's multiprocess mode (gunicorn and other pre-fork servers):
        #: observations also go to the shared files of ``PROMETHEUS_MULTIPROC_DIR``.
        self.multiprocess = multiprocess_dir() is not None
        self._mp: dict[str, t.Any] = self._mp_metrics() if self.multiprocess else {}

    @staticmethod
    def _mp_metrics() -> dict[str, t.Any]:
        from prometheus_client import Counter
        from prometheus_client import Histogram

        return {
            "http": Histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, by url rule.",
                ["http_request_method", "http_route", "http_response_status_code"],
                buckets=HTTP_BUCKETS,
                registry=None,
            ),
            "db": Histogram(
                "db_client_operation_duration_seconds",
                "Duration of database statements, by operation and query shape.",
                ["db_operation_name", "db_query_shape"],
                buckets=DB_BUCKETS,
                registry=None,
            ),
            "queries": Histogram(
                "querywatch_request_queries",
                "SQL statements a request ran.",
                ["http_route"],
                buckets=QUERY_COUNT_BUCKETS,
                registry=None,
            ),
            "n_plus_one": Counter(
                "querywatch_n_plus_one", "N+1 loops found.", ["http_route"], registry=None
            ),
            "slow": Counter(
                "querywatch_slow_queries",
                "Statements over the slow threshold.",
                ["http_route"],
                registry=None,
            ),
        }

    def after_fork(self) -> None:
        """In a forked worker: what the parent observed is the parent's."""
        self._queue.clear()
        self._lock = threading.Lock()
        self.http = _Histograms(HTTP_BUCKETS)
        self.db = _Histograms(DB_BUCKETS)
        self.queries = _Histograms(QUERY_COUNT_BUCKETS)
        self.n_plus_one = {}
        self.slow = {}
        self._db_entries = {}
        self._pool_lock = threading.Lock()
        self.pool_wait = _Histograms(DB_BUCKETS)
        self.pool_timeouts = {}
        self._pool_marks = {}
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess and not self._mp:
            self._mp = self._mp_metrics()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type: this process's registry (in
        the OpenMetrics format, with the duration histograms' exemplars, when the
        scraper's ``Accept`` asks for it, as Prometheus does), or in multiprocess mode
        the sum of every worker's files (and the serving worker's pools)."""
        from prometheus_client import CONTENT_TYPE_LATEST
        from prometheus_client import generate_latest

        self.fold()
        if not self.multiprocess:
            if accept and "application/openmetrics-text" in accept:
                from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OM
                from prometheus_client.openmetrics.exposition import generate_latest as om_latest

                return bytes(om_latest(self.registry)), OM  # type: ignore[no-untyped-call]
            return bytes(generate_latest(self.registry)), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_PoolCollector(self._engines))
        return bytes(generate_latest(registry)), CONTENT_TYPE_LATEST

    @takes_live_record
    def record_finished(
        self, sender: t.Any, record: Record, findings: Iterable[Finding], **_: t.Any
    ) -> None:
        """The :data:`querywatch.signals.record_finished` receiver of the app's metrics:
        queue a finished unit of work (an append; observed by :meth:`fold`)."""
        n1 = slow = 0
        for f in findings:
            if f.kind == "n_plus_one":
                n1 += 1
            elif f.kind == "slow_query":
                slow += f.count
        self._queue.append(
            _Unit(
                record.name,
                record.kind,
                record.status,
                record.duration,
                record.query_count,
                record.queries,
                list(record.loops.values()) + list(record.overflow.values())
                if record.dropped
                else [],
                record.dropped,
                n1,
                slow,
                record.trace_id,
            )
        )

    def fold(self) -> None:
        """Observe the queued units of work (and time the checkouts of pools not timed
        yet: a pool is made anew when its engine is disposed)."""
        try:
            now = monotonic()
            if FAST.pool_wait and now - self._pools_checked >= POOL_CHECK_INTERVAL:
                self._pools_checked = now
                for name, engine in self._engines().items():
                    if not getattr(engine.pool, "_querywatch_timed", False):
                        self._time_checkouts(name, engine.pool)
        except Exception as e:
            from .._failopen import record_internal_error

            record_internal_error("metrics.pools", e)
        with self._lock:
            queue = self._queue
            while True:
                try:
                    unit = queue.popleft()
                except IndexError:
                    return
                self._observe(unit)

    def take_pool_counts(self) -> dict[str, tuple[int, float, int, float | None]]:
        """Per pool, what happened since the last call: checkouts, seconds waited,
        timeouts, and the share of the pool in use now (for the store, so alerts see
        every worker's pools). :meth:`give_back_pool_counts` undoes a call whose write
        failed."""
        out: dict[str, tuple[int, float, int, float | None]] = {}
        try:
            engines = self._engines()
        except Exception:
            engines = {}
        with self._pool_lock:
            for (name,), (counts, waited, _) in list(self.pool_wait.series.items()):
                total = sum(counts)
                timeouts = self.pool_timeouts.get(name, 0)
                seen = self._pool_marks.get(name, (0, 0.0, 0))
                if total == seen[0] and timeouts == seen[2]:
                    continue
                self._pool_marks[name] = (total, waited, timeouts)
                out[name] = (total - seen[0], waited - seen[1], timeouts - seen[2], None)
        for name, (c, w, n, _) in list(out.items()):
            engine = engines.get(name)
            st = pool_status(engine) if engine is not None else None
            out[name] = (c, w, n, st["saturation"] if st else None)
        return out

    def give_back_pool_counts(
        self, counts: dict[str, tuple[int, float, int, float | None]]
    ) -> None:
        with self._pool_lock:
            for name, (c, w, n, _) in counts.items():
                seen = self._pool_marks.get(name)
                if seen is not None:
                    self._pool_marks[name] = (seen[0] - c, seen[1] - w, seen[2] - n)

    def _time_checkouts(self, name: str, pool: t.Any) -> None:
        """Wrap the pool's checkout to time the wait and count the timeouts.

        SQLAlchemy's pool events fire once a connection is checked out, never before,
        so no event tells the wait; every pool class gets its connection in ``_do_get``."""
        from time import perf_counter

        from sqlalchemy.exc import TimeoutError as PoolTimeout

        key = (name,)
        with self._pool_lock:
            self.pool_wait.entry(key)
            self.pool_timeouts.setdefault(name, 0)
        m = self  # read at each call: a forked worker replaces them

        def timed(get: t.Callable[[], t.Any]) -> t.Any:
            start = perf_counter()
            try:
                return get()
            except PoolTimeout:
                with m._pool_lock:
                    m.pool_timeouts[name] = m.pool_timeouts.get(name, 0) + 1
                raise
            finally:
                waited = perf_counter() - start
                with m._pool_lock:
                    entry = m.pool_wait.entry(key)
                    entry[0][bisect_left(DB_BUCKETS, waited)] += 1
                    entry[1] += waited

        wrap_checkout(pool, timed)
        pool._querywatch_timed = True

    def _http_elsewhere(self) -> bool:
        check = self.http_exported_elsewhere
        if check is None:
            return False
        try:
            elsewhere = check()
        except Exception as e:
            from .._failopen import record_internal_error

            record_internal_error("metrics.http_elsewhere", e)
            return False
        if elsewhere:
            from .._failopen import log_limited

            log_limited(
                "metrics.http_elsewhere",
                "OpenTelemetry's Flask instrumentation exports http.server.request.duration"
                " for this app (OTEL_SEMCONV_STABILITY_OPT_IN=http): querywatch leaves its"
                " http_server_request_duration_seconds out of %s, so Prometheus gets one"
                " series of the name. Its other metrics stay.",
                "/metrics",
            )
        return elsewhere

    def _shape_label(self, fp_id: str) -> str:
        if fp_id in self.shapes:
            return fp_id
        if len(self.shapes) < self.max_shapes and fp_id != OTHER:
            self.shapes.add(fp_id)
            return fp_id
        return OTHER

    def _observe(self, u: _Unit) -> None:
        if self._mp:
            self._observe_shared(u)
        trace_id = u.trace_id
        if u.kind == "request":
            method, route = _method_route(u.name)
            e = self.http.entry((method, route, str(u.status)))
            i = bisect_left(HTTP_BUCKETS, u.duration)
            e[0][i] += 1
            e[1] += u.duration
            if trace_id is not None:
                _Histograms.exemplar(e, i, trace_id, u.duration)
            e = self.queries.entry((route,))
            e[0][bisect_left(QUERY_COUNT_BUCKETS, u.query_count)] += 1
            e[1] += u.query_count
            if u.n_plus_one:
                self.n_plus_one[route] = self.n_plus_one.get(route, 0) + u.n_plus_one
            if u.slow:
                self.slow[route] = self.slow.get(route, 0) + u.slow
        entries = self._db_entries
        kept: dict[str, int] = {}
        for q in u.queries:
            fp = q.fingerprint
            fp_id = fp.id
            found = entries.get(fp_id)
            if found is not None:
                e = found
            else:
                if len(entries) >= MAX_SHAPE_ENTRIES:
                    entries.clear()
                e = entries[fp_id] = self.db.entry((_operation(fp), self._shape_label(fp_id)))
            d = q.duration
            i = bisect_left(DB_BUCKETS, d)
            e[0][i] += 1
            e[1] += d
            if trace_id is not None:
                _Histograms.exemplar(e, i, trace_id, d)
            if u.dropped:
                kept[fp_id] = kept.get(fp_id, 0) + 1
        # Statements past the record's cap were aggregated without being kept: each is
        # observed at its shape's mean.
        for part in u.loops:
            fp = part.fingerprint
            extra = part.calls - kept.pop(fp.id, 0)
            if extra <= 0 or part.calls <= 0:
                continue
            e = self.db.entry((_operation(fp), self._shape_label(fp.id)))
            mean = part.total / part.calls
            e[0][bisect_left(DB_BUCKETS, mean)] += extra
            e[1] += mean * extra

    def _observe_shared(self, u: _Unit) -> None:
        """Multiprocess mode: the same observations, into prometheus_client's files."""
        mp = self._mp
        if u.kind == "request":
            method, route = _method_route(u.name)
            mp["http"].labels(method, route, str(u.status)).observe(u.duration)
            mp["queries"].labels(route).observe(u.query_count)
            if u.n_plus_one:
                mp["n_plus_one"].labels(route).inc(u.n_plus_one)
            if u.slow:
                mp["slow"].labels(route).inc(u.slow)
        db = mp["db"]
        for q in u.queries:
            fp = q.fingerprint
            db.labels(_operation(fp), self._shape_label(fp.id)).observe(q.duration)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if not self._http_elsewhere():
                yield self.http.family(
                    "http_server_request_duration_seconds",
                    "Duration of HTTP server requests, by url rule (OpenTelemetry"
                    " http.server.request.duration).",
                    ["http_request_method", "http_route", "http_response_status_code"],
                )
            yield self.db.family(
                "db_client_operation_duration_seconds",
                "Duration of database statements until their result was read, by"
                " operation and query shape (OpenTelemetry db.client.operation.duration).",
                ["db_operation_name", "db_query_shape"],
            )
            yield self.queries.family(
                "querywatch_request_queries", "SQL statements a request ran.", ["http_route"]
            )
            counters = (
                ("querywatch_n_plus_one", "N+1 loops found.", self.n_plus_one),
                ("querywatch_slow_queries", "Statements over the slow threshold.", self.slow),
            )
            for name, doc, values in counters:
                fam = CounterMetricFamily(name, doc, labels=["http_route"])
                for route, n in sorted(values.items()):
                    fam.add_metric([route], n)
                yield fam
        with self._pool_lock:
            yield self.pool_wait.family(
                "db_client_connection_wait_time_seconds",
                "Time waited to check a connection out of the pool (OpenTelemetry"
                " db.client.connection.wait_time).",
                ["pool_name"],
            )
            fam = CounterMetricFamily(
                "db_client_connection_timeouts",
                "Checkouts that gave up waiting for a connection (OpenTelemetry"
                " db.client.connection.timeouts).",
                labels=["pool_name"],
            )
            for name, n in sorted(self.pool_timeouts.items()):
                fam.add_metric([name], n)
            yield fam


def multiprocess_dir() -> str | None:
    """The folder of prometheus_client's multiprocess mode, when set."""
    import os

    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
