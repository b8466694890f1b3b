"""Per-request and per-query overhead of querywatch, side by side with OpenTelemetry and
sentry-sdk, in one run.

Each configuration runs the shop app in worker processes of its own (sentry-sdk and
OpenTelemetry patch process-wide), several per configuration (``--procs``) because a
process's memory layout alone moves its timings by a few percent, all on the same seeded
SQLite database. The coordinator interleaves rounds: in every round each worker serves a
batch of requests to each endpoint, in a shuffled order, so drift on a shared, noisy
machine hits every configuration alike. Figures are medians over all requests, with the
spread of the batch medians (25th-75th percentile).

    pip install -e '.[bench]'
    python bench/overhead.py [--rounds 15] [--batch 200] [--json bench/results/overhead.json]

Overhead per query and per request come from a least-squares line through the three
endpoints (1, 10 and 51 queries): added time = per_request + per_query * queries.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
import typing as t

ENDPOINTS = {
    "1-query": ("/api/products/3", 1),
    "10-query": ("/api/admin/overview", 10),
    "51-query (N+1)": ("/api/orders/recent", 51),
}
CONFIGS = ("none", "querywatch", "opentelemetry", "sentry-sdk")


def _make_app(config: str, db_url: str, workdir: str) -> t.Any:
    from querywatch.demo import shop

    if config == "none":
        return shop.create_app(db_url, querywatch=False)
    if config == "querywatch":
        return shop.create_app(
            db_url,
            instance_path=os.path.join(workdir, "instance-qw"),
            config={
                "QUERYWATCH_STORE_URL": f"sqlite:///{workdir}/qw-store.db",
                "QUERYWATCH_FLUSH_INTERVAL": float(os.environ.get("QW_BENCH_FLUSH", "5")),
            },
        )
    if config == "opentelemetry":
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        app = shop.create_app(db_url, querywatch=False)
        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
        with app.app_context():
            # skip_dep_check: the instrumentor's declared range stops below SQLAlchemy
            # 2.1, which it instruments through the same engine events.
            SQLAlchemyInstrumentor().instrument(
                engine=shop.db.engine, tracer_provider=provider, skip_dep_check=True
            )
        app.config["_bench_exporter"] = exporter
        return app
    if config == "sentry-sdk":
        import sentry_sdk
        from sentry_sdk.transport import Transport

        class DropTransport(Transport):
            def capture_envelope(self, envelope: t.Any) -> None:
                return None

        sentry_sdk.init(
            dsn="https://public@sentry.invalid/1",
            traces_sample_rate=1.0,
            transport=DropTransport,
        )
        return shop.create_app(db_url, querywatch=False)
    raise ValueError(config)


def _worker(config: str, db_url: str, workdir: str, conn: t.Any) -> None:
    app = _make_app(config, db_url, workdir)
    client = app.test_client()
    exporter = app.config.get("_bench_exporter")
    perf = time.perf_counter_ns
    for path, _ in ENDPOINTS.values():  # warm up
        for _ in range(100):
            assert client.get(path).status_code == 200
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            break
        path, n = msg
        samples = []
        for _ in range(n):
            t0 = perf()
            resp = client.get(path)
            samples.append(perf() - t0)
            if resp.status_code != 200:
                raise RuntimeError(f"{config}: {path} answered {resp.status_code}")
        if exporter is not None:
            exporter.clear()
        conn.send(samples)
    conn.close()


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares: (intercept, slope)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--procs",
        type=int,
        default=3,
        help="worker processes per configuration: a process's memory layout alone moves"
        " its timings by several percent, so each figure pools several",
    )
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]

    from sqlalchemy import create_engine

    from querywatch.demo import shop

    workdir = tempfile.mkdtemp(prefix="qw-bench-")
    db_url = f"sqlite:///{workdir}/shop.db"
    engine = create_engine(db_url)
    shop.seed(engine, args.scale)
    engine.dispose()

    ctx = mp.get_context("spawn")
    workers: dict[tuple[str, int], t.Any] = {}
    for config in configs:
        for k in range(args.procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(config, db_url, workdir, child), daemon=True)
            proc.start()
            workers[(config, k)] = (proc, parent)
    for key, (_, conn) in workers.items():
        if conn.recv() != "ready":
            raise RuntimeError(f"{key} worker failed to start")

    samples: dict[tuple[str, str], list[int]] = {(c, e): [] for c in configs for e in ENDPOINTS}
    round_medians: dict[tuple[str, str], list[float]] = {k: [] for k in samples}
    rng = random.Random(1)
    started = time.perf_counter()
    for r in range(args.rounds):
        order = [(c, k, e) for c in configs for k in range(args.procs) for e in ENDPOINTS]
        rng.shuffle(order)
        for config, k, ep in order:
            _, conn = workers[(config, k)]
            conn.send((ENDPOINTS[ep][0], args.batch))
            got = conn.recv()
            samples[(config, ep)].extend(got)
            round_medians[(config, ep)].append(statistics.median(got) / 1000.0)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    for _, conn in workers.values():
        conn.send(None)
    for proc, _ in workers.values():
        proc.join(10)

    def med_us(config: str, ep: str) -> float:
        return statistics.median(samples[(config, ep)]) / 1000.0

    def spread(config: str, ep: str) -> tuple[float, float]:
        q = statistics.quantiles(round_medians[(config, ep)], n=4)
        return q[0], q[2]

    result: dict[str, t.Any] = {
        "rounds": args.rounds,
        "procs_per_config": args.procs,
        "batch": args.batch,
        "seconds": round(time.perf_counter() - started, 1),
        "python": sys.version.split()[0],
        "medians_us": {},
        "overhead": {},
    }
    print()
    header = f"{'endpoint':<16}" + "".join(f"{c:>22}" for c in configs)
    print("Median request time, µs (25th-75th percentile of round medians)")
    print(header)
    for ep in ENDPOINTS:
        row = f"{ep:<16}"
        for c in configs:
            lo, hi = spread(c, ep)
            row += f"{med_us(c, ep):>10.1f} ({lo:>5.0f}-{hi:<5.0f})"
            result["medians_us"].setdefault(c, {})[ep] = {
                "median": round(med_us(c, ep), 2),
                "p25_round": round(lo, 2),
                "p75_round": round(hi, 2),
            }
        print(row)

    if "none" not in configs:
        print(json.dumps(result, indent=2))
        return 0
    print()
    print("Added by each instrumentation (against 'none'):")
    print(f"{'':<16}{'per request µs':>16}{'per query µs':>14}{'10-query median':>17}")
    for c in configs:
        if c == "none":
            continue
        points = [(q, med_us(c, ep) - med_us("none", ep)) for ep, (_, q) in ENDPOINTS.items()]
        intercept, slope = _fit(points)
        ten = (med_us(c, "10-query") / med_us("none", "10-query") - 1.0) * 100
        result["overhead"][c] = {
            "per_request_us": round(intercept, 2),
            "per_query_us": round(slope, 2),
            "ten_query_median_pct": round(ten, 2),
            "added_us_by_endpoint": {
                ep: round(v, 2) for ep, v in zip(ENDPOINTS, [p[1] for p in points], strict=True)
            },
        }
        print(f"{c:<16}{intercept:>16.1f}{slope:>14.2f}{ten:>16.1f}%")
    if "querywatch" in result["overhead"] and "opentelemetry" in result["overhead"]:
        qw = result["overhead"]["querywatch"]
        ot = result["overhead"]["opentelemetry"]
        ratio = {
            ep: round(qw["added_us_by_endpoint"][ep] / ot["added_us_by_endpoint"][ep], 3)
            for ep in ENDPOINTS
            if ot["added_us_by_endpoint"][ep] > 0
        }
        result["querywatch_over_opentelemetry"] = ratio
        print()
        print(
            "querywatch's added time as a share of OpenTelemetry's, by endpoint:",
            ", ".join(f"{ep} {r:.1%}" for ep, r in ratio.items()),
        )
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nWrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
