"""Public errors raised by querywatch.

The hierarchy::

    QueryWatchError
    ├── ConfigError (also a ValueError)   a ``QUERYWATCH_*`` value is malformed
    ├── StoreError                        the store could not be opened or migrated
    │   └── SchemaVersionError            the store was written by a newer querywatch
    ├── CacheValueError (also a TypeError) a cached function's result has no JSON form
    ├── QueryBudgetError (also an AssertionError)
    │                                     a test did more with the database than allowed
    ├── ExplainError                      a statement could not be explained
    │   └── UnsafeStatementError          it is not a read-only SELECT: never explained
    └── NotInitializedError (also a RuntimeError)
                                          no QueryWatch is registered on the current app

Errors inside querywatch's own machinery during a request are never raised to the
application: they are counted and logged (see ``querywatch._failopen``).
"""

from __future__ import annotations

import typing as t

__all__ = [
    "CacheValueError",
    "ConfigError",
    "ExplainError",
    "NotInitializedError",
    "QueryBudgetError",
    "QueryWatchError",
    "SchemaVersionError",
    "StoreError",
    "UnsafeStatementError",
]


class QueryWatchError(Exception):
    """Base class of every error querywatch raises on purpose."""


class ConfigError(QueryWatchError, ValueError):
    """A ``QUERYWATCH_*`` setting is malformed. The message names the key and what it
    expects."""

    def __init__(self, key: str, expected: str, value: t.Any) -> None:
        #: The key, with the place inside its value (``QUERYWATCH_OBJECTIVES[1].target``).
        self.key = key
        #: What is accepted, with one example (``"a number greater than 0, such as
        #: 100"``), in the words and units the key is written in.
        self.expected = expected
        #: What was given.
        self.value = value
        super().__init__(f"'{key}' must be {expected}, got {value!r}.")


class StoreError(QueryWatchError):
    """The store could not be opened or prepared."""


class SchemaVersionError(StoreError):
    """The store's schema is newer than this querywatch knows how to use."""


class NotInitializedError(QueryWatchError, RuntimeError):
    """No QueryWatch extension is registered on the current Flask app."""


class ExplainError(QueryWatchError):
    """A statement could not be explained (it does not parse, a table is missing, the
    database refused or timed out). The message says which and what to do."""


class UnsafeStatementError(ExplainError):
    """The statement is not one read-only ``SELECT``; querywatch never explains or runs
    it."""


class CacheValueError(QueryWatchError, TypeError):
    """A cached function returned a value the cache cannot store; the message names the
    function and the type."""


class QueryBudgetError(QueryWatchError, AssertionError):
    """A block of a test broke a query budget (``assert_max_queries``,
    ``assert_no_n_plus_one``, ...). The message lists each offending query shape, its
    count, where the application issued it and the fix."""

    def __init__(self, message: str, violations: list[t.Any] | None = None) -> None:
        super().__init__(message)
        #: The :class:`querywatch.gate.Violation` objects behind the message.
        self.violations = violations or []
