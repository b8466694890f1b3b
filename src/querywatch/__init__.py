"""querywatch: keep one slow SQL query from taking a Flask application down."""

from __future__ import annotations

import typing as t
import warnings

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
from .fingerprint import Fingerprint
from .fingerprint import fingerprint

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


def __getattr__(name: str) -> t.Any:
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
    return globals()[new]
