"""The plan model: one tree of steps, in the same terms on every database."""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Iterator

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
