"""Reading the minute buckets: the report's window, the costliest reads, and what the
alerts and the dashboard sum."""

from __future__ import annotations

import json
import typing as t

from sqlalchemy import select

from .._stats import Aggregate
from .._stats import EndpointAggregate
from . import schema
from ._base import Base
from ._rows import StoredFinding
from ._rows import StoredShape
from ._rows import Window
from ._rows import _aggregate
from ._rows import _endpoint_from_row
from ._rows import _finding
from ._rows import _site

if t.TYPE_CHECKING:
    pass


class StatsReads(Base):
    """Reads windows of the minute buckets."""

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

    def slowest_traces(
        self, since: float, until: float, keys: t.Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The trace of the slowest traced call of each (endpoint, shape id) of ``keys``
        in ``[since, until)`` of bucket starts (the app traces with OpenTelemetry)."""
        if not keys:
            return {}
        self.migrate()
        qs = schema.query_stats
        fps = sorted({fp for _, fp in keys})
        best: dict[tuple[str, str], tuple[float, str]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(qs.c.endpoint, qs.c.fingerprint, qs.c.max_s, qs.c.max_trace).where(
                    qs.c.minute >= since,
                    qs.c.minute < until,
                    qs.c.fingerprint.in_(fps),
                    qs.c.max_trace.is_not(None),
                )
            )
            for row in rows:
                key = (row.endpoint, row.fingerprint)
                if key in keys and (key not in best or row.max_s > best[key][0]):
                    best[key] = (row.max_s, row.max_trace)
        return {k: trace for k, (_, trace) in best.items()}

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

    def shape_time(
        self, endpoint: str, fingerprint: str, since: float, until: float
    ) -> tuple[float, int]:
        """(total seconds, calls) of one endpoint's query shape in the buckets starting in
        ``[since, until)``."""
        self.migrate()
        from sqlalchemy import func

        tbl = schema.query_stats
        query = select(func.sum(tbl.c.total_s), func.sum(tbl.c.calls)).where(
            (tbl.c.endpoint == endpoint)
            & (tbl.c.fingerprint == fingerprint)
            & (tbl.c.minute >= since)
            & (tbl.c.minute < until)
        )
        with self.engine.connect() as conn:
            total, calls = conn.execute(query).one()
        return float(total or 0.0), int(calls or 0)

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
