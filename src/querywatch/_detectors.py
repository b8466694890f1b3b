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

from ._sql import statement_tables
from ._text import site_text
from .capture import MAX_PARAM_HASHES
from .capture import REFRESHED
from .capture import relationship_tables

if t.TYPE_CHECKING:
    from ._config import Settings
    from .capture import CallSite
    from .capture import LoopStats
    from .capture import Record
    from .fingerprint import Fingerprint

__all__ = ["N_PLUS_ONE", "REPEATED_QUERY", "SLOW_QUERY", "Finding", "detect"]

N_PLUS_ONE = "n_plus_one"
SLOW_QUERY = "slow_query"
REPEATED_QUERY = "repeated_query"


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One problem seen in one unit of work (frozen: receivers of the findings share
    them)."""

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


def _where(site: CallSite | None) -> str:
    return site_text(site) if site is not None else "an unknown place"


def _n_plus_one_fix(loop: LoopStats, record: Record) -> str:
    relationship = loop.relationship
    n = loop.calls
    if relationship and relationship.endswith(REFRESHED):
        model = relationship.removesuffix(REFRESHED)
        return (
            f"{n} reloads of {model} in one unit of work: each commit expires the"
            f" session's objects and SQLAlchemy reloads each one on its next read (last"
            f" commit at {_where(record.commit_site)}). Commit once, after the loop."
        )
    if relationship:
        parent = _parent_site(loop, record)
        where = (
            f" The parents were loaded at {_where(parent)}: add"
            if parent is not None
            else " Add, in the query that loads the parents,"
        )
        return (
            f"{n} lazy loads of {relationship} in one unit of work, triggered at"
            f" {_where(loop.site)}.{where} .options(selectinload({relationship}))."
        )
    if loop.fingerprint.operation == "SELECT":
        return (
            f"{n} lookups in one unit of work at {_where(loop.site)}: batch them into one"
            " query with IN (...), outside the loop."
        )
    return (
        f"{n} statements in one unit of work at {_where(loop.site)}: send them as one"
        " executemany or bulk statement, outside the loop."
    )


def _parent_site(loop: LoopStats, record: Record) -> CallSite | None:
    """Where the app ran the query that loaded the parents of a lazy-loaded relationship:
    a read of the parent's table, issued by hand (not a loader) from app code."""
    table = relationship_tables.get(loop.relationship or "")
    if table is None:
        return None
    for other in record.loops.values():
        if other is loop or other.relationship is not None or other.site is None:
            continue
        if other.fingerprint.operation != "SELECT":
            continue
        try:
            read = statement_tables(other.fingerprint.sample or other.fingerprint.shape)[0]
        except Exception:
            continue
        if table.lower() in {x.lower() for x in read}:
            return other.site
    return None


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
                    fix=_n_plus_one_fix(loop, record),
                )
            )
    if record.slow:
        # Per shape: the first slow statement, how many, how long together.
        slow: dict[str, list[t.Any]] = {}
        for q in record.slow:
            acc = slow.get(q.fingerprint.id)
            if acc is None:
                slow[q.fingerprint.id] = [q, 1, q.duration]
            else:
                acc[1] += 1
                acc[2] += q.duration
        for q, count, total in slow.values():
            findings.append(
                Finding(
                    kind=SLOW_QUERY,
                    fingerprint=q.fingerprint,
                    count=count,
                    total=total,
                    site=q.site,
                    relationship=q.relationship,
                    fix=(
                        f"Ask for its plan and a verified index: `querywatch advise"
                        f" --shape {q.fingerprint.id}`."
                    ),
                )
            )
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
                    findings.append(_repeated(loop, n, n * mean, record))
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
                findings.append(_repeated(loop, count, total, record))
    return findings


def _repeated(loop: LoopStats, count: int, total: float, record: Record) -> Finding:
    """A repeated-read finding, pointing at the place that ran the parameters most."""
    rel = loop.relationship
    if rel is not None and rel.endswith(REFRESHED):
        # The ORM reloading an object a commit expired: caching ORM entities across
        # requests is wrong; the commits are the cause.
        model = rel.removesuffix(REFRESHED)
        fix = (
            f"SQLAlchemy reloads {model} after each commit expires it (expire_on_commit);"
            f" the last commit ran at {_where(record.commit_site)}. Not a cache case:"
            " commit once per request (a write such as last_seen in before_request can"
            " go in the request's own commit), read what you need before committing, or"
            " give that session expire_on_commit=False."
        )
    else:
        fix = (
            "Run it once and reuse the result (it returns the same rows each time); if"
            " other requests ask for it too, cache it with @qw.cached, which a write to"
            " its tables invalidates."
        )
    return Finding(
        kind=REPEATED_QUERY,
        fingerprint=loop.fingerprint,
        count=count,
        total=total,
        site=loop.site,
        relationship=rel,
        fix=fix,
    )
