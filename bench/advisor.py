"""The advisor on the demo shop at full scale: its own time per query shape, and the
latency of the unoptimized endpoint before and after the index it suggests.

1. Seeds the shop (200,000 orders at ``--scale 1``) on SQLite, and on PostgreSQL when
   ``--postgres URL`` is given (HypoPG installed there).
2. Serves a few rounds of every endpoint through the app with querywatch on, so the store
   holds the shapes the traffic ran.
3. Runs the advisor over the store's costliest read shapes, as ``querywatch advise``
   does, timing each shape's analysis.
4. Times ``GET /api/orders/lookup`` through Flask's full request path, without and with
   the first suggestion's index (created with its own DDL, then dropped), alternating in
   ``--rounds`` rounds so the machine's drift falls on both sides; the database is left
   as it was.

    python bench/advisor.py [--scale 1] [--postgres postgresql+psycopg://.../qw_bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import typing as t

from sqlalchemy import create_engine
from sqlalchemy import text


def _seeded(url: str, scale: float) -> None:
    from querywatch.demo import shop

    engine = create_engine(url)
    try:
        if shop.seeded_version(engine) != (shop.SEED_VERSION, scale):
            t0 = time.perf_counter()
            shop.seed(engine, scale)
            print(f"  seeded {url.split('://')[0]} in {time.perf_counter() - t0:.1f} s")
    finally:
        engine.dispose()


def _lookup_times(client: t.Any, n: int) -> list[float]:
    times = []
    for i in range(n):
        email = f"customer{(i * 7919) % 20000 + 1}@example.com"
        t0 = time.perf_counter()
        resp = client.get(f"/api/orders/lookup?email={email}")
        times.append((time.perf_counter() - t0) * 1000.0)
        assert resp.status_code == 200
    return times


def _summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "requests": len(times),
        "median_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


def run(url: str, scale: float, requests: int, workdir: str, rounds: int = 5) -> dict[str, t.Any]:
    from querywatch._advice_worker import queries_from_store
    from querywatch.advisor import Advisor
    from querywatch.demo import shop
    from querywatch.store import Store

    name = url.split("+")[0].split(":")[0]
    print(f"== {name}")
    _seeded(url, scale)
    store_url = f"sqlite:///{workdir}/store-{name}.db"
    app = shop.create_app(
        url,
        instance_path=f"{workdir}/instance-{name}",
        config={
            "QUERYWATCH_STORE_URL": store_url,
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
            # This run calls the advisor itself; the app's own round stays out of it.
            "QUERYWATCH_ADVISE": False,
        },
    )
    client = app.test_client()
    # The server-side time of each lookup, as querywatch records it (before_request to
    # teardown: what its report and the demo's p95 show).
    server_ms: list[float] = []

    def _on_finish(record: t.Any, _findings: t.Any) -> None:
        if record.name == "GET /api/orders/lookup":
            server_ms.append(record.duration * 1000.0)

    app.extensions["querywatch"].listeners.append(_on_finish)
    for i in range(1, 4):
        for path in (
            f"/api/orders/lookup?email=customer{i}@example.com",
            f"/api/customers/{i}/orders",
            "/api/orders/recent?limit=20",
            "/api/products?category=books",
            f"/api/products/{i}",
            "/api/admin/overview",
        ):
            assert client.get(path).status_code == 200
    app.extensions["querywatch"].flusher.flush()

    store = Store(store_url)
    queries = queries_from_store(store, since=time.time() - 3600, limit=20)
    # As the app's background advisor runs it: no DDL (SQLite plans candidates in a copy
    # of the schema, PostgreSQL with HypoPG), no timing runs.
    t0 = time.perf_counter()
    with Advisor(url, measure=False, timeout=60) as adv:
        quiet = adv.advise(queries, index_health=False)
    quiet_total = time.perf_counter() - t0
    quiet_shape = [qa.seconds for qa in quiet.queries]
    first = quiet.suggestions[0].candidate.key_sql() if quiet.suggestions else None
    print(
        f"  background mode: {len(queries)} shapes in {quiet_total:.2f} s; per shape: max"
        f" {max(quiet_shape):.3f} s, median {statistics.median(quiet_shape):.3f} s;"
        f" first suggestion {first}"
    )
    t0 = time.perf_counter()
    with Advisor(url, allow_ddl=True) as adv:
        advice = adv.advise(queries)
    total = time.perf_counter() - t0
    per_shape = [qa.seconds for qa in advice.queries]
    top = advice.suggestions[0]
    c = top.candidate
    served = top.to_dict()["queries"][0]
    print(
        f"  {len(queries)} shapes analysed in {total:.2f} s; per shape: max"
        f" {max(per_shape):.3f} s, median {statistics.median(per_shape):.3f} s"
    )
    print(f"  first suggestion: {c.ddl(advice.dialect, migration=True)}")
    print(f"    serves {served['endpoints']}")
    print(
        f"    estimated {served['cost_before']:,.1f} -> {served['cost_after']:,.1f};"
        f" measured {served['measured_before_ms']} -> {served['measured_after_ms']} ms"
    )

    # Without and with the index, alternating in rounds, so the machine's drift over a
    # minute falls on both sides alike.
    before_times: list[float] = []
    after_times: list[float] = []
    before_server: list[float] = []
    after_server: list[float] = []
    per_round = max(1, requests // rounds)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    drop = f"DROP INDEX {c.name()}" + (f" ON {c.table}" if advice.dialect == "mysql" else "")
    try:
        for _ in range(rounds):
            server_ms.clear()
            before_times += _lookup_times(client, per_round)
            before_server += server_ms
            with engine.connect() as conn:
                conn.execute(text(c.ddl(advice.dialect, migration=True)))
                if advice.dialect == "postgresql":
                    conn.execute(text(f"ANALYZE {c.table}"))
            try:
                server_ms.clear()
                after_times += _lookup_times(client, per_round)
                after_server += server_ms
            finally:
                with engine.connect() as conn:
                    conn.execute(text(drop))
    finally:
        engine.dispose()
    before, after = _summary(before_times), _summary(after_times)
    before_srv, after_srv = _summary(before_server), _summary(after_server)
    ratio = before["median_ms"] / after["median_ms"]
    ratio_srv = before_srv["median_ms"] / after_srv["median_ms"]
    print(
        f"  GET /api/orders/lookup, {requests} requests: median {before['median_ms']:.2f} ms"
        f" -> {after['median_ms']:.2f} ms (x{ratio:.1f}); p95 {before['p95_ms']:.2f} ->"
        f" {after['p95_ms']:.2f} ms"
    )
    print(
        f"    server side (querywatch's request time): median {before_srv['median_ms']:.2f}"
        f" -> {after_srv['median_ms']:.2f} ms (x{ratio_srv:.1f}); p95"
        f" {before_srv['p95_ms']:.2f} -> {after_srv['p95_ms']:.2f} ms"
    )
    app.extensions["querywatch"].flusher._stop.set()
    with app.app_context():
        shop.db.engine.dispose()
    store.dispose()
    return {
        "dialect": advice.dialect,
        "shapes": len(queries),
        "advisor_total_s": round(total, 3),
        "advisor_per_shape_max_s": round(max(per_shape), 3),
        "advisor_per_shape_median_s": round(statistics.median(per_shape), 3),
        "background_total_s": round(quiet_total, 3),
        "background_per_shape_max_s": round(max(quiet_shape), 3),
        "background_per_shape_median_s": round(statistics.median(quiet_shape), 3),
        "suggestion": c.ddl(advice.dialect, migration=True),
        "verified_by": top.verified_by,
        "serves": served["endpoints"],
        "estimated_before": served["cost_before"],
        "estimated_after": served["cost_after"],
        "measured_before_ms": served["measured_before_ms"],
        "measured_after_ms": served["measured_after_ms"],
        "lookup_before": before,
        "lookup_after": after,
        "lookup_speedup": round(ratio, 1),
        "lookup_server_before": before_srv,
        "lookup_server_after": after_srv,
        "lookup_server_speedup": round(ratio_srv, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=200, help="each side, in all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="without/with alternations")
    parser.add_argument("--sqlite", default=None, help="SQLite URL (default: a temp file)")
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL with HypoPG")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="qw-advisor-")
    results = [
        run(args.sqlite or f"sqlite:///{workdir}/shop.db", args.scale, args.requests, workdir)
    ]
    if args.postgres:
        results.append(run(args.postgres, args.scale, args.requests, workdir))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
