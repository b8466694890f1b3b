"""The guard: what keeps one slow statement from taking the whole app down while people
fix it. Statement budgets per endpoint (each database's own statement timeout), set with
``QUERYWATCH_GUARD`` (:mod:`querywatch.guard._config`); ``docs/guard.md`` tells the
whole story.
"""

from __future__ import annotations

import difflib
import threading
import typing as t
import weakref

from .._failopen import log_limited
from ._budgets import OTHER
from ._budgets import Budget
from ._budgets import Cancellations
from ._budgets import install
from ._budgets import is_cancelled
from ._config import EndpointRule
from ._config import GuardConfig
from ._config import load_guard

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from flask import Flask
    from prometheus_client.metrics_core import Metric

__all__ = [
    "EndpointRule",
    "Guard",
    "GuardConfig",
    "guard_setting",
    "is_cancelled",
    "load_guard",
]

#: Routes whose budget is remembered (an app has as many as its URL rules, and one more).
_MAX_ROUTES = 10_000


def guard_setting(app: Flask) -> GuardConfig | None:
    """The guard's configuration (``QUERYWATCH_GUARD``: a dict, a TOML file's path, or
    None for no guard); a malformed one stops ``init_app`` with the field named."""
    return load_guard(app.config.setdefault("QUERYWATCH_GUARD", None))


class Guard:
    """One app's guard: the budget each endpoint's records carry, and what it counted."""

    def __init__(self, app: Flask, config: GuardConfig) -> None:
        self.config = config
        self.cancellations = Cancellations()
        self._app = weakref.ref(app)
        self._budgets: dict[str, Budget | None] = {}
        self._lock = threading.Lock()
        self._checked = False
        if config.budgets:
            install()

    def budget(self, route: str) -> Budget | None:
        """The statement budget of a request to ``route`` (``"GET /api/orders"``)."""
        try:
            return self._budgets[route]
        except KeyError:
            pass
        if not self._checked:
            self.unknown_endpoints()
        ms = self.config.statement_timeout(route)
        budget = Budget(route, ms, self.cancellations) if ms else None
        with self._lock:
            if len(self._budgets) < _MAX_ROUTES:
                self._budgets[route] = budget
        return budget

    def unknown_endpoints(self) -> list[str]:
        """Warn once about each configured endpoint that no URL rule of the app serves
        (checked at the first request, when every blueprint is registered). Returns the
        messages."""
        self._checked = True
        app = self._app()
        if app is None:
            return []
        known = sorted(
            f"{method} {rule.rule}"
            for rule in app.url_map.iter_rules()
            for method in (rule.methods or ())
            if method not in ("HEAD", "OPTIONS")
        )
        out = []
        for name in self.config.endpoints:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = (
                f"QUERYWATCH_GUARD names the endpoint {name!r}, which the app does not serve.{hint}"
            )
            log_limited(f"guard.unknown:{name}", "%s", msg)
            out.append(msg)
        return out

    def collect(self) -> Iterator[Metric]:
        """The guard's counters, for the app's Prometheus registry."""
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily(
            "querywatch_guard_statements_cancelled",
            "Statements cancelled by their endpoint's statement budget (QUERYWATCH_GUARD).",
            labels=["http_request_method", "http_route", "db_query_shape"],
        )
        for (route, shape), n in sorted(self.cancellations.snapshot().items()):
            method, _, path = route.partition(" ") if route != OTHER else ("_OTHER", "", OTHER)
            fam.add_metric([method, path, shape], n)
        yield fam
