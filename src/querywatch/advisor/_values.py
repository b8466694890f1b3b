"""Values for a query's placeholders, drawn from the data (the widest, the most common),
for the databases that plan only with values."""

from __future__ import annotations

import contextlib
import typing as t

from .._sql import filter_terms
from .._sql import number_placeholders
from .._sql import render_placeholders
from ..explain import Session
from ..explain.names import translate_error
from ._analysis import _Analysis
from ._base import AdvisorBase
from ._indexes import _quoted_table
from ._model import FEW_VALUES
from ._model import MCV_CHOICES
from ._model import MCV_SAMPLE
from ._model import QueryInput

if t.TYPE_CHECKING:
    pass


class ValueSampling(AdvisorBase):
    """Draws parameter values from the database."""

    def _columns_of(self, s: Session, table: str) -> set[str]:
        key = table.lower()
        if key not in self._columns:
            cols: set[str] = set()
            with contextlib.suppress(Exception), s.savepoint():
                if self.dialect == "sqlite":
                    q = '"' + table.replace('"', '""') + '"'
                    cols = {str(r[1]).lower() for r in s.run(f"PRAGMA table_info({q})")}
                elif self.dialect == "postgresql":
                    cols = {
                        str(r[0]).lower()
                        for r in s.run(
                            "SELECT attname FROM pg_attribute WHERE attrelid ="
                            " to_regclass(%(t)s) AND attnum > 0 AND NOT attisdropped",
                            {"t": table},
                        )
                    }
                else:
                    cols = {
                        str(r[0]).lower()
                        for r in s.run(
                            "SELECT column_name FROM information_schema.columns WHERE"
                            " table_schema = DATABASE() AND table_name = %(t)s",
                            {"t": table},
                        )
                    }
            self._columns[key] = cols
        return self._columns[key]

    def _values(self, s: Session, q: QueryInput, an: _Analysis) -> list[t.Any] | None:
        """Values for a shape's placeholders, drawn from the data: a value the column
        holds (middle of the table), 20 for a LIMIT, 0 for an OFFSET."""
        if q.params is not None:
            return None
        _, n = number_placeholders(q.sql)
        if n == 0:
            return None
        # The equalities on one table take their values from one row, so that together
        # they match rows (two values drawn apart may match none: "Impossible WHERE").
        eqs: dict[str, list[str]] = {}
        for i in range(1, n + 1):
            info = an.placeholders.get(i)
            if info is not None and info[2] not in ("limit", "offset", "ge", "le"):
                eqs.setdefault(info[0], [])
                if info[1] not in eqs[info[0]]:
                    eqs[info[0]].append(info[1])
        matched = self._values_for_rows(s, q, an, n)
        if matched is not None:
            return matched
        rows: dict[str, dict[str, t.Any]] = {}
        for table, targets in eqs.items():
            use = an.tables.get(table.lower())
            rows[table] = self._row(s, table, targets, use.schema if use else None)
        out: list[t.Any] = []
        for i in range(1, n + 1):
            info = an.placeholders.get(i)
            if info is None:
                # Unknown type: a string the database converts as the context needs.
                out.append("1")
                continue
            table, target, op = info
            if op == "limit":
                out.append(20)
            elif op == "offset":
                out.append(0)
            elif target in rows.get(table, {}):
                out.append(rows[table][target])
            else:
                use = an.tables.get(table.lower())
                out.append(self._sample(s, table, target, op, use.schema if use else None))
        return out

    def _values_for_rows(
        self, s: Session, q: QueryInput, an: _Analysis, n: int
    ) -> list[t.Any] | None:
        """Values for a one-table filter's placeholders that match about as many rows as
        the app's calls returned (the store counts rows, never values): among the most
        common values of each equality and a range's widest, tenth and hundredth, the
        combination whose share of the table (each value's share multiplied) is nearest.
        None where the rows returned are not the rows matched (a LIMIT, a join, a
        GROUP BY, an aggregate) or no placeholder has a choice."""
        if q.rows is None or an.has_limit or an.has_group or an.is_count_star:
            return None
        if len(an.tables) != 1 or filter_terms(number_placeholders(q.sql)[0], self.dialect) is None:
            return None
        use = next(iter(an.tables.values()))
        total = s.table_rows(use.table) or 0.0
        if total < 1:
            return None
        quoted = _quoted_table(use.table, use.schema, self.dialect)
        options: list[list[tuple[t.Any, float]]] = []
        for i in range(1, n + 1):
            info = an.placeholders.get(i)
            if info is None or info[2] not in ("eq", "ge", "le"):
                return None
            _, target, op = info
            try:
                with s.savepoint():
                    if op == "eq":
                        found = s.run(
                            f"SELECT v, count(*) FROM (SELECT {target} AS v FROM {quoted}"
                            f" WHERE {target} IS NOT NULL LIMIT {MCV_SAMPLE}) AS s"
                            f" GROUP BY v ORDER BY count(*) DESC LIMIT {MCV_CHOICES}"
                        ).all()
                        every = s.run(
                            f"SELECT count(*) FROM (SELECT {target} FROM {quoted}"
                            f" WHERE {target} IS NOT NULL LIMIT {MCV_SAMPLE}) AS s"
                        ).first()
                        sampled = int(every[0]) if every else 0
                        if not found or int(found[0][1]) < 2 or not sampled:
                            return None  # no value repeats: nothing to choose
                        options.append([(r[0], int(r[1]) / sampled) for r in found])
                    else:
                        edge = s.run(
                            f"SELECT {'min' if op == 'ge' else 'max'}({target}) FROM {quoted}"
                        ).first()
                        choice = [(edge[0], 1.0)] if edge and edge[0] is not None else []
                        order = " DESC" if op == "ge" else ""
                        for share in (0.1, 0.01):
                            row = s.run(
                                f"SELECT {target} FROM {quoted} WHERE {target} IS NOT NULL"
                                f" ORDER BY {target}{order} LIMIT 1 OFFSET {int(total * share)}"
                            ).first()
                            if row is not None:
                                choice.append((row[0], share))
                        if not choice:
                            return None
                        options.append(choice)
            except Exception:
                return None
        if not options or all(len(o) < 2 for o in options):
            return None
        import itertools
        import math

        want = max(q.rows, 0.5) / total
        best: tuple[float, list[t.Any]] | None = None
        for k, combo in enumerate(itertools.product(*options)):
            if k >= 256:
                break
            share = math.prod(sh for _, sh in combo)
            gap = abs(math.log(max(share, 1e-9)) - math.log(want))
            if best is None or gap < best[0]:
                best = (gap, [v for v, _ in combo])
        return best[1] if best is not None else None

    def _widest(self, s: Session, an: _Analysis, values: list[t.Any]) -> list[t.Any] | None:
        """``values`` with each range placeholder at the column's end that keeps every
        row (its smallest for ``>``, its largest for ``<``); None without a range."""
        out, changed = list(values), False
        for i in range(len(values)):
            info = an.placeholders.get(i + 1)
            if info is None or info[2] not in ("ge", "le"):
                continue
            table, target, op = info
            use = an.tables.get(table.lower())
            quoted = _quoted_table(table, use.schema if use else None, self.dialect)
            sql = f"SELECT {'min' if op == 'ge' else 'max'}({target}) FROM {quoted}"
            try:
                with s.savepoint():
                    row = s.run(sql).first()
            except Exception:
                return None
            if row is not None and row[0] is not None:
                out[i], changed = row[0], True
        return out if changed else None

    def _row(
        self, s: Session, table: str, targets: list[str], schema: str | None
    ) -> dict[str, t.Any]:
        """Values for the equalities ``targets`` on ``table``, from one row: one that has
        the value most rows have in the first target (see :meth:`_sample`), else one
        from the middle of the table. Empty when the table has no such row."""
        first = self._sample(s, table, targets[0], "eq", schema)
        if len(targets) == 1:
            return {targets[0]: first}
        quoted = _quoted_table(table, schema, self.dialect)
        style = "named" if self.dialect == "sqlite" else "pyformat"
        sql = render_placeholders(
            f"SELECT {', '.join(targets)} FROM {quoted} WHERE {targets[0]} = :qwp1",
            style,
            escape_percent=style == "pyformat",
        )
        try:
            with s.savepoint():
                row = s.run(sql + " LIMIT 1", {"qwp1": first}).first()
        except Exception as e:
            raise translate_error(e, s) from None
        return dict(zip(targets, row, strict=True)) if row is not None else {targets[0]: first}

    def _few_values(self, s: Session, table: str, column: str, schema: str | None = None) -> bool:
        """At most :data:`FEW_VALUES` distinct values in ``table.column`` (reading stops
        as soon as there are more)."""
        q = '"' if self.dialect != "mysql" else "`"
        if column[:1] not in ('"', "`"):  # a key part keeps the statement's own quotes
            column = f"{q}{column}{q}"
        quoted = _quoted_table(table, schema, self.dialect)
        sql = (
            f"SELECT count(*) FROM (SELECT DISTINCT {column} FROM {quoted}"
            f" LIMIT {FEW_VALUES + 1}) AS d"
        )
        try:
            with s.savepoint():
                row = s.run(sql).first()
        except Exception:
            return False
        return bool(row is not None and int(row[0]) <= FEW_VALUES)

    def _plan_values(self, values: list[t.Any] | None) -> list[t.Any] | None:
        """The values a shape is planned with: none on PostgreSQL 16+ (GENERIC_PLAN),
        else those drawn from the data. (Timing always uses them.)"""
        return None if self._generic_plans else values

    def _sample(
        self, s: Session, table: str, target: str, op: str, schema: str | None = None
    ) -> t.Any:
        """A value ``target`` holds: for an equality, the one most rows have (among the
        first :data:`MCV_SAMPLE` rows: the value most requests ask for is the one most
        rows hold far more often than one from the middle of the table), else, where
        no value repeats, one from the middle of the table; for a range, one that keeps
        the newest (or oldest) tenth, as ranges usually do."""
        rows = s.table_rows(table) or 0
        quoted = _quoted_table(table, schema, self.dialect)
        if op not in ("ge", "le"):
            common = (
                f"SELECT v, count(*) FROM (SELECT {target} AS v FROM {quoted}"
                f" WHERE {target} IS NOT NULL LIMIT {MCV_SAMPLE}) AS s"
                " GROUP BY v ORDER BY count(*) DESC LIMIT 1"
            )
            try:
                with s.savepoint():
                    row = s.run(common).first()
            except Exception as e:
                raise translate_error(e, s) from None
            if row is not None and int(row[1]) > 1:
                return row[0]
        order = ""
        offset = int(rows // 2)
        if op in ("ge", "le"):
            order = f" ORDER BY {target}" + (" DESC" if op == "ge" else "")
            offset = int(rows // 10)
        sql = (
            f"SELECT {target} FROM {quoted} WHERE {target} IS NOT NULL{order}"
            f" LIMIT 1 OFFSET {offset}"
        )
        try:
            with s.savepoint():
                row = s.run(sql).first()
                if row is None and offset:
                    row = s.run(sql.rsplit(" OFFSET", 1)[0]).first()
        except Exception as e:
            raise translate_error(e, s) from None
        return row[0] if row is not None else 1
