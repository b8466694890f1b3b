"""Service level objectives, their error budgets' burn rates, and objectives read from
configuration (``QUERYWATCH_OBJECTIVES``, ``--objective``)."""

from __future__ import annotations

import dataclasses
import math
import typing as t

from ..exceptions import ConfigError
from ..exceptions import ObjectiveConfigError

if t.TYPE_CHECKING:
    from flask import Flask


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
