"""querywatch: keep one slow SQL query from taking a Flask application down."""

from __future__ import annotations

import typing as t
import warnings

# The function, eagerly: the submodule of the same name would otherwise shadow it once
# imported. It needs nothing but the standard library.
from .fingerprint import Fingerprint
from .fingerprint import fingerprint

if t.TYPE_CHECKING:
    from ._detectors import Finding
    from .capture import CallSite
    from .capture import QueryView
    from .capture import RecordView
    from .capture import ShapeView
    from .exceptions import CacheValueError
    from .exceptions import ConfigError
    from .exceptions import QueryWatchError
    from .extension import QueryWatch
    from .extension import cached_query

__all__ = [
    "CacheValueError",
    "CallSite",
    "ConfigError",
    "Finding",
    "Fingerprint",
    "QueryView",
    "QueryWatch",
    "QueryWatchError",
    "RecordView",
    "ShapeView",
    "cached_query",
    "fingerprint",
]

#: Names that were exported before the read-only views, and what replaced them.
_RENAMED = {"Record": "RecordView", "QueryInfo": "QueryView"}


#: Where each public name lives. Imported on first use (PEP 562): importing querywatch
#: imports neither Flask nor SQLAlchemy, so its entry points (``flask.commands``,
#: ``pytest11``) can say in one line why they are off on a stack it does not support,
#: instead of breaking the app's ``flask`` and ``pytest``.
_EXPORTS = {
    "Finding": "._detectors",
    "CallSite": ".capture",
    "QueryView": ".capture",
    "RecordView": ".capture",
    "ShapeView": ".capture",
    "CacheValueError": ".exceptions",
    "ConfigError": ".exceptions",
    "QueryWatchError": ".exceptions",
    "QueryWatch": ".extension",
    "cached_query": ".extension",
}


def __getattr__(name: str) -> t.Any:
    where = _EXPORTS.get(name)
    if where is not None:
        import importlib

        value = getattr(importlib.import_module(where, __name__), name)
        globals()[name] = value
        return value
    new = _RENAMED.get(name)
    if new is None:
        msg = f"module 'querywatch' has no attribute {name!r}"
        raise AttributeError(msg)
    warnings.warn(
        f"'querywatch.{name}' is now the read-only 'querywatch.{new}'; import that"
        " instead. The old name goes in the next minor release.",
        DeprecationWarning,
        stacklevel=2,
    )
    return __getattr__(new)
