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

This module holds the arithmetic; reading the windows' counts from the store, the lease
that makes one process evaluate, and the evidence an alert carries build on it.
"""

from __future__ import annotations

import dataclasses
import typing as t

__all__ = [
    "DEFAULT_POLICY",
    "BurnWindow",
    "Firing",
    "Objective",
    "WindowCounts",
    "burn_rate",
    "evaluate_objective",
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
    """

    name: str
    target: float
    kind: str = "availability"
    threshold_ms: float | None = None
    endpoint: str | None = None

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

    @property
    def budget(self) -> float:
        """The share of events allowed to be bad."""
        return 1.0 - self.target


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
) -> list[Firing]:
    """The conditions of ``policy`` that ``objective`` meets now.

    :param counts: events over the last ``seconds`` (the caller reads them from the
        store, where they are minute buckets).
    :param scale: multiplies every window (tests and the demo compress time).
    """
    out = []
    for window in policy:
        w = window.scaled(scale)
        long_burn = burn_rate(counts(w.long_seconds).error_ratio, objective)
        if long_burn < w.burn_rate - _EPSILON:
            continue
        short_burn = burn_rate(counts(w.short_seconds).error_ratio, objective)
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
    line gives objectives."""
    parts = spec.split(":")
    try:
        if parts[0] == "availability" and len(parts) == 2:
            return Objective("availability", float(parts[1]) / 100)
        if parts[0] == "latency" and len(parts) == 3:
            raw = parts[2].strip().lower()
            if raw.endswith("ms"):
                ms = float(raw[:-2])
            elif raw.endswith("s"):
                ms = float(raw[:-1]) * 1000
            else:
                ms = float(raw)
            return Objective(f"latency-{ms:g}ms", float(parts[1]) / 100, "latency", ms)
    except ValueError as e:
        if str(e).startswith("Objective"):
            raise
    msg = (
        f"An objective is 'availability:<percent>' or 'latency:<percent>:<threshold>',"
        f" such as availability:99.9 or latency:99:250ms, got {spec!r}."
    )
    raise ValueError(msg)


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
            total = f"sum by (job) (rate({_HTTP}_count[{span}]))"
            if o.kind == "availability":
                bad = (
                    f'sum by (job) (rate({_HTTP}_count{{http_response_status_code=~"5.."}}'
                    f"[{span}]))"
                )
            else:
                good = f'sum by (job) (rate({_HTTP}_bucket{{le="{le:g}"}}[{span}]))'
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
            sel = f'{{slo="{o.name}"}}'
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
