"""PostgreSQL: ``EXPLAIN (FORMAT JSON)``.

A shape without values is planned generically: ``EXPLAIN (GENERIC_PLAN)`` on
PostgreSQL 16 and later; before that, as a prepared statement executed with NULLs under
``plan_cache_mode = force_generic_plan``, which plans without looking at the values.
Sessions run in ``BEGIN TRANSACTION READ ONLY`` with ``SET LOCAL statement_timeout``
(writable sessions add ``lock_timeout``, so building an index never queues behind the
app's writes for long).
"""

from __future__ import annotations

import json
import typing as t

from .._sql import number_placeholders
from .._sql import render_placeholders
from ..fingerprint import POSTGRESQL
from ..fingerprint import mask_literals
from ._plan import Plan
from ._plan import PlanNode
from .names import translate_error

if t.TYPE_CHECKING:
    from . import Session

_SCANS = {"Seq Scan": "full_scan", "Parallel Seq Scan": "full_scan"}
_INDEX_SCANS = ("Index Scan", "Index Only Scan", "Bitmap Index Scan", "Bitmap Heap Scan")
_SORTS = ("Sort", "Incremental Sort")
_TEMP = ("Materialize", "CTE Scan")


def begin(session: Session, timeout: float) -> None:
    ms = max(1, int(timeout * 1000))
    session.run("BEGIN" if session.writable else "BEGIN TRANSACTION READ ONLY")
    session.run(f"SET LOCAL statement_timeout = {ms}")
    if session.explainer.prefer_indexes:
        session.run("SET LOCAL enable_seqscan = off")
    if session.writable:
        session.run("SET LOCAL lock_timeout = 2000")


def end(session: Session) -> None:
    session.run("ROLLBACK")


def server_version(session: Session) -> int:
    v = getattr(session.explainer, "_pg_version", None)
    if v is None:
        row = session.run("SHOW server_version_num").first()
        v = int(row[0]) if row else 0
        session.explainer._pg_version = v  # type: ignore[attr-defined]
    return int(v)


def explain(
    session: Session,
    sql: str,
    params: t.Any,
    values: t.Sequence[t.Any] | None,
    analyze: bool,
) -> Plan:
    opts = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    generic = False
    prepared = False
    try:
        with session.savepoint():
            if params is not None:
                doc = session.run(f"EXPLAIN ({opts}) {sql}", params).scalar()
            else:
                marked, n = number_placeholders(sql)
                if n and values is not None:
                    text = render_placeholders(marked, "pyformat", escape_percent=True)
                    bound = {f"qwp{i + 1}": values[i] for i in range(n)}
                    doc = session.run(f"EXPLAIN ({opts}) {text}", bound).scalar()
                elif n:
                    generic = True
                    if analyze:
                        from ..exceptions import ExplainError

                        msg = "EXPLAIN ANALYZE needs the statement's parameter values."
                        raise ExplainError(msg)
                    text = render_placeholders(marked, "numeric_dollar", escape_percent=False)
                    if server_version(session) >= 160000:
                        doc = session.run(f"EXPLAIN (GENERIC_PLAN, FORMAT JSON) {text}").scalar()
                    else:
                        session.run(f"PREPARE qw_explain AS {text}")
                        prepared = True
                        session.run("SET LOCAL plan_cache_mode = force_generic_plan")
                        nulls = ", ".join(["NULL"] * n)
                        doc = session.run(
                            f"EXPLAIN (FORMAT JSON) EXECUTE qw_explain({nulls})"
                        ).scalar()
                else:
                    doc = session.run(f"EXPLAIN ({opts}) {sql}").scalar()
    except Exception as e:
        if getattr(e, "__module__", "").startswith("querywatch"):
            raise
        raise translate_error(e, session) from None
    finally:
        if prepared:
            session.run("DEALLOCATE qw_explain")
    if isinstance(doc, str):
        doc = json.loads(doc)
    top = doc[0]["Plan"]
    root = _node(session, top)
    return Plan(
        dialect="postgresql",
        nodes=(root,),
        cost=float(top.get("Total Cost", 0.0)),
        generic=generic,
        raw=doc,
        analyzed=analyze,
    )


def _node(session: Session, n: dict[str, t.Any]) -> PlanNode:
    kind = n.get("Node Type", "?")
    table = n.get("Relation Name")
    index = n.get("Index Name")
    flags: set[str] = set()
    if kind in _SCANS:
        flags.add("full_scan")
    elif kind in _INDEX_SCANS:
        has_cond = "Index Cond" in n or kind.startswith("Bitmap")
        flags.add("index_search" if has_cond else "full_index_scan")
    elif kind in _SORTS:
        flags.add("temp_sort")
    elif kind in _TEMP:
        flags.add("temp_table")
    children = tuple(_node(session, c) for c in n.get("Plans", []))
    detail = kind
    if table:
        alias = n.get("Alias")
        detail += f" on {table}" + (f" {alias}" if alias and alias != table else "")
    if index:
        detail += f" using {index}"
    for key in ("Index Cond", "Hash Cond", "Recheck Cond", "Filter", "Join Filter"):
        if key in n:
            # Every literal the plan prints is masked: a bound value appears there as
            # the database rewrote it (cast, folded by lower()), never as it was sent.
            detail += f" ({key.lower()}: {mask_literals(n[key], POSTGRESQL)})"
    if "Sort Key" in n:
        keys = ", ".join(mask_literals(k, POSTGRESQL) for k in n["Sort Key"])
        detail += f" (sort key: {keys})"
    table_rows = session.table_rows(table) if table and "full_scan" in flags else None
    return PlanNode(
        operation=kind,
        table=table,
        index=index,
        rows=float(n["Plan Rows"]) if "Plan Rows" in n else None,
        cost=float(n["Total Cost"]) if "Total Cost" in n else None,
        flags=frozenset(flags),
        detail=detail,
        children=children,
        table_rows=table_rows,
    )


def table_rows(session: Session, table: str) -> float | None:
    row = session.run(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%(t)s)", {"t": table}
    ).first()
    if row is None:
        return None
    if float(row[0]) >= 0:
        return float(row[0])
    # Never analyzed: count (bounded by the statement timeout).
    quoted = '"' + table.replace('"', '""') + '"'
    row = session.run(f"SELECT count(*) FROM {quoted}").first()
    return float(row[0]) if row else None


def is_table(session: Session, name: str) -> bool:
    row = session.run("SELECT to_regclass(%(t)s) IS NOT NULL", {"t": name}).first()
    return bool(row and row[0])
