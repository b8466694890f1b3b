"""querywatch: keep one slow SQL query from taking a Flask application down."""

from __future__ import annotations

from .capture import CallSite
from .capture import QueryInfo
from .capture import Record
from .detectors import Finding
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
    "QueryInfo",
    "QueryWatch",
    "QueryWatchError",
    "Record",
    "cached_query",
    "fingerprint",
]
