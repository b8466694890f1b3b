"""Findings drawn from one finished unit of work: N+1 loops, slow queries, repeated
identical queries.

* **N+1**: one shape issued from one call site at least ``n_plus_one_threshold`` times
  with different parameters. ORM lazy loads name their relationship; any other loop (a
  count query per item in a serializer) counts too. One shape reached from several call
  sites is several places, not one loop.
* **Slow query**: a statement that took at least ``QUERYWATCH_SLOW_QUERY_MS``.
* **Repeated identical query**: the same read with the same parameters at least
  ``QUERYWATCH_REPEATED_QUERY_THRESHOLD`` times in one unit of work.

Parameters are compared by hash: their values are never kept.
"""

from __future__ import annotations

import dataclasses
import typing as t

from .capture import MAX_PARAM_HASHES

if t.TYPE_CHECKING:
    from .capture import CallSite
    from .capture import LoopStats
    from .capture import Record
    from .config import Settings
    from .fingerprint import Fingerprint

__all__ = ["N_PLUS_ONE", "REPEATED_QUERY", "SLOW_QUERY", "Finding", "detect"]

N_PLUS_ONE = "n_plus_one"
SLOW_QUERY = "slow_query"
REPEATED_QUERY = "repeated_query"


@dataclasses.dataclass(slots=True)
class Finding:
    """One problem seen in one unit of work."""

    kind: str
    fingerprint: Fingerprint
    #: Queries involved (loop length, repeat count, or slow executions).
    count: int
    #: Seconds those queries took together.
    total: float
    site: CallSite | None
    relationship: str | None
    #: What to change, in one sentence.
    fix: str


def _n_plus_one_fix(relationship: str | None, operation: str) -> str:
    if relationship:
        return (
            f"Load {relationship} eagerly in the query that loads its parents: "
            f".options(selectinload({relationship}))."
        )
    if operation == "SELECT":
        return "Batch these lookups into one query with IN (...), outside the loop."
    return "Send these statements as one executemany or bulk statement, outside the loop."


def detect(record: Record, settings: Settings) -> list[Finding]:
    """The findings of a finished record."""
    findings: list[Finding] = []
    threshold = settings.n_plus_one_threshold
    for loop in record.loops.values():
        if loop.calls >= threshold and len(loop.params) >= min(threshold, MAX_PARAM_HASHES):
            findings.append(
                Finding(
                    kind=N_PLUS_ONE,
                    fingerprint=loop.fingerprint,
                    count=loop.calls,
                    total=loop.total,
                    site=loop.site,
                    relationship=loop.relationship,
                    fix=_n_plus_one_fix(loop.relationship, loop.fingerprint.operation),
                )
            )
    slow: dict[str, Finding] = {}
    for q in record.slow:
        f = slow.get(q.fingerprint.id)
        if f is None:
            slow[q.fingerprint.id] = Finding(
                kind=SLOW_QUERY,
                fingerprint=q.fingerprint,
                count=1,
                total=q.duration,
                site=q.site,
                relationship=q.relationship,
                fix=(
                    f"Ask for its plan and a verified index: `querywatch advise --shape"
                    f" {q.fingerprint.id}`."
                ),
            )
        else:
            f.count += 1
            f.total += q.duration
    findings.extend(slow.values())
    # Repeated reads: the same parameters of one shape, over every place that issued it.
    # Most shapes come from one place, and most parameter sets run once: the counts of
    # one loop entry are checked as they are, and only a shape issued from several
    # places has its counts added up first.
    repeat_threshold = settings.repeated_query_threshold
    first: dict[str, LoopStats] = {}
    several: dict[str, list[LoopStats]] = {}
    for loop in record.loops.values():
        if loop.fingerprint.operation != "SELECT":
            continue
        fp_id = loop.fingerprint.id
        other = first.get(fp_id)
        if other is None:
            first[fp_id] = loop
        elif fp_id in several:
            several[fp_id].append(loop)
        else:
            several[fp_id] = [other, loop]
    for fp_id, loop in first.items():
        loops = several.get(fp_id) if several else None
        if loops is None:
            if loop.calls - len(loop.params) + 1 < repeat_threshold:
                continue  # no parameter set ran often enough
            mean = loop.total / loop.calls
            for n in loop.params.values():
                if n >= repeat_threshold:
                    findings.append(_repeated(loop, n, n * mean))
            continue
        merged: dict[int, list[t.Any]] = {}
        for loop in loops:
            mean = loop.total / loop.calls
            for params_hash, n in loop.params.items():
                entry = merged.get(params_hash)
                if entry is None:
                    merged[params_hash] = [n, n * mean, loop, n]
                else:
                    entry[0] += n
                    entry[1] += n * mean
                    if n > entry[3]:
                        entry[2], entry[3] = loop, n
        for count, total, loop, _ in merged.values():
            if count >= repeat_threshold:
                findings.append(_repeated(loop, count, total))
    return findings


def _repeated(loop: LoopStats, count: int, total: float) -> Finding:
    """A repeated-read finding, pointing at the place that ran the parameters most."""
    return Finding(
        kind=REPEATED_QUERY,
        fingerprint=loop.fingerprint,
        count=count,
        total=total,
        site=loop.site,
        relationship=None,
        fix=(
            "Run it once and reuse the result (it returns the same rows each time); if"
            " other requests ask for it too, cache it with @qw.cached, which a write to"
            " its tables invalidates."
        ),
    )
