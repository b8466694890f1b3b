"""Service level objectives and multiwindow, multi-burn-rate alerts.

The method is the Google SRE workbook's ("Alerting on SLOs", its recommended
parameters): an alert fires when the error budget burns at least ``burn_rate`` times the
sustainable rate over a long window *and* over a short one. The long window makes the
alert significant (a share of the budget is really gone); the short one makes it stop
soon after the errors stop.

=========  ============  =============  ===========  =========================
severity   long window   short window   burn rate    budget spent when it fires
=========  ============  =============  ===========  =========================
page       1 h           5 min          14.4         2% of 30 days
page       6 h           30 min         6            5%
ticket     3 days        6 h            1            10%
=========  ============  =============  ===========  =========================

Windows scale by one factor (``scale``) so that tests and ``querywatch demo`` see an
hour in seconds. An objective's *bad events* are failed requests (availability: status
500 and over) or requests slower than its threshold (latency: "99% under 300 ms").

Each request is counted against the objectives when it is folded in (``qw_slo_stats``:
events and bad events per bucket, objective and endpoint), so evaluating is a few sums in
SQL. :class:`Evaluator` runs in the process holding the store's lease (the flusher thread
of one worker), adds the per-shape rules (a shape's p95 over a threshold, a new N+1 loop,
a new full scan), writes each state change to the store with its evidence
(:mod:`querywatch.evidence`) and logs it.
"""

from __future__ import annotations

import dataclasses
import math
import typing as t

from .exceptions import ConfigError
from .exceptions import ObjectiveConfigError
from .store import AlertChange
from .text import duration_text as _duration

if t.TYPE_CHECKING:
    from flask import Flask

    from .store import Store

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DEFAULT_POLICY",
    "AlertRules",
    "BurnWindow",
    "Evaluator",
    "Firing",
    "Objective",
    "WindowCounts",
    "burn_rate",
    "evaluate_objective",
    "parse_objectives",
]


@dataclasses.dataclass(frozen=True)
class BurnWindow:
    """One alerting condition: both windows burning at least ``burn_rate``."""

    severity: str
    long_seconds: float
    short_seconds: float
    burn_rate: float

    def scaled(self, scale: float) -> BurnWindow:
        """The same condition with windows ``scale`` times as long (1/3600: an hour
        in a second)."""
        return dataclasses.replace(
            self, long_seconds=self.long_seconds * scale, short_seconds=self.short_seconds * scale
        )

    @property
    def name(self) -> str:
        return f"{_span(self.long_seconds)}/{_span(self.short_seconds)}"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


#: The SRE workbook's recommended windows for a 30-day objective.
DEFAULT_POLICY: tuple[BurnWindow, ...] = (
    BurnWindow("page", 3600, 300, 14.4),
    BurnWindow("page", 6 * 3600, 1800, 6.0),
    BurnWindow("ticket", 3 * 86400, 6 * 3600, 1.0),
)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A service level objective.

    :param name: how alerts name it (``"availability"``, ``"checkout latency"``).
    :param target: the share of good events, such as ``0.999``.
    :param kind: ``"availability"`` (bad: status 500 and over) or ``"latency"`` (bad:
        slower than ``threshold_ms``).
    :param endpoint: only this endpoint (``"GET /api/orders/lookup"``); None: all.
    :param exclude: endpoints left out (those with an override of their own).
    """

    name: str
    target: float
    kind: str = "availability"
    threshold_ms: float | None = None
    endpoint: str | None = None
    exclude: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            msg = (
                f"Objective {self.name!r}: 'target' must be between 0 and 1 such as 0.999,"
                f" got {self.target!r}."
            )
            raise ValueError(msg)
        if self.kind not in ("availability", "latency"):
            msg = (
                f"Objective {self.name!r}: 'kind' must be 'availability' or 'latency',"
                f" got {self.kind!r}."
            )
            raise ValueError(msg)
        if self.kind == "latency" and (self.threshold_ms is None or self.threshold_ms <= 0):
            msg = (
                f"Objective {self.name!r}: a latency objective needs 'threshold_ms', such"
                f" as 300 for '99% under 300 ms', got {self.threshold_ms!r}."
            )
            raise ValueError(msg)

        if len(self.name) > 64:
            msg = f"Objective {self.name[:70]!r}...: a name has at most 64 characters."
            raise ValueError(msg)

    @property
    def budget(self) -> float:
        """The share of events allowed to be bad."""
        return 1.0 - self.target

    def applies_to(self, endpoint: str) -> bool:
        """Whether the objective counts requests of ``endpoint``."""
        if self.endpoint is not None:
            return endpoint == self.endpoint
        return endpoint not in self.exclude

    def is_bad(self, status: int, duration: float) -> bool:
        """Whether a request is a bad event: failed (availability) or slower than the
        threshold (latency)."""
        if self.kind == "availability":
            return status >= 500
        return duration * 1000.0 > t.cast("float", self.threshold_ms)

    def describe(self) -> str:
        """``"99.9% of requests succeed"``, ``"99% of requests under 300 ms"``."""
        where = f" of {self.endpoint}" if self.endpoint else ""
        pct = f"{self.target * 100:.6g}%"
        if self.kind == "availability":
            return f"{pct} of requests{where} succeed"
        return f"{pct} of requests{where} under {self.threshold_ms:g} ms"


@dataclasses.dataclass(frozen=True)
class WindowCounts:
    """Events in one window: all of them and the bad ones."""

    total: int
    bad: int

    @property
    def error_ratio(self) -> float:
        return self.bad / self.total if self.total else 0.0


def burn_rate(error_ratio: float, objective: Objective) -> float:
    """How many times faster than sustainable the budget burns: 1.0 spends exactly the
    whole budget over the objective's period."""
    return error_ratio / objective.budget


#: 1 - 0.999 is 0.0010000000000000009: a ratio exactly at a threshold still meets it.
_EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class Firing:
    """A condition met: which, and the burn rates that met it."""

    objective: str
    severity: str
    window: str
    burn_long: float
    burn_short: float
    threshold: float


def evaluate_objective(
    objective: Objective,
    counts: t.Callable[[float], WindowCounts],
    policy: t.Sequence[BurnWindow] = DEFAULT_POLICY,
    *,
    scale: float = 1.0,
    min_bad_events: int = 0,
) -> list[Firing]:
    """The conditions of ``policy`` that ``objective`` meets now.

    :param counts: events over the last ``seconds`` (the caller reads them from the
        store, where they are minute buckets).
    :param scale: multiplies every window (tests and the demo compress time).
    :param min_bad_events: a condition also needs this many bad events in its short
        window: against a 99.9% objective, one failed request among the few hundred of a
        quiet service's (or of a service's first seconds) burns at 14.4x, and pages
        nobody should get.
    """
    out = []
    for window in policy:
        w = window.scaled(scale)
        long_burn = burn_rate(counts(w.long_seconds).error_ratio, objective)
        if long_burn < w.burn_rate - _EPSILON:
            continue
        short = counts(w.short_seconds)
        if short.bad < min_bad_events:
            continue
        short_burn = burn_rate(short.error_ratio, objective)
        if short_burn < w.burn_rate - _EPSILON:
            continue
        out.append(
            Firing(objective.name, w.severity, window.name, long_burn, short_burn, w.burn_rate)
        )
    return out


# --- Prometheus rules -------------------------------------------------------------------

_HTTP = "http_server_request_duration_seconds"


def _window_expr(seconds: float) -> str:
    return _span(seconds)


def parse_objective(spec: str) -> Objective:
    """``availability:99.9`` or ``latency:99:250ms`` (or ``...:0.25s``), as the command
    line gives objectives. A malformed one raises :class:`ObjectiveConfigError`, which
    says which part is wrong in the units it is written in."""
    form = "'availability:<percent>' or 'latency:<percent>:<threshold>'"
    example = "such as 'availability:99.9' or 'latency:99:300ms'"
    parts = spec.split(":") if isinstance(spec, str) else []
    if not (
        (len(parts) == 2 and parts[0] == "availability")
        or (len(parts) == 3 and parts[0] == "latency")
    ):
        raise ObjectiveConfigError("", f"{form}, {example}", spec)
    try:
        percent = float(parts[1].strip().rstrip("%"))
    except ValueError:
        percent = math.nan
    if not 0 < percent < 100:
        raise ObjectiveConfigError(
            "", f"{form} with a percent between 0 and 100 (not {parts[1]!r}), {example}", spec
        )
    if parts[0] == "availability":
        return Objective("availability", percent / 100)
    raw = parts[2].strip().lower()
    try:
        if raw.endswith("ms"):
            ms = float(raw[:-2])
        elif raw.endswith("s"):
            ms = float(raw[:-1]) * 1000
        else:
            ms = float(raw)
    except ValueError:
        ms = math.nan
    if not ms > 0 or math.isinf(ms):
        raise ObjectiveConfigError(
            "",
            f"{form} with a threshold in ms or s greater than 0 (not {parts[2]!r}),"
            " such as 'latency:99:300ms' or 'latency:99:0.3s'",
            spec,
        )
    return Objective(f"latency-{ms:g}ms", percent / 100, "latency", ms)


def _route_matchers(endpoint: str) -> str:
    method, _, route = endpoint.partition(" ")
    return f'http_request_method="{method}", http_route="{_quote(route)}"'


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _matchers(o: Objective, *extra: str) -> str:
    parts = [*extra]
    if o.endpoint is not None:
        parts.append(_route_matchers(o.endpoint))
    return "{" + ", ".join(parts) + "}" if parts else ""


def _sum_rate(metric: str, matchers: str, span: str, o: Objective) -> str:
    """``sum by (job) (rate(...))`` of an objective's requests: its endpoint only, or
    every endpoint but those it leaves out (``unless`` on method and route)."""
    inner = f"rate({metric}{matchers}[{span}])"
    for ep in sorted(o.exclude):
        inner += (
            f" unless on (http_request_method, http_route) {_HTTP}_count{{{_route_matchers(ep)}}}"
        )
    return f"sum by (job) ({inner})"


def prometheus_rules(
    objectives: t.Sequence[Objective], policy: t.Sequence[BurnWindow] = DEFAULT_POLICY
) -> dict[str, t.Any]:
    """Recording and alerting rules (a Prometheus rule file's content) for the
    objectives, over the metrics querywatch exports: the same windows and burn rates as
    the in-process evaluation."""
    from .metrics import HTTP_BUCKETS

    windows = sorted({w for b in policy for w in (b.long_seconds, b.short_seconds)})
    recording = []
    alerting = []
    for o in objectives:
        if o.kind == "latency":
            assert o.threshold_ms is not None
            le = o.threshold_ms / 1000
            if le not in HTTP_BUCKETS:
                shown = ", ".join(f"{b * 1000:g}" for b in HTTP_BUCKETS)
                msg = (
                    f"Objective {o.name!r}: {o.threshold_ms:g} ms is not a bucket boundary of"
                    f" {_HTTP} ({shown} ms); Prometheus counts requests under a boundary"
                    " only: use the nearest one."
                )
                raise ValueError(msg)
        for w in windows:
            span = _window_expr(w)
            total = _sum_rate(f"{_HTTP}_count", _matchers(o), span, o)
            if o.kind == "availability":
                bad = _sum_rate(
                    f"{_HTTP}_count", _matchers(o, 'http_response_status_code=~"5.."'), span, o
                )
            else:
                good = _sum_rate(f"{_HTTP}_bucket", _matchers(o, f'le="{le:g}"'), span, o)
                bad = f"({total} - {good})"
            recording.append(
                {
                    "record": f"querywatch:slo_errors:ratio_rate{span}",
                    "expr": f"{bad} / {total}",
                    "labels": {"slo": o.name},
                }
            )
        for b in policy:
            long_s, short_s = _window_expr(b.long_seconds), _window_expr(b.short_seconds)
            factor = f"({b.burn_rate:g} * {o.budget:.6g})"
            sel = f'{{slo="{_quote(o.name)}"}}'
            alerting.append(
                {
                    "alert": "QuerywatchErrorBudgetBurn",
                    "expr": (
                        f"querywatch:slo_errors:ratio_rate{long_s}{sel} > {factor}"
                        f" and querywatch:slo_errors:ratio_rate{short_s}{sel} > {factor}"
                    ),
                    "labels": {"severity": b.severity, "slo": o.name, "window": b.name},
                    "annotations": {
                        "summary": (
                            f"{o.name}: the error budget burns {b.burn_rate:g}x faster than"
                            f" sustainable over {long_s} and {short_s}"
                        ),
                        "description": (
                            "Run `querywatch report --since "
                            f"{long_s}` on the service: it names the query shape and endpoint"
                            " that take the time, and whether traffic rose."
                        ),
                    },
                }
            )
    return {
        "groups": [
            {"name": "querywatch-slo-recording", "rules": recording},
            {"name": "querywatch-slo-alerts", "rules": alerting},
        ]
    }


# --- objectives from configuration ---------------------------------------------------------

#: Used when the app sets no ``QUERYWATCH_OBJECTIVES``: 99.9% of requests succeed, 99%
#: finish within a second (a bucket boundary, so the Prometheus export works as is).
DEFAULT_OBJECTIVES = (
    {"name": "availability", "target": 0.999},
    {"name": "latency", "target": 0.99, "threshold_ms": 1000},
)

_OBJECTIVE_FIELDS = ("name", "kind", "target", "threshold_ms", "endpoint", "overrides")


def _target(field: str, value: t.Any) -> float:
    expected = "a share of good requests between 0 and 1, such as 0.999 or '99.9%'"
    given = value
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ObjectiveConfigError(field, expected, given) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ObjectiveConfigError(field, expected, given)
    return float(value)


def _threshold(field: str, value: t.Any) -> float:
    expected = "a number of milliseconds greater than 0, such as 300"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ObjectiveConfigError(field, expected, value)
    return float(value)


def parse_objectives(value: t.Any) -> tuple[Objective, ...]:
    """Objectives from configuration: a list of :class:`Objective`, strings
    (``"availability:99.9"``, ``"latency:99:300ms"``) or dicts::

        {"name": "latency", "target": 0.99, "threshold_ms": 300,
         "overrides": {"GET /api/reports": {"threshold_ms": 2000},
                       "POST /api/import": None}}

    An override makes an objective of its own for that endpoint (named
    ``"latency GET /api/reports"``) and takes the endpoint out of the general one;
    ``None`` leaves the endpoint out altogether. Errors name the field."""
    if not isinstance(value, (list, tuple)):
        raise ObjectiveConfigError(
            "", "a list of objectives, such as ['availability:99.9', 'latency:99:300ms']", value
        )
    out: list[Objective] = []
    for i, item in enumerate(value):
        where = f"[{i}]"
        if isinstance(item, Objective):
            out.append(item)
            continue
        if isinstance(item, str):
            try:
                out.append(parse_objective(item))
            except ObjectiveConfigError as e:
                raise ObjectiveConfigError(where, e.expected, e.value) from None
            continue
        if not isinstance(item, dict):
            raise ObjectiveConfigError(
                where,
                "a string, a dict or an Objective, such as 'latency:99:300ms' or"
                " {'name': 'latency', 'target': 0.99, 'threshold_ms': 300}",
                item,
            )
        unknown = sorted(map(str, set(item) - set(_OBJECTIVE_FIELDS)))
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], _OBJECTIVE_FIELDS, n=1)
            hint = f": did you mean {close[0]!r}?" if close else ""
            raise ObjectiveConfigError(
                where,
                f"a dict of {', '.join(_OBJECTIVE_FIELDS)} (not {unknown[0]!r}{hint}), such as"
                " {'name': 'latency', 'target': 0.99, 'threshold_ms': 300}",
                item,
            )
        name = item.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 48:
            raise ObjectiveConfigError(
                f"{where}.name", "a name of 1 to 48 characters, such as 'latency'", name
            )
        kind = item.get("kind", "latency" if "threshold_ms" in item else "availability")
        if kind not in ("availability", "latency"):
            raise ObjectiveConfigError(
                f"{where}.kind", "'availability' or 'latency', such as 'latency'", kind
            )
        target = _target(f"{where}.target", item.get("target"))
        threshold = None
        if kind == "latency":
            threshold = _threshold(f"{where}.threshold_ms", item.get("threshold_ms"))
        endpoint = item.get("endpoint")
        if endpoint is not None and not isinstance(endpoint, str):
            raise ObjectiveConfigError(
                f"{where}.endpoint", "an endpoint, such as 'GET /api/orders'", endpoint
            )
        overrides = item.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ObjectiveConfigError(
                f"{where}.overrides",
                "a dict of endpoints to a dict of target and threshold_ms or None, such as"
                " {'GET /api/reports': {'threshold_ms': 2000}}",
                overrides,
            )
        excluded = []
        for ep, spec in overrides.items():
            field = f"{where}.overrides[{ep!r}]"
            if not isinstance(ep, str) or " " not in ep:
                raise ObjectiveConfigError(
                    f"{where}.overrides",
                    "keyed by endpoints (a method, a space and a route), such as"
                    " 'GET /api/reports'",
                    ep,
                )
            excluded.append(ep)
            if spec is None:
                continue
            if not isinstance(spec, dict) or set(spec) - {"target", "threshold_ms"}:
                raise ObjectiveConfigError(
                    field,
                    "a dict of target and threshold_ms or None, such as {'threshold_ms': 2000}",
                    spec,
                )
            out.append(
                Objective(
                    f"{name} {ep}"[:64],
                    _target(f"{field}.target", spec.get("target", target)),
                    kind,
                    _threshold(f"{field}.threshold_ms", spec.get("threshold_ms", threshold))
                    if kind == "latency"
                    else None,
                    endpoint=ep,
                )
            )
        out.append(Objective(name, target, kind, threshold, endpoint, frozenset(excluded)))
    names = [o.name for o in out]
    for n in names:
        if names.count(n) > 1:
            raise ObjectiveConfigError(
                "",
                f"a list of objectives with distinct names (two are named {n!r}), such as"
                " ['availability:99.9', 'latency:99:300ms']",
                list(value),
            )
    return tuple(out)


def objectives_setting(app: Flask) -> tuple[Objective, ...]:
    """``QUERYWATCH_OBJECTIVES`` of ``app`` (the defaults written back when unset); a
    malformed one raises :class:`~querywatch.exceptions.ConfigError` naming the field."""
    key = "QUERYWATCH_OBJECTIVES"
    value = app.config.setdefault(key, [dict(o) for o in DEFAULT_OBJECTIVES])
    if value is None:
        return ()
    try:
        return parse_objectives(value)
    except ObjectiveConfigError as e:
        raise ConfigError(f"{key}{e.field}", e.expected, e.value) from None


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
            )
            pending.append(
                AlertChange(
                    key, kind, severity, "firing", now, f"{headline} {ev['hypothesis']}", ev
                )
            )
        for key, old in sorted(states.items()):
            if old.state != "firing" or key in wanted:
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


def _log_change(change: AlertChange) -> None:
    import logging

    log = logging.getLogger("querywatch.alerts")
    if change.state == "firing":
        log.warning(
            "querywatch alert firing [%s] %s: %s", change.severity, change.key, change.summary
        )
    else:
        log.info("querywatch alert resolved [%s] %s", change.severity, change.key)
