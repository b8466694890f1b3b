"""Statement budgets: each statement of a guarded endpoint may run so long, enforced by the
database's own mechanism, and a statement cancelled for it is counted by route and shape.

- PostgreSQL: ``SET LOCAL statement_timeout`` as the transaction's first statement. It
  ends with the transaction, so it is safe behind PgBouncer in transaction mode and
  never reaches another request. A connection in autocommit has no transaction to scope
  it to: its statements are not budgeted (logged once).
- MariaDB: the session's ``max_statement_time``; MySQL: ``max_execution_time`` (which
  MySQL applies to SELECTs only). Set when a guarded request's statement needs another
  value than the connection has, and set back to the server's default when the
  connection returns to the pool.
- SQLite: a progress handler on the connection that interrupts a statement past its
  deadline, which each guarded statement sets; cleared when the connection returns to
  the pool.

The cancelled statement raises what the driver raises for it (``QueryCanceled``,
``OperationalError``...), wrapped by SQLAlchemy as usual: the app's own error handling
sees a database error, as it would for any other.
"""

from __future__ import annotations

import math
import threading
import typing as t
from time import perf_counter

from .._failopen import log_limited

#: Where a connection remembers what the guard set on it (the pool record's ``info``).
_APPLIED = "querywatch.guard.budget"
#: The attribute of a SQLAlchemy ``Connection`` (one checkout) that holds the budget its
#: current PostgreSQL transaction was given.
_PG_ATTR = "_querywatch_budget"
#: Routes and shapes counted apart; the rest are counted under "other".
MAX_SERIES = 1_000
OTHER = "other"
#: SQLite calls the progress handler every this many virtual machine instructions.
SQLITE_PROGRESS_STEPS = 1_000


def is_cancelled(exc: BaseException) -> bool:
    """Whether a driver's exception is a statement cancelled by its time budget."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if code == "57014":  # PostgreSQL: query_canceled
        return True
    args = getattr(exc, "args", ())
    if args and args[0] in (1969, 3024):  # MariaDB's and MySQL's statement time limits
        return True
    return type(exc).__module__ == "sqlite3" and str(exc) == "interrupted"


class Cancellations:
    """Statements cancelled by a budget, by route and shape (bounded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, route: str, shape: str) -> None:
        key = (route, shape)
        with self._lock:
            if key not in self.counts and len(self.counts) >= MAX_SERIES:
                key = (OTHER, OTHER)
            self.counts[key] = self.counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.counts)


class Budget:
    """One endpoint's statement budget, handed to capture on each of its records: capture
    calls :meth:`apply` before each statement and :meth:`failed` when one fails."""

    __slots__ = ("route", "ms", "seconds", "cancellations")

    def __init__(self, route: str, ms: int, cancellations: Cancellations) -> None:
        self.route = route
        self.ms = ms
        self.seconds = ms / 1000.0
        self.cancellations = cancellations

    def apply(self, cursor: t.Any, context: t.Any) -> None:
        applier = _APPLIERS.get(context.dialect.name)
        if applier is None:
            log_limited(
                "guard.dialect",
                "querywatch's statement budgets do not support %s: its statements run without one.",
                context.dialect.name,
            )
            return
        applier(self, cursor, context)

    def failed(self, shape: str, exc: BaseException) -> None:
        if is_cancelled(exc):
            self.cancellations.add(self.route, shape)


def _postgresql(budget: Budget, cursor: t.Any, context: t.Any) -> None:
    dbapi = cursor.connection
    if getattr(dbapi, "autocommit", False):
        log_limited(
            "guard.autocommit",
            "querywatch's statement budget is not applied on a PostgreSQL connection in"
            " autocommit: SET LOCAL needs a transaction to end with.",
        )
        return
    info = getattr(dbapi, "info", None)
    if info is not None and hasattr(info, "transaction_status"):  # psycopg 3
        idle = info.transaction_status == 0
    else:  # psycopg2
        idle = dbapi.get_transaction_status() == 0
    conn = context.root_connection
    # Idle: this statement opens the transaction, so the budget goes first. In one,
    # it was set already if this checkout's guarded statement opened it.
    if idle or getattr(conn, _PG_ATTR, None) != budget.ms:
        cursor.execute(f"SET LOCAL statement_timeout = {budget.ms}")
        setattr(conn, _PG_ATTR, budget.ms)


def _mysql(budget: Budget, cursor: t.Any, context: t.Any) -> None:
    info = context.root_connection.connection.info
    applied = info.get(_APPLIED)
    if applied is not None and applied[0] == budget.ms:
        return
    if context.dialect.is_mariadb:
        var, value = "max_statement_time", repr(budget.seconds)
    else:
        var, value = "max_execution_time", str(budget.ms)
    cursor.execute(f"SET SESSION {var} = {value}")
    info[_APPLIED] = (budget.ms, var)


def _sqlite(budget: Budget, cursor: t.Any, context: t.Any) -> None:
    info = context.root_connection.connection.info
    deadline = info.get(_APPLIED)
    if deadline is None:
        deadline = info[_APPLIED] = [math.inf]

        def progress() -> int:
            return 1 if perf_counter() > deadline[0] else 0

        cursor.connection.set_progress_handler(progress, SQLITE_PROGRESS_STEPS)
    deadline[0] = perf_counter() + budget.seconds


_APPLIERS: dict[str, t.Callable[[Budget, t.Any, t.Any], None]] = {
    "postgresql": _postgresql,
    "mysql": _mysql,
    "mariadb": _mysql,
    "sqlite": _sqlite,
}


def _checkin(dbapi_connection: t.Any, record: t.Any) -> None:
    """A connection back in the pool: what the guard set on its session is undone."""
    info = record.info if record is not None else None
    if not info or _APPLIED not in info:
        return
    try:
        applied = info[_APPLIED]
        if isinstance(applied, list):  # SQLite's deadline
            applied[0] = math.inf
            return
        del info[_APPLIED]
        if dbapi_connection is not None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"SET SESSION {applied[1]} = DEFAULT")
            finally:
                cursor.close()
    except Exception as e:
        # The pool resets the connection next; one left with a budget would cancel an
        # unguarded statement, so it is dropped instead of reused.
        record.invalidate(e)
        log_limited("guard.checkin", "querywatch could not undo a statement budget: %r", e)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Listen for connections returning to any pool, once per process (a pool event: the
    statements' fast path is left alone)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        event.listen(Pool, "checkin", _checkin)
        _installed = True
