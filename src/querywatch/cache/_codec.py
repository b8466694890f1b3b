"""How cached values are stored: tagged JSON that brings back the same types, or a pickle
signed with the app's secret."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import hmac
import json
import json.scanner
import pickle
import typing as t
import uuid

from ..exceptions import CacheValueError

if t.TYPE_CHECKING:
    pass


# --- values -------------------------------------------------------------------------------

#: Dataclass types this process has stored, by ``module:qualname``: only these are rebuilt
#: from a stored value (a foreign tag never names a class to instantiate).
_dataclasses: dict[str, type] = {}


def _default(o: t.Any) -> t.Any:
    if isinstance(o, dt.datetime):
        return {"__qw__": "datetime", "v": o.isoformat()}
    if isinstance(o, dt.date):
        return {"__qw__": "date", "v": o.isoformat()}
    if isinstance(o, dt.time):
        return {"__qw__": "time", "v": o.isoformat()}
    if isinstance(o, decimal.Decimal):
        return {"__qw__": "decimal", "v": str(o)}
    if isinstance(o, uuid.UUID):
        return {"__qw__": "uuid", "v": str(o)}
    if isinstance(o, (set, frozenset)):
        return {"__qw__": "set", "v": sorted(o, key=repr)}
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        cls = type(o)
        name = f"{cls.__module__}:{cls.__qualname__}"
        _dataclasses[name] = cls
        return {
            "__qw__": "dataclass",
            "t": name,
            "v": {f.name: getattr(o, f.name) for f in dataclasses.fields(o)},
        }
    mapping = getattr(o, "_mapping", None)  # a SQLAlchemy Row
    if mapping is not None and hasattr(o, "_fields"):
        return {"__qw__": "row", "v": dict(mapping)}
    if hasattr(o, "keys") and hasattr(o, "__getitem__"):  # RowMapping and friends
        return {k: o[k] for k in o.keys()}
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__qualname__)


def _hook(d: dict[str, t.Any]) -> t.Any:
    tag = d.get("__qw__")
    if tag is None:
        return d
    v = d["v"]
    if tag == "datetime":
        return dt.datetime.fromisoformat(v)
    if tag == "date":
        return dt.date.fromisoformat(v)
    if tag == "time":
        return dt.time.fromisoformat(v)
    if tag == "decimal":
        return decimal.Decimal(v)
    if tag == "uuid":
        return uuid.UUID(v)
    if tag == "set":
        return set(v)
    if tag == "row":
        return v
    if tag == "dataclass":
        cls = _dataclasses.get(d.get("t", ""))
        if cls is None:
            msg = f"stored dataclass {d.get('t')!r} is not one this process stores"
            raise ValueError(msg)
        return cls(**v)
    msg = f"unknown tag {tag!r}"
    raise ValueError(msg)


# One encoder and one decoder for the process: ``json.dumps(..., default=...)`` builds a
# new one at every call, which costs more than decoding a small value.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"))
_KEY_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), sort_keys=True)
_DECODER = json.JSONDecoder(object_hook=_hook)
# The C scanners behind those decoders: what they decode is ours, so the checks around
# them (encoding detection, trailing white space) are skipped.
_scan_plain: t.Any = json.scanner.make_scanner(t.cast("t.Any", json.JSONDecoder()))
_scan_tagged: t.Any = json.scanner.make_scanner(t.cast("t.Any", _DECODER))


def dumps(value: t.Any, *, name: str = "?", sign_with: bytes | None = None) -> bytes:
    """``value`` as JSON bytes; :class:`CacheValueError` names ``name`` and the type that
    JSON cannot hold. With ``sign_with``, a pickle signed with HMAC-SHA256 under that key
    instead (for values JSON cannot hold; never read back without a valid signature)."""
    if sign_with is not None:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            msg = f"The result of {name} cannot be pickled: {type(e).__name__}: {e}"
            raise CacheValueError(msg) from None
        return b"S" + hmac.new(sign_with, data, hashlib.sha256).digest() + data
    try:
        text = _ENCODER.encode(value)
        # "P": plain JSON, decoded at C speed; "T": holds tagged values (dates, ...).
        return (b"T" if '"__qw__"' in text else b"P") + text.encode()
    except (TypeError, ValueError) as e:
        kind = str(e) if isinstance(e, TypeError) and str(e) else type(value).__qualname__
        msg = (
            f"The result of {name} cannot be cached: a value of type {kind} has no JSON form."
            " Return dicts, lists, rows, dataclasses, dates or decimals, or convert it first."
        )
        raise CacheValueError(msg) from None


def loads(data: bytes, *, secret: bytes | None = None) -> t.Any:
    """A stored value back; raises ``ValueError`` on anything that is not one of ours (a
    pickle is unpickled only when its signature verifies under ``secret``)."""
    kind = data[:1]
    if kind == b"P":
        return _scan_plain(data[1:].decode(), 0)[0]
    if kind == b"T":
        return _scan_tagged(data[1:].decode(), 0)[0]
    if kind == b"S":
        mac, body = data[1:33], data[33:]
        if secret is None or not hmac.compare_digest(
            mac, hmac.new(secret, body, hashlib.sha256).digest()
        ):
            msg = "a pickled value whose signature does not verify"
            raise ValueError(msg)
        return pickle.loads(body)  # its signature verified above
    msg = "not a value this cache stored"
    raise ValueError(msg)
