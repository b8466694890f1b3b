"""Alerts evaluated over the store: the burn rates and per-shape rules, each state change
written with its evidence and logged."""

from __future__ import annotations

import dataclasses
import typing as t

from .._failopen import swallow
from .._text import duration_text as _duration
from ..store import AlertChange
from .objectives import DEFAULT_POLICY
from .objectives import BurnWindow
from .objectives import Objective
from .objectives import WindowCounts
from .objectives import evaluate_objective

if t.TYPE_CHECKING:
    from ..store import Store


# --- evaluation over the store ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AlertRules:
    """What one evaluation checks.

    :param objectives: the service level objectives (burn-rate alerts, ``slo:…``).
    :param scale: multiplies every window (1/60: an hour in a minute).
    :param shape_p95_ms: a query shape whose p95 within an endpoint exceeds this over the
        short window (5 minutes, scaled) alerts (``shape_p95:…``); None: off.
    :param shape_min_calls: ... given at least this many calls in the window.
    :param new_n_plus_one: an N+1 loop first seen since alerting began (``n_plus_one:…``).
    :param new_full_scan: a full scan the advisor found since then (``full_scan:…``).
    :param bucket_seconds: the store's bucket width.
    :param min_bad_events: a burn-rate alert needs this many bad events in its short
        window.
    :param trace_url: links the evidence's traced shapes to their traces.
    """

    objectives: tuple[Objective, ...]
    policy: tuple[BurnWindow, ...] = DEFAULT_POLICY
    scale: float = 1.0
    shape_p95_ms: float | None = 1000.0
    shape_min_calls: int = 20
    new_n_plus_one: bool = True
    new_full_scan: bool = True
    bucket_seconds: int = 60
    min_bad_events: int = 0
    #: ``QUERYWATCH_TRACE_URL``: the evidence links each traced shape to its trace.
    trace_url: str | None = None

    @property
    def shape_window(self) -> float:
        """The window of the per-shape rules: 5 minutes, scaled."""
        return 300.0 * self.scale

    @property
    def evidence_window(self) -> float:
        """Every alert's evidence compares the last 5 minutes (scaled)..."""
        return 300.0 * self.scale

    @property
    def evidence_gap(self) -> float:
        """... with 5 minutes an hour before (scaled): the 1h/5m pair's short window
        against the time just before its long window, when the objective still held.
        One reading serves every alert of an evaluation."""
        return 3300.0 * self.scale

    @property
    def finding_window(self) -> float:
        """A new finding's alert resolves when it was not seen for an hour, scaled."""
        return 3600.0 * self.scale


#: An alert that should be firing: kind, severity, headline, the evidence's window and
#: the gap before its comparison window, the objective's name.
_Wanted = tuple[str, str, str, float, float, str | None]

#: The name of the store lease the evaluating process holds.
LEASE = "alerts"
_SEVERITY_ORDER = {"page": 0, "ticket": 1}


class Evaluator:
    """Evaluates :class:`AlertRules` over a store, as exactly one process at a time.

    Each :meth:`run` takes (or renews) the store's lease; a process that does not hold it
    does nothing. Firing and resolving are written to the store (``qw_alerts``, and each
    change to ``qw_alert_events``) in one transaction that checks the current state, so a
    change is recorded once even if two evaluators overlapped.
    """

    def __init__(self, store: Store, rules: AlertRules, *, holder: str | None = None) -> None:
        self.store = store
        self.rules = rules
        self._holder = holder
        self._holder_pid = 0
        #: Changes this evaluator wrote (bounded), newest last.
        self.changes: list[AlertChange] = []
        #: The firing alerts held open, each with why (``{key: "the guard limits GET
        #: /api/orders/lookup"}``): a page whose objective holds again only because the
        #: guard limits its culprit does not resolve until the limit lifts (after a fix),
        #: or its incident resolves and a person lifts it. The extension hands it over.
        self.holds: t.Callable[[], t.Mapping[str, str]] | None = None
        #: The alerts held at the last evaluation (each said once).
        self.held: dict[str, str] = {}

    @property
    def holder(self) -> str:
        """Who holds the lease: host, process and a random part (new in a forked child)."""
        import os
        import socket
        import uuid

        if self._holder is not None:
            return self._holder
        pid = os.getpid()
        if self._holder_cache is None or self._holder_pid != pid:
            self._holder_pid = pid
            self._holder_cache = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"
        return self._holder_cache

    _holder_cache: str | None = None

    def run(
        self, now: float | None = None, *, lease_seconds: float = 90.0
    ) -> list[AlertChange] | None:
        """Evaluate if this process holds (or could take) the lease. Returns the state
        changes written, or None when another process holds the lease."""
        import time

        now = time.time() if now is None else now
        if not self.store.acquire_lease(LEASE, self.holder, now, lease_seconds):
            return None
        return self.evaluate(now)

    def evaluate(self, now: float) -> list[AlertChange]:
        """Compare what fires now with the stored states and write the changes."""
        from . import evidence

        rules = self.rules
        width = rules.bucket_seconds
        states = self.store.alert_states()
        # key -> (kind, severity, headline, evidence span, gap before it, objective)
        wanted: dict[str, _Wanted] = {}
        for key, value in self._slo(now).items():
            wanted[key] = value
        if rules.shape_p95_ms is not None:
            wanted.update(self._shapes(now))
        kinds = []
        if rules.new_n_plus_one:
            kinds.append("n_plus_one")
        if rules.new_full_scan:
            kinds.append("full_scan")
        if kinds:
            since = float(self.store.meta_value("alerts_since", repr(now)) or now)
            for f in self.store.new_findings(kinds, since):
                if f.last_seen < now - rules.finding_window:
                    continue
                what = "N+1 loop" if f.kind == "n_plus_one" else "full scan"
                fix = f.fix.splitlines()[0] if f.fix else ""
                headline = f"New {what} in {f.endpoint}." + (f" Fix: {fix}" if fix else "")
                headline += "" if headline.endswith(".") else "."
                wanted[f"{f.kind}:{f.endpoint}:{f.fingerprint}"] = (
                    f.kind,
                    "ticket",
                    headline,
                    rules.evidence_window,
                    rules.evidence_gap,
                    None,
                )
        pending: list[AlertChange] = []
        memo: dict[t.Any, dict[str, t.Any]] = {}
        for key, (kind, severity, headline, span, gap, objective) in sorted(wanted.items()):
            old = states.get(key)
            if old is not None and old.state == "firing":
                continue
            ev = evidence.gather(
                self.store,
                now,
                max(span, width),
                width=width,
                gap=gap,
                objective=objective,
                memo=memo,
                trace_url=rules.trace_url,
            )
            pending.append(
                AlertChange(
                    key, kind, severity, "firing", now, f"{headline} {ev['hypothesis']}", ev
                )
            )
        ending = [k for k, a in states.items() if a.state == "firing" and k not in wanted]
        held = self._holds() if ending else {}
        for key in sorted(held.keys() & set(ending) - self.held.keys()):
            _log_held(key, held[key])
        self.held = {k: held[k] for k in ending if k in held}
        for key, old in sorted(states.items()):
            if old.state != "firing" or key in wanted or key in held:
                continue
            lasted = now - old.since
            pending.append(
                AlertChange(
                    key,
                    old.kind,
                    old.severity,
                    "resolved",
                    now,
                    f"Resolved after {_duration(lasted)}: {old.summary}",
                    old.evidence,
                )
            )
        # Every change of this evaluation in one transaction (one commit).
        out = self.store.set_alert_states(pending)
        for change in out:
            _log_change(change)
        self.changes.extend(out)
        del self.changes[:-1000]
        return out

    def _holds(self) -> t.Mapping[str, str]:
        """The alerts held firing; none when that cannot be read (fails open: the
        alert resolves as its objective says)."""
        if self.holds is None:
            return {}
        try:
            return self.holds()
        except Exception as e:
            swallow("alerts.holds", e)
            return {}

    def _slo(self, now: float) -> dict[str, _Wanted]:
        rules = self.rules
        if not rules.objectives:
            return {}
        scaled = [w.scaled(rules.scale) for w in rules.policy]
        spans = sorted({s for w in scaled for s in (w.long_seconds, w.short_seconds)})
        sums = self.store.slo_sums(
            [o.name for o in rules.objectives], spans, now, rules.bucket_seconds
        )
        out: dict[str, _Wanted] = {}
        for o in rules.objectives:
            by_span = dict(zip(spans, sums[o.name], strict=True))

            def counts(
                seconds: float, by_span: dict[float, tuple[int, int]] = by_span
            ) -> WindowCounts:
                return WindowCounts(*by_span[seconds])

            firings = evaluate_objective(
                o, counts, rules.policy, scale=rules.scale, min_bad_events=rules.min_bad_events
            )
            for severity in sorted(
                {f.severity for f in firings}, key=lambda s: _SEVERITY_ORDER.get(s, 9)
            ):
                worst = max(
                    (f for f in firings if f.severity == severity), key=lambda f: f.burn_short
                )
                headline = (
                    f"SLO {o.name} ({o.describe()}): the error budget burns"
                    f" {worst.burn_long:.1f}x faster than sustainable over {worst.window}"
                    f" ({severity})."
                )
                out[f"slo:{o.name}:{severity}"] = (
                    "slo",
                    severity,
                    headline,
                    rules.evidence_window,
                    rules.evidence_gap,
                    o.name,
                )
        return out

    def _shapes(self, now: float) -> dict[str, _Wanted]:
        from . import evidence

        rules = self.rules
        assert rules.shape_p95_ms is not None
        threshold = rules.shape_p95_ms / 1000.0
        span = max(rules.shape_window, rules.bucket_seconds)
        _, _, start, end = evidence.windows(now, span, rules.bucket_seconds)
        out: dict[str, _Wanted] = {}
        for (endpoint, fp), agg in self.store.slow_shapes(start, end, threshold).items():
            if agg.calls < rules.shape_min_calls:
                continue
            p95 = agg.quantile(0.95)
            if p95 <= threshold:
                continue
            headline = (
                f"Query shape {fp} in {endpoint}: p95 {p95 * 1000:.0f} ms over"
                f" {agg.calls} calls, above {rules.shape_p95_ms:g} ms."
            )
            out[f"shape_p95:{endpoint}:{fp}"] = (
                "shape_p95",
                "ticket",
                headline,
                rules.evidence_window,
                rules.evidence_gap,
                None,
            )
        return out


def _log_held(key: str, why: str) -> None:
    import logging

    logging.getLogger("querywatch.alerts").info(
        "querywatch alert %s: its objective holds again, but only while %s; it stays"
        " firing until the limit lifts (after a fix)",
        key,
        why,
    )


def _log_change(change: AlertChange) -> None:
    import logging

    log = logging.getLogger("querywatch.alerts")
    if change.state == "firing":
        log.warning(
            "querywatch alert firing [%s] %s: %s", change.severity, change.key, change.summary
        )
    else:
        log.info("querywatch alert resolved [%s] %s", change.severity, change.key)
