"""EXPLAIN, safely, on SQLite, PostgreSQL and MariaDB/MySQL, into one plan model.

Only a read-only ``SELECT`` (or ``WITH ... SELECT``) is ever explained: the statement is
parsed with sqlglot first, and anything else (a write, a data-modifying CTE, ``SELECT ...
FOR UPDATE``, ``SELECT ... INTO``, several statements) is refused with
:class:`~querywatch.exceptions.UnsafeStatementError` before a connection is opened. The
statement then runs on a connection of its own, inside a read-only transaction (SQLite:
``PRAGMA query_only``) with a statement timeout, and the transaction is rolled back.
``EXPLAIN ANALYZE`` (which runs the statement) is used only when asked for.

A statement may come with its real parameters (the app's own paramstyle), or as a
*shape* whose placeholders (``?``, ``%s``, ``:name``, ``$1``) have no values: then
PostgreSQL plans it generically (``GENERIC_PLAN`` from version 16, else a prepared
statement under ``plan_cache_mode = force_generic_plan``), SQLite plans it before any
value is bound, and MariaDB/MySQL, which plan only with values, take the ``values`` the
caller drew from the data (see :func:`querywatch.advisor.sample_values`).

.. code-block:: python

    with Explainer("postgresql+psycopg://localhost/shop") as ex:
        plan = ex.explain("SELECT * FROM orders WHERE customer_email = ?")
        plan.full_scans()  # [PlanNode(operation='Seq Scan', table='orders', ...)]
"""

from __future__ import annotations

import contextlib
import typing as t

from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .._compat import create_engine
from .._config import missing_driver
from .._config import normalize_url
from .._sql import IGNORE_OPTION
from .._sql import check_read_only
from ..exceptions import ExplainError
from ..exceptions import UnsafeStatementError

if t.TYPE_CHECKING:
    from collections.abc import Iterator
    from collections.abc import Sequence

    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine

from ._dialect import Dialect
from ._plan import FLAGS
from ._plan import Plan
from ._plan import PlanNode

__all__ = [
    "FLAGS",
    "Dialect",
    "Explainer",
    "Plan",
    "PlanNode",
    "Session",
]

# --- sessions ---------------------------------------------------------------------------


class Session:
    """A connection of its own, in one transaction that is always rolled back.

    ``writable`` sessions (for verifying an index by creating it) are not read-only;
    the statements explained in them are still checked to be read-only SELECTs.
    """

    def __init__(self, explainer: Explainer, conn: Connection, *, writable: bool) -> None:
        self.explainer = explainer
        self.conn = conn
        self.dialect = explainer.dialect
        self.writable = writable
        self.module = explainer.module
        self._table_rows: dict[str, float | None] = {}

    def explain(
        self,
        sql: str,
        params: t.Any = None,
        *,
        values: Sequence[t.Any] | None = None,
        analyze: bool = False,
    ) -> Plan:
        """Explain one read-only SELECT.

        :param params: the statement's real parameters, in the driver's paramstyle.
        :param values: values for the placeholders of a shape, in text order; without
            them the statement is planned generically where the database can.
        :param analyze: run the statement (``EXPLAIN ANALYZE``); read-only SELECTs only.
        """
        check_read_only(sql, self.dialect)
        if analyze and not self.explainer.allow_analyze:
            msg = "EXPLAIN ANALYZE runs the statement; pass allow_analyze=True to use it."
            raise UnsafeStatementError(msg)
        plan: Plan = self.module.explain(self, sql, params, values, analyze)
        return plan

    def table_rows(self, table: str) -> float | None:
        """Rows in ``table`` by the database's statistics (cached per session)."""
        if table not in self._table_rows:
            try:
                with self.savepoint():
                    self._table_rows[table] = self.module.table_rows(self, table)
            except Exception:
                self._table_rows[table] = None
        return self._table_rows[table]

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo whatever the block did (an index built, a failed statement) when it ends.
        (MariaDB/MySQL: DDL commits there, so the block must undo its own DDL.)"""
        if self.dialect == "mysql":
            from . import mysql

            with mysql.savepoint(self):
                yield
            return
        self.run("SAVEPOINT qw_sp")
        try:
            yield
        except BaseException:
            # The error stands, not the undo's: SQLite rolls the whole transaction back
            # when a statement is interrupted, and takes the savepoint with it.
            with contextlib.suppress(Exception):
                self.run("ROLLBACK TO SAVEPOINT qw_sp")
                self.run("RELEASE SAVEPOINT qw_sp")
            raise
        self.run("ROLLBACK TO SAVEPOINT qw_sp")
        self.run("RELEASE SAVEPOINT qw_sp")

    def run(self, sql: str, params: t.Any = None) -> t.Any:
        """Run ``sql`` on the session's connection; without ``params`` the text goes to
        the driver as is (no ``%`` formatting). On SQLite each statement gets its own
        deadline (the others' is the database's, per statement)."""
        if self.dialect == "sqlite" and getattr(self, "armed", False):
            from .sqlite import arm

            arm(self)
        if params:
            return self.conn.exec_driver_sql(sql, params)
        return self.conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


class Explainer:
    """Explains statements on one database, each session on a connection of its own.

    :param url: the database (a URL or an engine, whose URL is reused; the explainer
        never borrows the app's pooled connections).
    :param timeout: seconds any one statement may take before the database stops it.
    :param allow_analyze: permit ``EXPLAIN ANALYZE`` of read-only SELECTs.
    :param prefer_indexes: PostgreSQL: plan with ``enable_seqscan`` off, so a table is
        read whole only where no index can serve the query. A planner that reads a
        tiny table whole although an index exists says nothing about the big one; this
        makes plans on the few rows of a test database answer "is there an index for
        it?". SQLite uses an index whenever one serves, whatever the size.
    :param writable: SQLite: open the file read-write (``mode=rw``) rather than read-only
        (``mode=ro``), for indexes built to verify them. A file is never created: a path
        that does not exist is an :class:`ExplainError`.
    """

    def __init__(
        self,
        url: str | Engine,
        *,
        timeout: float = 5.0,
        allow_analyze: bool = False,
        prefer_indexes: bool = False,
        writable: bool = True,
    ) -> None:
        if not isinstance(url, str):
            sa_url = url.url
        else:
            url = normalize_url(url)
            try:
                sa_url = make_url(url)
            except Exception:
                msg = f"{url!r} is not a database URL (e.g. 'postgresql+psycopg://host/db')."
                raise ExplainError(msg) from None
            missing = missing_driver(url)
            if missing is not None:
                raise ExplainError(missing)
        self.url = sa_url
        name = sa_url.get_backend_name()
        if name == "mariadb":
            name = "mysql"
        if name == "sqlite" and sa_url.database in (None, "", ":memory:"):
            msg = (
                "An in-memory SQLite database cannot be explained from another connection;"
                " use a database file."
            )
            raise ExplainError(msg)
        from . import mysql
        from . import postgresql
        from . import sqlite

        modules: dict[str, Dialect] = {"sqlite": sqlite, "postgresql": postgresql, "mysql": mysql}
        if name not in modules:
            msg = f"EXPLAIN is supported on SQLite, PostgreSQL and MariaDB/MySQL, not {name!r}."
            raise ExplainError(msg)
        self.dialect = name
        self.module: Dialect = modules[name]
        self.timeout = timeout
        self.allow_analyze = allow_analyze
        self.prefer_indexes = prefer_indexes
        options: dict[str, t.Any] = {"poolclass": NullPool}
        if name == "sqlite":
            options["connect_args"] = {"timeout": timeout}
            creator = sqlite.connector(sa_url, timeout, writable=writable)
            if creator is not None:
                options["creator"] = creator
        self.engine = create_engine(sa_url, **options).execution_options(
            isolation_level="AUTOCOMMIT", **{IGNORE_OPTION: True}
        )
        self._server: t.Any = None

    @classmethod
    def over(cls, engine: Engine, *, timeout: float) -> Explainer:
        """An explainer on ``engine`` itself (its pool included): for a database that
        querywatch made, such as the in-memory schema copy that SQLite candidate indexes
        are planned in."""
        self = cls.__new__(cls)
        self.url = engine.url
        self.dialect = engine.dialect.name
        from . import sqlite

        self.module = sqlite
        self.timeout = timeout
        self.allow_analyze = False
        self.prefer_indexes = False
        self.engine = engine.execution_options(
            isolation_level="AUTOCOMMIT", **{IGNORE_OPTION: True}
        )
        self._server = None
        return self

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def session_on(self, conn: Connection, *, writable: bool) -> Session:
        """A session on a connection the caller opened and closes (the dialect modules,
        which sit below this one, make theirs here)."""
        return Session(self, conn, writable=writable)

    @contextlib.contextmanager
    def session(self, *, writable: bool = False) -> Iterator[Session]:
        """A connection in one transaction (read-only unless ``writable``), rolled back
        at the end whatever happens."""
        try:
            conn = self.engine.connect()
        except Exception as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            msg = f"Could not connect to {self.url.render_as_string()!r}: {first}"
            raise ExplainError(msg) from None
        try:
            session = Session(self, conn, writable=writable)
            self.module.begin(session, self.timeout)
            try:
                yield session
            finally:
                with contextlib.suppress(Exception):
                    self.module.end(session)
        finally:
            conn.close()

    def explain(self, sql: str, params: t.Any = None, **kw: t.Any) -> Plan:
        """Explain one statement in a session of its own."""
        with self.session() as s:
            return s.explain(sql, params, **kw)
