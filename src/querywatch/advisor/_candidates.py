"""Candidate indexes from a query's analysis: equality columns first, then one range or
sort column; expressions and partial indexes."""

from __future__ import annotations

import dataclasses
import typing as t

from ._analysis import _Analysis
from ._model import Candidate
from ._model import Hint
from ._model import _key_column

if t.TYPE_CHECKING:
    pass


def _unmeasured(h: Hint) -> None:
    """A rewrite that stands only once run beside the statement, not run: the hint
    keeps its advice, without the statement it cannot vouch for."""
    h.fix = (
        h.fix.split(" Rewritten: ")[0] + " The rewritten statement is shown once"
        " 'querywatch advise' has run it beside this one and seen the same rows."
    )
    h.rewrite = None
    h._marked = None


def _index_columns(c: Candidate) -> list[str] | None:
    """The columns whose terms a candidate reads its rows by (a partial index's own
    ``WHERE`` included); None where a key is an expression (then the whole ``WHERE``)."""
    columns = [kc[0] for k in c.keys if (kc := _key_column(k)) is not None]
    if len(columns) < len(c.keys):
        return None
    return columns + (_where_columns(c.where) if c.where else [])


def _share_note(share: tuple[float, int], note: str) -> str:
    return (
        f"the filter matches about {share[0]:.0%} of the rows (of {share[1]:,} counted):"
        " reading them by an index is slower than the scan; " + note
    )


def _widest_note(share: float, wide: float, note: str) -> str:
    return (
        f"the range's value is not known (the shape keeps none): the filter matches about"
        f" {share:.0%} of the rows with a value that keeps a tenth, {wide:.0%} at the"
        " range's widest, where reading them by the index is slower than the scan (the"
        " app's own values, as the background advisor has them, decide it); " + note
    )


def _where_columns(where: str) -> list[str]:
    """The columns a partial index's ``WHERE`` names."""
    import sqlglot
    from sqlglot import exp

    try:
        return [c.name for c in sqlglot.parse_one(where).find_all(exp.Column)]
    except Exception:
        return []


def _candidates(
    an: _Analysis,
    dialect: str,
    few_values: t.Callable[[str, str], bool] | None = None,
) -> list[Candidate]:
    """Candidate indexes for the analysed query. ``few_values(table, column)`` says
    whether a column has few distinct values (a partial index on it is worth trying)."""
    out: list[Candidate] = []
    seen: set[t.Any] = set()

    schema: str | None = None

    def add(c: Candidate) -> None:
        if schema:
            c = dataclasses.replace(c, schema=schema)
        if c.keys and c.norm not in seen:
            seen.add(c.norm)
            out.append(c)

    for use in an.tables.values():
        tbl, schema = use.table, use.schema
        eq = list(use.eq)
        for col in eq:
            add(Candidate(tbl, (col,), reason=f"equality on {col}"))
        for col in use.join:
            add(Candidate(tbl, (col,), reason=f"join key {col}"))
            if eq:
                add(Candidate(tbl, (*eq, col), reason=f"equality on {', '.join(eq)}, join key"))
        for col in use.rng:
            add(Candidate(tbl, (col,), reason=f"range on {col}"))
            if eq:
                add(
                    Candidate(
                        tbl, (*eq, col), reason=f"equality on {', '.join(eq)}, then range {col}"
                    )
                )
        if use.order:
            plain = [k.split(" ")[0] for k in use.order]
            dirs = {k.endswith(" DESC") for k in use.order}
            keys = tuple(plain) if len(dirs) == 1 else tuple(use.order)
            add(Candidate(tbl, keys, reason=f"ORDER BY {', '.join(use.order)}"))
            if eq:
                add(
                    Candidate(
                        tbl,
                        (*eq, *[k for k in keys if k not in eq]),
                        reason=f"equality on {', '.join(eq)}, then ORDER BY",
                    )
                )
        if use.group:
            add(Candidate(tbl, tuple(use.group), reason=f"GROUP BY {', '.join(use.group)}"))
            if eq:
                add(
                    Candidate(
                        tbl,
                        (*eq, *[g for g in use.group if g not in eq]),
                        reason=f"equality on {', '.join(eq)}, then GROUP BY",
                    )
                )
        if dialect != "mysql":
            for e in use.exprs:
                add(Candidate(tbl, (e,), reason=f"expression {e}"))
            # Partial: the rest of the equality/order columns, for the rows a constant
            # selects (a low-cardinality column compared to a literal).
            for const in use.consts:
                col = const.split(" = ", 1)[0]
                rest = [k for k in (*eq, *use.rng) if k != col] or [
                    k.split(" ")[0] for k in use.order
                ]
                if rest and (few_values is None or few_values(tbl, col)):
                    add(Candidate(tbl, (rest[0],), where=const, reason=f"rows where {const}"))
    return out
