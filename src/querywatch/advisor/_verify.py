"""Verifying a candidate with the index present (HypoPG, a schema copy, temporary tables
or a real index rolled back) and timing the query with it."""

from __future__ import annotations

import contextlib
import time
import typing as t

from .._redact import error_line
from .._sql import check_read_only
from .._sql import number_placeholders
from .._sql import placeholder_values
from .._sql import render_placeholders
from ..explain import Plan
from ..explain import Session
from ._analysis import _bare_name
from ._analysis import _reads_whole_table
from ._analysis import _strip_order
from ._candidates import _index_columns
from ._candidates import _share_note
from ._candidates import _widest_note
from ._findings import PlanFindings
from ._model import MIN_COST_FALL
from ._model import TIMING_RUNS
from ._model import Candidate
from ._model import IndexNote
from ._model import QueryAdvice
from ._model import Trial

if t.TYPE_CHECKING:
    pass


class Verification(PlanFindings):
    """Tries candidates against the planner and the clock."""

    # --- verification ---

    def _has_hypopg(self, s: Session) -> bool:
        if self._hypopg is None:
            row = s.run("SELECT count(*) FROM pg_extension WHERE extname = 'hypopg'").first()
            self._hypopg = bool(row and row[0])
            if not self._hypopg:
                self.notes.append(
                    "HypoPG is not installed in this database, so PostgreSQL candidates are"
                    " verified only with --allow-ddl (CREATE EXTENSION hypopg enables"
                    " hypothetical indexes; Debian/Ubuntu: postgresql-<version>-hypopg)."
                )
        return self._hypopg

    def _judge(
        self,
        qa: QueryAdvice,
        c: Candidate,
        after: Plan,
        index_used: t.Callable[[str], bool],
        *,
        before: Plan | None = None,
    ) -> tuple[bool, bool, str]:
        before = before or qa.plan
        assert before is not None
        used = any(index_used(n.index) for n in after.walk() if n.index)
        if not used:
            return False, False, "the planner did not use it"
        if self.dialect != "sqlite" and before.cost is not None and after.cost is not None:
            improved = after.cost <= before.cost * (1 - MIN_COST_FALL)
            note = f"estimated cost {before.cost:,.1f} -> {after.cost:,.1f}"
            if not improved:
                note += " (falls by less than half)"
            return used, improved, note
        # SQLite: no cost. A full scan of the table or a sort must give way to the index.
        tbl = c.table.lower()
        limited = qa.has_limit
        scan_before = any(
            n.table and n.table.lower() == tbl and _reads_whole_table(n, limited)
            for n in before.walk()
        )
        scan_after = any(
            n.table and n.table.lower() == tbl and _reads_whole_table(n, limited)
            for n in after.walk()
        )
        sorts_before, sorts_after = len(before.sorts()), len(after.sorts())
        searched = any(
            n.table
            and n.table.lower() == tbl
            and "index_search" in n.flags
            and index_used(n.index or "")
            for n in after.walk()
        )
        rows, fewer, as_many = "", False, False
        if before.cost is not None and after.cost is not None:
            rows = f" (estimated rows read {before.cost:,.0f} -> {after.cost:,.0f})"
            fewer = after.cost * MIN_MEASURED_SPEEDUP <= before.cost
            as_many = not fewer
        if sorts_after < sorts_before and not (scan_after and not scan_before):
            return used, True, "the sort is gone: the index gives the order" + rows
        if as_many:
            # A search that reads as many rows as the scan did (a table of one row, or
            # statistics that say so) is no gain to verify.
            return used, False, "the index reads as many rows as the plan without it" + rows
        if scan_before and not scan_after and searched:
            return used, True, "a full scan becomes an index search" + rows
        if searched and fewer and not scan_after:
            # A scan of a whole index (or a search on a worse one) becomes a search that
            # reads fewer rows: SEARCH … USING INDEX (followed_id=?) instead of a SCAN.
            return used, True, "an index search reads fewer rows" + rows
        return used, False, "the plan is no better (the scan or the sort remains)" + rows

    def _try_hypopg(
        self, s: Session, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None
    ) -> Trial:
        before = qa.plan
        assert before is not None
        try:
            row = s.run(
                "SELECT indexrelid FROM hypopg_create_index(%(d)s)", {"d": c.ddl("postgresql")}
            ).first()
            oid = int(row[0]) if row else -1
            try:
                after = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
            finally:
                s.run("SELECT hypopg_reset()")
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, "hypopg", self._failed(e))
        used, improved, note = self._judge(qa, c, after, lambda name: name.startswith(f"<{oid}>"))
        return Trial(c, before.cost, after.cost, after, used, improved, "hypopg", note)

    def _try_copy(self, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None) -> Trial:
        """SQLite: plan the query with the candidate in an in-memory copy of the schema
        and its statistics (the candidate's estimated from a sample of the live rows):
        the live file is only read, and no writer of the app waits."""
        from ..explain import sqlite as lite

        before = qa.plan
        assert before is not None
        how = "planned on a schema copy"
        name = c.name("qw_candidate")
        try:
            with self.explainer.session() as live:
                if self._copy is None:
                    self._copy = lite.memory_copy(live, timeout=self.explainer.timeout)
                tables = self._tables(qa) | {c.table}
                counts = {tb: live.table_rows(tb) for tb in tables}
                lite.add_table_stats(self._copy, {k: v for k, v in counts.items() if v})
                key = c.norm
                if key not in self._stats:
                    self._stats[key] = lite.candidate_stat(
                        live, c.table, [_strip_order(k) for k in c.keys], c.where,
                        counts.get(c.table) or 0.0,
                    )  # fmt: skip
                stat = self._stats[key]
            with self._copy.session(writable=True) as s:
                base = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
                with s.savepoint():
                    s.run(c.ddl("sqlite", name=name))
                    if stat is not None:
                        s.run("INSERT INTO sqlite_stat1 VALUES (?, ?, ?)", (c.table, name, stat))
                    s.run("ANALYZE sqlite_master")
                    after = s.explain(
                        qa.query.sql, qa.query.params, values=self._plan_values(values)
                    )
                s.run("ANALYZE sqlite_master")
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, how, self._failed(e))
        used, improved, note = self._judge(
            qa, c, after, lambda n: n.lower() == name.lower(), before=base
        )
        share = None
        marked = number_placeholders(qa.query.sql)[0]
        rows = counts.get(c.table) or 0.0
        columns = _index_columns(c)
        if improved and not qa.has_limit:
            # Counted on the live rows (a sample of a big table, by rowid).
            vals = values
            if qa.query.params is not None:
                vals = placeholder_values(qa.query.sql, qa.query.params)
            with contextlib.suppress(Exception), self.explainer.session() as live:
                share = lite.matching_share(live, marked, vals, rows, columns)
        if improved and share is not None and share[0] >= MAX_INDEXED_SHARE:
            # SQLite takes a range for a quarter of the rows, whatever it matches.
            improved, note = False, _share_note(share, note)
        elif improved and share is not None and qa.widest is not None:
            # A shape from the store keeps no values: the app's range may be the
            # widest (``amount > 0``), and SQLite would read it all by the index.
            with contextlib.suppress(Exception), self.explainer.session() as live:
                wide = lite.matching_share(live, marked, qa.widest, rows, columns)
                if wide is not None and wide[0] >= MAX_INDEXED_SHARE:
                    improved, note = False, _widest_note(share[0], wide[0], note)
        return Trial(c, base.cost, after.cost, after, used, improved, how, note)

    def _try_temporary(self, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None) -> Trial:
        """MariaDB/MySQL, without DDL on the live tables: the candidate is built on a
        temporary copy of its table (one connection's own, read once without row locks)
        and the query planned (and, with ``measure``, timed) there, with and without it."""
        from ..explain import mysql as my

        before = qa.plan
        assert before is not None
        how = "built on a temporary copy"
        try:
            if self._temporary is None:
                self._temporary = my.TemporaryCopy(self.explainer, max_rows=my.COPY_MAX_ROWS)
            self._temporary.shadow(c.table, c.schema)
            s = self._temporary.session
            base = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
            before_ms = self._time(s, qa, values) if self.measure else None
            after_ms = None
            with self._built(s, c) as name:
                after = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
                used, improved, note = self._judge(
                    qa, c, after, lambda n: n.lower() == name.lower(), before=base
                )
                text = note
                if improved and self.measure:
                    after_ms, improved, note = self._timed_verdict(
                        s, qa, values, improved, note, before_ms
                    )
            before_ms, improved, note = self._second_look(
                s, qa, values, improved, note, text, before_ms, after_ms
            )
            if improved and not qa.has_limit and qa.not_run is None:
                # As on SQLite: MariaDB takes a covering index for a filter most rows
                # pass (amount > 0: 0.9x measured), and a range whose value the shape
                # does not keep may be the widest.
                marked = number_placeholders(qa.query.sql)[0]
                vals = values
                if qa.query.params is not None:
                    vals = placeholder_values(qa.query.sql, qa.query.params)
                share = self._temporary.matching_share(marked, vals, _index_columns(c))
                wide = None
                if qa.widest is not None:
                    wide = self._temporary.matching_share(marked, qa.widest, _index_columns(c))
                if share is not None and share[0] >= MAX_INDEXED_SHARE:
                    improved, note = False, _share_note(share, note)
                elif share is not None and wide is not None and wide[0] >= MAX_INDEXED_SHARE:
                    improved, note = False, _widest_note(share[0], wide[0], note)
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, how, self._failed(e))
        return Trial(
            c, base.cost, after.cost, after, used, improved, how, note, before_ms, after_ms
        )

    def _failed(self, e: Exception) -> str:
        """A trial's note for an error: a statement stopped by the timeout says the
        figure and how to raise it."""
        orig = getattr(e, "orig", e)
        first = str(orig).strip().splitlines()[0][:200] if str(orig).strip() else ""
        low = first.lower()
        if "interrupted" in low or "statement timeout" in low or "max_statement_time" in low:
            return (
                f"failed: timed out: the build took longer than the"
                f" {self.explainer.timeout:g} s statement timeout and was stopped; raise it"
                " with 'querywatch advise --timeout' or QUERYWATCH_ADVISE_TIMEOUT"
            )
        return f"failed: {first or type(e).__name__}"

    @contextlib.contextmanager
    def _built(self, s: Session, c: Candidate) -> t.Iterator[str]:
        """The candidate as a real index, gone again when the block ends."""
        name = c.name("qw_candidate")
        if self.dialect == "mysql":
            with contextlib.suppress(Exception):
                s.run(c.drop_ddl("mysql", name))
            s.run(c.ddl("mysql", name=name))
            try:
                yield name
            finally:
                s.run(c.drop_ddl("mysql", name))
        else:
            with s.savepoint():
                s.run(c.ddl(self.dialect, name=name))
                if self.dialect == "sqlite":
                    s.run(f'ANALYZE "{name}"')
                yield name

    def _time(self, s: Session, qa: QueryAdvice, values: list[t.Any] | None) -> float | None:
        if qa.not_run is not None:
            return None  # planned only: a function it calls may write
        q = qa.query
        if q.params is not None:
            sql, params = q.sql, q.params
        else:
            marked, n = number_placeholders(q.sql)
            if n and values is None:
                return None
            if n:
                assert values is not None
                style = "named" if self.dialect == "sqlite" else "pyformat"
                sql = render_placeholders(marked, style, escape_percent=style == "pyformat")
                params = {f"qwp{i + 1}": values[i] for i in range(n)}
            else:
                sql, params = q.sql, None
        check_read_only(q.sql, self.dialect)
        best = None
        for _ in range(TIMING_RUNS):
            t0 = time.perf_counter()
            s.run(sql, params).fetchall()
            dt_ = time.perf_counter() - t0
            best = dt_ if best is None else min(best, dt_)
        return None if best is None else round(best * 1000.0, 3)

    def _round_trip(self, s: Session) -> float | None:
        """The median time of a statement that reads nothing, in ms: what this machine
        adds to any statement's timing now (the processor's queue, the connection)."""
        try:
            runs = []
            for _ in range(TIMING_RUNS):
                t0 = time.perf_counter()
                s.run("SELECT 1", None).fetchall()
                runs.append(time.perf_counter() - t0)
        except Exception:  # a timing aid only: without it the clock judges as before
            return None
        return round(sorted(runs)[len(runs) // 2] * 1000.0, 3)

    def _try_built(self, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None) -> Trial:
        before = qa.plan
        assert before is not None
        how = "built and dropped" if self.dialect == "mysql" else "built and rolled back"
        try:
            with self.explainer.session(writable=True) as s:
                measured_before = None
                if self.measure:
                    measured_before = qa.measured_ms = qa.measured_ms or self._time(s, qa, values)
                with self._built(s, c) as name:
                    after = s.explain(
                        qa.query.sql, qa.query.params, values=self._plan_values(values)
                    )
                    used, improved, base = self._judge(
                        qa, c, after, lambda n: n.lower() == name.lower()
                    )
                    note = base
                    measured_after = None
                    if improved and self.measure:
                        measured_after, improved, note = self._timed_verdict(
                            s, qa, values, improved, note, measured_before
                        )
                measured_before, improved, note = self._second_look(
                    s, qa, values, improved, note, base, measured_before, measured_after
                )
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, how, self._failed(e))
        return Trial(
            c,
            before.cost,
            after.cost,
            after,
            used,
            improved,
            how,
            note,
            measured_before,
            measured_after,
        )

    def _timed_verdict(
        self,
        s: Session,
        qa: QueryAdvice,
        values: list[t.Any] | None,
        improved: bool,
        note: str,
        before_ms: float | None,
    ) -> tuple[float | None, bool, str]:
        """Time the query with the index present and let the clock confirm the plan's
        verdict. When the clock is about to veto what the plan shows, it is timed again
        (:data:`RETIMES` times, the best run counting): a busy moment only slows a run,
        and an index that is slower stays slower however often it runs."""
        if qa.not_run is not None:
            return None, improved, f"{note}; not timed: {qa.not_run}"
        after_ms = self._time(s, qa, values)
        round_trip = self._round_trip(s)
        for _ in range(RETIMES):
            if not improved or after_ms is None:
                break
            if _confirm(improved, note, before_ms, after_ms, round_trip)[0]:
                break
            again = self._time(s, qa, values)
            if again is None:
                break
            after_ms = min(after_ms, again)
        confirmed, note = _confirm(improved, note, before_ms, after_ms, round_trip)
        return after_ms, confirmed, note

    def _second_look(
        self,
        s: Session,
        qa: QueryAdvice,
        values: list[t.Any] | None,
        improved: bool,
        note: str,
        base: str,
        before_ms: float | None,
        after_ms: float | None,
    ) -> tuple[float | None, bool, str]:
        """A gain the clock passed by less than :data:`MARGINAL_SPEEDUP` is timed again
        without the index (dropped by now), as the run with it was before a veto: the
        best run counts on both sides, so one slow moment before the build cannot pass
        an index that is no faster (``status = 'done'``, nine rows in ten: measured
        1.3x once, 1.0x when built)."""
        if not improved or before_ms is None or after_ms is None or before_ms < MIN_TIMED_MS:
            return before_ms, improved, note
        for _ in range(RETIMES):
            if after_ms * MARGINAL_SPEEDUP <= before_ms:
                break
            again = self._time(s, qa, values)
            if again is None or again >= before_ms:
                break
            before_ms = qa.measured_ms = again
            improved, note = _confirm(True, base, before_ms, after_ms, self._round_trip(s))
            if not improved:
                break
        return before_ms, improved, note

    def _measure_built(self, qa: QueryAdvice, tr: Trial, values: list[t.Any] | None) -> None:
        try:
            with self.explainer.session(writable=True) as s:
                if qa.measured_ms is None:
                    qa.measured_ms = self._time(s, qa, values)
                tr.measured_before_ms = qa.measured_ms
                base = tr.note
                with self._built(s, tr.candidate):
                    tr.measured_after_ms, tr.improved, tr.note = self._timed_verdict(
                        s, qa, values, tr.improved, tr.note, tr.measured_before_ms
                    )
                tr.measured_before_ms, tr.improved, tr.note = self._second_look(
                    s, qa, values, tr.improved, tr.note, base, tr.measured_before_ms,
                    tr.measured_after_ms,
                )  # fmt: skip
        except Exception as e:
            tr.note += f"; not timed: {error_line(e)}"


def _keep_a_leading_index(
    notes: list[IndexNote], leading: dict[tuple[str, str], str]
) -> list[IndexNote]:
    """The notes, less any that would, with those kept before it, drop every index that
    a column leads (a redundant index and the unused one that made it redundant)."""
    kept: list[IndexNote] = []
    gone: set[tuple[str, str]] = set()
    for note in sorted(notes, key=lambda n: n.kind != "redundant"):
        key = (note.table, _bare_name(note.index))
        col = leading.get(key)
        if col is not None:
            same = {k for k, c in leading.items() if k[0] == note.table and c == col}
            if len(same) > 1 and same <= gone | {key}:
                continue
        kept.append(note)
        gone.add(key)
    return kept


def _beats(longer: dict[int, Trial], shorter: dict[int, Trial]) -> bool:
    """Whether an index with more columns is worth them over one with fewer, serving the
    same queries: no worse on any query and clearly better on one, by the clock where
    both were timed past :data:`MIN_TIMED_MS` (10% faster), else by the estimate (half
    the cost)."""
    if longer.keys() != shorter.keys():
        return False
    clearly = False
    for q, a in longer.items():
        b = shorter[q]
        if (
            a.measured_after_ms is not None
            and b.measured_after_ms is not None
            and max(a.measured_after_ms, b.measured_after_ms) >= MIN_TIMED_MS
        ):
            x, y, margin = a.measured_after_ms, b.measured_after_ms, 1.1
        elif a.cost_after is not None and b.cost_after is not None:
            x, y, margin = a.cost_after, b.cost_after, 2.0
        else:
            return False
        if x > y * 1.05:
            return False
        if x * margin <= y:
            clearly = True
    return clearly


def _no_worse(a: dict[int, Trial], b: dict[int, Trial], margin: float) -> bool:
    """Whether index ``a`` is within ``margin`` of index ``b`` on every query both serve:
    by the clock where both were timed, else by the estimate."""
    if a.keys() != b.keys():
        return False
    for q, x in a.items():
        y = b[q]
        if x.measured_after_ms is not None and y.measured_after_ms is not None:
            if x.measured_after_ms > max(y.measured_after_ms, MIN_TIMED_MS / 2) * margin:
                return False
        elif x.cost_after is not None and y.cost_after is not None:
            if x.cost_after > y.cost_after * margin:
                return False
        else:
            return False
    return True


#: An estimated index is not suggested for a filter that matches this share of the rows
#: or more (SQLite's planner takes a range for a quarter, whatever it matches).
MAX_INDEXED_SHARE = 0.2

#: An index that adds a column the query filters by is preferred unless its estimate
#: (or timing) is this much worse: a wider index costs the planner a little more to
#: read (PostgreSQL put (kind, amount) at 142.6 against 103.0 for (kind)), where reading
#: only the rows the range keeps is the larger gain.
WIDER_INDEX_MARGIN = 1.5

#: Where the query could be timed, an index must make it at least this much faster.
MIN_MEASURED_SPEEDUP = 1.25
#: Times an index's timing is taken again before the clock vetoes what the plan shows.
RETIMES = 3
#: A measured gain under this is timed again without the index before it stands.
MARGINAL_SPEEDUP = 2.0
#: Queries faster than this are not judged by the clock.
MIN_TIMED_MS = 2.0
#: Nor are queries within this many times a bare round trip (``SELECT 1``, timed beside
#: them): on a busy machine, waiting for the processor takes milliseconds of every
#: statement, and a scan of 3 ms "measured" slower than an index lookup of 0.1 ms.
NOISE_TIMES = 4.0


def _confirm(
    improved: bool,
    note: str,
    before_ms: float | None,
    after_ms: float | None,
    round_trip_ms: float | None = None,
) -> tuple[bool, str]:
    """An estimate that the clock contradicts does not stand."""
    if not improved or before_ms is None or after_ms is None or before_ms < MIN_TIMED_MS:
        # Below a couple of milliseconds the clock measures the machine, not the plan.
        return improved, note
    if round_trip_ms is not None and before_ms < NOISE_TIMES * round_trip_ms:
        return improved, (
            f"{note}; measured {before_ms:.2f} -> {after_ms:.2f} ms, too close to a bare"
            f" round trip on this machine now ({round_trip_ms:.2f} ms) for the clock to"
            " judge: judged by the plan"
        )
    if after_ms * MIN_MEASURED_SPEEDUP > before_ms:
        return False, (
            f"{note}; but measured {before_ms:.2f} -> {after_ms:.2f} ms, not faster enough"
        )
    return True, f"{note}; measured {before_ms:.2f} -> {after_ms:.2f} ms"


def _is_unique(s: Session, name: str) -> bool:
    with contextlib.suppress(Exception):
        if s.dialect == "sqlite":
            row = s.run("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).first()
            return bool(row and row[0] and "UNIQUE" in str(row[0]).upper())
        if s.dialect == "postgresql":
            row = s.run(
                "SELECT indisunique FROM pg_index WHERE indexrelid = to_regclass(%(n)s)",
                {"n": name},
            ).first()
            return bool(row and row[0])
        row = s.run(
            "SELECT min(non_unique) FROM information_schema.statistics"
            " WHERE table_schema = DATABASE() AND index_name = %(n)s",
            {"n": name},
        ).first()
        return bool(row and row[0] == 0)
    return False
