"""The guard's configuration (``QUERYWATCH_GUARD``): a dict, or the path of a TOML file
of the same shape, read and checked once at start-up like the escalation policy::

    statement_timeout_ms = 5000            # every endpoint's statements, by default

    [endpoints."GET /api/orders/lookup"]
    statement_timeout_ms = 200             # this endpoint's

    [endpoints."GET /api/export"]
    statement_timeout_ms = 0               # none for this one

An endpoint is named as querywatch names it everywhere else (the dashboard, the
metrics' ``http_route``): the method, a space and the app's URL rule.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing as t
from types import MappingProxyType

from ..exceptions import GuardConfigError

#: ``"GET /api/orders/<int:id>"``: a method and a URL rule.
_ENDPOINT = re.compile(r"^[A-Z]+ /\S*$")
_TOP_KEYS = ("statement_timeout_ms", "endpoints", "containment", "culprit_share", "max_shed_share")
_ENDPOINT_KEYS = ("statement_timeout_ms", "max_concurrent", "max_wait_ms", "never_shed")
_MODES = ("off", "shadow", "enforce")
#: How long a request waits for a bulkhead's permit, unless its endpoint says.
DEFAULT_MAX_WAIT_MS = 100


@dataclasses.dataclass(frozen=True)
class EndpointRule:
    """What the guard does for one endpoint."""

    #: Each statement's budget in milliseconds; 0 for none; ``None`` for the default.
    statement_timeout_ms: int | None = None
    #: The bulkhead: at most this many of the endpoint's requests at once (None: no
    #: limit); one more waits up to ``max_wait_ms``, then is answered 503.
    max_concurrent: int | None = None
    max_wait_ms: int = DEFAULT_MAX_WAIT_MS
    #: Never limited by containment (health checks, checkout).
    never_shed: bool = False


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    """The checked configuration."""

    #: Every endpoint's statement budget in milliseconds, unless its rule says otherwise
    #: (``None``: no budget).
    statement_timeout_ms: int | None = None
    endpoints: t.Mapping[str, EndpointRule] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    #: Automatic containment: ``off``, ``shadow`` (counts what it would shed) or
    #: ``enforce``; the share of bad requests that implicates one endpoint; the most of
    #: the app's traffic it may shed.
    containment: str = "shadow"
    culprit_share: float = 0.8
    max_shed_share: float = 0.3

    def statement_timeout(self, endpoint: str) -> int | None:
        """The budget of ``endpoint``'s statements in milliseconds, ``None`` for none."""
        rule = self.endpoints.get(endpoint)
        ms = rule.statement_timeout_ms if rule is not None else None
        if ms is None:
            ms = self.statement_timeout_ms
        return ms or None


def _milliseconds(field: str, value: t.Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise GuardConfigError(
            field,
            f"expected a whole number of milliseconds such as 200 (0 for none), got {value!r}.",
        )
    if value != int(value):
        raise GuardConfigError(
            field, f"expected a whole number of milliseconds such as 200, got {value!r}."
        )
    return int(value)


def _read_toml(path: str) -> t.Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise GuardConfigError(path, f"cannot be read ({e.strerror}).") from None
    except tomllib.TOMLDecodeError as e:
        raise GuardConfigError(path, f"is not valid TOML ({e}).") from None


def load_guard(value: t.Any) -> GuardConfig | None:
    """The configuration from a dict, a TOML file's path, or None (no guard)."""
    if value is None or value == "":
        return None
    if isinstance(value, GuardConfig):
        return value
    if isinstance(value, (str, os.PathLike)):
        value = _read_toml(os.fspath(value))
    if not isinstance(value, t.Mapping):
        raise GuardConfigError("(top)", f"expected a table (dict) or a TOML file, got {value!r}.")
    unknown = sorted(set(value) - set(_TOP_KEYS))
    if unknown:
        raise GuardConfigError(
            unknown[0], f"not a setting of the guard; they are {', '.join(_TOP_KEYS)}."
        )
    mode = value.get("containment", "shadow")
    if mode not in _MODES:
        raise GuardConfigError("containment", f"expected one of {', '.join(_MODES)}, got {mode!r}.")
    shares = {}
    for key, dflt in (("culprit_share", 0.8), ("max_shed_share", 0.3)):
        v = value.get(key, dflt)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise GuardConfigError(
                key, f"expected a share between 0 and 1 such as {dflt}, got {v!r}."
            )
        shares[key] = float(v)
    default = value.get("statement_timeout_ms")
    if default is not None:
        default = _milliseconds("statement_timeout_ms", default)
    raw = value.get("endpoints", {})
    if not isinstance(raw, t.Mapping):
        raise GuardConfigError("endpoints", f"expected a table of endpoints, got {raw!r}.")
    endpoints = {}
    for name, spec in raw.items():
        field = f"endpoints.{name!r}"
        if not isinstance(name, str) or not _ENDPOINT.match(name):
            raise GuardConfigError(
                field,
                "an endpoint is its method and URL rule, as the dashboard shows it, such as"
                " 'GET /api/orders/<int:id>'.",
            )
        if not isinstance(spec, t.Mapping):
            raise GuardConfigError(field, f"expected a table, got {spec!r}.")
        extra = sorted(set(spec) - set(_ENDPOINT_KEYS))
        if extra:
            raise GuardConfigError(
                f"{field}.{extra[0]}",
                f"not a setting of an endpoint; they are {', '.join(_ENDPOINT_KEYS)}.",
            )
        ms = spec.get("statement_timeout_ms")
        limit = spec.get("max_concurrent")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise GuardConfigError(
                f"{field}.max_concurrent",
                f"expected a whole number of requests of at least 1, such as 4, got {limit!r}.",
            )
        wait = spec.get("max_wait_ms")
        if wait is not None and limit is None:
            raise GuardConfigError(
                f"{field}.max_wait_ms",
                "is the wait for the bulkhead's permit: set max_concurrent with it.",
            )
        endpoints[name] = EndpointRule(
            statement_timeout_ms=None
            if ms is None
            else _milliseconds(f"{field}.statement_timeout_ms", ms),
            max_concurrent=limit,
            max_wait_ms=DEFAULT_MAX_WAIT_MS
            if wait is None
            else _milliseconds(f"{field}.max_wait_ms", wait),
            never_shed=_flag(f"{field}.never_shed", spec.get("never_shed", False)),
        )
    return GuardConfig(
        statement_timeout_ms=default,
        endpoints=MappingProxyType(endpoints),
        containment=mode,
        **shares,
    )


def _flag(field: str, value: t.Any) -> bool:
    if not isinstance(value, bool):
        raise GuardConfigError(field, f"expected true or false, got {value!r}.")
    return value
