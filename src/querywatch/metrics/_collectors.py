"""The collectors beside the app's own histograms: the result cache's counters, internal
errors, what the bounded aggregates dropped, and the connection pools."""

from __future__ import annotations

import threading
import typing as t

from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY
from prometheus_client.registry import Collector

from .._failopen import internal_error_counts

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Iterator

    from prometheus_client.core import Metric


#: (counter field, metric name without the prefix, help) of the per-function counters.
_PER_FUNCTION = (
    (
        "invalidations",
        "invalidations",
        "Cache entries found stale: a table they read was written, or they expired.",
    ),
    (
        "races",
        "races",
        "Results not kept: a table they read was written while they were computed.",
    ),
    (
        "coalesced",
        "coalesced",
        "Callers that waited for another caller's computation of the same key.",
    ),
    ("stale", "stale_served", "Previous values served while another caller recomputed them."),
    ("errors", "errors", "Cache backend or value errors (the call computed instead)."),
)


class CacheCollector(Collector):
    """The result cache's counters of every app in the process (or of the app named
    ``app``)."""

    def __init__(self, states: Callable[[], Iterable[t.Any]], app: str | None = None) -> None:
        self.states = states
        self.app = app

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "querywatch_cache_lookups",
            "Result cache lookups, by cached function and result (hit or miss).",
            labels=["app", "function", "result"],
        )
        families = {
            field: CounterMetricFamily(
                f"querywatch_cache_{metric}", help_text, labels=["app", "function"]
            )
            for field, metric, help_text in _PER_FUNCTION
        }
        # Summed per (app, function): two apps of one name in a process are one series.
        totals: dict[tuple[str, str], dict[str, int]] = {}
        fields = ("hits", "misses", *families)
        for state in self.states():
            cache = state._cache
            if cache is None or (self.app is not None and state.name != self.app):
                continue
            for name, st in list(cache.stats.items()):
                agg = totals.setdefault((state.name, name), dict.fromkeys(fields, 0))
                for f in fields:
                    agg[f] += getattr(st, f)
        for (app, name), agg in sorted(totals.items()):
            lookups.add_metric([app, name, "hit"], agg["hits"])
            lookups.add_metric([app, name, "miss"], agg["misses"])
            for field, family in families.items():
                family.add_metric([app, name], agg[field])
        yield lookups
        yield from families.values()
        up = GaugeMetricFamily(
            "querywatch_cache_backend_up",
            "1 while the result cache's shared backend (Redis) is used, 0 while it is"
            " bypassed after repeated failures.",
            labels=["app"],
        )
        trips = CounterMetricFamily(
            "querywatch_cache_backend_trips",
            "Times the result cache's backend was bypassed after repeated failures.",
            labels=["app"],
        )
        refused = CounterMetricFamily(
            "querywatch_cache_backend_refused",
            "Calls to the result cache's backend not made while it was bypassed.",
            labels=["app"],
        )
        # Per app name, as the counters above: bypassed if any of its caches is.
        by_app: dict[str, list[float]] = {}
        for state in self.states():
            cache = state._cache
            breaker = getattr(getattr(cache, "backend", None), "breaker", None)
            if breaker is None or (self.app is not None and state.name != self.app):
                continue
            cur = by_app.setdefault(state.name, [1.0, 0.0, 0.0])
            cur[0] = min(cur[0], 0.0 if breaker.is_open else 1.0)
            cur[1] += breaker.trips
            cur[2] += breaker.refused
        for app, (is_up, n_trips, n_refused) in sorted(by_app.items()):
            up.add_metric([app], is_up)
            trips.add_metric([app], n_trips)
            refused.add_metric([app], n_refused)
        if by_app:
            yield up
            yield trips
            yield refused


_registered = False
_lock = threading.Lock()


def register_cache_collector(states: Callable[[], Iterable[t.Any]]) -> None:
    """Register :class:`CacheCollector` over ``states`` (every app of the process) on the
    default registry, once per process."""
    global _registered
    with _lock:
        if not _registered:
            REGISTRY.register(CacheCollector(states))
            _registered = True


class _InternalErrors(Collector):
    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "querywatch_internal_errors",
            "querywatch's own errors, swallowed so that no request failed, by place.",
            labels=["where"],
        )
        for where, n in sorted(internal_error_counts().items()):
            family.add_metric([where], n)
        yield family


class _DroppedCollector(Collector):
    """What this app's bounded aggregates let go of, by what: requests whose buckets
    were dropped while the store was unreachable (past three hours or the entry bound),
    findings and users past their caps, and shapes folded into ``other``."""

    def __init__(self, app: str, states: Callable[[], Iterable[t.Any]]) -> None:
        self.app = app
        self.states = states

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "querywatch_dropped",
            "What querywatch's bounded aggregates let go of, by what (requests: kept"
            " while the store was unreachable, then dropped).",
            labels=["what"],
        )
        totals = {"requests": 0, "findings": 0, "users": 0, "shapes_folded": 0}
        for state in self.states():
            if state.name != self.app:
                continue
            st = state.stats
            totals["requests"] += st.dropped_requests
            totals["findings"] += st.dropped_findings
            totals["users"] += st.dropped_users
            totals["shapes_folded"] += st.folded_shapes
        for what, n in totals.items():
            family.add_metric([what], n)
        yield family


class _PoolCollector(Collector):
    """The SQLAlchemy pools of one app, read at scrape time."""

    def __init__(self, engines: Callable[[], dict[str, t.Any]]) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        count = GaugeMetricFamily(
            "db_client_connections_usage",
            "Connections of the pool, by state (used: checked out; idle: in the pool).",
            labels=["pool_name", "state"],
        )
        most = GaugeMetricFamily(
            "db_client_connections_max",
            "Connections the pool may open at most (size plus max overflow).",
            labels=["pool_name"],
        )
        overflow = GaugeMetricFamily(
            "querywatch_db_pool_overflow",
            "Connections open beyond the pool's size.",
            labels=["pool_name"],
        )
        try:
            engines = self.engines()
        except Exception:
            engines = {}
        for name, engine in sorted(engines.items()):
            st = pool_status(engine)
            if st is None:
                continue
            count.add_metric([name, "used"], st["checked_out"])
            count.add_metric([name, "idle"], st["idle"])
            if st["max"] is not None:
                most.add_metric([name], st["max"])
            overflow.add_metric([name], st["overflow"])
        yield count
        yield most
        yield overflow


def pool_status(engine: t.Any) -> dict[str, t.Any] | None:
    """Size, use and saturation of an engine's pool (QueuePool and kin), or None when
    the pool keeps no count (NullPool, StaticPool)."""
    pool = engine.pool
    size = getattr(pool, "size", None)
    checkedout = getattr(pool, "checkedout", None)
    if not callable(size) or not callable(checkedout):
        return None
    out_n = int(checkedout())
    size_n = int(size())
    overflow_fn = getattr(pool, "overflow", None)
    # QueuePool counts its overflow from minus its size: below the size it is negative.
    over = max(int(overflow_fn()), 0) if callable(overflow_fn) else 0
    max_overflow = getattr(pool, "_max_overflow", None)
    most = size_n + max_overflow if isinstance(max_overflow, int) and max_overflow >= 0 else None
    checkedin = getattr(pool, "checkedin", None)
    idle = int(checkedin()) if callable(checkedin) else 0
    return {
        "size": size_n,
        "checked_out": out_n,
        "idle": idle,
        "overflow": over,
        "max": most,
        "saturation": round(out_n / most, 3) if most else None,
    }
