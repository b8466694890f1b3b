"""Index advice, verified against the real planner, and rewrite hints.

For each query (a captured shape, or SQL given by hand) the advisor

1. explains it (:mod:`querywatch.explain`) and turns the plan into findings: a full scan
   of a table over ``scan_min_rows``, a sort or temporary table without an index, an
   index left unused because of a function on its column, a leading-wildcard ``LIKE``;
2. builds candidate indexes from the parsed query (sqlglot): equality, range, ``ORDER BY``
   and ``GROUP BY`` columns, join keys on both sides, expressions such as
   ``lower(email)``, single and composite (equality columns first, then one range or sort
   column), and partial indexes where a column is compared to a constant; candidates an
   existing index already covers are dropped;
3. verifies each candidate with the index present: HypoPG on PostgreSQL when the
   extension is installed; else, when DDL is allowed, a real index built inside a
   transaction that is rolled back (SQLite, PostgreSQL) or built and dropped again
   (MariaDB/MySQL, whose DDL commits). A candidate survives only when the estimated cost
   falls by at least half (SQLite, which has no cost: a full scan or a sort becomes an
   index search) and the planner actually uses it;
4. where DDL is allowed, times the query (run and fetched, best of a few) with each
   survivor built, and ranks by measured time: an estimate can fall a hundredfold while
   the real time does not;
5. picks the smallest set of indexes that serves every improved query.

DDL is allowed by default on SQLite only (a rolled-back transaction leaves the file as it
was; writers wait for the build); on PostgreSQL and MariaDB it takes ``allow_ddl=True``
(``--allow-ddl``), meant for dev, CI or a copy of production.
"""

from __future__ import annotations

import re
import time
import typing as t

from .._redact import error_line
from .._sql import check_read_only
from .._sql import number_placeholders
from .._sql import placeholder_values
from .._sql import quiet_parse
from .._sql import render_placeholders
from .._sql import sqlglot_dialect
from ..exceptions import QueryWatchError
from ..explain import Session
from ..fingerprint import quoting_for
from ._analysis import _analyse
from ._analysis import _Analysis
from ._analysis import _bare_name
from ._candidates import _candidates
from ._candidates import _unmeasured
from ._choose import Choosing
from ._indexes import _covered
from ._indexes import _existing_indexes
from ._model import _MYSQL_EFFECTS
from ._model import TIMING_RUNS
from ._model import Advice
from ._model import Candidate
from ._model import Hint
from ._model import IndexNote
from ._model import QueryAdvice
from ._model import QueryInput
from ._model import _norm_key
from ._model import _settle
from ._model import _shown_hint
from ._verify import MIN_MEASURED_SPEEDUP
from ._verify import MIN_TIMED_MS
from ._verify import RETIMES

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable


from ._model import PlanFinding
from ._model import Suggestion
from ._model import no_suggestion_reason

__all__ = [
    "Advice",
    "Advisor",
    "Candidate",
    "Hint",
    "PlanFinding",
    "QueryAdvice",
    "QueryInput",
    "Suggestion",
    "no_suggestion_reason",
]

# --- the advisor -------------------------------------------------------------------------


class Advisor(Choosing):
    """Analyse queries against one database and suggest verified indexes.

    :param database: the application's database (URL or engine).
    :param allow_ddl: build real candidate indexes in the live database (rolled back or
        dropped again) to verify them, and to time the query with each. Default: off;
        then PostgreSQL verifies with HypoPG, SQLite on an in-memory copy of the schema
        and its statistics, MariaDB/MySQL on temporary copies of the tables.
    :param scan_min_rows: a full scan of a table with at least this many rows is a finding.
    :param timeout: seconds any one statement may take.
    :param measure: time the queries where DDL is allowed.
    :param prefer_indexes: plan as if scanning a whole table were very expensive (see
        :class:`~querywatch.explain.Explainer`): on the few rows of a test database a
        full scan then means that no index can serve the query.
    :param unused_window_days: an index is called unused only once the database's usage
        statistics cover this many days (PostgreSQL: since ``stats_reset``, else since
        the server started): a freshly seeded or restarted database has used nothing.
    """

    # --- entry point ---

    def advise(
        self,
        queries: Iterable[QueryInput],
        *,
        index_health: bool = True,
        on_query: Callable[[QueryAdvice], None] | None = None,
    ) -> Advice:
        """Analyse every query; a failure on one is reported on it and the rest go on.
        ``on_query`` is called with each query's advice as it is done (a progress bar)."""
        results: list[QueryAdvice] = []
        for q in queries:
            qa = QueryAdvice(q)
            start = time.perf_counter()
            try:
                self._advise_one(qa)
            except QueryWatchError as e:
                qa.errors.append(str(e))
            except Exception as e:  # a database or parser surprise: say it, go on
                qa.errors.append(f"{type(e).__name__}: {error_line(e, 300)}")
            qa.seconds = time.perf_counter() - start
            results.append(qa)
            if on_query is not None:
                on_query(qa)
        try:
            self._cross_trials(results)
        except Exception as e:
            self.notes.append(f"Candidates were not tried across queries: {e}")
        # A hint quotes the statement, which may be an app's own with values inline:
        # what is shown of it has its literals masked (its runnable form is not shown).
        quoting = quoting_for(self.dialect)
        for qa in results:
            qa.hints = [_shown_hint(h, quoting) for h in qa.hints]
        suggestions = self._choose(results)
        _settle(results, suggestions, self.dialect)
        notes_idx: list[IndexNote] = []
        if index_health and any(qa.plan is not None for qa in results):
            used = {
                _bare_name(name)
                for qa in results
                if qa.plan is not None
                for n in qa.plan.walk()
                if (name := n.index)
            }
            try:
                notes_idx = self._index_health(
                    {u for qa in results for u in self._tables(qa)}, used
                )
            except Exception as e:
                self.notes.append(f"Existing indexes could not be checked: {e}")
        return Advice(self.dialect, results, suggestions, notes_idx, list(self.notes))

    # --- one query ---

    def _advise_one(self, qa: QueryAdvice) -> None:
        q = qa.query
        check_read_only(number_placeholders(q.sql)[0], self.dialect)  # before connecting
        with self.explainer.session() as s:
            an = _analyse(q.sql, self.dialect, lambda tbl: self._columns_of(s, tbl))
            values = self._values(s, q, an)
            if self._generic_plans is None:
                from ..explain import postgresql as pg

                self._generic_plans = (
                    self.dialect == "postgresql" and pg.server_version(s) >= 160000
                )
            # Planned with the real parameters when the app kept some, generically on
            # PostgreSQL 16+, else with values drawn from the data (in memory only).
            qa.plan = s.explain(q.sql, q.params, values=self._plan_values(values))
            qa.hints.extend(an.hints)
            qa.hints = [h for h in qa.hints if self._keeps_rows(s, h)]
            if self.dialect != "sqlite":  # SQLite keeps no functions of its own
                qa.not_run = self._writes_by_function(s, an)
            for h in qa.hints:
                if h._product is not None:
                    self._join_by_foreign_key(s, h)
            if self.measure:
                qa.hints = [h for h in qa.hints if self._rewrite_holds(s, qa, h, values)]
            for h in qa.hints:
                if h._measured_only and h._marked is not None and "Measured " not in h.fix:
                    _unmeasured(h)
            qa.has_limit = an.has_limit
            self._plan_findings(s, qa, an, values)
            candidates = []
            for use in an.tables.values():
                self._equalities[(id(qa), use.table.lower())] = {_norm_key(k) for k in use.eq}
                self._filters[(id(qa), use.table.lower())] = {
                    _norm_key(k) for k in (*use.eq, *use.rng)
                }
            qa.settled = self._settled(s, qa, an)
            found = (
                []
                if qa.settled
                else _candidates(
                    an,
                    self.dialect,
                    lambda tbl, col: self._few_values(
                        s,
                        tbl,
                        col,
                        an.tables[tbl.lower()].schema if tbl.lower() in an.tables else None,
                    ),
                )
            )
            for c in found:
                existing = _existing_indexes(s, c.table, c.schema)
                self._existing[c.table.lower()] = existing
                covered = _covered(c, existing)
                if covered is None:
                    candidates.append(c)
                else:
                    qa.covered.append(covered)
            if self.dialect == "mysql":
                for tbl, _col, expr in an.functions:
                    qa.hints.append(
                        Hint(
                            "expression_needs_generated_column",
                            f"{expr} on {tbl}: MariaDB/MySQL before 8.0.13 cannot index an"
                            " expression",
                            f"Add a generated column (ALTER TABLE {tbl} ADD COLUMN"
                            f" <name> ... AS ({expr}) VIRTUAL, ADD INDEX (<name>)) and"
                            " compare that column in the query.",
                        )
                    )
            qa.values = values
            if values is not None and self.dialect in ("sqlite", "mysql") and q.rows is None:
                qa.widest = self._widest(s, an, values)
        if candidates:
            self._run_trials(qa, candidates)

    def _join_by_foreign_key(self, s: Session, h: Hint) -> None:
        """A cartesian product whose tables one foreign key links (and only one: two
        would be a guess): the hint names that condition and writes the statement
        with it, as ``JOIN … ON``. The rewrite returns fewer rows by design (the pairs
        the key links), so with timing on both are counted, not compared."""
        import sqlglot
        from sqlalchemy import inspect
        from sqlglot import exp

        assert h._product is not None
        marked, apart, joined = h._product
        edges = []
        try:
            with s.savepoint():
                insp = inspect(s.conn)
                for a_alias, a_table, a_schema in apart:
                    for j_alias, j_table, j_schema in joined:
                        for child, parent, fks in (
                            (a_alias, j_alias, insp.get_foreign_keys(a_table, schema=a_schema)),
                            (j_alias, a_alias, insp.get_foreign_keys(j_table, schema=j_schema)),
                        ):
                            other = j_table if child == a_alias else a_table
                            for fk in fks:
                                if str(fk.get("referred_table") or "").lower() == other.lower():
                                    edges.append((a_alias, child, parent, fk))
        except Exception:
            return
        if len(edges) != 1 or len(apart) != 1:
            return
        ((alias, child, parent, fk),) = edges
        gen = sqlglot_dialect(self.dialect)
        try:
            with quiet_parse():
                tree = sqlglot.parse_one(marked, read=gen)
        except Exception:
            return
        join = next(
            (j for j in tree.args.get("joins") or [] if (j.alias_or_name or "").lower() == alias),
            None,
        )
        if join is None or join.args.get("on") is not None or join.args.get("using"):
            return

        def ident(who: str) -> t.Any:
            for node in [tree.args.get("from_") or tree.args.get("from")] + list(
                tree.args.get("joins") or []
            ):
                tb = node.this if node is not None else None
                if isinstance(tb, exp.Table) and (tb.alias_or_name or "").lower() == who:
                    named = tb.args.get("alias")
                    return (named.this if named is not None else tb.this).copy()
            return exp.to_identifier(who)

        pairs = list(zip(fk["constrained_columns"], fk["referred_columns"], strict=False))
        if not pairs:
            return
        on = exp.and_(
            *(
                exp.EQ(
                    this=exp.Column(this=exp.to_identifier(c), table=ident(child)),
                    expression=exp.Column(this=exp.to_identifier(r), table=ident(parent)),
                )
                for c, r in pairs
            )
        )
        join.set("on", on)
        join.set("kind", None)
        h._marked = tree.sql(dialect=gen)
        shown = re.sub(r":qwp\d+\b", "?", h._marked)
        cond = on.sql(dialect=gen)
        h.rewrite = shown
        h.fix = (
            f"Add the missing join condition, {cond} (the one foreign key between them;"
            f" the rewrite returns only the pairs it links). Rewritten: {shown} If the"
            " product is meant, write CROSS JOIN so that it reads as meant."
        )

    def _writes_by_function(self, s: Session, an: _Analysis) -> str | None:
        """Why the statement must only be planned, never run: a function it calls may
        write (``nextval``, a function that inserts). PostgreSQL: any function whose
        ``pg_proc.provolatile`` is ``v`` (volatile; user functions are, unless declared
        otherwise). MariaDB/MySQL: a stored function of the database, or a built-in
        with effects (``NEXTVAL``, ``GET_LOCK``, ``SLEEP``…)."""
        from sqlglot import exp

        names = set()
        for node in an.tree.find_all(exp.Func):
            name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            if name:
                names.add(str(name).lower())
        if not names:
            return None
        try:
            with s.savepoint():
                if self.dialect == "postgresql":
                    rows = s.run(
                        "SELECT DISTINCT proname FROM pg_proc WHERE provolatile = 'v'"
                        " AND proname = ANY(%(n)s)",
                        {"n": sorted(names)},
                    ).all()
                    bad = sorted(str(r[0]) for r in rows)
                else:
                    rows = s.run(
                        "SELECT routine_name FROM information_schema.routines WHERE"
                        " routine_schema = DATABASE() AND routine_type = 'FUNCTION'"
                    ).all()
                    stored = {str(r[0]).lower() for r in rows}
                    bad = sorted(names & (stored | _MYSQL_EFFECTS))
        except Exception:
            return "the functions it calls could not be checked for writes"
        if not bad:
            return None
        return (
            f"it calls {', '.join(bad)}, which may write (not declared IMMUTABLE or STABLE,"
            " or a stored function): planned only, never run or timed"
            if self.dialect == "postgresql"
            else f"it calls {', '.join(bad)}, which may write: planned only, never run or timed"
        )

    def _keeps_rows(self, s: Session, h: Hint) -> bool:
        """Whether a rewrite returns the rows the statement did: the de-duplicated
        columns must hold the table's primary key (else GROUP BY merged rows that the
        rewrite keeps apart)."""
        if h._keyed is None:
            return True
        from sqlalchemy import inspect

        table, schema, columns = h._keyed
        try:
            with s.savepoint():
                pk = inspect(s.conn).get_pk_constraint(table, schema=schema)
        except Exception:
            return False
        keys = {str(c).lower() for c in pk.get("constrained_columns") or []}
        return bool(keys) and keys <= columns

    def _rewrite_holds(
        self, s: Session, qa: QueryAdvice, h: Hint, values: list[t.Any] | None
    ) -> bool:
        """Run a hint's rewrite beside the statement (both read-only SELECTs, with the
        same values): the hint stays only where both return the same rows and the
        rewrite is faster by :data:`MIN_MEASURED_SPEEDUP`, with the figures; a hint
        without a rewrite, or that cannot be run, stays as it is."""
        if h._marked is None or qa.not_run is not None:
            return True
        q = qa.query
        marked, n = number_placeholders(q.sql)
        vals = values
        if q.params is not None:
            vals = placeholder_values(q.sql, q.params)
        if n and (vals is None or len(vals) != n):
            return True
        style = "named" if self.dialect == "sqlite" else "pyformat"
        params = {f"qwp{i + 1}": vals[i] for i in range(n)} if n and vals else None

        def timed(sql: str) -> tuple[list[t.Any], float]:
            check_read_only(sql, self.dialect)
            text = render_placeholders(sql, style, escape_percent=style == "pyformat")
            return self._run_timed(s, text, params)

        if h.kind == "cartesian_product":
            # Fewer rows by design: both are counted, never fetched (the product of
            # two big tables would not fit in memory), and the counts are the figure.
            try:
                with s.savepoint():
                    before_rows, before_ms = timed(f"SELECT count(*) FROM ({marked}) AS qw")
                    after_rows, after_ms = timed(f"SELECT count(*) FROM ({h._marked}) AS qw")
            except Exception:
                return True
            n_before, n_after = int(before_rows[0][0]), int(after_rows[0][0])
            h.fix += (
                f" Measured {before_ms:,.2f} ms for {n_before:,} row{'s' * (n_before != 1)}"
                f" -> {after_ms:,.2f} ms for {n_after:,} row{'s' * (n_after != 1)} with"
                " the join."
            )
            return True
        try:
            with s.savepoint():
                before_rows, before_ms = timed(marked)
                after_rows, after_ms = timed(h._marked)
        except Exception:
            return True  # not measured: the hint says what to try, as before
        same = sorted(map(repr, before_rows)) == sorted(map(repr, after_rows))
        if not same:
            return False
        for _ in range(RETIMES):  # a busy moment slows a run; a slower rewrite stays slower
            if before_ms < MIN_TIMED_MS or after_ms * MIN_MEASURED_SPEEDUP <= before_ms:
                break
            try:
                with s.savepoint():
                    after_ms = min(after_ms, timed(h._marked)[1])
            except Exception:
                break
        if before_ms >= MIN_TIMED_MS and after_ms * MIN_MEASURED_SPEEDUP > before_ms:
            return False
        h.fix += f" Measured {before_ms:,.2f} ms -> {after_ms:,.2f} ms, the same rows."
        return True

    def _run_timed(self, s: Session, text: str, params: t.Any) -> tuple[list[t.Any], float]:
        """Run a read-only statement :data:`TIMING_RUNS` times: its rows, and its best
        time in ms."""
        best, rows = float("inf"), []
        for _ in range(TIMING_RUNS):
            t0 = time.perf_counter()
            rows = s.run(text, params).fetchall()
            best = min(best, time.perf_counter() - t0)
        return rows, best * 1000.0

    def _settled(self, s: Session, qa: QueryAdvice, an: _Analysis) -> str | None:
        """Why no index is tried, when the plan already finds every table's rows by an
        index that covers all its filters (or reads one row by a key), with no sort: a
        build there costs time and cannot help (primary-key lookups on a big table)."""
        plan = qa.plan
        if plan is None or plan.sorts() or not an.tables:
            return None
        nodes = [n for n in plan.walk() if n.table]
        used: list[str] = []
        for use in an.tables.values():
            mine = [n for n in nodes if n.table and n.table.lower() == use.table.lower()]
            if not mine:
                return None
            filters = {_norm_key(k) for k in (*use.eq, *use.rng)}
            for n in mine:
                # PostgreSQL's bitmap heap scan names its index on the child that reads it.
                index = n.index or next(
                    (c.index for c in n.walk() if c.index and "index_search" in c.flags), None
                )
                if index is None or "index_search" not in n.flags:
                    return None
                if n.rows is not None and n.rows <= 1:
                    used.append(index)
                    continue
                if not filters:
                    return None
                keys = next(
                    (
                        cols
                        for name, cols, _partial in _existing_indexes(s, use.table, use.schema)
                        if _bare_name(name) == _bare_name(index)
                    ),
                    None,
                )
                if keys is None or not filters <= set(keys[: len(filters)]):
                    return None
                used.append(index)
        names = ", ".join(dict.fromkeys(used))
        return (
            f"No index to add: the plan already finds its rows by an index that covers"
            f" every filter ({names}), with no sort."
        )

    def _verifier(self) -> str | None:
        """How candidates are verified here: ``hypopg``, ``ddl``, ``copy`` (SQLite: in an
        in-memory copy of the schema and its statistics; MariaDB/MySQL: on temporary
        copies of the tables), or None (PostgreSQL without HypoPG)."""
        if self.dialect == "postgresql":
            with self.explainer.session() as s:
                if self._has_hypopg(s):
                    return "hypopg"
        if self.allow_ddl:
            return "ddl"
        if self.dialect == "postgresql":
            return None
        return "copy"  # SQLite: a schema copy; MariaDB/MySQL: temporary tables

    def _run_trials(self, qa: QueryAdvice, candidates: list[Candidate]) -> None:
        how = self._verifier()
        values = qa.values
        if how is None:
            names = ", ".join(f"{c.table}({c.key_sql()})" for c in candidates[:5])
            why = (
                "HypoPG is not installed in this database (CREATE EXTENSION hypopg;"
                " Debian/Ubuntu package postgresql-<version>-hypopg)"
            )
            qa.errors.append(
                f"{why}: candidates not verified ({names}). Rerun with --allow-ddl on a dev"
                " or CI database or a copy to build each one and roll it back."
            )
            return
        if how == "ddl":
            for c in candidates:
                qa.trials.append(self._try_built(qa, c, values))
            return
        if how == "copy":
            for c in candidates:
                if self.dialect == "mysql":
                    qa.trials.append(self._try_temporary(qa, c, values))
                else:
                    qa.trials.append(self._try_copy(qa, c, values))
            return
        with self.explainer.session() as s:
            new = [self._try_hypopg(s, qa, c, values) for c in candidates]
        qa.trials.extend(new)
        if self.allow_ddl and self.measure:
            for tr in new:
                if tr.improved:
                    self._measure_built(qa, tr, values)

    def _cross_trials(self, results: list[QueryAdvice]) -> None:
        """Try each improving index on the other queries that a shorter index of its
        prefix already helps: one composite index may serve several queries."""
        improving = {
            tr.candidate.norm: tr.candidate for qa in results for tr in qa.trials if tr.improved
        }
        for qa in results:
            if qa.plan is None or not qa.trials:
                continue
            tried = {tr.candidate.norm for tr in qa.trials}
            mine = [tr.candidate.norm for tr in qa.trials if tr.improved]
            extra = [
                c
                for norm, c in improving.items()
                if norm not in tried
                and any(
                    m[0] == norm[0] and m[2] == norm[2] and norm[1][: len(m[1])] == m[1]
                    for m in mine
                )
            ]
            if extra:
                self._run_trials(qa, extra)
