"""Statement budgets: each statement of a guarded endpoint may run so long, enforced by the
database's own mechanism, and a statement cancelled for it is counted by route and shape.

- PostgreSQL: ``SET LOCAL statement_timeout`` as the transaction's first statement. It
  ends with the transaction, so it is safe behind PgBouncer in transaction mode and
  never reaches another request. A connection in autocommit has no transaction to scope
  it to: its statements are not budgeted (logged once).
- MariaDB: the session's ``max_statement_time``; MySQL: ``max_execution_time`` (which
  MySQL applies to SELECTs only). Set when a guarded request's statement needs another
  value than the connection has, and set back to the server's default when the
  connection returns to the pool (a check-in listener on the pools a budget was set on).
- SQLite: a progress handler on the connection that interrupts a guarded statement past
  the deadline it set when it began.

The cancelled statement raises what the driver raises for it (``QueryCanceled``,
``OperationalError``...), wrapped by SQLAlchemy as usual: the app's own error handling
sees a database error, as it would for any other.
"""

from __future__ import annotations

import math
import threading
import typing as t
import weakref
from time import perf_counter

from .._failopen import log_limited
from .._failopen import record_internal_error
from ..capture import current_record

#: Where a connection remembers what the guard set on it (the pool record's ``info``).
_APPLIED = "querywatch.guard.budget"
#: The attribute of a SQLAlchemy ``Connection`` (one checkout) that holds the transaction
#: (a weak reference) a budget was set in, and the budget.
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
    calls :meth:`apply` before each statement and :meth:`failed` when one fails.

    ``ms`` is the statement timeout (None: none); ``serial`` runs the statements without
    parallel workers (PostgreSQL's ``max_parallel_workers_per_gather = 0``), as they run
    while containment limits the endpoint: a limit of N requests at once then holds its
    statements to N server processes, where each scan of a parallel plan takes three."""

    __slots__ = ("route", "ms", "seconds", "serial", "cancellations")

    def __init__(
        self, route: str, ms: int | None, cancellations: Cancellations, *, serial: bool = False
    ) -> None:
        self.route = route
        self.ms = ms
        self.seconds = ms / 1000.0 if ms is not None else None
        self.serial = serial
        self.cancellations = cancellations

    def apply(self, cursor: t.Any, context: t.Any) -> None:
        engine = context.root_connection.engine
        if engine in _unsupported:
            return
        applier = _APPLIERS.get(context.dialect.name)
        if applier is None:
            _give_up(
                engine, f"the {context.dialect.name} dialect has no statement timeout it knows"
            )
            return
        try:
            applier(self, cursor, context)
        except _Unsupported as e:
            _give_up(engine, str(e))
        except Exception as e:
            # Set on a cursor of its own, the budget cannot break the app's statement;
            # a driver or server that refuses it gets no budget from now on.
            record_internal_error("guard.budget", e, log=False)
            _give_up(
                engine, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            )

    def failed(self, shape: str, exc: BaseException) -> None:
        if self.ms is not None and is_cancelled(exc):
            self.cancellations.add(self.route, shape)


class _Unsupported(Exception):
    """The connection's driver has no way to set a budget."""


#: Engines whose statements run without a budget: their driver or server refused one.
_unsupported: weakref.WeakSet[t.Any] = weakref.WeakSet()


def _give_up(engine: t.Any, why: str) -> None:
    _unsupported.add(engine)
    log_limited(
        f"guard.unsupported:{id(engine)}",
        "querywatch's statement budgets are off for %s: %s. Its statements run without one.",
        engine.url.render_as_string(hide_password=True),
        why,
    )


def _execute(dbapi_connection: t.Any, sql: str) -> t.Any:
    """Run ``sql`` on a plain cursor of its own (the app's may be a server-side one,
    which would wrap it in DECLARE ... CURSOR FOR); returns its first row, if any."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchone() if cursor.description else None
    finally:
        cursor.close()


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
    elif hasattr(dbapi, "get_transaction_status"):  # psycopg2
        idle = dbapi.get_transaction_status() == 0
    else:
        raise _Unsupported(
            f"the {type(dbapi).__module__} driver does not tell its transaction state"
        )
    conn = context.root_connection
    tx = conn.get_transaction()
    # Idle: this statement opens the transaction, so the budget goes first. In one, it
    # was set already if a guarded statement set it in this same transaction (one opened
    # by a statement without a budget, after a commit, has none yet).
    marker = getattr(conn, _PG_ATTR, None)
    key = (budget.ms, budget.serial)
    if idle or marker is None or marker[1] != key or marker[0]() is not tx:
        if budget.ms is not None:
            _execute(dbapi, f"SET LOCAL statement_timeout = {budget.ms}")
        if budget.serial:
            _execute(dbapi, "SET LOCAL max_parallel_workers_per_gather = 0")
        setattr(conn, _PG_ATTR, (weakref.ref(tx), key) if tx is not None else None)


def _mysql(budget: Budget, cursor: t.Any, context: t.Any) -> None:
    if budget.ms is None:
        return  # MariaDB and MySQL run a statement on one thread: nothing to make serial
    info = context.root_connection.connection.info
    applied = info.get(_APPLIED)
    if applied is not None and applied[0] == budget.ms:
        return
    pool = context.root_connection.engine.pool
    if pool not in _reset_pools:
        _listen_checkin(pool)
    if context.dialect.is_mariadb:
        var, value = "max_statement_time", repr(budget.seconds)
    else:
        var, value = "max_execution_time", str(budget.ms)
    dbapi = cursor.connection
    # What the session had (the server's default, or the app's own), restored at check-in.
    original = applied[2] if applied is not None else _execute(dbapi, f"SELECT @@session.{var}")[0]
    _execute(dbapi, f"SET SESSION {var} = {value}")
    info[_APPLIED] = (budget.ms, var, original)


def _sqlite(budget: Budget, cursor: t.Any, context: t.Any) -> None:
    if budget.seconds is None:
        return  # SQLite runs a statement on one thread: nothing to make serial
    info = context.root_connection.connection.info
    deadline = info.get(_APPLIED)
    if deadline is None:
        deadline = [math.inf]

        def progress() -> int:
            # Only a guarded request's statement is interrupted: one of a request without
            # a budget (or of no request) runs on, whatever deadline an earlier statement
            # left on this connection. A guarded statement sets its own when it begins
            # (the later batches of one bulk insert share the first one's); the deadline
            # counts the time between its fetches too.
            if perf_counter() <= deadline[0]:
                return 0
            record = current_record()
            budget = record.budget if record is not None else None
            return 1 if isinstance(budget, Budget) and budget.seconds is not None else 0

        cursor.connection.set_progress_handler(progress, SQLITE_PROGRESS_STEPS)
        info[_APPLIED] = deadline
    deadline[0] = perf_counter() + budget.seconds


_APPLIERS: dict[str, t.Callable[[Budget, t.Any, t.Any], None]] = {
    "postgresql": _postgresql,
    "mysql": _mysql,
    "mariadb": _mysql,
    "sqlite": _sqlite,
}


def _checkin(dbapi_connection: t.Any, record: t.Any) -> None:
    """A MariaDB or MySQL connection back in the pool: its session's statement time limit
    is set back to what it was before the guard set it."""
    info = record.info if record is not None else None
    if not info or _APPLIED not in info:
        return
    try:
        _, var, original = info.pop(_APPLIED)
        if dbapi_connection is not None:
            value = int(original) if var == "max_execution_time" else float(original)
            _execute(dbapi_connection, f"SET SESSION {var} = {value!r}")
    except Exception as e:
        # One left with a budget would cancel an unguarded statement: dropped instead
        # of reused.
        record.invalidate(e)
        log_limited("guard.checkin", "querywatch could not undo a statement budget: %r", e)


#: The pools whose check-ins undo a session budget (only those a budget was set on: the
#: others' check-ins pay nothing for the guard).
_reset_pools: weakref.WeakSet[t.Any] = weakref.WeakSet()
_reset_lock = threading.Lock()


def _listen_checkin(pool: t.Any) -> None:
    from sqlalchemy import event

    with _reset_lock:
        if pool not in _reset_pools:
            event.listen(pool, "checkin", _checkin)
            _reset_pools.add(pool)
