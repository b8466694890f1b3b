"""Writing the minute buckets: shapes, endpoints, objectives' events, users, findings,
the result cache's counters and the connection pools', merged by every process."""

from __future__ import annotations

import json
import time
import typing as t

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .._stats import Aggregate
from .._stats import EndpointAggregate
from .._stats import FindingAggregate
from .._stats import ShapeInfo
from .._stats import Snapshot
from . import schema
from ._base import Base
from ._rows import _KNOWN_SHAPES_CAP
from ._rows import _endpoint_from_row
from ._rows import _hist_dump
from ._rows import _hist_load
from ._rows import _site_columns
from ._rows import _write_rows

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection


class StatsWrites(Base):
    """Merges each process's snapshots into the minute buckets."""

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
                        self._merge_arrivals(conn, minute, bucket.arrivals)
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
                        "max_trace": agg.max_trace,
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
                        "max_trace": agg.max_trace if agg.max > old.max_s else old.max_trace,
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

    def _merge_arrivals(self, conn: Connection, minute: int, n: int) -> None:
        if not n:
            return
        tbl = schema.arrivals
        old = conn.execute(
            self._lock_rows(select(tbl.c.requests).where(tbl.c.minute == minute))
        ).scalar()
        if old is None:
            conn.execute(tbl.insert().values(minute=minute, requests=n))
        else:
            conn.execute(tbl.update().where(tbl.c.minute == minute).values(requests=old + n))

    def arrivals(self, since: float, until: float) -> int | None:
        """The requests that started in the buckets of ``[since, until)`` (bucket
        starts), those still running included; None when no bucket of it counted any
        (a store written by an older querywatch, or no traffic)."""
        from sqlalchemy import func

        self.migrate()
        tbl = schema.arrivals
        stmt = select(func.sum(tbl.c.requests)).where(tbl.c.minute >= since, tbl.c.minute < until)
        with self.engine.connect() as conn:
            n = conn.execute(stmt).scalar()
        return int(n) if n else None

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
                        trace_id=f.trace_id,
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
                        trace_id=f.trace_id or old.trace_id,
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
                schema.arrivals,
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
