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
import dataclasses
import logging
import re
import threading
import time
import typing as t

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from ..capture import IGNORE_OPTION
from ..config import missing_driver
from ..config import normalize_url
from ..exceptions import ExplainError
from ..exceptions import UnsafeStatementError

if t.TYPE_CHECKING:
    from collections.abc import Iterator
    from collections.abc import Sequence

    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine

__all__ = [
    "FLAGS",
    "Explainer",
    "Plan",
    "PlanNode",
    "Session",
    "check_read_only",
    "number_placeholders",
    "placeholder_values",
    "split_statements",
]

#: The flags a plan node may carry.
FLAGS = frozenset(
    {
        "full_scan",  # every row of a table is read
        "full_index_scan",  # every entry of an index is read (in index order)
        "index_search",  # an index narrows the rows read
        "temp_sort",  # rows are sorted after being read (no index gives the order)
        "filesort",  # MariaDB/MySQL's name for temp_sort
        "temp_table",  # an intermediate result is materialized
        "temp_index",  # the database builds a throwaway index per query (SQLite)
    }
)


@dataclasses.dataclass(frozen=True)
class PlanNode:
    """One step of a plan, in the same terms on every database."""

    #: The database's own name for the step: ``Seq Scan``, ``SCAN``, ``ALL``...
    operation: str
    #: The table read, when the step reads one (the real name, not an alias).
    table: str | None = None
    #: The index used, when one is.
    index: str | None = None
    #: Estimated rows the step returns (PostgreSQL, MariaDB), or reads (SQLite scans).
    rows: float | None = None
    #: Estimated cost (PostgreSQL: total cost; MariaDB: rows examined).
    cost: float | None = None
    flags: frozenset[str] = frozenset()
    #: The database's own words for the step.
    detail: str = ""
    children: tuple[PlanNode, ...] = ()
    #: Rows in the table read (from the database's statistics), for scans.
    table_rows: float | None = None

    def walk(self) -> Iterator[PlanNode]:
        yield self
        for c in self.children:
            yield from c.walk()

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "operation": self.operation,
            "table": self.table,
            "index": self.index,
            "rows": self.rows,
            "cost": self.cost,
            "flags": sorted(self.flags),
            "detail": self.detail,
            "table_rows": self.table_rows,
            "children": [c.to_dict() for c in self.children],
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """A statement's plan: its steps, total estimated cost and what it was made from."""

    dialect: str
    nodes: tuple[PlanNode, ...]
    #: Estimated total cost; None on SQLite, whose planner does not expose one.
    cost: float | None
    #: Planned without real parameter values.
    generic: bool
    #: The database's own output (JSON document or rows), for those who want it all.
    raw: t.Any = None
    #: True when the statement was run (``EXPLAIN ANALYZE``).
    analyzed: bool = False

    def walk(self) -> Iterator[PlanNode]:
        for n in self.nodes:
            yield from n.walk()

    @property
    def flags(self) -> frozenset[str]:
        return frozenset(f for n in self.walk() for f in n.flags)

    def full_scans(self) -> list[PlanNode]:
        return [n for n in self.walk() if "full_scan" in n.flags]

    def indexes_used(self) -> set[str]:
        return {n.index for n in self.walk() if n.index}

    def searched_tables(self) -> set[str]:
        """Tables read through an index that narrows the rows."""
        return {n.table for n in self.walk() if n.table and "index_search" in n.flags}

    def sorts(self) -> list[PlanNode]:
        return [n for n in self.walk() if n.flags & {"temp_sort", "filesort"}]

    def lines(self) -> list[str]:
        """The plan as indented lines, for people."""
        out: list[str] = []

        def visit(node: PlanNode, depth: int) -> None:
            text = node.detail or node.operation
            extra = []
            if node.rows is not None:
                extra.append(f"rows={node.rows:,.0f}")
            if node.cost is not None:
                extra.append(f"cost={node.cost:,.2f}")
            out.append("  " * depth + text + (f"  ({', '.join(extra)})" if extra else ""))
            for c in node.children:
                visit(c, depth + 1)

        for n in self.nodes:
            visit(n, 0)
        return out

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "dialect": self.dialect,
            "cost": self.cost,
            "generic": self.generic,
            "analyzed": self.analyzed,
            "flags": sorted(self.flags),
            "nodes": [n.to_dict() for n in self.nodes],
        }


# --- what may be explained --------------------------------------------------------------

_SQLGLOT_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}


def sqlglot_dialect(dialect: str) -> str:
    return _SQLGLOT_DIALECTS.get(dialect, "")


_parsing = threading.local()


class _OwnParses(logging.Filter):
    """Drops what sqlglot logs while querywatch parses one of the app's statements: one
    it reads as a Command (SQLAlchemy's ``show standard_conforming_strings`` on connect)
    is the app's, valid SQL, and the warning reached the app's stderr. The app's own
    use of sqlglot is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_parsing, "active", False)


_OWN_PARSES = _OwnParses()


@contextlib.contextmanager
def quiet_parse() -> t.Iterator[None]:
    """Parse with sqlglot inside this block without its warnings reaching the app."""
    sqlglot_logger = logging.getLogger("sqlglot")
    if _OWN_PARSES not in sqlglot_logger.filters:
        sqlglot_logger.addFilter(_OWN_PARSES)
    before = getattr(_parsing, "active", False)
    _parsing.active = True
    try:
        yield
    finally:
        _parsing.active = before


def check_read_only(sql: str, dialect: str = "") -> t.Any:
    """Parse ``sql`` and return its sqlglot tree if it is one read-only ``SELECT``;
    raise :class:`UnsafeStatementError` (or :class:`ExplainError` when it does not
    parse) otherwise."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    if any(
        m.lastgroup == "comment" and m.group(0).startswith(("/*!", "/*M!"))
        for m in _TOKEN_RE.finditer(sql)
    ):
        # MariaDB/MySQL run the text of /*! ... */ as SQL (SELECT … /*!INTO OUTFILE …*/
        # wrote a file on the server); a parser sees a comment. Refused on every
        # database: a statement that carries one is not worth the doubt.
        msg = (
            "The statement holds a MariaDB/MySQL executable comment (/*! ... */), which"
            " the server runs as SQL: it is never explained nor run."
        )
        raise UnsafeStatementError(msg)
    marked, _ = number_placeholders(sql)
    try:
        with quiet_parse():
            trees = sqlglot.parse(marked, read=sqlglot_dialect(dialect) or None)
        trees = [tr for tr in trees if tr]
    except ParseError as e:
        from ..redact import error_line

        msg = f"The statement could not be parsed ({error_line(e)}); it was not explained."
        raise ExplainError(msg) from None
    if len(trees) != 1:
        msg = f"Expected one statement, got {len(trees)}; only a single SELECT is explained."
        raise UnsafeStatementError(msg)
    tree = trees[0]
    statements = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop)
    if not isinstance(tree, (exp.Query, *statements, exp.Alter, exp.Command, exp.Set)):
        msg = "The statement could not be parsed as SQL; it was not explained."
        raise ExplainError(msg)
    if not isinstance(tree, exp.Query):
        kind = type(tree).__name__.upper()
        msg = (
            f"Only SELECT and WITH ... SELECT are explained; this is {kind}."
            " A write is never explained nor run."
        )
        raise UnsafeStatementError(msg)
    for node in tree.walk():
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create)):
            msg = (
                "The statement writes (a data-modifying WITH or subquery):"
                " it is never explained nor run."
            )
            raise UnsafeStatementError(msg)
        if isinstance(node, exp.Select):
            if node.args.get("locks"):
                msg = "SELECT ... FOR UPDATE/SHARE takes row locks: it is never explained."
                raise UnsafeStatementError(msg)
            if node.args.get("into"):
                msg = "SELECT ... INTO creates a table: it is never explained."
                raise UnsafeStatementError(msg)
    return tree


# --- placeholders -----------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<dollar>\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?\$(?P=tag)\$)
    |(?P<string>[eEbBxXnNuU]?'(?:[^'\\]|''|\\.)*')
    |(?P<qident>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
    |(?P<param>\?|%s|%\([^)]*\)s|(?<![:\w]):[^\W\d]\w*|\$\d+)
    |(?P<cast>::)
    |(?P<other>[^'"`$?%:\-/]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)

MARKER = "qwp"


def number_placeholders(sql: str) -> tuple[str, int]:
    """Rewrite every placeholder (any paramstyle) as ``:qwp1``, ``:qwp2``... in text
    order; returns the text and how many there were. A repeated ``:name`` or ``$1`` gets
    a number each time it appears."""
    out: list[str] = []
    n = 0
    for m in _TOKEN_RE.finditer(sql):
        if m.lastgroup == "param":
            n += 1
            out.append(f":{MARKER}{n}")
        else:
            out.append(m.group(0))
    return "".join(out), n


def placeholder_values(sql: str, params: t.Any) -> list[t.Any] | None:
    """The value of each placeholder of ``sql`` in text order (``:qwpN`` is the N-th),
    from the driver's ``params`` in any paramstyle; None where they do not match."""
    from collections.abc import Mapping
    from collections.abc import Sequence

    tokens = [m.group(0) for m in _TOKEN_RE.finditer(sql) if m.lastgroup == "param"]
    out: list[t.Any] = []
    try:
        for i, tok in enumerate(tokens):
            if isinstance(params, Mapping):
                if tok.startswith("%("):
                    out.append(params[tok[2:-2]])
                elif tok.startswith(":"):
                    out.append(params[tok[1:]])
                else:
                    return None
            elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
                out.append(params[int(tok[1:]) - 1] if tok.startswith("$") else params[i])
            else:
                return None
    except (KeyError, IndexError, ValueError):
        return None
    return out


_MARKER_RE = re.compile(r":qwp(\d+)\b")


def render_placeholders(marked: str, style: str, *, escape_percent: bool) -> str:
    """Turn ``:qwpN`` markers into ``style`` (``named`` ``:qwpN``, ``pyformat``
    ``%(qwpN)s``, ``numeric_dollar`` ``$N``, ``literal`` left to the caller)."""
    out: list[str] = []
    for m in _TOKEN_RE.finditer(marked):
        tok = m.group(0)
        if m.lastgroup == "param" and _MARKER_RE.fullmatch(tok):
            num = tok[len(MARKER) + 1 :]
            if style == "named":
                out.append(tok)
            elif style == "pyformat":
                out.append(f"%({MARKER}{num})s")
            elif style == "numeric_dollar":
                out.append(f"${num}")
            else:  # pragma: no cover - programming error
                raise ValueError(style)
        elif escape_percent:
            out.append(tok.replace("%", "%%"))
        else:
            out.append(tok)
    return "".join(out)


def filter_terms(
    marked: str, dialect: str, columns: t.Collection[str] | None = None
) -> tuple[str, str, set[str]] | None:
    """A one-table ``SELECT``'s table, its ``WHERE`` terms as one condition (only those
    on ``columns``, an index's, when given) and the ``qwpN`` placeholders they use; None
    for a statement that joins, has no such terms, or does not parse. ``marked`` holds
    ``:qwpN`` placeholders."""
    import sqlglot
    from sqlglot import exp

    gen = sqlglot_dialect(dialect)
    try:
        with quiet_parse():
            tree = sqlglot.parse_one(marked, read=gen)
    except Exception:
        return None
    if not isinstance(tree, exp.Select) or tree.args.get("joins"):
        return None
    where = tree.args.get("where")
    tables = list(tree.find_all(exp.Table))
    if where is None or len(tables) != 1 or where.find(exp.Select) is not None:
        return None
    terms = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    if columns is not None:
        wanted = {c.lower() for c in columns}
        terms = [
            x
            for x in terms
            if (found := {c.name.lower() for c in x.find_all(exp.Column)}) and found <= wanted
        ]
    if not terms:
        return None
    cond = " AND ".join(f"({x.sql(dialect=gen)})" for x in terms)
    used = {p.name for x in terms for p in x.find_all(exp.Placeholder)}
    return tables[0].sql(dialect=gen), cond, used


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
            with self.module.savepoint(self):
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
        the driver as is (no ``%`` formatting)."""
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

        modules = {"sqlite": sqlite, "postgresql": postgresql, "mysql": mysql}
        if name not in modules:
            msg = f"EXPLAIN is supported on SQLite, PostgreSQL and MariaDB/MySQL, not {name!r}."
            raise ExplainError(msg)
        self.dialect = name
        self.module: t.Any = modules[name]
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


def deadline_handler(timeout: float, stop: threading.Event | None = None) -> t.Callable[[], int]:
    """A SQLite progress handler that interrupts a statement after ``timeout`` seconds,
    or once ``stop`` is set."""
    end = time.monotonic() + timeout

    def handler() -> int:
        return 1 if time.monotonic() > end or (stop is not None and stop.is_set()) else 0

    return handler


def split_statements(text: str) -> list[str]:
    """Split a SQL script on ``;`` outside strings, quoted names and comments."""
    out: list[str] = []
    cur: list[str] = []
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(0)
        if m.lastgroup == "other" and ";" in tok:
            pieces = tok.split(";")
            cur.append(pieces[0])
            for p in pieces[1:]:
                out.append("".join(cur))
                cur = [p]
        else:
            cur.append(tok)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip() and not _only_comments(s)]


def _only_comments(sql: str) -> bool:
    return all(m.lastgroup == "comment" or not m.group(0).strip() for m in _TOKEN_RE.finditer(sql))
