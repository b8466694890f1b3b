"""How long one alert evaluation takes over a store holding a day of minute buckets for
50 endpoints and 1,000 query shapes.

The store is filled directly (no app): every minute of the last 24 hours has a row per
endpoint (``qw_endpoint_stats``, 72,000 rows), per (endpoint, shape) (``qw_query_stats``,
1,440,000 rows: 20 shapes in each endpoint), per (objective, endpoint)
(``qw_slo_stats``, availability and latency: 144,000 rows; their sums per objective in
``qw_slo_totals``) and per pool. The last 20
minutes hold an incident: one endpoint's lookup shape takes 2 s and holds the pool, every
request is slow and a tenth fail, so the burn-rate pages and tickets, a
p95 rule and a new full scan fire.

Timed (median of ``--runs``): ``Evaluator.run`` when the alerts fire (the lease, the SLO
sums, the per-shape rules, evidence for every firing alert, the state changes written;
the alert rows are deleted between runs, untimed) and when nothing changes (the steady
state). Beside them, the same availability sums the way a store without
``qw_slo_stats`` would have to take them: every endpoint row of the day read and its
JSON status counts parsed in Python.

    python bench/alerts.py [--runs 20] [--url sqlite:///...|postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import typing as t

from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import select

ENDPOINTS = 50
SHAPES_PER_ENDPOINT = 20
MINUTES = 1440
INCIDENT_MINUTES = 20


def fill(store: t.Any, now: float) -> None:
    from querywatch._stats import bucket_index
    from querywatch.store import PlanFindingRow
    from querywatch.store import StoredAdvice
    from querywatch.store import schema

    store.migrate()
    rng = random.Random(7)
    end = int(now // 60) * 60
    first = end - MINUTES * 60
    eps = [f"GET /api/e{i}" for i in range(ENDPOINTS)]
    fps = {ep: [f"{i:04d}{j:012d}" for j in range(SHAPES_PER_ENDPOINT)] for i, ep in enumerate(eps)}
    shapes = [
        {"fingerprint": fp, "shape": f"SELECT * FROM t{fp[:4]} WHERE c{fp[-3:]} = ?",
         "operation": "SELECT", "site_file": f"/srv/app/e{fp[:4]}.py", "site_line": int(fp[-3:]),
         "site_function": "view", "first_seen": first, "sample_sql": None, "advised_at": None}
        for ep in eps for fp in fps[ep]
    ]  # fmt: skip
    culprit_ep, culprit = eps[7], fps[eps[7]][3]
    fast, slow = bucket_index(0.002), bucket_index(2.0)
    with store.engine.begin() as conn:
        conn.execute(schema.shapes.insert(), shapes)
    for m0 in range(first, end, 60 * 60):  # an hour of buckets per transaction
        q_rows, e_rows, s_rows, p_rows = [], [], [], []
        for minute in range(m0, min(m0 + 3600, end), 60):
            incident = minute >= end - INCIDENT_MINUTES * 60
            p_rows.append({"minute": minute, "pool": "default", "checkouts": 600,
                           "wait_s": 0.06, "timeouts": 0, "saturation": 0.3})  # fmt: skip
            for ep in eps:
                requests = 10 + rng.randrange(3)
                bad_lat = bad_av = 0
                db = 0.0
                for fp in fps[ep]:
                    calls = requests
                    sec = 0.002
                    if incident and fp == culprit:
                        sec = 2.0
                    total = calls * sec
                    db += total
                    q_rows.append(
                        {"minute": minute, "endpoint": ep, "fingerprint": fp, "calls": calls,
                         "errors": 0, "total_s": total, "min_s": sec, "max_s": sec,
                         "rows": calls, "hist": json.dumps({str(slow if sec > 1 else fast): calls})}
                    )  # fmt: skip
                if incident:
                    # The culprit holds the pool's connections: every endpoint waits
                    # (every request slow), one in ten fails.
                    bad_lat, bad_av = requests, requests // 10
                statuses = {"2xx": requests - bad_av}
                if bad_av:
                    statuses["5xx"] = bad_av
                e_rows.append(
                    {"minute": minute, "endpoint": ep, "requests": requests,
                     "statuses": json.dumps(statuses, sort_keys=True), "total_s": db + 0.01,
                     "max_s": 2.1, "hist": "{}", "queries": requests * SHAPES_PER_ENDPOINT,
                     "max_queries": SHAPES_PER_ENDPOINT, "db_s": db, "db_errors": 0,
                     "dropped_queries": 0}
                )  # fmt: skip
                s_rows.append({"objective": "availability", "minute": minute, "endpoint": ep,
                               "total": requests, "bad": bad_av})  # fmt: skip
                s_rows.append({"objective": "latency", "minute": minute, "endpoint": ep,
                               "total": requests, "bad": bad_lat})  # fmt: skip
        sums: dict[tuple[str, int], list[int]] = {}
        for r in s_rows:
            acc = sums.setdefault((r["objective"], r["minute"]), [0, 0])
            acc[0] += r["total"]
            acc[1] += r["bad"]
        t_rows = [
            {"objective": o, "minute": m, "total": n, "bad": b} for (o, m), (n, b) in sums.items()
        ]
        with store.engine.begin() as conn:
            conn.execute(schema.slo_totals.insert(), t_rows)
            conn.execute(schema.query_stats.insert(), q_rows)
            conn.execute(schema.endpoint_stats.insert(), e_rows)
            conn.execute(schema.slo_stats.insert(), s_rows)
            conn.execute(schema.pool_stats.insert(), p_rows)
    store.record_advice(
        [StoredAdvice(culprit, store.engine.dialect.name, "t0007", "ix_t0007_c003", ("c003",),
                      "CREATE INDEX ix_t0007_c003 ON t0007 (c003);", "", "", "bench",
                      5000.0, 8.0, None, None, now, now)]
    )  # fmt: skip
    store.meta_value("alerts_since", repr(float(first)))
    store.record_plan_findings(
        [PlanFindingRow("full_scan", culprit_ep, culprit, 1, 2.0, None, "index")], now - 300
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--url", default=None, help="a store URL (default: a SQLite file)")
    args = parser.parse_args()

    import logging

    logging.getLogger("querywatch.alerts").setLevel(logging.ERROR)

    from querywatch.alerts import AlertRules
    from querywatch.alerts import Evaluator
    from querywatch.alerts import parse_objectives
    from querywatch.store import Store
    from querywatch.store import schema

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/store.db"
        store = Store(url)
        now = time.time()
        t0 = time.perf_counter()
        fill(store, now)
        filled = time.perf_counter() - t0
        counts = {}
        with store.engine.connect() as conn:
            for tbl in (
                schema.query_stats,
                schema.endpoint_stats,
                schema.slo_stats,
                schema.slo_totals,
            ):
                counts[tbl.name] = conn.execute(select(func.count()).select_from(tbl)).scalar()
        rules = AlertRules(
            objectives=parse_objectives(
                ["availability:99.9", {"name": "latency", "target": 0.99, "threshold_ms": 1000}]
            ),
            shape_p95_ms=1000.0,
        )
        firing: list[float] = []
        steady: list[float] = []
        changes: list[str] = []
        for i in range(args.runs):
            with store.engine.begin() as conn:
                conn.execute(delete(schema.alerts))
                conn.execute(delete(schema.alert_events))
            ev = Evaluator(store, rules, holder="bench")
            t1 = time.perf_counter()
            out = ev.run(now + i * 1e-3)
            firing.append(time.perf_counter() - t1)
            changes = sorted(c.key for c in out or [])
            t1 = time.perf_counter()
            again = ev.run(now + i * 1e-3 + 1e-4)
            steady.append(time.perf_counter() - t1)
            assert again == [], again
        # The availability sums without qw_slo_stats: parse each endpoint row's statuses.
        t1 = time.perf_counter()
        with store.engine.connect() as conn:
            total = bad = 0
            for row in conn.execute(
                select(schema.endpoint_stats.c.requests, schema.endpoint_stats.c.statuses)
            ):
                total += row[0]
                bad += json.loads(row[1]).get("5xx", 0)
        naive = time.perf_counter() - t1
        store.dispose()

    med_f, med_s = statistics.median(firing), statistics.median(steady)
    print(f"store: {store.engine.dialect.name}, filled in {filled:.1f} s: {counts}")
    print(f"alerts fired per evaluation: {len(changes)}: {', '.join(changes)}")
    print(
        f"evaluation, alerts firing (evidence gathered, states written): median"
        f" {med_f * 1000:.1f} ms, max {max(firing) * 1000:.1f} ms (target < 200 ms)"
    )
    print(
        f"evaluation, nothing changes: median {med_s * 1000:.1f} ms,"
        f" max {max(steady) * 1000:.1f} ms"
    )
    print(
        f"the availability sums from JSON statuses instead (one window, Python):"
        f" {naive * 1000:.1f} ms = {naive / med_s:.1f}x the steady evaluation"
    )


if __name__ == "__main__":
    main()
