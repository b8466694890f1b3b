"""The rows the store hands out, and their marshalling to and from its tables."""

from __future__ import annotations

import json
import typing as t

from sqlalchemy import bindparam

from .._stats import Aggregate
from .._stats import EndpointAggregate
from ..capture import CallSite

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection


_KNOWN_SHAPES_CAP = 20000


def _hist_dump(hist: t.Mapping[int, int]) -> str:
    return json.dumps({str(k): v for k, v in sorted(hist.items())}, separators=(",", ":"))


def _hist_load(text: str | None) -> dict[int, int]:
    if not text:
        return {}
    return {int(k): int(v) for k, v in json.loads(text).items()}


def _site_columns(site: CallSite | None) -> dict[str, t.Any]:
    """A call site as the store's three columns."""
    return {
        "site_file": site.filename[-512:] if site else None,
        "site_line": site.lineno if site else None,
        "site_function": site.function[:255] if site else None,
    }


def _site(row: t.Any) -> CallSite | None:
    if row.site_file is None:
        return None
    return CallSite(row.site_file, int(row.site_line or 0), row.site_function or "")


class StoredShape(t.NamedTuple):
    fingerprint: str
    shape: str
    operation: str
    site: CallSite | None
    #: A runnable statement of the shape (placeholders kept), or None.
    sample: str | None = None


class StoredAdvice(t.NamedTuple):
    """A verified index suggestion for one query shape."""

    fingerprint: str
    dialect: str
    table: str
    index_name: str
    keys: tuple[str, ...]
    ddl: str
    alembic: str
    reason: str
    verified_by: str
    cost_before: float | None
    cost_after: float | None
    measured_before_ms: float | None
    measured_after_ms: float | None
    first_seen: float
    last_seen: float


class PlanFindingRow(t.NamedTuple):
    """A plan finding to record: set (not added) on each run of the advisor."""

    kind: str
    endpoint: str
    fingerprint: str
    queries: int
    total: float
    site: CallSite | None
    fix: str


class StoredFinding(t.NamedTuple):
    kind: str
    endpoint: str
    fingerprint: str
    first_seen: float
    last_seen: float
    occurrences: int
    queries: int
    total: float
    site: CallSite | None
    relationship: str | None
    fix: str
    #: The trace of its last traced occurrence (OpenTelemetry), if any.
    trace_id: str | None = None


class Window(t.NamedTuple):
    """Aggregates of a time window read back from the store."""

    since: float
    until: float
    #: Per fingerprint, over every endpoint.
    shapes: dict[str, Aggregate]
    #: Per (endpoint, fingerprint).
    endpoint_shapes: dict[tuple[str, str], Aggregate]
    endpoints: dict[str, EndpointAggregate]


class AlertChange(t.NamedTuple):
    """An alert moving to ``state`` (``"firing"`` or ``"resolved"``) at ``at``."""

    key: str
    kind: str
    severity: str
    state: str
    at: float
    summary: str
    evidence: dict[str, t.Any]


class StoredAlert(t.NamedTuple):
    key: str
    kind: str
    severity: str
    state: str
    since: float
    updated: float
    summary: str
    evidence: dict[str, t.Any]
    fired: int


class StoredAlertEvent(t.NamedTuple):
    id: int
    key: str
    kind: str
    severity: str
    state: str
    at: float
    summary: str
    evidence: dict[str, t.Any]


def _finding(row: t.Any) -> StoredFinding:
    return StoredFinding(
        row.kind,
        row.endpoint,
        row.fingerprint,
        row.first_seen,
        row.last_seen,
        row.occurrences,
        row.queries,
        row.total_s,
        _site(row),
        row.relationship,
        row.fix,
        getattr(row, "trace_id", None),
    )


def _alert(row: t.Any) -> StoredAlert:
    return StoredAlert(
        row.key,
        row.kind,
        row.severity,
        row.state,
        row.since,
        row.updated,
        row.summary,
        json.loads(row.evidence),
        row.fired,
    )


def _aggregate(row: t.Any) -> Aggregate:
    """A ``qw_query_stats`` row as an aggregate."""
    return Aggregate(
        calls=row.calls,
        errors=row.errors,
        total=row.total_s,
        min=row.min_s,
        max=row.max_s,
        rows=row.rows,
        hist=_hist_load(row.hist),
        max_trace=getattr(row, "max_trace", None),
    )


def _write_rows(
    conn: Connection,
    tbl: t.Any,
    keys: t.Sequence[str],
    inserts: list[dict[str, t.Any]],
    updates: list[dict[str, t.Any]],
) -> None:
    """Insert the new rows of a merge and update the others (their keys given as
    ``b_<key>`` values), each in one executemany."""
    if inserts:
        conn.execute(tbl.insert(), inserts)
    if updates:
        conn.execute(tbl.update().where(*(tbl.c[k] == bindparam(f"b_{k}") for k in keys)), updates)


def _endpoint_from_row(row: t.Any) -> EndpointAggregate:
    return EndpointAggregate(
        requests=row.requests,
        statuses={k: int(v) for k, v in json.loads(row.statuses or "{}").items()},
        total=row.total_s,
        max=row.max_s,
        hist=_hist_load(row.hist),
        queries=row.queries,
        max_queries=row.max_queries,
        db_time=row.db_s,
        db_errors=row.db_errors,
        dropped_queries=row.dropped_queries,
    )
