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
