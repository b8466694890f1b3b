"""Prometheus metrics (``prometheus_client``).

For now the result cache's counters, per app and cached function, collected from
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
* ``querywatch_cache_errors_total{app, function}``.

Function names are bounded (200 a cache, the rest as ``other``). The collector is
registered on ``prometheus_client``'s default registry when the first cache is made, so
any ``/metrics`` exporter of the process shows it.
"""

from __future__ import annotations

import threading
import typing as t

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import REGISTRY
from prometheus_client.registry import Collector

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

__all__ = ["CacheCollector", "register_cache_collector"]


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
    """The result cache's counters of every app in the process."""

    def collect(self) -> Iterator[Metric]:
        from .extension import _states

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
        for state in list(_states):
            cache = state._cache
            if cache is None:
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


_registered = False
_lock = threading.Lock()


def register_cache_collector() -> None:
    """Register :class:`CacheCollector` on the default registry, once per process."""
    global _registered
    with _lock:
        if not _registered:
            REGISTRY.register(CacheCollector())
            _registered = True
