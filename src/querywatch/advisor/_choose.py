"""Choosing the smallest set of verified indexes that serves every improved query, and
the health of the indexes that exist."""

from __future__ import annotations

import re
import typing as t

from ..explain import Session
from ._analysis import _bare_name
from ._analysis import _strip_order
from ._indexes import _existing_indexes
from ._model import Candidate
from ._model import IndexNote
from ._model import QueryAdvice
from ._model import Suggestion
from ._model import Trial
from ._model import _norm_key
from ._verify import MIN_MEASURED_SPEEDUP
from ._verify import WIDER_INDEX_MARGIN
from ._verify import Verification
from ._verify import _beats
from ._verify import _is_unique
from ._verify import _keep_a_leading_index
from ._verify import _no_worse

if t.TYPE_CHECKING:
    pass


class Choosing(Verification):
    """Chooses the indexes to suggest, and reads existing indexes' use."""

    # --- choosing ---

    def _choose(self, results: list[QueryAdvice]) -> list[Suggestion]:
        """The smallest set of verified candidates that serves every improved query,
        taken greedily: most queries served first; among those, the fewest columns,
        unless a longer index clearly beats it (see :func:`_beats`)."""
        serves: dict[t.Any, list[tuple[QueryAdvice, Trial]]] = {}
        cands: dict[t.Any, Candidate] = {}
        for qa in results:
            improved = [tr for tr in qa.trials if tr.improved]
            holding = [
                tr for tr in improved if self._serves_every_equality(tr.candidate, {id(qa): tr})
            ]
            for tr in improved:
                # Where an index holds every equality of the query, one that leaves an
                # equality to a filter does not serve it (slower for a rare value),
                # however many other queries it serves.
                if holding and all(tr is not h for h in holding):
                    continue
                key = tr.candidate.norm
                serves.setdefault(key, []).append((qa, tr))
                cands.setdefault(key, tr.candidate)
        uncovered = {id(qa) for items in serves.values() for qa, _ in items}
        chosen: list[Suggestion] = []
        while uncovered:
            live = {
                k: {id(qa): tr for qa, tr in items if id(qa) in uncovered}
                for k, items in serves.items()
            }
            most = max((len(v) for v in live.values()), default=0)
            if most == 0:
                break
            # A measured index comes before one only estimated, whatever its columns.
            top = sorted(
                (k for k, v in live.items() if len(v) == most),
                key=lambda k: (
                    any(tr.measured_after_ms is None for tr in live[k].values()),
                    len(cands[k].keys),
                    cands[k].key_sql(),
                ),
            )
            best = top[0]
            for k in top[1:]:
                if _beats(live[k], live[best]):
                    best = k
            if not self._serves_every_equality(cands[best], live[best]):
                # An index that leaves an equality of the query as a filter is fast for
                # the values most rows have and can be slower than no index for a rare
                # one (status = 'late' walking due_date): one that holds every equality
                # column first serves any value, and wins unless clearly slower.
                for k in top:
                    if self._serves_every_equality(cands[k], live[k]) and _no_worse(
                        live[k], live[best], MIN_MEASURED_SPEEDUP
                    ):
                        best = k
                        break
            # Equality columns, then the range: where the estimate cannot tell (kind)
            # from (kind, amount) for "kind = ? AND amount > ?", the one that also
            # searches by the range reads only the rows it returns.
            for k in top:
                if self._extends_by_filters(cands[k], cands[best], live[k]) and _no_worse(
                    live[k], live[best], WIDER_INDEX_MARGIN
                ):
                    best = k
            items = [(qa, tr) for qa, tr in serves.pop(best) if id(qa) in uncovered]
            c = cands[best]
            keys = tuple(_norm_key(k.split(" ")[0]) for k in c.keys)
            replaces = [
                name
                for name, idx_keys, partial in self._existing.get(c.table.lower(), [])
                if not partial
                and name not in ("PRIMARY KEY", "PRIMARY")
                and 0 < len(idx_keys) < len(keys)
                and keys[: len(idx_keys)] == idx_keys
            ]
            chosen.append(Suggestion(c, self.dialect, items, items[0][1].verified_by, replaces))
            uncovered -= {id(qa) for qa, _ in items}
        return chosen

    def _extends_by_filters(
        self, longer: Candidate, shorter: Candidate, served: dict[int, Trial]
    ) -> bool:
        """Whether ``longer`` is ``shorter`` plus columns that every query it serves
        filters by (an equality or a range), on the same table, neither partial."""
        a = [_norm_key(_strip_order(k)) for k in longer.keys]
        b = [_norm_key(_strip_order(k)) for k in shorter.keys]
        if (
            longer.table.lower() != shorter.table.lower()
            or longer.where
            or shorter.where
            or len(a) <= len(b)
            or a[: len(b)] != b
        ):
            return False
        extra = set(a[len(b) :])
        table = longer.table.lower()
        return all(extra <= self._filters.get((q, table), set()) for q in served)

    def _serves_every_equality(self, c: Candidate, served: dict[int, Trial]) -> bool:
        """Whether ``c`` holds every column that the queries it serves compare with ``=``
        on its table (so no value of theirs is left to a filter after the index)."""
        keys = {_norm_key(_strip_order(k)) for k in c.keys}
        if c.where:  # a partial index's predicate holds its constant equalities
            keys |= {_norm_key(m) for m in re.findall(r"([\w\"`]+)\s*=", c.where)}
        return all(
            self._equalities.get((qa_id, c.table.lower()), set()) <= keys for qa_id in served
        )

    # --- existing indexes ---

    def _index_health(
        self, tables: set[str], used: t.AbstractSet[str] = frozenset()
    ) -> list[IndexNote]:
        """Redundant indexes (a prefix of another), and on PostgreSQL unused ones: only
        once the statistics cover :attr:`unused_window_days`, never one that a plan of
        the analysed queries uses, and never so that the notes together drop every
        index on a leading column."""
        notes: list[IndexNote] = []
        leading: dict[tuple[str, str], str] = {}
        with self.explainer.session() as s:
            for table in sorted(tables):
                existing = _existing_indexes(s, table)
                for name, keys, _partial in existing:
                    if keys:
                        leading[(table, _bare_name(name))] = keys[0]
                for name, keys, partial in existing:
                    if partial or name in ("PRIMARY KEY", "PRIMARY") or not keys:
                        continue
                    for other, okeys, opartial in existing:
                        if other == name or opartial or len(okeys) <= len(keys):
                            continue
                        if okeys[: len(keys)] == keys and not _is_unique(s, name):
                            drop = (
                                f"DROP INDEX {name} ON {table}"
                                if self.dialect == "mysql"
                                else f"DROP INDEX {name}"
                            )
                            notes.append(
                                IndexNote(
                                    "redundant",
                                    table,
                                    name,
                                    f"{name} ({', '.join(keys)}) is a prefix of {other}"
                                    f" ({', '.join(okeys)}), which serves the same lookups.",
                                    drop,
                                )
                            )
                            break
            if self.dialect == "postgresql" and self._stats_cover_window(s):
                for row in s.run(
                    "SELECT s.relname, s.indexrelname, s.idx_scan"
                    " FROM pg_stat_user_indexes s JOIN pg_index i USING (indexrelid)"
                    " WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary"
                    " ORDER BY s.relname, s.indexrelname"
                ):
                    if row[0] in tables and _bare_name(row[1]) not in used:
                        notes.append(
                            IndexNote(
                                "unused",
                                row[0],
                                row[1],
                                f"{row[1]} has not been used since the statistics were last"
                                " reset (pg_stat_user_indexes.idx_scan = 0): check replicas,"
                                " then drop it to speed up writes.",
                                f"DROP INDEX CONCURRENTLY IF EXISTS {row[1]}",
                            )
                        )
        return _keep_a_leading_index(notes, leading)

    def _stats_cover_window(self, s: Session) -> bool:
        """Whether PostgreSQL's usage statistics cover the window; when not, a note says
        since when they count and that no index is called unused before the window."""
        row = s.run(
            "SELECT extract(epoch FROM now() - coalesce(d.stats_reset,"
            " pg_postmaster_start_time())) / 86400.0, d.stats_reset IS NOT NULL"
            " FROM pg_stat_database d WHERE d.datname = current_database()"
        ).first()
        days = float(row[0]) if row and row[0] is not None else 0.0
        if days >= self.unused_window_days:
            return True
        since = "were last reset" if row and row[1] else "the server started"
        self.notes.append(
            f"No index is called unused yet: usage statistics count since {since},"
            f" {days:.1f} days ago, less than the {self.unused_window_days:g}-day window"
            " (unused_window_days, --unused-window-days): an index a weekly job uses"
            " would look unused."
        )
        return False
