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
from .._failopen import swallow
from ..alerts.objectives import DEFAULT_POLICY
from ._budgets import OTHER
from ._budgets import Budget
from ._budgets import Cancellations
from ._budgets import is_cancelled
from ._bulkhead import UNLIMITED
from ._bulkhead import Bulkhead
from ._bulkhead import shed_response
from ._config import EndpointRule
from ._config import GuardConfig
from ._config import load_guard
from ._containment import Containment
from ._containment import Policy
from ._containment import adapt
from ._containment import blamed
from ._containment import engage
from ._state import STATE_KEY
from ._state import lifted
from ._state import lifted_at
from ._state import read
from ._state import remember_lift
from ._state import remember_lifted
from ._state import write

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from flask import Flask
    from prometheus_client.metrics_core import Metric

__all__ = [
    "STATE_KEY",
    "Bulkhead",
    "Containment",
    "EndpointRule",
    "Guard",
    "GuardConfig",
    "guard_setting",
    "is_cancelled",
    "load_guard",
]

#: Routes whose budget is remembered (an app has as many as its URL rules, and one more).
_MAX_ROUTES = 10_000
#: How long a request of a contained endpoint waits for a permit, in milliseconds.
CONTAIN_WAIT_MS = 50
#: Firing alerts judged (engaged or not), remembered so each is judged once.
_MAX_JUDGED = 1_000
#: Rounds an event waits for its alert's incident to open before it is dropped.
_MAX_TRIES = 20
#: Requests a contained endpoint must have had since the last measure for its shed share
#: to be taken (fewer say too little).
_MIN_ARRIVALS = 20


def guard_setting(app: Flask) -> GuardConfig | None:
    """The guard's configuration (``QUERYWATCH_GUARD``: a dict, a TOML file's path, or
    None for no guard); a malformed one stops ``init_app`` with the field named."""
    return load_guard(app.config.setdefault("QUERYWATCH_GUARD", None))


def _predates(evidence: t.Mapping[str, t.Any], lifted: float | None) -> bool:
    """Whether ``evidence``'s window began before ``lifted`` (None: never lifted)."""
    if lifted is None:
        return False
    window = (evidence.get("window") or {}).get("now")
    return not window or float(window[0]) < lifted


class Guard:
    """One app's guard: the budget each endpoint's records carry, and what it counted."""

    def __init__(self, app: Flask, config: GuardConfig) -> None:
        self.config = config
        self.cancellations = Cancellations()
        self._app = weakref.ref(app)
        self._budgets: dict[str, Budget | None] = {}
        self._lock = threading.Lock()
        self._checked = False
        #: Each endpoint's bulkhead, by route: those with ``max_concurrent``, and those
        #: containment put under a limit.
        self.bulkheads = {
            route: Bulkhead(route, rule.max_concurrent, rule.max_wait_ms)
            for route, rule in config.endpoints.items()
            if rule.max_concurrent is not None
        }
        self.policy = Policy(
            mode=config.containment,
            culprit_share=config.culprit_share,
            max_shed_share=config.max_shed_share,
            never_shed=frozenset(r for r, rule in config.endpoints.items() if rule.never_shed),
        )
        #: The containments this process applies (what the store said last).
        self.contained: dict[str, Containment] = {}
        #: The budgets of the endpoints containment limits (enforce): their statements
        #: run without parallel workers.
        self._serial: dict[str, Budget] = {}
        #: What containment said, newest last (bounded).
        self.events: list[str] = []
        self._judged: dict[str, float] = {}
        #: Tells the alert's incident what the guard decided (``on_event(alert_key,
        #: text, at)``, ``at`` when it decided; returning whether it was told: the
        #: incident may not be open yet); the extension hands it over when incidents
        #: are on.
        self.on_event: t.Callable[[str, str, float], bool] | None = None
        self._untold: list[tuple[str, str, float, int]] = []
        #: The incident of an alert resolved since a time, if one was
        #: (``incident_resolved(alert_key, since)`` -> its id or None): a person who
        #: resolves the incident of a held page lifts its limit. The extension hands it
        #: over when incidents are on.
        self.incident_resolved: t.Callable[[str, float], int | None] | None = None
        #: Each contained endpoint's (arrived, shed, retried, shed again) when its shed
        #: share was last taken.
        self._counted: dict[str, tuple[int, int, int, int]] = {}
        #: The app's objectives, as (name, target): a change of a limit says whether the
        #: rest of the app is within them. The extension hands them over.
        self.objectives: tuple[tuple[str, float], ...] = ()
        #: Who makes a request (``QUERYWATCH_USER``), when the app names its users: a
        #: contained endpoint tells a client's retry of a shed request from a new one.
        self.user_function: t.Callable[[t.Any], t.Any] | None = None
        #: A page's own bar, which a window gathered again while the page fires must
        #: meet to engage: this many bad requests, burning the objective's error budget
        #: this many times faster than sustainable (the page conditions' lowest). The
        #: extension hands over the alert settings'.
        self.min_bad_events = 0
        self.page_burn = min(w.burn_rate for w in DEFAULT_POLICY if w.severity == "page")

    def admit(self, record: t.Any) -> t.Any:
        """At the start of a request: take its endpoint's bulkhead permit (held on the
        record until :meth:`release`), or the 503 that sheds it. Fails open: an error
        of querywatch's own admits the request."""
        bulkhead = self.bulkheads.get(record.name)
        if bulkhead is None:
            if not record.name.startswith("HEAD "):
                return None
            bulkhead = self.bulkheads.get(_rule(record.name))
            if bulkhead is None:
                return None
        try:
            if bulkhead.enter(self._client() if bulkhead.route in self.contained else None):
                record.held = bulkhead
                return None
        except Exception as e:
            swallow("guard.admit", e)
            return None
        return shed_response(bulkhead)

    def _client(self) -> str | None:
        """The user making the current request, if the app names its users (None when
        the app's function fails: the request is then counted as a new one, and the
        limit still holds)."""
        if self.user_function is None:
            return None
        from flask import request

        try:
            user = self.user_function(request._get_current_object())  # type: ignore[attr-defined]
        except Exception as e:
            swallow("guard.user", e)
            return None
        return str(user)[:255] if user is not None else None

    @staticmethod
    def release(record: t.Any) -> None:
        """At the end of a request: give its permit back."""
        held, record.held = record.held, None
        if held is not None:
            held.leave()

    def budget(self, route: str) -> Budget | None:
        """The statement budget of a request to ``route`` (``"GET /api/orders"``): its
        statement timeout, and while containment limits the endpoint, no parallel
        workers."""
        if self._serial:
            serial = self._serial.get(_rule(route))
            if serial is not None:
                return serial
        try:
            return self._budgets[route]
        except KeyError:
            pass
        if not self._checked:
            self.unknown_endpoints()
        ms = self.config.statement_timeout(_rule(route))
        budget = Budget(route, ms, self.cancellations) if ms else None
        with self._lock:
            if len(self._budgets) < _MAX_ROUTES:
                self._budgets[route] = budget
        return budget

    def contain(self, store: t.Any, *, leader: bool, now: float, width: float) -> list[str]:
        """One round of containment, after the alerts' evaluation. The lease holder
        (``leader``) decides and writes the store; every process then applies what the
        store holds. Returns what the round decided, in words."""
        if self.policy.mode == "off":
            return []
        events: list[str] = []
        if leader:
            events = self._decide(store, now, width)
        self.apply(read(store))
        return events

    def holds(self, store: t.Any) -> dict[str, str]:
        """The paging alerts this guard holds firing, each with why: an alert whose
        limit is enforced does not resolve while it holds (its objective may hold again
        only because its culprit is limited; resolved, its incident would close with
        nothing fixed). A pinned limit holds nothing: a person keeps it."""
        if self.policy.mode != "enforce":
            return {}
        return {
            c.alert: f"the guard limits {c.endpoint} to {c.limit} at once"
            for c in read(store).values()
            if c.alert and c.mode == "enforce" and not c.pinned
        }

    @staticmethod
    def _fresh(
        store: t.Any, fired: t.Mapping[str, t.Any] | None, now: float, width: float
    ) -> dict[str, t.Any] | None:
        """The evidence a page gathered when it fired, gathered again now over windows
        of the same length (None when it carries no windows)."""
        from ..alerts import evidence

        window = (fired or {}).get("window") or {}
        seconds, now_w, before_w = window.get("seconds"), window.get("now"), window.get("before")
        if not seconds or not now_w or not before_w:
            return None
        objective = ((fired or {}).get("objective") or {}).get("name")
        return evidence.gather(
            store,
            now,
            seconds,
            width=int(width),
            gap=max(0.0, now_w[0] - before_w[1]),
            objective=objective,
        )

    def _decide(self, store: t.Any, now: float, width: float) -> list[str]:
        policy = self.policy
        state = read(store)
        lifted_alerts = lifted(store)
        lifted_since = lifted_at(store)
        firing = {
            k: a
            for k, a in store.alert_states().items()
            if a.state == "firing" and a.severity == "page"
        }
        events: list[str] = []
        told: list[tuple[str, str]] = []
        new: dict[str, Containment] = {}
        bucket = (now // width) * width
        # The last two whole buckets: each endpoint's rate, and its share of the traffic.
        totals = store.endpoint_totals(bucket - 2 * width, bucket) if state else {}
        everyone = sum(e.requests for e in totals.values())
        for endpoint, c in state.items():
            closed = self._closed(c)
            if closed is not None:
                # A person resolved the incident of the page this limit holds: lifted.
                said = f"guard lifted on {endpoint}: its incident #{closed} was resolved."
                _lifted(store, c, firing, now, lifted_alerts, lifted_since)
                events.append(said)
                told.append((c.alert, said))
                continue
            latency = None
            # A window that began before the limit was set says nothing of the limit.
            if c.shape is not None and bucket - width >= c.since:
                total, calls = store.shape_time(endpoint, c.shape, bucket - width, bucket + width)
                latency = total / calls * 1000 if calls else None
            ep = totals.get(endpoint)
            shed, retried = self._shed_since(endpoint, c.mode)
            missed = self._missed(store, endpoint, bucket, width)
            d = adapt(
                policy,
                c,
                paging=bool(firing),
                latency_ms=latency,
                now=now,
                rate=ep.requests / (2 * width) if ep is not None else 0.0,
                shed_share=_app_share(shed, retried, ep.requests, everyone)
                if shed is not None and ep is not None and everyone
                else None,
                rest_missed=bool(missed),
                window=2 * width,
            )
            event = d.event
            if event and d.containment is not None:
                # A change: what the limit costs the endpoint, and what it spares the rest.
                event = event[:-1] + self._status(shed, missed) + "."
            if d.containment is not None:
                new[endpoint] = d.containment
            else:
                _lifted(store, c, firing, now, lifted_alerts, lifted_since)
            if event:
                events.append(event)
                told.append((c.alert, event))
        for key, alert in sorted(firing.items()):
            if lifted_alerts.get(key) == alert.since or any(c.alert == key for c in new.values()):
                continue
            # A page is judged on its evidence when it fires, and again each round while
            # it fires and nothing is contained: seconds after the onset, the overload
            # may not have sorted the culprit from what it slows yet (at a PostgreSQL
            # replay's page 67% of the bad requests were the lookup's, 79% one round
            # later). The refusal is said once.
            first = self._judged.get(key) != alert.since
            ev = alert.evidence if first else self._fresh(store, alert.evidence, now, width)
            if ev is None:
                continue
            self._judged[key] = alert.since
            if len(self._judged) > _MAX_JUDGED:
                del self._judged[next(iter(self._judged))]
            if not first and not self._pages(ev):
                # The page fires on the bad requests of its long windows, but the last
                # window alone would not page: nothing there to contain (after a
                # replay's fix one slow lookup in a window of a hundred engaged a limit
                # that nothing could lift).
                continue
            d = engage(policy, key, ev, now)
            if d.containment is None and (not first or blamed(ev) in new):
                continue  # said already, or another page contained it: nothing to refuse
            if d.containment is not None and _predates(
                ev, max(lifted_since.values(), default=None)
            ):
                # A limit lifted itself (a fix) after this evidence's window began: it
                # tells of the app before the fix, of this endpoint or of another that
                # the culprit slowed (after a replay's fix a page blamed the few slow
                # product reads of the recovery). A window gathered wholly after the
                # lift may engage (the fix did not hold, or a new culprit).
                continue
            if d.containment is not None:
                if d.containment.endpoint in new:
                    continue  # another page contained it already
                new[d.containment.endpoint] = d.containment
            if d.event:
                events.append(d.event)
                told.append((key, d.event))
        if new != state:
            write(store, new)
        for event in events:
            log_limited(f"guard.event:{event}", "%s", event)
        self.events.extend(events)
        del self.events[:-100]
        self._tell([(key, text, now, 0) for key, text in told])
        return events

    def _pages(self, evidence: t.Mapping[str, t.Any]) -> bool:
        """Whether ``evidence``'s window alone meets a page's bar: enough bad requests,
        burning the objective's budget at a page's rate."""
        objective = evidence.get("objective") or {}
        if (objective.get("bad") or 0) < max(1, self.min_bad_events):
            return False
        target = dict(self.objectives).get(objective.get("name") or "")
        if target is None:
            return True  # an objective this guard was not told of: the count decides
        return float(objective.get("bad_ratio") or 0.0) >= self.page_burn * (1 - target) - 1e-9

    def _closed(self, c: Containment) -> int | None:
        """The incident of ``c``'s alert resolved since it was engaged, if any (a pinned
        limit is a person's, and stays)."""
        if self.incident_resolved is None or c.pinned or not c.alert:
            return None
        try:
            return self.incident_resolved(c.alert, c.since)
        except Exception as e:
            swallow("guard.incident", e)
            return None

    def _missed(self, store: t.Any, endpoint: str, bucket: float, width: float) -> list[str]:
        """The objectives the rest of the app (every endpoint but ``endpoint``) missed in
        the last two whole buckets, in words (``"latency 92.9% (objective 99.0%)"``)."""
        missed = []
        for name, target in self.objectives:
            rows = store.slo_endpoints(name, bucket - 2 * width - 1, bucket - 1, 1000)
            events = sum(n for ep, n, _ in rows if ep != endpoint)
            bad = sum(b for ep, _, b in rows if ep != endpoint)
            if events and (events - bad) / events < target:
                missed.append(f"{name} {(events - bad) / events:.1%} (objective {target:.1%})")
        return missed

    def _status(self, shed: float | None, missed: t.Sequence[str]) -> str:
        """``"; 38% of its requests shed; the rest of the app is within its objectives"``
        (each part only when it is known)."""
        parts = []
        if shed is not None:
            verb = "shed" if self.policy.mode == "enforce" else "would have been shed"
            parts.append(f"{shed:.0%} of its requests {verb}")
        if self.objectives:
            parts.append(
                "outside it, " + ", ".join(missed)
                if missed
                else "the rest of the app is within its objectives"
            )
        return "".join(f"; {p}" for p in parts)

    def _shed_since(self, route: str, mode: str) -> tuple[float | None, float]:
        """The share of ``route``'s requests this process shed (or, in shadow mode, would
        have) since the last round, and the share of its arrivals that were retries of
        shed ones (left out of the first: a client that retries is turned away once, not
        at each try); (None, 0) under :data:`_MIN_ARRIVALS`. The lease holder's shares
        stand for every process's: a load balancer spreads an endpoint's requests
        evenly."""
        bulkhead = self.bulkheads.get(route)
        if bulkhead is None:
            return None, 0.0
        enforce = mode == "enforce"
        now = (
            bulkhead.arrived,
            bulkhead.shed if enforce else bulkhead.would_shed,
            bulkhead.retried if enforce else 0,
            bulkhead.shed_retried if enforce else 0,
        )
        before = self._counted.get(route)
        if before is None or before[0] > now[0]:
            self._counted[route] = now
            return None, 0.0
        arrived, shed, retried, shed_retried = (a - b for a, b in zip(now, before, strict=True))
        if arrived - retried < _MIN_ARRIVALS:
            return None, 0.0
        self._counted[route] = now
        return (shed - shed_retried) / (arrived - retried), retried / arrived

    def _tell(self, new: list[tuple[str, str, float, int]]) -> None:
        """Hand each event to the alert's incident; one whose incident is not open yet
        (the incident worker opens it within its interval) is tried again next rounds."""
        if self.on_event is None:
            return
        untold = []
        for key, text, at, tries in self._untold + new:
            try:
                done = self.on_event(key, text, at)
            except Exception as e:
                swallow("guard.tell", e)
                done = False
            if not done and tries < _MAX_TRIES:
                untold.append((key, text, at, tries + 1))
        self._untold = untold[-_MAX_JUDGED:]

    def apply(self, state: t.Mapping[str, Containment]) -> None:
        """Put each contained endpoint under its limit (enforce) or count what it would
        shed (shadow), and lift the others, in this process."""
        for route, c in state.items():
            rule = self.config.endpoints.get(route)
            static = rule.max_concurrent if rule is not None else None
            bulkhead = self.bulkheads.get(route)
            if bulkhead is None:
                bulkhead = Bulkhead(route, UNLIMITED, CONTAIN_WAIT_MS)
            if c.mode == "enforce":
                bulkhead.set_limit(min(c.limit, static) if static else c.limit)
            else:
                bulkhead.set_limit(static or UNLIMITED, shadow=c.limit)
            self.bulkheads[route] = bulkhead
        self._serial = {
            route: Budget(
                route,
                self.config.statement_timeout(_rule(route)),
                self.cancellations,
                serial=True,
            )
            for route, c in state.items()
            if c.mode == "enforce"
        }
        for route in set(self.contained) - set(state):
            self._counted.pop(route, None)
            rule = self.config.endpoints.get(route)
            if rule is not None and rule.max_concurrent is not None:
                self.bulkheads[route].set_limit(rule.max_concurrent)
            else:
                # A request still holding a permit gives it back to the object it holds.
                self.bulkheads.pop(route, None)
        self.contained = dict(state)

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
        from prometheus_client.core import GaugeMetricFamily

        fam = CounterMetricFamily(
            "querywatch_guard_statements_cancelled",
            "Statements cancelled by their endpoint's statement budget (QUERYWATCH_GUARD).",
            labels=["http_request_method", "http_route", "db_query_shape"],
        )
        # Each bulkhead's figures, one family each: (name, kind, help, attribute).
        families = (
            (
                "querywatch_guard_limit",
                GaugeMetricFamily,
                "Requests of the endpoint allowed at once.",
                "limit",
            ),
            (
                "querywatch_guard_in_flight",
                GaugeMetricFamily,
                "Requests of the endpoint holding a permit.",
                "in_flight",
            ),
            (
                "querywatch_guard_waited",
                CounterMetricFamily,
                "Requests that found the endpoint at its limit and waited.",
                "waited",
            ),
            (
                "querywatch_guard_shed",
                CounterMetricFamily,
                "Requests answered 503 by the endpoint's bulkhead.",
                "shed",
            ),
            (
                "querywatch_guard_would_shed",
                CounterMetricFamily,
                "Requests containment in shadow mode would have shed (admitted).",
                "would_shed",
            ),
        )
        bulkheads = sorted(list(self.bulkheads.items()))
        for name, kind, doc, attr in families:
            family = kind(name, doc, labels=["http_request_method", "http_route"])
            for route, bulkhead in bulkheads:
                if attr == "limit" and bulkhead.limit >= UNLIMITED:
                    continue  # shadow only: no limit is enforced
                family.add_metric(list(_method_route(route)), getattr(bulkhead, attr))
            yield family
        for (route, shape), n in sorted(self.cancellations.snapshot().items()):
            fam.add_metric([*_method_route(route), shape], n)
        yield fam


def _lifted(
    store: t.Any,
    c: Containment,
    firing: t.Mapping[str, t.Any],
    now: float,
    lifted_alerts: dict[str, float],
    lifted_since: dict[str, float],
) -> None:
    """Remember that ``c`` lifted at ``now``. While its page (or another) still fires,
    their evidence still holds the bad requests of before the fix (or of before a
    person's call), and would engage it again."""
    remember_lift(store, c.endpoint, now)
    lifted_since[c.endpoint] = now
    if c.alert in firing:
        remember_lifted(store, c.alert, firing[c.alert].since)
        lifted_alerts[c.alert] = firing[c.alert].since


def _app_share(shed: float, retried: float, requests: int, everyone: int) -> float:
    """The share of the app's requests a limit sheds: ``shed`` of the endpoint's
    ``requests`` (of the app's ``everyone``), where ``retried`` of them were retries of
    shed requests, counted in neither."""
    first = requests * (1 - retried)
    return shed * first / max(1.0, everyone - requests + first)


def _method_route(route: str) -> tuple[str, str]:
    """``("GET", "/api/orders")`` of ``"GET /api/orders"``."""
    if route == OTHER:
        return "_OTHER", OTHER
    method, _, path = route.partition(" ")
    return method, path


def _rule(route: str) -> str:
    """The endpoint whose rules a request follows: a HEAD runs the GET view (Flask's),
    so it is held to the GET's budget and bulkhead."""
    return "GET " + route[5:] if route.startswith("HEAD ") else route
