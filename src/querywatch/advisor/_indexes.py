"""The database's indexes: those that exist, the column types they compare, and whether
one already covers a candidate."""

from __future__ import annotations

import re
import typing as t

from ..explain import Session
from ._model import Candidate
from ._model import _norm_key
from ._model import _sa_dialect

if t.TYPE_CHECKING:
    pass


# --- the database's indexes --------------------------------------------------------------


def _existing_indexes(
    session: Session, table: str, schema: str | None = None
) -> list[tuple[str, tuple[str, ...], bool]]:
    """(name, normalized keys, partial) of every index on ``table``, primary key included."""
    d = session.dialect
    out: list[tuple[str, tuple[str, ...], bool]] = []
    if d == "sqlite":
        q = '"' + table.replace('"', '""') + '"'
        pk = [(r[5], r[1]) for r in session.run(f"PRAGMA table_info({q})") if int(r[5] or 0) > 0]
        if pk:
            out.append(("PRIMARY KEY", tuple(_norm_key(c) for _, c in sorted(pk)), False))
        for row in session.run(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
        ):
            name, sql = row[0], row[1]
            if sql:
                keys, partial = _parse_index_sql(sql, d)
            else:
                cols = session.run(f'PRAGMA index_info("{name}")').all()
                keys, partial = tuple(_norm_key(str(c[2])) for c in cols), False
            out.append((name, keys, partial))
    elif d == "postgresql":
        for row in session.run(
            "SELECT i.indexrelid::regclass::text,"
            " array(SELECT pg_get_indexdef(i.indexrelid, k, true)"
            "       FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k),"
            " i.indpred IS NOT NULL"
            " FROM pg_index i WHERE i.indrelid = to_regclass(%(t)s)",
            {"t": _quoted_table(table, schema, d)},
        ):
            out.append((row[0], tuple(_norm_key(k) for k in row[1]), bool(row[2])))
    else:
        rows = session.run(
            "SELECT index_name, seq_in_index, column_name FROM information_schema.statistics"
            " WHERE table_schema = COALESCE(%(s)s, DATABASE()) AND table_name = %(t)s"
            " ORDER BY index_name, seq_in_index",
            {"t": table, "s": schema},
        ).all()
        by: dict[str, list[str]] = {}
        for name, _seq, col in rows:
            by.setdefault(name, []).append(_norm_key(str(col)))
        out.extend((n, tuple(cols), False) for n, cols in by.items())
    return out


#: Kinds of values, narrowest first: a comparison converts the narrower side, and a
#: column converted on every row (MariaDB: a text column against a number; PostgreSQL:
#: an integer column against a decimal) can no longer use its index.
_KIND_RANK = {"text": 0, "integer": 1, "decimal": 2}


#: Where each database keeps its estimate of a table's rows.
_ESTIMATED_COUNT = {
    "postgresql": "the planner's estimate (pg_class.reltuples)",
    "mysql": "InnoDB's estimate (information_schema.tables.table_rows)",
    "sqlite": "the estimate ANALYZE keeps (the first number of sqlite_stat1.stat)",
}


def _value_kind(value: t.Any) -> str | None:
    """The kind of a parameter's Python value; None for any other."""
    import decimal

    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return "integer"
    if isinstance(value, (float, decimal.Decimal)):
        return "decimal"
    return None


def _literal_kind(literal: t.Any) -> str:
    if literal.is_string:
        return "text"
    return "decimal" if re.search(r"[.eE]", str(literal.this)) else "integer"


def _converts_column(column_kind: str | None, value_kinds: set[str]) -> bool:
    """Whether comparing a column of ``column_kind`` with values of ``value_kinds``
    converts the column (not the value)."""
    if column_kind is None:
        return False
    rank = _KIND_RANK[column_kind]
    return any(_KIND_RANK[k] > rank for k in value_kinds)


def _column_kinds(session: Session, table: str, schema: str | None) -> dict[str, str]:
    """Per column of ``table`` (normalized name): "text" or "number" where its declared
    type is one of those (SQLAlchemy's reflection of the live table)."""
    from sqlalchemy import inspect
    from sqlalchemy import types

    out: dict[str, str] = {}
    try:
        columns = inspect(session.conn).get_columns(table, schema=schema)
    except Exception:
        return out
    for column in columns:
        kind = column["type"]
        if isinstance(kind, types.String):
            out[_norm_key(column["name"])] = "text"
        elif isinstance(kind, types.Integer):
            out[_norm_key(column["name"])] = "integer"
        elif isinstance(kind, types.Numeric):
            out[_norm_key(column["name"])] = "decimal"
    return out


def _quoted_table(table: str, schema: str | None, dialect: str) -> str:
    """``schema.table`` quoted where ``dialect`` needs it (``"user"``, ``app."Order"``)."""
    from sqlalchemy import MetaData
    from sqlalchemy import Table

    preparer = _sa_dialect(dialect).identifier_preparer
    return str(preparer.format_table(Table(table, MetaData(), schema=schema)))


def _parse_index_sql(sql: str, dialect: str) -> tuple[tuple[str, ...], bool]:
    m = re.search(r"\((.*)\)(\s+WHERE\s+(.*))?\s*$", sql, re.S | re.I)
    if not m:
        return (), False
    inner = m.group(1)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    keys = []
    for p in parts:
        p = re.sub(r"\s+(ASC|DESC)\s*$", "", p.strip(), flags=re.I)
        p = re.sub(r"\s+COLLATE\s+\S+$", "", p, flags=re.I)
        if p.startswith("(") and p.endswith(")"):
            p = p[1:-1]
        keys.append(_norm_key(p))
    return tuple(keys), bool(m.group(2))


def _covered(c: Candidate, existing: list[tuple[str, tuple[str, ...], bool]]) -> str | None:
    keys = tuple(_norm_key(k.split(" ")[0]) if " DESC" in k else _norm_key(k) for k in c.keys)
    for name, idx_keys, partial in existing:
        if partial and not c.where:
            continue
        if idx_keys[: len(keys)] == keys:
            return name
    return None
