"""MariaDB and MySQL: ``EXPLAIN FORMAT=JSON``.

Both plan only with values, so a shape's placeholders take the values the caller gives
(drawn from the data by the advisor); without them the shape is refused with a message.
The estimated cost is the optimizer's ``Last_query_cost`` (MariaDB) or
``cost_info.query_cost`` (MySQL). Sessions run in ``START TRANSACTION READ ONLY`` with
``max_statement_time`` (MariaDB) or ``max_execution_time`` (MySQL). DDL is not
transactional here: a writable session runs in autocommit, and whoever builds an index in
it drops it again (see :mod:`querywatch.advisor`).
"""

from __future__ import annotations

import contextlib
import json
import typing as t

from .._sql import filter_terms
from .._sql import number_placeholders
from .._sql import render_placeholders
from ..exceptions import ExplainError
from ..fingerprint import MYSQL
from ..fingerprint import mask_literals
from ._plan import Plan
from ._plan import PlanNode
from .names import alias_map
from .names import translate_error

if t.TYPE_CHECKING:
    from . import Session

_FULL = {"ALL", "hash_ALL"}
_FULL_INDEX = {"index", "hash_index"}


def is_mariadb(session: Session) -> bool:
    v = getattr(session.explainer, "_mysql_is_mariadb", None)
    if v is None:
        row = session.run("SELECT VERSION()").first()
        v = "mariadb" in str(row[0]).lower() if row else False
        session.explainer._mysql_is_mariadb = v  # type: ignore[attr-defined]
    return bool(v)


def begin(session: Session, timeout: float) -> None:
    if is_mariadb(session):
        session.run(f"SET SESSION max_statement_time = {timeout:.3f}")
    else:
        session.run(f"SET SESSION max_execution_time = {max(1, int(timeout * 1000))}")
    if not session.writable:
        session.run("START TRANSACTION READ ONLY")


def end(session: Session) -> None:
    if not session.writable:
        session.run("ROLLBACK")


@contextlib.contextmanager
def savepoint(session: Session) -> t.Iterator[None]:
    # An error does not abort a MariaDB transaction, and a writable session has none.
    yield


def explain(
    session: Session,
    sql: str,
    params: t.Any,
    values: t.Sequence[t.Any] | None,
    analyze: bool,
) -> Plan:
    head = "EXPLAIN FORMAT=JSON "
    if analyze:
        if not is_mariadb(session):
            msg = "EXPLAIN ANALYZE on MySQL has no JSON form; use MariaDB or time the query."
            raise ExplainError(msg)
        head = "ANALYZE FORMAT=JSON "
    try:
        if params is not None:
            doc = session.run(head + sql, params).scalar()
            text = sql
        else:
            marked, n = number_placeholders(sql)
            if n and values is None:
                msg = (
                    "MariaDB and MySQL plan a statement only with values for its"
                    f" {n} placeholder(s); give values (querywatch advise draws them from"
                    " the data)."
                )
                raise ExplainError(msg)
            if n:
                assert values is not None
                text = render_placeholders(marked, "pyformat", escape_percent=True)
                bound = {f"qwp{i + 1}": values[i] for i in range(n)}
                doc = session.run(head + text, bound).scalar()
            else:
                text = sql
                doc = session.run(head + sql).scalar()
        cost_row = session.run("SHOW SESSION STATUS LIKE 'Last_query_cost'").first()
    except ExplainError:
        raise
    except Exception as e:
        raise translate_error(e, session) from None
    data = json.loads(doc) if isinstance(doc, (str, bytes)) else doc
    aliases = alias_map(text if params is not None else sql, "mysql")
    nodes = tuple(_walk(session, data.get("query_block", data), aliases))
    cost: float | None = None
    qcost = data.get("query_block", {}).get("cost_info", {}).get("query_cost")
    if qcost is not None:
        cost = float(qcost)
    elif cost_row is not None and float(cost_row[1]) > 0:
        cost = float(cost_row[1])
    return Plan(
        dialect="mysql",
        nodes=nodes,
        cost=cost,
        generic=False,
        raw=data,
        analyzed=analyze,
    )


def _walk(session: Session, obj: t.Any, aliases: dict[str, str]) -> list[PlanNode]:
    """Plan nodes from a MariaDB/MySQL JSON plan fragment."""
    out: list[PlanNode] = []
    if isinstance(obj, list):
        for item in obj:
            out.extend(_walk(session, item, aliases))
        return out
    if not isinstance(obj, dict):
        return out
    for key, value in obj.items():
        if key == "table" and isinstance(value, dict):
            out.append(_table_node(session, value, aliases))
        elif key == "filesort" and isinstance(value, dict):
            out.append(
                PlanNode(
                    operation="filesort",
                    flags=frozenset({"filesort", "temp_sort"}),
                    detail=f"filesort ({mask_literals(str(value.get('sort_key', '')), MYSQL)})",
                    children=tuple(_walk(session, value, aliases)),
                )
            )
        elif key == "temporary_table" and isinstance(value, dict):
            out.append(
                PlanNode(
                    operation="temporary table",
                    flags=frozenset({"temp_table"}),
                    detail="temporary table",
                    children=tuple(_walk(session, value, aliases)),
                )
            )
        elif key in ("ordering_operation", "grouping_operation") and isinstance(value, dict):
            flags = set()
            if value.get("using_filesort"):
                flags |= {"filesort", "temp_sort"}
            if value.get("using_temporary_table"):
                flags.add("temp_table")
            children = tuple(_walk(session, value, aliases))
            if flags:
                out.append(
                    PlanNode(
                        operation=key,
                        flags=frozenset(flags),
                        detail=key.replace("_", " "),
                        children=children,
                    )
                )
            else:
                out.extend(children)
        elif isinstance(value, (dict, list)):
            out.extend(_walk(session, value, aliases))
    return out


def _table_node(session: Session, t_: dict[str, t.Any], aliases: dict[str, str]) -> PlanNode:
    name = str(t_.get("table_name", "?"))
    table = aliases.get(name.lower(), name)
    access = str(t_.get("access_type", "?"))
    flags: set[str] = set()
    if access in _FULL:
        flags.add("full_scan")
    elif access in _FULL_INDEX:
        flags.add("full_index_scan")
    elif access != "?":
        flags.add("index_search")
    rows = t_.get("rows", t_.get("rows_examined_per_scan"))
    index = t_.get("key")
    detail = f"{access} on {table}"
    if name != table:
        detail += f" {name}"
    if index:
        detail += f" using {index}"
    if t_.get("attached_condition"):
        # MariaDB prints literals with backslash escapes, whatever the sql_mode.
        detail += f" (condition: {mask_literals(str(t_['attached_condition']), MYSQL)})"
    children = tuple(
        _walk(session, {k: v for k, v in t_.items() if k in ("materialized", "subqueries")}, {})
    )
    is_real = not name.startswith("<")
    real_rows = session.table_rows(table) if is_real and "full_scan" in flags else None
    return PlanNode(
        operation=access,
        table=table if is_real else None,
        index=str(index) if index else None,
        rows=float(rows) if rows is not None else None,
        cost=None,
        flags=frozenset(flags),
        detail=detail,
        children=children,
        table_rows=real_rows,
    )


def table_rows(session: Session, table: str) -> float | None:
    row = session.run(
        "SELECT table_rows FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = %(t)s",
        {"t": table},
    ).first()
    return float(row[0]) if row and row[0] is not None else None


def is_table(session: Session, name: str) -> bool:
    row = session.run(
        "SELECT count(*) FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = %(t)s",
        {"t": name},
    ).first()
    return bool(row and row[0])


#: The most rows of a table copied to try an index beside the live one.
COPY_MAX_ROWS = 500_000


class TemporaryCopy:
    """Tables copied into ``TEMPORARY`` tables of one connection, each under its own
    name: MariaDB/MySQL resolve a name to the connection's temporary table first, so on
    this connection statements (and indexes built to try them) reach the copy, and the
    live table is only read, once, by a consistent read that takes no row locks (READ
    COMMITTED). Nothing outlives the connection: :meth:`close` ends it."""

    def __init__(self, explainer: t.Any, *, max_rows: int = COPY_MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._conn = explainer.engine.connect()
        self.session = explainer.session_on(self._conn, writable=True)
        begin(self.session, explainer.timeout)
        self.session.run("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        # Were a lock ever met, give up soon rather than queue behind the app's writers.
        self.session.run("SET SESSION innodb_lock_wait_timeout = 2")
        self._timeout = max(60.0, float(explainer.timeout))
        self._copied: dict[tuple[str, str | None], str | None] = {}

    def shadow(self, table: str, schema: str | None = None) -> None:
        """Copy ``table`` once; raise :class:`ExplainError` with the reason where it
        cannot be (too many rows, no privilege), and never leave the name on the live
        table for what follows."""
        key = (table.lower(), (schema or "").lower() or None)
        if key not in self._copied:
            try:
                self._copied[key] = self._copy(table, schema)
            except Exception as e:
                first = str(getattr(e, "orig", e)).strip().splitlines()
                self._copied[key] = (
                    f"the table could not be copied to try an index beside it"
                    f" ({first[0][:160] if first else type(e).__name__})"
                )
        why = self._copied[key]
        if why is not None:
            raise ExplainError(why)

    def _copy(self, table: str, schema: str | None) -> str | None:
        s = self.session

        def q(name: str) -> str:
            return "`" + name.replace("`", "``") + "`"

        live = f"{q(schema)}.{q(table)}" if schema else q(table)
        scratch = f"{q(schema)}.{q('qw_copy')}" if schema else q("qw_copy")
        row = s.run(
            "SELECT table_rows FROM information_schema.tables WHERE table_schema ="
            " COALESCE(%(s)s, DATABASE()) AND table_name = %(t)s",
            {"s": schema, "t": table},
        ).first()
        rows = int(row[0] or 0) if row else 0
        if rows > self.max_rows:
            return (
                f"{table} has about {rows:,} rows, more than querywatch copies"
                f" ({self.max_rows:,}) to try an index beside the live table"
            )
        s.run(f"DROP TEMPORARY TABLE IF EXISTS {scratch}")
        s.run(f"CREATE TEMPORARY TABLE {scratch} LIKE {live}")
        stmt = f"INSERT INTO {scratch} SELECT * FROM {live}"
        if is_mariadb(s):
            stmt = f"SET STATEMENT max_statement_time = {self._timeout:.0f} FOR {stmt}"
        s.run(stmt)
        s.run(f"ALTER TABLE {scratch} RENAME TO {live}")
        # The name must now be the copy's: anything built next goes there.
        create = s.run(f"SHOW CREATE TABLE {live}").first()
        if create is None or "CREATE TEMPORARY TABLE" not in str(create[1]).upper():
            msg = f"the temporary copy of {table} is not in place; nothing was built"
            raise ExplainError(msg)
        s.run(f"ANALYZE TABLE {live}").all()
        return None

    def matching_share(
        self, marked: str, values: t.Sequence[t.Any] | None, columns: t.Collection[str] | None
    ) -> tuple[float, int] | None:
        """The share of a copied table's rows that a one-table statement's ``WHERE``
        (its terms on ``columns`` when given) matches, counted on the copy; None where
        it cannot be (a join, no such terms, the table not copied)."""
        found = filter_terms(marked, "mysql", columns)
        if found is None:
            return None
        table, cond, used = found
        params = {f"qwp{i + 1}": v for i, v in enumerate(values or ()) if f"qwp{i + 1}" in used}
        sql = render_placeholders(
            f"SELECT count(*), sum(CASE WHEN ({cond}) THEN 1 ELSE 0 END) FROM {table}",
            "pyformat",
            escape_percent=True,
        )
        row = self.session.run(sql, params or None).first()
        if row is None or not row[0]:
            return None
        return float(row[1] or 0) / float(row[0]), int(row[0])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
