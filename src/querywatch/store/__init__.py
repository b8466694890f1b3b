"""The store: minute buckets, shapes and findings in SQL, shared by every process.

A SQLite file (WAL) in the app's instance folder by default; PostgreSQL or MariaDB via
``QUERYWATCH_STORE_URL`` when several hosts write. Writes merge: each process adds its
own minute buckets to what is there, inside one transaction, so gunicorn workers and
hosts sum up correctly. The store's engine carries the ``querywatch_ignore`` execution
option, so querywatch never captures its own statements.
"""

from __future__ import annotations

import collections
import json
import logging
import time
import typing as t

from sqlalchemy import bindparam
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import inspect
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError

from ..capture import CallSite
from ..config import missing_driver
from ..config import normalize_url
from ..exceptions import SchemaVersionError
from ..exceptions import StoreError
from ..sql import IGNORE_OPTION
from ..stats import Aggregate
from ..stats import EndpointAggregate
from ..stats import FindingAggregate
from ..stats import ShapeInfo
from ..stats import Snapshot
from . import schema

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine

_log = logging.getLogger("querywatch")

__all__ = [
    "AlertChange",
    "PlanFindingRow",
    "Store",
    "StoredAdvice",
    "StoredAlert",
    "StoredAlertEvent",
    "StoredFinding",
    "StoredShape",
    "Window",
]

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


class Window(t.NamedTuple):
    """Aggregates of a time window read back from the store."""

    since: float
    until: float
    #: Per fingerprint, over every endpoint.
    shapes: dict[str, Aggregate]
    #: Per (endpoint, fingerprint).
    endpoint_shapes: dict[tuple[str, str], Aggregate]
    endpoints: dict[str, EndpointAggregate]


def _sqlite_pragmas(dbapi_conn: t.Any, _record: t.Any) -> None:
    # Autocommit at the driver level; SQLAlchemy's "begin" below issues BEGIN IMMEDIATE, so
    # two writers queue on the lock instead of failing to upgrade a read lock.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """Read and write querywatch's tables on one database."""

    def __init__(self, url: str, *, engine_options: dict[str, t.Any] | None = None) -> None:
        url = normalize_url(url)
        self.url = url
        options: dict[str, t.Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            options["connect_args"] = {"timeout": 5}
        options.update(engine_options or {})
        try:
            engine = create_engine(url, **options)
        except Exception as e:
            msg = f"Could not open the querywatch store at {url!r}: {e}"
            missing = missing_driver(url)
            if missing is not None:
                msg = f"Could not open the querywatch store: {missing}"
            raise StoreError(msg) from None
        self.engine: Engine = engine.execution_options(**{IGNORE_OPTION: True})
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._known_shapes: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._migrated = False

    # --- schema ------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a querywatch store is there already (nothing is created: a SQLite file
        that is not there is not made)."""
        url = self.engine.url
        if self.is_sqlite and url.database not in (None, "", ":memory:"):
            import os

            assert url.database is not None
            if not os.path.exists(url.database):
                return False
        with self.engine.connect() as conn:
            return inspect(conn).has_table(schema.meta.name)

    def migrate(self) -> int:
        """Create or upgrade the tables; returns the schema version now in force."""
        if self._migrated:
            return schema.SCHEMA_VERSION
        for attempt in range(3):
            try:
                version = self._migrate_once()
                self._migrated = True
                return version
            except (IntegrityError, OperationalError):
                # Another process migrated at the same moment; look again.
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")  # pragma: no cover

    def _migrate_once(self) -> int:
        with self.engine.begin() as conn:
            if not inspect(conn).has_table(schema.meta.name):
                schema.metadata.create_all(conn, tables=[schema.meta])
            row = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).first()
            current = int(row[0]) if row else 0
            if current > schema.SCHEMA_VERSION:
                msg = (
                    f"The querywatch store at {self.engine.url!r} has schema version {current},"
                    f" newer than this querywatch knows ({schema.SCHEMA_VERSION}). Upgrade"
                    " querywatch, or point 'QUERYWATCH_STORE_URL' at another database."
                )
                raise SchemaVersionError(msg)
            for version in range(current + 1, schema.SCHEMA_VERSION + 1):
                schema.MIGRATIONS[version](conn)
            if current == 0:
                conn.execute(
                    schema.meta.insert().values(
                        key="schema_version", value=str(schema.SCHEMA_VERSION)
                    )
                )
            elif current < schema.SCHEMA_VERSION:
                conn.execute(
                    update(schema.meta)
                    .where(schema.meta.c.key == "schema_version")
                    .values(value=str(schema.SCHEMA_VERSION))
                )
            return schema.SCHEMA_VERSION

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).first()
            return int(row[0]) if row else 0

    # --- writing -----------------------------------------------------------------------

    def write(self, snap: Snapshot) -> None:
        """Merge a snapshot into the store, atomically. Raises on failure (the caller
        keeps the snapshot and retries)."""
        if snap.is_empty():
            return
        try:
            self._write(snap)
        except Exception:
            # The database may have been replaced (a deleted SQLite file, a restored
            # server): check the schema again next time.
            self._migrated = False
            raise

    def _write(self, snap: Snapshot) -> None:
        self.migrate()
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    self._write_shapes(conn, snap.shapes)
                    for minute, bucket in sorted(snap.buckets.items()):
                        self._merge_queries(conn, minute, bucket.queries)
                        self._merge_endpoints(conn, minute, bucket.endpoints)
                        self._merge_slo(conn, minute, bucket.slo)
                        self._merge_users(conn, minute, bucket.users)
                    self._merge_findings(conn, snap.findings)
                break
            except IntegrityError:
                # A concurrent writer inserted the same key first: merge again.
                if attempt == 2:
                    raise
        for fp in snap.shapes:
            self._known_shapes[fp] = None
            self._known_shapes.move_to_end(fp)
        while len(self._known_shapes) > _KNOWN_SHAPES_CAP:
            self._known_shapes.popitem(last=False)

    def _lock_rows(self, stmt: t.Any) -> t.Any:
        return stmt if self.is_sqlite else stmt.with_for_update()

    def _write_shapes(self, conn: Connection, shapes: dict[str, ShapeInfo]) -> None:
        new = [fp for fp in shapes if fp not in self._known_shapes]
        if not new:
            return
        tbl = schema.shapes
        existing: set[str] = set()
        for i in range(0, len(new), 500):
            chunk = new[i : i + 500]
            existing.update(
                conn.execute(
                    select(tbl.c.fingerprint).where(tbl.c.fingerprint.in_(chunk))
                ).scalars()
            )
        now = time.time()
        rows = []
        for fp in new:
            if fp in existing:
                continue
            info = shapes[fp]
            rows.append(
                {
                    "fingerprint": fp,
                    "shape": info.shape,
                    "operation": info.operation[:16],
                    **_site_columns(info.site),
                    "first_seen": now,
                    "sample_sql": info.sample or None,
                }
            )
        if rows:
            conn.execute(tbl.insert(), rows)

    def _merge_queries(
        self, conn: Connection, minute: int, queries: dict[tuple[str, str], Aggregate]
    ) -> None:
        if not queries:
            return
        tbl = schema.query_stats
        endpoints = sorted({ep for ep, _ in queries})
        existing: dict[tuple[str, str], t.Any] = {}
        for row in conn.execute(
            self._lock_rows(
                select(tbl).where(tbl.c.minute == minute, tbl.c.endpoint.in_(endpoints))
            )
        ):
            existing[(row.endpoint, row.fingerprint)] = row
        inserts, updates = [], []
        for (ep, fp), agg in queries.items():
            old = existing.get((ep[:255], fp))
            if old is None:
                inserts.append(
                    {
                        "minute": minute,
                        "endpoint": ep[:255],
                        "fingerprint": fp,
                        "calls": agg.calls,
                        "errors": agg.errors,
                        "total_s": agg.total,
                        "min_s": agg.min if agg.calls else 0.0,
                        "max_s": agg.max,
                        "rows": agg.rows,
                        "hist": _hist_dump(agg.hist),
                    }
                )
            else:
                hist = _hist_load(old.hist)
                for k, v in agg.hist.items():
                    hist[k] = hist.get(k, 0) + v
                updates.append(
                    {
                        "b_minute": minute,
                        "b_endpoint": old.endpoint,
                        "b_fingerprint": fp,
                        "calls": old.calls + agg.calls,
                        "errors": old.errors + agg.errors,
                        "total_s": old.total_s + agg.total,
                        "min_s": min(old.min_s, agg.min),
                        "max_s": max(old.max_s, agg.max),
                        "rows": old.rows + agg.rows,
                        "hist": _hist_dump(hist),
                    }
                )
        _write_rows(conn, tbl, ("minute", "endpoint", "fingerprint"), inserts, updates)

    def _merge_endpoints(
        self, conn: Connection, minute: int, endpoints: dict[str, EndpointAggregate]
    ) -> None:
        if not endpoints:
            return
        tbl = schema.endpoint_stats
        existing = {
            row.endpoint: row
            for row in conn.execute(
                self._lock_rows(
                    select(tbl).where(
                        tbl.c.minute == minute, tbl.c.endpoint.in_([e[:255] for e in endpoints])
                    )
                )
            )
        }
        inserts, updates = [], []
        for name, ep in endpoints.items():
            key = name[:255]
            old = existing.get(key)
            if old is None:
                inserts.append(
                    {
                        "minute": minute,
                        "endpoint": key,
                        "requests": ep.requests,
                        "statuses": json.dumps(ep.statuses, sort_keys=True),
                        "total_s": ep.total,
                        "max_s": ep.max,
                        "hist": _hist_dump(ep.hist),
                        "queries": ep.queries,
                        "max_queries": ep.max_queries,
                        "db_s": ep.db_time,
                        "db_errors": ep.db_errors,
                        "dropped_queries": ep.dropped_queries,
                    }
                )
            else:
                merged = EndpointAggregate()
                merged.merge(_endpoint_from_row(old))
                merged.merge(ep)
                updates.append(
                    {
                        "b_minute": minute,
                        "b_endpoint": key,
                        "requests": merged.requests,
                        "statuses": json.dumps(merged.statuses, sort_keys=True),
                        "total_s": merged.total,
                        "max_s": merged.max,
                        "hist": _hist_dump(merged.hist),
                        "queries": merged.queries,
                        "max_queries": merged.max_queries,
                        "db_s": merged.db_time,
                        "db_errors": merged.db_errors,
                        "dropped_queries": merged.dropped_queries,
                    }
                )
        _write_rows(conn, tbl, ("minute", "endpoint"), inserts, updates)

    def _merge_slo(
        self, conn: Connection, minute: int, counts: dict[tuple[str, str], list[int]]
    ) -> None:
        if not counts:
            return
        sums: dict[str, list[int]] = {}
        for (objective, _), (total, bad) in counts.items():
            acc = sums.setdefault(objective[:64], [0, 0])
            acc[0] += total
            acc[1] += bad
        totals = schema.slo_totals
        old_totals = {
            row.objective: row
            for row in conn.execute(
                self._lock_rows(
                    select(totals).where(
                        totals.c.minute == minute, totals.c.objective.in_(sorted(sums))
                    )
                )
            )
        }
        for objective, (total, bad) in sorted(sums.items()):
            row = old_totals.get(objective)
            if row is None:
                conn.execute(
                    totals.insert().values(objective=objective, minute=minute, total=total, bad=bad)
                )
            else:
                conn.execute(
                    totals.update()
                    .where(totals.c.objective == objective, totals.c.minute == minute)
                    .values(total=row.total + total, bad=row.bad + bad)
                )
        tbl = schema.slo_stats
        names = sorted({o for o, _ in counts})
        existing = {
            (row.objective, row.endpoint): row
            for row in conn.execute(
                self._lock_rows(
                    select(tbl).where(tbl.c.minute == minute, tbl.c.objective.in_(names))
                )
            )
        }
        inserts, updates = [], []
        for (objective, endpoint), (total, bad) in counts.items():
            key = (objective[:64], endpoint[:255])
            old = existing.get(key)
            if old is None:
                inserts.append(
                    {
                        "objective": key[0],
                        "minute": minute,
                        "endpoint": key[1],
                        "total": total,
                        "bad": bad,
                    }
                )
            else:
                updates.append(
                    {
                        "b_objective": key[0],
                        "b_minute": minute,
                        "b_endpoint": key[1],
                        "total": old.total + total,
                        "bad": old.bad + bad,
                    }
                )
        _write_rows(conn, tbl, ("objective", "minute", "endpoint"), inserts, updates)

    def _merge_users(self, conn: Connection, minute: int, users: dict[str, dict[str, int]]) -> None:
        tbl = schema.slo_users
        for objective, seen in users.items():
            if not seen:
                continue
            name = objective[:64]
            existing = {
                row.user_digest: row.bad
                for row in conn.execute(
                    self._lock_rows(
                        select(tbl.c.user_digest, tbl.c.bad).where(
                            tbl.c.objective == name, tbl.c.minute == minute
                        )
                    )
                )
            }
            inserts = [
                {"objective": name, "minute": minute, "user_digest": d, "bad": b}
                for d, b in seen.items()
                if d not in existing
            ]
            updates = [
                {"b_objective": name, "b_minute": minute, "b_user_digest": d, "bad": 1}
                for d, b in seen.items()
                if d in existing and b and not existing[d]
            ]
            _write_rows(conn, tbl, ("objective", "minute", "user_digest"), inserts, updates)

    def users_affected(self, objective: str, since: float, until: float) -> tuple[int, int]:
        """(distinct users, distinct users with a bad request) of an objective in the
        buckets that overlap ``(since, until]``."""
        from sqlalchemy import distinct
        from sqlalchemy import func

        self.migrate()
        tbl = schema.slo_users
        window = (tbl.c.objective == objective) & (tbl.c.minute > since) & (tbl.c.minute <= until)
        with self.engine.connect() as conn:
            users = conn.execute(
                select(func.count(distinct(tbl.c.user_digest))).where(window)
            ).scalar()
            bad = conn.execute(
                select(func.count(distinct(tbl.c.user_digest))).where(window, tbl.c.bad == 1)
            ).scalar()
        return int(users or 0), int(bad or 0)

    def _merge_findings(
        self, conn: Connection, found: dict[tuple[str, str, str], FindingAggregate]
    ) -> None:
        tbl = schema.findings
        for (kind, endpoint, fp), f in sorted(found.items()):
            ep = endpoint[:255]
            old = conn.execute(
                self._lock_rows(
                    select(tbl).where(
                        tbl.c.kind == kind, tbl.c.endpoint == ep, tbl.c.fingerprint == fp
                    )
                )
            ).first()
            if old is None:
                conn.execute(
                    tbl.insert().values(
                        kind=kind,
                        endpoint=ep,
                        fingerprint=fp,
                        first_seen=f.first_seen,
                        last_seen=f.last_seen,
                        occurrences=f.occurrences,
                        queries=f.queries,
                        total_s=f.total,
                        relationship=f.relationship,
                        fix=f.fix,
                        **_site_columns(f.site),
                    )
                )
            else:
                conn.execute(
                    tbl.update()
                    .where(tbl.c.id == old.id)
                    .values(
                        first_seen=min(old.first_seen, f.first_seen),
                        last_seen=max(old.last_seen, f.last_seen),
                        occurrences=old.occurrences + f.occurrences,
                        queries=old.queries + f.queries,
                        total_s=old.total_s + f.total,
                        relationship=old.relationship or f.relationship,
                    )
                )

    def prune(self, older_than: float, *, width: int = 60) -> int:
        """Delete what is older than ``older_than`` (Unix time): buckets that started
        before it (``width``: the bucket width), alert changes, alerts resolved before it,
        and delivered or dead-lettered notifications. Incidents and their timelines are
        kept."""
        self.migrate()
        cutoff = int(older_than // width) * width
        n = 0
        with self.engine.begin() as conn:
            for tbl in (
                schema.query_stats,
                schema.endpoint_stats,
                schema.slo_stats,
                schema.slo_totals,
                schema.slo_users,
                schema.pool_stats,
                schema.cache_stats,
            ):
                n += conn.execute(tbl.delete().where(tbl.c.minute < cutoff)).rowcount
            ev, al, ob = schema.alert_events, schema.alerts, schema.outbox
            n += conn.execute(ev.delete().where(ev.c.at < cutoff)).rowcount
            n += conn.execute(
                al.delete().where(al.c.state == "resolved", al.c.updated < cutoff)
            ).rowcount
            n += conn.execute(
                ob.delete().where(ob.c.status.in_(("sent", "dead")), ob.c.created_at < cutoff)
            ).rowcount
        return int(n)

    # --- reading -----------------------------------------------------------------------

    def window(
        self, since: float, until: float, endpoint: str | None = None, *, width: int = 60
    ) -> Window:
        """Aggregates of the buckets in ``[since, until)``, the one ``since`` falls in
        included (``width``: the bucket width, ``QUERYWATCH_BUCKET_SECONDS``)."""
        self.migrate()
        lo = int(since // width) * width
        qs, es = schema.query_stats, schema.endpoint_stats
        shapes: dict[str, Aggregate] = {}
        endpoint_shapes: dict[tuple[str, str], Aggregate] = {}
        endpoints: dict[str, EndpointAggregate] = {}
        with self.engine.connect() as conn:
            stmt = select(qs).where(qs.c.minute >= lo, qs.c.minute < until)
            if endpoint is not None:
                stmt = stmt.where(qs.c.endpoint == endpoint)
            for row in conn.execute(stmt):
                agg = _aggregate(row)
                shapes.setdefault(row.fingerprint, Aggregate()).merge(agg)
                endpoint_shapes.setdefault((row.endpoint, row.fingerprint), Aggregate()).merge(agg)
            stmt = select(es).where(es.c.minute >= lo, es.c.minute < until)
            if endpoint is not None:
                stmt = stmt.where(es.c.endpoint == endpoint)
            for row in conn.execute(stmt):
                endpoints.setdefault(row.endpoint, EndpointAggregate()).merge(
                    _endpoint_from_row(row)
                )
        return Window(since, until, shapes, endpoint_shapes, endpoints)

    def costliest_reads(
        self,
        since: float,
        until: float,
        limit: int,
        *,
        width: int = 60,
        fingerprints: t.Sequence[str] | None = None,
    ) -> list[tuple[StoredShape, Aggregate, list[tuple[str, float]]]]:
        """The ``limit`` read shapes with a runnable sample that took the most time in
        ``[since, until)``, costliest first, ranked by the database: each with its calls,
        time and rows summed, and its endpoints by time. Memory is ``limit`` shapes,
        whatever the window holds."""
        from sqlalchemy import func

        self.migrate()
        lo = int(since // width) * width
        qs, sh = schema.query_stats, schema.shapes
        total = func.sum(qs.c.total_s).label("total")
        ranked = (
            select(
                qs.c.fingerprint,
                total,
                func.sum(qs.c.calls).label("calls"),
                func.sum(qs.c.rows).label("rows"),
            )
            .join(sh, sh.c.fingerprint == qs.c.fingerprint)
            .where(
                qs.c.minute >= lo,
                qs.c.minute < until,
                sh.c.operation == "SELECT",
                sh.c.sample_sql.is_not(None),
                sh.c.sample_sql != "",
            )
            .group_by(qs.c.fingerprint)
            .order_by(total.desc(), qs.c.fingerprint)
            .limit(limit)
        )
        if fingerprints is not None:
            ranked = ranked.where(qs.c.fingerprint.in_(list(fingerprints)))
        with self.engine.connect() as conn:
            top = list(conn.execute(ranked))
            fps = [r.fingerprint for r in top]
            endpoints: dict[str, list[tuple[str, float]]] = {}
            if fps:
                per_endpoint = (
                    select(qs.c.fingerprint, qs.c.endpoint, func.sum(qs.c.total_s).label("spent"))
                    .where(qs.c.minute >= lo, qs.c.minute < until, qs.c.fingerprint.in_(fps))
                    .group_by(qs.c.fingerprint, qs.c.endpoint)
                )
                for row in conn.execute(per_endpoint):
                    endpoints.setdefault(row.fingerprint, []).append(
                        (row.endpoint, float(row.spent or 0.0))
                    )
        shapes = self.shapes(fps)
        out = []
        for r in top:
            shape = shapes.get(r.fingerprint)
            if shape is None:
                continue
            agg = Aggregate(calls=int(r.calls or 0), total=float(r.total or 0.0),
                            rows=int(r.rows or 0))  # fmt: skip
            eps = sorted(endpoints.get(r.fingerprint, []), key=lambda e: (-e[1], e[0]))
            out.append((shape, agg, eps))
        return out

    def shapes(self, fingerprints: t.Iterable[str]) -> dict[str, StoredShape]:
        self.migrate()
        fps = list(fingerprints)
        out: dict[str, StoredShape] = {}
        tbl = schema.shapes
        with self.engine.connect() as conn:
            for i in range(0, len(fps), 500):
                for row in conn.execute(select(tbl).where(tbl.c.fingerprint.in_(fps[i : i + 500]))):
                    out[row.fingerprint] = StoredShape(
                        row.fingerprint, row.shape, row.operation, _site(row), row.sample_sql
                    )
        return out

    def findings(
        self, since: float = 0.0, endpoint: str | None = None, limit: int = 100
    ) -> list[StoredFinding]:
        """Findings last seen at or after ``since``, costliest first."""
        self.migrate()
        tbl = schema.findings
        stmt = select(tbl).where(tbl.c.last_seen >= since)
        if endpoint is not None:
            stmt = stmt.where(tbl.c.endpoint == endpoint)
        stmt = stmt.order_by(tbl.c.total_s.desc(), tbl.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [_finding(row) for row in conn.execute(stmt)]

    # --- the advisor's results --------------------------------------------------------

    def claim_for_advice(self, fingerprint: str, now: float, ttl: float) -> bool:
        """Claim a shape for the background advisor: True for exactly one process per
        ``ttl`` seconds, however many workers or hosts ask at once."""
        self.migrate()
        tbl = schema.shapes
        with self.engine.begin() as conn:
            n = conn.execute(
                update(tbl)
                .where(
                    tbl.c.fingerprint == fingerprint,
                    (tbl.c.advised_at.is_(None)) | (tbl.c.advised_at <= now - ttl),
                )
                .values(advised_at=now)
            ).rowcount
        return bool(n == 1)

    def record_advice(self, rows: t.Iterable[StoredAdvice]) -> int:
        """Upsert verified suggestions, one per (fingerprint, index name)."""
        self.migrate()
        tbl = schema.advice
        n = 0
        with self.engine.begin() as conn:
            for a in rows:
                values = {
                    "dialect": a.dialect[:16],
                    "table_name": a.table[:255],
                    "keys": json.dumps(list(a.keys)),
                    "ddl": a.ddl,
                    "alembic": a.alembic,
                    "reason": a.reason,
                    "verified_by": a.verified_by[:32],
                    "cost_before": a.cost_before,
                    "cost_after": a.cost_after,
                    "measured_before_ms": a.measured_before_ms,
                    "measured_after_ms": a.measured_after_ms,
                    "last_seen": a.last_seen,
                }
                old = conn.execute(
                    self._lock_rows(
                        select(tbl.c.id).where(
                            tbl.c.fingerprint == a.fingerprint,
                            tbl.c.index_name == a.index_name[:255],
                        )
                    )
                ).first()
                if old is None:
                    conn.execute(
                        tbl.insert().values(
                            fingerprint=a.fingerprint,
                            index_name=a.index_name[:255],
                            first_seen=a.first_seen,
                            **values,
                        )
                    )
                else:
                    conn.execute(tbl.update().where(tbl.c.id == old.id).values(**values))
                n += 1
        return n

    def advice(self, fingerprints: t.Iterable[str] | None = None) -> list[StoredAdvice]:
        """Stored suggestions, newest first (for ``fingerprints`` only, if given)."""
        self.migrate()
        tbl = schema.advice
        stmt = select(tbl).order_by(tbl.c.last_seen.desc(), tbl.c.id)
        if fingerprints is not None:
            stmt = stmt.where(tbl.c.fingerprint.in_(list(fingerprints)))
        with self.engine.connect() as conn:
            return [
                StoredAdvice(
                    row.fingerprint,
                    row.dialect,
                    row.table_name,
                    row.index_name,
                    tuple(json.loads(row.keys)),
                    row.ddl,
                    row.alembic,
                    row.reason,
                    row.verified_by,
                    row.cost_before,
                    row.cost_after,
                    row.measured_before_ms,
                    row.measured_after_ms,
                    row.first_seen,
                    row.last_seen,
                )
                for row in conn.execute(stmt)
            ]

    def record_plan_findings(self, rows: t.Iterable[PlanFindingRow], when: float) -> int:
        """Write plan findings: each run of the advisor sets the figures it saw (a plan
        does not add up the way request findings do)."""
        self.migrate()
        tbl = schema.findings
        n = 0
        with self.engine.begin() as conn:
            for f in rows:
                ep = f.endpoint[:255]
                old = conn.execute(
                    self._lock_rows(
                        select(tbl).where(
                            tbl.c.kind == f.kind,
                            tbl.c.endpoint == ep,
                            tbl.c.fingerprint == f.fingerprint,
                        )
                    )
                ).first()
                if old is None:
                    conn.execute(
                        tbl.insert().values(
                            kind=f.kind,
                            endpoint=ep,
                            fingerprint=f.fingerprint,
                            first_seen=when,
                            last_seen=when,
                            occurrences=1,
                            queries=f.queries,
                            total_s=f.total,
                            relationship=None,
                            fix=f.fix,
                            **_site_columns(f.site),
                        )
                    )
                else:
                    conn.execute(
                        tbl.update()
                        .where(tbl.c.id == old.id)
                        .values(
                            last_seen=max(old.last_seen, when),
                            occurrences=old.occurrences + 1,
                            queries=f.queries,
                            total_s=f.total,
                            fix=f.fix,
                        )
                    )
                n += 1
        return n

    # --- the result cache's counters ---------------------------------------------------

    _CACHE_FIELDS = (
        "hits",
        "misses",
        "invalidations",
        "races",
        "coalesced",
        "stale",
        "bypassed",
        "errors",
    )

    def write_cache_stats(self, minute: int, counts: dict[str, dict[str, int]]) -> None:
        """Add per-function cache counters to a minute bucket."""
        if not counts:
            return
        self.migrate()
        tbl = schema.cache_stats
        names = [n[:255] for n in counts]
        with self.engine.begin() as conn:
            existing = {
                row.name: row
                for row in conn.execute(
                    self._lock_rows(
                        select(tbl).where(tbl.c.minute == minute, tbl.c.name.in_(names))
                    )
                )
            }
            for name, c in counts.items():
                key = name[:255]
                old = existing.get(key)
                if old is None:
                    conn.execute(
                        tbl.insert().values(
                            minute=minute,
                            name=key,
                            **{f: int(c.get(f, 0)) for f in self._CACHE_FIELDS},
                        )
                    )
                else:
                    conn.execute(
                        tbl.update()
                        .where(tbl.c.minute == minute, tbl.c.name == key)
                        .values(
                            **{f: getattr(old, f) + int(c.get(f, 0)) for f in self._CACHE_FIELDS}
                        )
                    )

    def cache_window(self, since: float, until: float) -> dict[str, dict[str, int]]:
        """Per-function cache counters of the minutes in ``[since, until)``."""
        self.migrate()
        tbl = schema.cache_stats
        lo = int(since // 60) * 60
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(select(tbl).where(tbl.c.minute >= lo, tbl.c.minute < until)):
                agg = out.setdefault(row.name, dict.fromkeys(self._CACHE_FIELDS, 0))
                for f in self._CACHE_FIELDS:
                    agg[f] += getattr(row, f)
        return out

    # --- what alerts read ---------------------------------------------------------------

    def slo_sums(
        self, objectives: t.Sequence[str], windows: t.Sequence[float], now: float, width: int
    ) -> dict[str, list[tuple[int, int]]]:
        """Per objective, (events, bad events) over each of ``windows`` (seconds before
        ``now``): one pass over the buckets that overlap the longest window."""
        from sqlalchemy import case
        from sqlalchemy import func

        self.migrate()
        tbl = schema.slo_totals
        cols: list[t.Any] = [tbl.c.objective]
        for i, w in enumerate(windows):
            inside = tbl.c.minute > now - w - width
            cols.append(func.sum(case((inside, tbl.c.total), else_=0)).label(f"t{i}"))
            cols.append(func.sum(case((inside, tbl.c.bad), else_=0)).label(f"b{i}"))
        lo = now - max(windows) - width
        stmt = (
            select(*cols)
            .where(tbl.c.objective.in_(list(objectives)), tbl.c.minute > lo, tbl.c.minute <= now)
            .group_by(tbl.c.objective)
        )
        out = {o: [(0, 0)] * len(windows) for o in objectives}
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                out[row[0]] = [
                    (int(row[1 + 2 * i] or 0), int(row[2 + 2 * i] or 0))
                    for i in range(len(windows))
                ]
        return out

    def slo_endpoints(
        self, objective: str, since: float, until: float, limit: int = 5
    ) -> list[tuple[str, int, int]]:
        """(endpoint, events, bad events) of an objective in the buckets that overlap
        ``(since, until]`` (as :meth:`slo_sums` counts them), most bad first."""
        self.migrate()
        from sqlalchemy import func

        tbl = schema.slo_stats
        bad = func.sum(tbl.c.bad)
        stmt = (
            select(tbl.c.endpoint, func.sum(tbl.c.total), bad)
            .where(tbl.c.objective == objective, tbl.c.minute > since, tbl.c.minute <= until)
            .group_by(tbl.c.endpoint)
            .order_by(bad.desc(), tbl.c.endpoint)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(r[0], int(r[1] or 0), int(r[2] or 0)) for r in conn.execute(stmt)]

    def timeline(self, since: float, until: float) -> list[tuple[int, EndpointAggregate]]:
        """Every endpoint's requests merged per bucket of ``[since, until)``, oldest
        first (what the dashboard's charts draw)."""
        self.migrate()
        tbl = schema.endpoint_stats
        out: dict[int, EndpointAggregate] = {}
        stmt = select(tbl).where(tbl.c.minute >= since, tbl.c.minute < until)
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                out.setdefault(int(row.minute), EndpointAggregate()).merge(_endpoint_from_row(row))
        return sorted(out.items())

    def endpoint_totals(self, since: float, until: float) -> dict[str, EndpointAggregate]:
        """Per endpoint, the requests of ``[since, until)`` (bucket starts), without the
        histograms."""
        self.migrate()
        tbl = schema.endpoint_stats
        out: dict[str, EndpointAggregate] = {}
        stmt = select(
            tbl.c.endpoint, tbl.c.requests, tbl.c.statuses, tbl.c.total_s, tbl.c.db_s
        ).where(tbl.c.minute >= since, tbl.c.minute < until)
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                ep = out.setdefault(row.endpoint, EndpointAggregate())
                ep.requests += row.requests
                for k, v in json.loads(row.statuses or "{}").items():
                    ep.statuses[k] = ep.statuses.get(k, 0) + int(v)
                ep.total += row.total_s
                ep.db_time += row.db_s
        return out

    def shape_deltas(
        self, now: tuple[float, float], before: tuple[float, float], limit: int = 5
    ) -> list[tuple[str, str, float, int, float, int]]:
        """(endpoint, fingerprint, time now, calls now, time before, calls before) of the
        ``limit`` query shapes whose total time grew most from ``before`` to ``now`` (each
        a ``[since, until)`` of bucket starts), and of the ``limit`` costliest now; most
        grown first."""
        self.migrate()
        from sqlalchemy import case
        from sqlalchemy import func

        tbl = schema.query_stats
        in_now = (tbl.c.minute >= now[0]) & (tbl.c.minute < now[1])
        in_before = (tbl.c.minute >= before[0]) & (tbl.c.minute < before[1])
        t_now = func.sum(case((in_now, tbl.c.total_s), else_=0.0))
        c_now = func.sum(case((in_now, tbl.c.calls), else_=0))
        t_before = func.sum(case((in_now, 0.0), else_=tbl.c.total_s))
        c_before = func.sum(case((in_now, 0), else_=tbl.c.calls))
        base = (
            select(tbl.c.endpoint, tbl.c.fingerprint, t_now, c_now, t_before, c_before)
            .where(in_now | in_before)
            .group_by(tbl.c.endpoint, tbl.c.fingerprint)
        )
        # One grouped pass (a row per endpoint and shape), ranked here both ways.
        with self.engine.connect() as conn:
            rows = [
                (r[0], r[1], float(r[2] or 0), int(r[3] or 0), float(r[4] or 0), int(r[5] or 0))
                for r in conn.execute(base)
            ]
        grown = sorted(rows, key=lambda d: (d[4] - d[2], d[0], d[1]))[:limit]
        costliest = sorted(rows, key=lambda d: (-d[2], d[0], d[1]))[:limit]
        picked = {(d[0], d[1]): d for d in grown + costliest}
        return sorted(picked.values(), key=lambda d: (d[4] - d[2], d[0], d[1]))

    def slow_shapes(
        self, since: float, until: float, threshold: float
    ) -> dict[tuple[str, str], Aggregate]:
        """Per (endpoint, fingerprint), the window's aggregate of the shapes that had a
        statement slower than ``threshold`` seconds in it (the others cannot have a p95
        over it)."""
        self.migrate()
        from sqlalchemy import tuple_

        tbl = schema.query_stats
        window = (tbl.c.minute >= since) & (tbl.c.minute < until)
        slow = select(tbl.c.endpoint, tbl.c.fingerprint).where(window, tbl.c.max_s >= threshold)
        stmt = select(tbl).where(window, tuple_(tbl.c.endpoint, tbl.c.fingerprint).in_(slow))
        out: dict[tuple[str, str], Aggregate] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                out.setdefault((row.endpoint, row.fingerprint), Aggregate()).merge(_aggregate(row))
        return out

    def new_findings(self, kinds: t.Sequence[str], since: float) -> list[StoredFinding]:
        """Findings of ``kinds`` first seen at or after ``since``."""
        self.migrate()
        tbl = schema.findings
        stmt = (
            select(tbl)
            .where(tbl.c.kind.in_(list(kinds)), tbl.c.first_seen >= since)
            .order_by(tbl.c.first_seen, tbl.c.id)
            .limit(200)
        )
        with self.engine.connect() as conn:
            return [_finding(row) for row in conn.execute(stmt)]

    def finding_kinds(self, fingerprints: t.Iterable[str]) -> dict[str, set[str]]:
        """The kinds of finding recorded for each fingerprint."""
        self.migrate()
        tbl = schema.findings
        out: dict[str, set[str]] = {}
        fps = list(fingerprints)
        if not fps:
            return out
        with self.engine.connect() as conn:
            for fp, kind in conn.execute(
                select(tbl.c.fingerprint, tbl.c.kind).where(tbl.c.fingerprint.in_(fps)).distinct()
            ):
                out.setdefault(fp, set()).add(kind)
        return out

    def pool_window(
        self, since: float, until: float
    ) -> dict[str, tuple[int, float, int, float | None]]:
        """Per pool: checkouts, seconds waited, timeouts, highest saturation."""
        self.migrate()
        tbl = schema.pool_stats
        out: dict[str, tuple[int, float, int, float | None]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(select(tbl).where(tbl.c.minute >= since, tbl.c.minute < until)):
                c, w, n, s = out.get(row.pool, (0, 0.0, 0, None))
                sat = row.saturation
                if s is not None:
                    sat = s if sat is None else max(s, sat)
                out[row.pool] = (c + row.checkouts, w + row.wait_s, n + row.timeouts, sat)
        return out

    # --- deploy markers -----------------------------------------------------------------

    def add_deploy(self, version: str, at: float, description: str = "") -> None:
        self.migrate()
        with self.engine.begin() as conn:
            conn.execute(
                schema.deploys.insert().values(
                    version=version[:255], at=at, description=description
                )
            )

    def deploys(self, since: float, until: float) -> list[tuple[str, float, str]]:
        """(version, time, description) of the deploys in ``[since, until]``, oldest
        first."""
        self.migrate()
        tbl = schema.deploys
        with self.engine.connect() as conn:
            return [
                (r.version, r.at, r.description)
                for r in conn.execute(
                    select(tbl).where(tbl.c.at >= since, tbl.c.at <= until).order_by(tbl.c.at)
                )
            ]

    # --- connection pools -------------------------------------------------------------

    def write_pool_stats(
        self, minute: int, pools: dict[str, tuple[int, float, int, float | None]]
    ) -> None:
        """Add per-pool checkouts, their wait, timeouts (and the highest saturation seen)
        to a bucket."""
        if not pools:
            return
        self.migrate()
        tbl = schema.pool_stats
        with self.engine.begin() as conn:
            existing = {
                row.pool: row
                for row in conn.execute(
                    self._lock_rows(
                        select(tbl).where(
                            tbl.c.minute == minute, tbl.c.pool.in_([p[:255] for p in pools])
                        )
                    )
                )
            }
            for name, (checkouts, wait, timeouts, saturation) in pools.items():
                old = existing.get(name[:255])
                if old is None:
                    conn.execute(
                        tbl.insert().values(
                            minute=minute,
                            pool=name[:255],
                            checkouts=checkouts,
                            wait_s=wait,
                            timeouts=timeouts,
                            saturation=saturation,
                        )
                    )
                else:
                    sat = old.saturation
                    if saturation is not None:
                        sat = saturation if sat is None else max(sat, saturation)
                    conn.execute(
                        tbl.update()
                        .where(tbl.c.minute == minute, tbl.c.pool == old.pool)
                        .values(
                            checkouts=old.checkouts + checkouts,
                            wait_s=old.wait_s + wait,
                            timeouts=old.timeouts + timeouts,
                            saturation=sat,
                        )
                    )

    # --- leases and alert state ---------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds: True for exactly one
        holder at a time, across processes and hosts (their clocks within ``ttl``).
        Taking it from another holder (whose lease expired or was released) records
        when (``acquired``) and logs who took it from whom."""
        self.migrate()
        tbl = schema.leases
        try:
            with self.engine.begin() as conn:
                renewed = conn.execute(
                    update(tbl)
                    .where(tbl.c.name == name, tbl.c.holder == holder)
                    .values(expires=now + ttl)
                ).rowcount
                if renewed == 1:
                    return True
                row = conn.execute(select(tbl).where(tbl.c.name == name)).first()
                if row is None:
                    conn.execute(
                        tbl.insert().values(
                            name=name, holder=holder, expires=now + ttl, acquired=now
                        )
                    )
                    return True
                if row.expires > now:
                    return False
                # Compare and set: of two processes taking it at once, one changes it.
                taken = conn.execute(
                    update(tbl)
                    .where(tbl.c.name == name, tbl.c.holder == row.holder)
                    .values(holder=holder, expires=now + ttl, acquired=now)
                ).rowcount
        except IntegrityError:
            return False  # another process inserted it first
        if taken != 1:
            return False
        released = row.expires <= 0
        how = "released" if released else f"expired {now - row.expires:.1f} s ago"
        # A lease that expired is a holder that died or stalled: worth a warning.
        _log.log(
            logging.INFO if released else logging.WARNING,
            "querywatch lease %r taken over by %s from %s (its lease %s).",
            name,
            holder,
            row.holder,
            how,
        )
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give up the lease ``name`` if ``holder`` has it: another process takes it at
        its next round, not when it would have expired (a clean shutdown, a rolling
        deploy)."""
        tbl = schema.leases
        with self.engine.begin() as conn:
            conn.execute(
                update(tbl).where(tbl.c.name == name, tbl.c.holder == holder).values(expires=0.0)
            )

    def lease_holder(self, name: str, now: float) -> str | None:
        self.migrate()
        tbl = schema.leases
        with self.engine.connect() as conn:
            row = conn.execute(select(tbl).where(tbl.c.name == name)).first()
        return row.holder if row is not None and row.expires > now else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of ``qw_meta``."""
        self.migrate()
        tbl = schema.meta
        with self.engine.begin() as conn:
            n = conn.execute(update(tbl).where(tbl.c.key == key).values(value=value)).rowcount
            if n == 0:
                conn.execute(tbl.insert().values(key=key, value=value))

    def meta_value(self, key: str, default: str | None = None) -> str | None:
        """A value of ``qw_meta``; with ``default``, set it first if absent (the first
        writer wins)."""
        self.migrate()
        tbl = schema.meta
        with self.engine.begin() as conn:
            row = conn.execute(self._lock_rows(select(tbl.c.value).where(tbl.c.key == key))).first()
            if row is not None:
                return str(row[0])
            if default is None:
                return None
            try:
                conn.execute(tbl.insert().values(key=key, value=default))
            except IntegrityError:
                pass
            else:
                return default
        return self.meta_value(key)

    def alert_states(self) -> dict[str, StoredAlert]:
        """Every alert's current state, by key."""
        self.migrate()
        tbl = schema.alerts
        with self.engine.connect() as conn:
            return {row.key: _alert(row) for row in conn.execute(select(tbl))}

    def set_alert_state(self, change: AlertChange) -> bool:
        """Move an alert to ``change.state`` and log the change, in one transaction.
        False (nothing written) when it already is in that state: a change is written
        once however many processes try."""
        return bool(self.set_alert_states([change]))

    def set_alert_states(self, changes: t.Sequence[AlertChange]) -> list[AlertChange]:
        """:meth:`set_alert_state` for several alerts in one transaction (one commit);
        returns the changes written. If another process wrote one of them at the same
        moment, each is tried again on its own."""
        if not changes:
            return []
        self.migrate()
        try:
            with self.engine.begin() as conn:
                return [c for c in changes if self._apply_change(conn, c)]
        except IntegrityError:
            pass
        out = []
        for c in changes:
            try:
                with self.engine.begin() as conn:
                    if self._apply_change(conn, c):
                        out.append(c)
            except IntegrityError:
                continue  # another process inserted the first firing at the same moment
        return out

    def _apply_change(self, conn: Connection, change: AlertChange) -> bool:
        tbl, events = schema.alerts, schema.alert_events
        old = conn.execute(self._lock_rows(select(tbl).where(tbl.c.key == change.key))).first()
        if old is not None and old.state == change.state:
            return False
        if old is None and change.state != "firing":
            return False
        evidence = json.dumps(change.evidence, sort_keys=True, default=str)
        values = {
            "kind": change.kind[:32],
            "severity": change.severity[:16],
            "state": change.state,
            "since": change.at,
            "updated": change.at,
            "summary": change.summary,
            "evidence": evidence,
        }
        if old is None:
            conn.execute(tbl.insert().values(key=change.key, fired=1, **values))
        else:
            fired = old.fired + (1 if change.state == "firing" else 0)
            conn.execute(tbl.update().where(tbl.c.key == change.key).values(fired=fired, **values))
        conn.execute(
            events.insert().values(
                key=change.key,
                kind=values["kind"],
                severity=values["severity"],
                state=change.state,
                at=change.at,
                summary=change.summary,
                evidence=evidence,
            )
        )
        return True

    def alert_events(
        self, after_id: int = 0, limit: int = 1000, *, newest: int | None = None
    ) -> list[StoredAlertEvent]:
        """Alert state changes after ``after_id``, oldest first; or, with ``newest``,
        the last ``newest`` changes, newest first."""
        self.migrate()
        tbl = schema.alert_events
        if newest is not None:
            stmt = select(tbl).order_by(tbl.c.id.desc()).limit(newest)
        else:
            stmt = select(tbl).where(tbl.c.id > after_id).order_by(tbl.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [
                StoredAlertEvent(
                    row.id,
                    row.key,
                    row.kind,
                    row.severity,
                    row.state,
                    row.at,
                    row.summary,
                    json.loads(row.evidence),
                )
                for row in conn.execute(stmt)
            ]

    def dispose(self) -> None:
        self.engine.dispose()


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
