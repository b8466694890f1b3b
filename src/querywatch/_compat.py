"""The private names of SQLAlchemy and Flask that querywatch leans on, in one place.

Capture is fast because it uses a few of SQLAlchemy's internals: a read is timed by being
the fetch strategy SQLAlchemy calls for every fetch and for the close of the result
(``_DEFAULT_FETCH``, ``_NO_CURSOR_DQL``, ``Result._soft_close``, the context's
``_is_server_side``), a commit is seen after it lands by wrapping the dialect's
``do_commit``, a pool's wait by wrapping ``_do_get``. Each was written for the versions
in :data:`SQLALCHEMY_TESTED` (1.4, 2.0, 2.1: CI runs the suite on 1.4 and on 2.x); on
another version, or where a name is missing, querywatch uses public interfaces instead:

======================  ===============================  ===================================
what                    fast path (tested versions)      fallback
======================  ===============================  ===================================
timing a read           the result's fetch strategy      a wrapper of the DBAPI cursor (as
                                                         for writes), through the public
                                                         ``do_execute`` dialect event
a commit's tables       ``dialect.do_commit`` wrapped    the pool's ``checkin`` event (after
                                                         the commit, once the connection
                                                         goes back)
a pool's wait           ``pool._do_get`` wrapped         not measured (no public event fires
                                                         before a checkout)
the app context         Flask's ``_cv_app``              ``flask.current_app``
======================  ===============================  ===================================

:data:`FAST` says which path runs; ``tests/test_compat.py`` runs capture and the cache on
the fallback.
"""

from __future__ import annotations

import operator
import typing as t

import sqlalchemy

__all__ = [
    "DEFAULT_FETCH",
    "ENGINE_OPTIONS",
    "SQLALCHEMY_14",
    "Double",
    "FAST",
    "NO_CURSOR_DQL",
    "ORM_LOAD_OPTIONS",
    "SERVER_SIDE",
    "SETUP_FLAG",
    "SQLALCHEMY_TESTED",
    "CursorFetchStrategy",
    "autocommit",
    "dbapi_connection",
    "compile_options",
    "create_engine",
    "current_app",
    "hard_close",
    "wrap_checkout",
    "wrap_commit",
    "soft_close",
]

#: The SQLAlchemy releases (major, minor) the fast paths were written and tested for
#: (1.4 has the same names: its results were rebuilt as 2.0's are).
SQLALCHEMY_TESTED = ((1, 4), (2, 0), (2, 1))
#: SQLAlchemy 1.4: engines are made with ``future=True`` (2.0's transactions: nothing
#: commits unless begun), and a few names are defined here.
SQLALCHEMY_14 = sqlalchemy.__version__.startswith("1.")
#: What ``create_engine`` is given on every SQLAlchemy querywatch supports.
ENGINE_OPTIONS: dict[str, t.Any] = {"future": True} if SQLALCHEMY_14 else {}


def create_engine(url: t.Any, **options: t.Any) -> t.Any:
    """``sqlalchemy.create_engine`` with :data:`ENGINE_OPTIONS` (2.0's transactions on
    1.4: without them 1.4 commits a DDL statement on its own, savepoint and all)."""
    return sqlalchemy.create_engine(url, **{**ENGINE_OPTIONS, **options})


if t.TYPE_CHECKING or not SQLALCHEMY_14:
    from sqlalchemy import Double
else:  # SQLAlchemy 1.4 has no Double: a float of 53 bits is a double everywhere

    class Double(sqlalchemy.Float):  # type: ignore[no-redef]
        def __init__(self, **kw: t.Any) -> None:
            kw.setdefault("precision", 53)
            super().__init__(**kw)


def _release(version: str) -> tuple[int, int]:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


try:  # the names of the fast read path
    from sqlalchemy.engine.cursor import _DEFAULT_FETCH as DEFAULT_FETCH
    from sqlalchemy.engine.cursor import _NO_CURSOR_DQL as NO_CURSOR_DQL
    from sqlalchemy.engine.cursor import CursorFetchStrategy
    from sqlalchemy.engine.cursor import CursorResult

    _NAMES = hasattr(CursorResult, "_soft_close")
except ImportError:  # pragma: no cover - an SQLAlchemy that renamed them
    DEFAULT_FETCH = NO_CURSOR_DQL = object()  # type: ignore[assignment]
    CursorFetchStrategy = object  # type: ignore[assignment,misc]
    _NAMES = False


#: End a read that the fetch strategy timed: ``result._soft_close()``, and with
#: ``hard=True``. Method callers, not functions of ours: C calls, no Python frame, on a
#: path every read takes.
soft_close = operator.methodcaller("_soft_close")
hard_close = operator.methodcaller("_soft_close", hard=True)


class _Paths:
    """Which paths run: the fast ones on a tested SQLAlchemy with the names present.
    Read at each use, so a test can switch to the fallback."""

    def __init__(self) -> None:
        tested = _release(sqlalchemy.__version__) in SQLALCHEMY_TESTED
        #: Reads timed as SQLAlchemy's fetch strategy.
        self.reads = tested and _NAMES
        #: Commits seen by wrapping ``dialect.do_commit``.
        self.commit = tested
        #: Pool waits timed by wrapping ``pool._do_get``.
        self.pool_wait = tested


#: The paths in use in this process.
FAST = _Paths()


#: The attribute of a Connection that is false only on the one SQLAlchemy makes for a
#: dialect's set-up on an engine's first connection (2.x: it never begins a transaction;
#: 1.4: it never reconnects), read with ``getattr(conn, SETUP_FLAG, True)``.
SETUP_FLAG = "_Connection__can_reconnect" if SQLALCHEMY_14 else "_allow_autobegin"

#: The execution context's attribute that says the statement streams its rows from a
#: server-side cursor (read with ``getattr(context, SERVER_SIDE, False)``, inline on the
#: path every read takes).
SERVER_SIDE = "_is_server_side"


def compile_options(statement: t.Any) -> t.Any:
    """The ORM's compile options of a statement (its loader path), or None."""
    return getattr(statement, "_compile_options", None)


#: The execution option under which the ORM passes its load options (lazy load, refresh).
ORM_LOAD_OPTIONS = "_sa_orm_load_options"


def dbapi_connection(conn: t.Any) -> t.Any:
    """The DBAPI connection under ``conn`` (a SQLAlchemy Connection). While a dialect
    initializes on its first connect, SQLAlchemy 1.4 makes the Connection on the DBAPI
    connection itself, not on the pool's proxy."""
    proxied = conn.connection
    return getattr(proxied, "dbapi_connection", proxied)


def autocommit(conn: t.Any) -> bool:
    """Whether ``conn`` (a SQLAlchemy Connection) commits each statement on its own."""
    check = getattr(conn, "_is_autocommit_isolation", None)
    if check is not None:
        return bool(check())
    return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")


def wrap_commit(
    dialect: t.Any,
    after_commit: t.Callable[[t.Any], None],
    before_rollback: t.Callable[[t.Any], None],
) -> None:
    """Call ``after_commit(dbapi_connection)`` once each commit of ``dialect`` has landed,
    and ``before_rollback(dbapi_connection)`` before each rollback (SQLAlchemy's own
    ``commit`` event fires before the commit): the dialect's ``do_commit`` and
    ``do_rollback`` are wrapped, on this dialect instance only. Fast path only."""
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_connection: t.Any) -> None:
        commit(dbapi_connection)
        after_commit(dbapi_connection)

    def do_rollback(dbapi_connection: t.Any) -> None:
        before_rollback(dbapi_connection)
        rollback(dbapi_connection)

    dialect.do_commit = do_commit
    dialect.do_rollback = do_rollback


def wrap_checkout(pool: t.Any, around: t.Callable[[t.Callable[[], t.Any]], t.Any]) -> None:
    """Make every checkout of ``pool`` run through ``around(get)`` (``get`` takes the
    connection): no pool event fires before a checkout, and every pool class gets its
    connection in ``_do_get``. Fast path only."""
    do_get = pool._do_get

    def _do_get() -> t.Any:
        return around(do_get)

    pool._do_get = _do_get


try:
    from flask.globals import _cv_app
except ImportError:  # pragma: no cover - a Flask without it
    _cv_app = None  # type: ignore[assignment]


def current_app() -> t.Any:
    """The Flask app of the current app context, or None: read from Flask's context
    variable without the ``current_app`` proxy (a hot path), else through the proxy."""
    if _cv_app is not None:
        ctx = _cv_app.get(None)
        return ctx.app if ctx is not None else None
    from flask import current_app as proxy
    from flask import has_app_context

    return proxy._get_current_object() if has_app_context() else None
