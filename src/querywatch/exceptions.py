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
    ├── NotInitializedError (also a RuntimeError)
    │                                     no QueryWatch is registered on the current app
    ├── ObjectiveConfigError (ValueError) an objective's field is malformed
    ├── PolicyError (also a ValueError)   the escalation policy is malformed
    ├── GuardConfigError (ValueError)     the guard's configuration is malformed
    ├── BudgetError (also a ValueError)   a query budget is malformed
    ├── BaselineError (also a ValueError) a baseline file cannot be used
    ├── RequestsFileError (ValueError)    a requests file is malformed
    ├── IncidentError (also a ValueError) an incident action cannot be done
    ├── DeliveryError                     a notification was not delivered (retried)
    ├── BackendUnavailableError (RuntimeError)
    │                                     Redis is bypassed: the cache computes directly
    ├── StoreSlowError (RuntimeError)     the store did not answer a dashboard read
    └── DemoError                         a stage of ``querywatch demo`` did not happen

Errors inside querywatch's own machinery during a request are never raised to the
application: they are counted and logged (see ``querywatch._failopen``).
"""

from __future__ import annotations

import typing as t

__all__ = [
    "BackendUnavailableError",
    "BaselineError",
    "BudgetError",
    "CalmPaged",
    "CacheValueError",
    "ConfigError",
    "DeliveryError",
    "DemoError",
    "ExplainError",
    "GuardConfigError",
    "IncidentError",
    "NotInitializedError",
    "ObjectiveConfigError",
    "PolicyError",
    "QueryBudgetError",
    "QueryWatchError",
    "RequestsFileError",
    "SchemaVersionError",
    "StoreError",
    "StoreSlowError",
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
        #: The :class:`querywatch.ci.gate.Violation` objects behind the message.
        self.violations = violations or []


class RequestsFileError(QueryWatchError, ValueError):
    """A requests file is malformed; the message names the file, the entry and the
    problem."""


class IncidentError(QueryWatchError, ValueError):
    """An incident action that cannot be done (unknown id, wrong state); the message says
    why."""


class DeliveryError(QueryWatchError):
    """A notification could not be delivered (the worker retries it)."""


class PolicyError(QueryWatchError, ValueError):
    """The escalation policy is malformed; ``field`` names where (``levels[1].targets``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"Escalation policy, {field}: {problem}")


class GuardConfigError(QueryWatchError, ValueError):
    """The guard's configuration (``QUERYWATCH_GUARD``) is malformed; ``field`` names
    where (``endpoints."GET /api/orders".statement_timeout_ms``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"QUERYWATCH_GUARD, {field}: {problem}")


class BudgetError(QueryWatchError, ValueError):
    """A budget (``[tool.querywatch]``, a ``query_budget`` marker, a request file) is
    malformed; the message names where, the key and what it expects."""


class BaselineError(QueryWatchError, ValueError):
    """A baseline file cannot be used; the message names the file, the entry and what to
    do."""


class ObjectiveConfigError(QueryWatchError, ValueError):
    """A field of an objective is malformed: ``field`` names it (``[1].threshold_ms``,
    or ``""`` for the whole value), ``expected`` says what is accepted with an example,
    ``value`` is what was given."""

    def __init__(self, field: str, expected: str, value: t.Any) -> None:
        self.field = field
        self.expected = expected
        self.value = value
        super().__init__(f"{field or 'An objective'} must be {expected}, got {value!r}.")


class BackendUnavailableError(QueryWatchError, RuntimeError):
    """The result cache's backend (Redis) is bypassed after repeated failures: the call
    was not made. The cache computes directly; it never reaches the application."""


class StoreSlowError(QueryWatchError, RuntimeError):
    """The store did not answer a dashboard read within its timeout
    (``querywatch.dashboard.READ_TIMEOUT``)."""


class DemoError(QueryWatchError):
    """A stage of the replay did not happen in time; the message says which."""


class CalmPaged(DemoError):
    """A page fired in the replay's calm, before the onset: the machine stalled, or the
    shop is slower here than its objectives allow."""
