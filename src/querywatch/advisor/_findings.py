"""Findings read from a plan: full scans, sorts and temporary tables without an index,
indexes a function or a leading wildcard keeps the planner from."""

from __future__ import annotations

import typing as t

from .._sql import placeholder_values
from ..explain import Session
from ._analysis import _NO_USE
from ._analysis import _Analysis
from ._analysis import _reads_whole_table
from ._indexes import _ESTIMATED_COUNT
from ._indexes import _column_kinds
from ._indexes import _converts_column
from ._indexes import _existing_indexes
from ._indexes import _value_kind
from ._model import Hint
from ._model import PlanFinding
from ._model import QueryAdvice
from ._model import _norm_key
from ._values import ValueSampling

if t.TYPE_CHECKING:
    pass


class PlanFindings(ValueSampling):
    """Turns plans into findings."""

    # --- findings ---

    def _plan_findings(
        self, s: Session, qa: QueryAdvice, an: _Analysis, values: list[t.Any] | None
    ) -> None:
        plan = qa.plan
        assert plan is not None
        big_scans = []
        for node in plan.walk():
            full = _reads_whole_table(node, an.has_limit)
            if not full or not node.table:
                continue
            if an.has_limit and not an.has_where and not an.has_group and not plan.sorts():
                # Read in index (or row id) order and stopped by the LIMIT: not a scan of
                # the whole table, whatever the plan's words.
                continue
            rows = node.table_rows if node.table_rows is not None else s.table_rows(node.table)
            if rows is not None and rows >= self.scan_min_rows:
                big_scans.append((node, rows))
                filtered = an.has_where or an.tables.get(node.table.lower(), _NO_USE).join
                fix = (
                    "An index on the filtered columns, or a narrower query."
                    if filtered
                    else "The query reads the whole table by design: paginate it, narrow it,"
                    " or cache its result."
                )
                qa.findings.append(
                    PlanFinding(
                        "full_scan",
                        node.table,
                        f"{node.detail}: reads all {rows:,.0f} rows of {node.table}",
                        fix,
                        rows=rows,
                        by_design=not filtered,
                    )
                )
        for node in plan.sorts():
            rows_in = max([c.rows or 0 for c in node.walk() if c is not node] + [node.rows or 0])
            if big_scans or rows_in >= self.scan_min_rows:
                qa.findings.append(
                    PlanFinding(
                        "sort_without_index",
                        None,
                        f"{node.detail}: rows are sorted after being read",
                        "An index whose columns follow the WHERE equality columns with the"
                        " ORDER BY/GROUP BY columns gives the rows in order.",
                    )
                )
        for node in plan.walk():
            if "temp_table" in node.flags and big_scans:
                qa.findings.append(
                    PlanFinding(
                        "temp_table",
                        node.table,
                        f"{node.detail}: an intermediate result is materialized",
                        "Index the grouping/join columns, or narrow the rows first.",
                    )
                )
        scanned = {n.table.lower() for n, _ in big_scans if n.table}
        for table, col, expr in an.functions:
            if table.lower() not in scanned:
                continue
            existing = _existing_indexes(s, table)
            plain = [n for n, keys, _ in existing if keys and keys[0] == _norm_key(col)]
            if plain and not any(keys and keys[0] == _norm_key(expr) for _, keys, _ in existing):
                qa.findings.append(
                    PlanFinding(
                        "function_on_column",
                        table,
                        f"{expr}: the index {plain[0]} on {col} cannot be used through the"
                        " function",
                        f"Compare the bare column ({col} = ...), or index the expression ({expr}).",
                    )
                )
        # An equality on a column that leads an index, and still a full scan: the value
        # is of another type and the database converts the column, row by row. Claimed
        # only where the value's type is known (a literal, or the app's own parameter)
        # and differs from the column's: a plan reads the whole table for other reasons
        # too (every row holds the same value).
        given = placeholder_values(qa.query.sql, qa.query.params) if qa.query.params else None
        for use in an.tables.values():
            if use.table.lower() not in scanned:
                continue
            # Reflected only where an equality could be a cast.
            column_kinds = _column_kinds(s, use.table, use.schema) if use.eq else {}
            # Indexes that narrow the rows; one read from end to end does not count.
            used = {
                n.index
                for n in plan.walk()
                if n.table == use.table and n.index is not None and "index_search" in n.flags
            }
            existing = _existing_indexes(s, use.table, use.schema)
            for col in use.eq:
                leading = [n for n, keys, partial in existing if keys and keys[0] == _norm_key(col)]
                kinds = set(use.eq_kinds.get(col, ()))
                for num in use.eq_params.get(col, ()):
                    kind = _value_kind(given[num - 1]) if given and num <= len(given) else None
                    if kind is not None:
                        kinds.add(kind)
                if (
                    _converts_column(column_kinds.get(_norm_key(col)), kinds)
                    and leading
                    and not used & set(leading)
                    and not any(
                        f.kind == "function_on_column" and f.table == use.table for f in qa.findings
                    )
                ):
                    qa.findings.append(
                        PlanFinding(
                            "implicit_cast",
                            use.table,
                            f"{use.table}.{col} = ...: the index {leading[0]} leads with"
                            f" {col}, yet the plan reads the whole table",
                            "The value's type differs from the column's, so the database"
                            " converts the column on every row: compare a value of the"
                            " column's own type (quote it for a text column), or cast the"
                            " value, never the column.",
                        )
                    )
        for table, col in an.like_leading:
            remedy = {
                "postgresql": (
                    f"CREATE EXTENSION pg_trgm; CREATE INDEX ... ON {table} USING gin"
                    f" ({col} gin_trgm_ops)"
                ),
                "sqlite": f"an FTS5 virtual table over {table}.{col}",
                "mysql": f"a FULLTEXT index on {table}({col}) with MATCH ... AGAINST",
            }[self.dialect]
            qa.findings.append(
                PlanFinding(
                    "leading_wildcard_like",
                    table,
                    f"LIKE '%...' on {table}.{col}: no b-tree index can serve a pattern that"
                    " starts with a wildcard",
                    f"No b-tree index helps. Use a trigram or full-text index: {remedy}; or"
                    " search by prefix (LIKE 'abc%').",
                )
            )
        # Rewrite hints that need the plan's evidence.
        offset = an.offset
        off_value = None
        if offset is not None:
            from sqlglot import exp

            if isinstance(offset, exp.Literal) and offset.is_int:
                off_value = int(offset.this)
        if off_value is not None and off_value >= 1000:
            qa.hints.append(
                Hint(
                    "deep_offset",
                    f"OFFSET {off_value:,}: the database reads and discards {off_value:,} rows",
                    "Paginate by key (WHERE id > :last_seen_id ORDER BY id LIMIT n).",
                )
            )
        root_scans = [(n, r) for n, r in big_scans]
        if root_scans and not an.has_limit and not an.is_count_star and not an.has_where:
            node, rows = root_scans[0]
            qa.hints.append(
                Hint(
                    "unbounded_select",
                    f"No WHERE and no LIMIT on {node.table} ({rows:,.0f} rows)",
                    "Paginate (LIMIT with keyset pagination) or select only what the page shows.",
                )
            )
        # Counting a whole large table: only where the plan reads all of it, and with no
        # filter anywhere (Flask-SQLAlchemy's ``query.filter(...).count()`` counts a
        # filtered subquery, which an index search answers).
        counted = [u.table for u in an.tables.values()]
        from sqlglot import exp

        if an.is_count_star and len(counted) == 1 and an.tree.find(exp.Where) is None:
            count_rows = s.table_rows(counted[0])
            reads_all = counted[0].lower() in {n.table.lower() for n, _ in big_scans if n.table}
            if reads_all and (count_rows or 0) >= self.scan_min_rows:
                assert count_rows is not None
                per = f", run {qa.query.calls:,} times" if qa.query.calls else ""
                qa.hints.append(
                    Hint(
                        "count_large_table",
                        f"COUNT(*) of {counted[0]} ({count_rows:,.0f} rows){per}",
                        "Cache the count (@qw.cached), keep a counter table, or use"
                        f" {_ESTIMATED_COUNT[self.dialect]} where exactness is not needed.",
                    )
                )
