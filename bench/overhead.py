"""Per-request and per-query overhead of querywatch, side by side with OpenTelemetry and
sentry-sdk, in one run.

Each configuration runs in worker processes of its own (``--procs`` of them), all on the
same seeded SQLite database, and the coordinator interleaves rounds: in every round each
worker serves a batch of requests to each endpoint, in a shuffled order.

Paired twins. On a shared machine the time of a request drifts by more than the overhead
being measured, and a process's memory layout alone moves it by a few percent, so
comparing one process's median with another's mostly measures noise. A querywatch or
OpenTelemetry worker therefore serves the same shop app twice: a bare twin and an
instrumented one, alternating request by request (ABBA order), and the added time is the
median of the paired differences. OpenTelemetry instruments one app and one engine, and
the worker checks that the twin's engine carries no listener. querywatch listens on
SQLAlchemy's dialect class, so the twin's statements pass through its listeners too
(which return at once outside a request): that cost is measured on its own in each
querywatch worker and added to querywatch's figures, per statement. sentry-sdk patches
Flask for the whole process, so it cannot have a bare twin: it is compared with the
'none' workers, process against process, and its figures carry that noise.

    pip install -e '.[bench]'
    python bench/overhead.py [--rounds 10] [--batch 100] [--json bench/results/overhead.json]

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
#: Also measured when asked for (``--configs``): querywatch with a guard configured
#: (a statement budget and a bulkhead on an endpoint none of the three is), not engaged.
#: "guard": the same, against a twin with querywatch and no guard in the same process, so
#: its figure is what configuring the guard alone adds.
#: "otel+querywatch" and "sentry+querywatch": querywatch beside OpenTelemetry (both apps
#: traced, spans kept in memory) or Sentry (initialised, every request a transaction),
#: against a twin with the same tracing and no querywatch in the same process: what
#: querywatch adds to an app that already runs them.
EXTRA_CONFIGS = ("querywatch+guard", "guard", "otel+querywatch", "sentry+querywatch")
#: querywatch's configurations: their listeners also cost the bare twin's statements.
QUERYWATCH = ("querywatch", "querywatch+guard", "otel+querywatch", "sentry+querywatch")
#: Configurations measured against a bare twin in the same process.
PAIRED = (
    "querywatch",
    "querywatch+guard",
    "guard",
    "opentelemetry",
    "otel+querywatch",
    "sentry+querywatch",
)
#: The guard of "querywatch+guard": every mechanism set up, on the support team's lookup.
GUARD = {
    "endpoints": {
        "GET /api/orders/lookup": {
            "statement_timeout_ms": 200,
            "max_concurrent": 2,
            "max_wait_ms": 50,
        }
    }
}


class Worker:
    """The apps of one worker process: the bare twin and, for paired configurations, the
    instrumented app, with what switches between them."""

    def __init__(self, config: str, db_url: str, workdir: str) -> None:
        from querywatch.demo import shop

        self.config = config
        self.exporter: t.Any = None
        self.bare: t.Any = None
        self.app: t.Any = None
        if config in ("sentry-sdk", "sentry+querywatch"):
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
            if config == "sentry-sdk":
                self.app = shop.create_app(db_url, querywatch=False)
                return
            self.bare = shop.create_app(db_url, querywatch=False)
            self.app = self._querywatch(db_url, workdir, "sentry", {})
            return
        if config == "otel+querywatch":
            # Both twins traced alike; only one runs querywatch.
            import opentelemetry.trace  # noqa: F401  (querywatch notices it at init)

            self.bare = shop.create_app(db_url, querywatch=False)
            self.app = self._querywatch(db_url, workdir, "otel", {})
            self.exporter = self._trace(self.bare, self.app)
            return
        if config == "guard":
            self.bare = self._querywatch(db_url, workdir, "bare", {})
            self.app = self._querywatch(db_url, workdir, "guard", {"QUERYWATCH_GUARD": GUARD})
            return
        self.bare = shop.create_app(db_url, querywatch=False)
        if config == "none":
            return
        if config in QUERYWATCH:
            self.app = shop.create_app(
                db_url,
                instance_path=os.path.join(workdir, f"instance-qw-{os.getpid()}"),
                config={
                    "QUERYWATCH_STORE_URL": f"sqlite:///{workdir}/qw-store.db",
                    "QUERYWATCH_FLUSH_INTERVAL": float(os.environ.get("QW_BENCH_FLUSH", "5")),
                    # QW_BENCH_METRICS=0: without the Prometheus metrics, to see their cost.
                    **(
                        {"QUERYWATCH_METRICS_PATH": None}
                        if os.environ.get("QW_BENCH_METRICS") == "0"
                        else {}
                    ),
                    **({"QUERYWATCH_GUARD": GUARD} if config == "querywatch+guard" else {}),
                },
            )
            return
        if config == "opentelemetry":
            from opentelemetry.instrumentation.flask import FlaskInstrumentor
            from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            self.app = shop.create_app(db_url, querywatch=False)
            # Both engines exist before instrumenting: the instrumentor also wraps
            # create_engine, which must not reach the twin's.
            with self.bare.app_context():
                self.bare_engine = shop.db.engine
            provider = TracerProvider()
            self.exporter = InMemorySpanExporter()
            provider.add_span_processor(BatchSpanProcessor(self.exporter))
            FlaskInstrumentor().instrument_app(self.app, tracer_provider=provider)
            with self.app.app_context():
                # skip_dep_check: the instrumentor's declared range stops below
                # SQLAlchemy 2.1, which it instruments through the same engine events.
                SQLAlchemyInstrumentor().instrument(
                    engine=shop.db.engine, tracer_provider=provider, skip_dep_check=True
                )
            if self.bare_engine._has_events:
                raise RuntimeError("the bare twin's engine was instrumented")
            return
        raise ValueError(config)

    @staticmethod
    def _trace(*apps: t.Any) -> t.Any:
        """Trace ``apps`` (their requests and statements) into one in-memory exporter."""
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from querywatch.demo import shop

        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        engines = []
        for app in apps:
            with app.app_context():
                engines.append(shop.db.engine)
        for app in apps:
            FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
        # One call for both engines: the instrumentor instruments once a process.
        SQLAlchemyInstrumentor().instrument(
            engines=engines, tracer_provider=provider, skip_dep_check=True
        )
        return exporter

    @staticmethod
    def _querywatch(db_url: str, workdir: str, name: str, config: dict[str, t.Any]) -> t.Any:
        from querywatch.demo import shop

        return shop.create_app(
            db_url,
            instance_path=os.path.join(workdir, f"instance-{name}-{os.getpid()}"),
            config={
                "QUERYWATCH_STORE_URL": f"sqlite:///{workdir}/qw-store.db",
                "QUERYWATCH_FLUSH_INTERVAL": float(os.environ.get("QW_BENCH_FLUSH", "5")),
                **config,
            },
        )

    def idle_listener_cost(self, blocks: int = 10, n: int = 200_000) -> float:
        """µs a statement that querywatch's listeners cost outside any request or job.

        The bare twin shares the process, so its statements pass through querywatch's
        dialect listeners, which return at once with no unit of work open; the paired
        difference leaves that out, so it is measured here and added. It is timed on
        exactly the code SQLAlchemy runs per statement for dialect listeners
        (``Connection._exec_single_context``), in blocks with the listeners installed
        and removed, alternating: a whole statement takes a hundred times longer and
        drifts by more than this costs."""
        from sqlalchemy.engine import Dialect

        from querywatch import capture
        from querywatch.demo import shop

        with self.bare.app_context():
            dialect = shop.db.engine.dialect

        def dispatch() -> None:
            if dialect._has_events:
                for fn in dialect.dispatch.do_execute:
                    if fn(None, "SELECT 1", (), None):
                        break

        perf = time.perf_counter_ns
        on: list[float] = []
        off: list[float] = []
        for i in range(blocks):
            listening = i % 2 == 0
            if listening:
                capture.install()
            else:
                capture.uninstall()
                Dialect._has_events = False  # as if never installed
            for _ in range(n // 10):
                dispatch()
            t0 = perf()
            for _ in range(n):
                dispatch()
            (on if listening else off).append((perf() - t0) / n / 1000.0)
        capture.install()
        return statistics.median(on) - statistics.median(off)


def _worker(config: str, db_url: str, workdir: str, conn: t.Any) -> None:
    w = Worker(config, db_url, workdir)
    bare = w.bare.test_client() if w.bare is not None else None
    inst = w.app.test_client() if w.app is not None else None
    perf = time.perf_counter_ns

    def timed(client: t.Any, path: str) -> int:
        t0 = perf()
        resp = client.get(path)
        elapsed = perf() - t0
        if resp.status_code != 200:
            raise RuntimeError(f"{config}: {path} answered {resp.status_code}")
        return elapsed

    for path, _ in ENDPOINTS.values():  # warm up
        for _ in range(100):
            if bare is not None:
                timed(bare, path)
            if inst is not None:
                timed(inst, path)
    idle = w.idle_listener_cost() if config in QUERYWATCH else 0.0
    conn.send(("ready", idle))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        path, n = msg
        out: list[tuple[int, int]] = []  # (bare, instrumented); 0 where absent
        for i in range(n):
            if bare is None or inst is None:
                client = bare if bare is not None else inst
                out.append((timed(client, path), 0) if inst is None else (0, timed(client, path)))
                continue
            # ABBA: which of the pair goes first alternates every two pairs.
            if i % 4 in (0, 3):
                b = timed(bare, path)
                a = timed(inst, path)
            else:
                a = timed(inst, path)
                b = timed(bare, path)
            out.append((b, a))
        if w.exporter is not None:
            w.exporter.clear()
        conn.send(out)
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
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"of {', '.join(CONFIGS + EXTRA_CONFIGS)}",
    )
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
    unknown = sorted(set(configs) - set(CONFIGS + EXTRA_CONFIGS))
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}: {', '.join(CONFIGS + EXTRA_CONFIGS)}")
    if "sentry-sdk" in configs and "none" not in configs:
        parser.error("sentry-sdk is compared with the 'none' workers: add none to --configs")

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
    idle_costs: list[float] = []
    for key, (_, conn) in workers.items():
        status, idle = conn.recv()
        if status != "ready":
            raise RuntimeError(f"{key} worker failed to start")
        if key[0] in QUERYWATCH:
            idle_costs.append(idle)

    keys = [(c, e) for c in configs for e in ENDPOINTS]
    bare: dict[tuple[str, str], list[int]] = {k: [] for k in keys}
    inst: dict[tuple[str, str], list[int]] = {k: [] for k in keys}
    diffs: dict[tuple[str, str], list[int]] = {k: [] for k in keys}
    round_diffs: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    rng = random.Random(1)
    started = time.perf_counter()
    for r in range(args.rounds):
        order = [(c, k, e) for c in configs for k in range(args.procs) for e in ENDPOINTS]
        rng.shuffle(order)
        for config, k, ep in order:
            _, conn = workers[(config, k)]
            conn.send((ENDPOINTS[ep][0], args.batch))
            pairs = conn.recv()
            cell = (config, ep)
            bare[cell].extend(b for b, _ in pairs if b)
            inst[cell].extend(a for _, a in pairs if a)
            if config in PAIRED:
                d = [a - b for b, a in pairs]
                diffs[cell].extend(d)
                round_diffs[cell].append(statistics.median(d) / 1000.0)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    for _, conn in workers.values():
        conn.send(None)
    for proc, _ in workers.values():
        proc.join(10)

    def med(xs: list[int]) -> float:
        return statistics.median(xs) / 1000.0

    result: dict[str, t.Any] = {
        "rounds": args.rounds,
        "procs_per_config": args.procs,
        "batch": args.batch,
        "seconds": round(time.perf_counter() - started, 1),
        "python": sys.version.split()[0],
        "method": "paired twins in one process (querywatch, opentelemetry);"
        " sentry-sdk against the 'none' processes",
        "medians_us": {},
        "overhead": {},
    }
    print()
    print("Median request time, µs (bare twin -> instrumented, in the same processes)")
    print(f"{'endpoint':<16}" + "".join(f"{c:>26}" for c in configs))
    for ep in ENDPOINTS:
        row = f"{ep:<16}"
        for c in configs:
            b = bare[(c, ep)]
            a = inst[(c, ep)]
            cell = f"{med(b):.0f} -> {med(a):.0f}" if b and a else f"{med(b or a):.0f}"
            row += f"{cell:>26}"
            result["medians_us"].setdefault(c, {})[ep] = {
                "bare": round(med(b), 2) if b else None,
                "instrumented": round(med(a), 2) if a else None,
            }
        print(row)

    added: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, tuple[float, float]]] = {}
    base_of: dict[str, dict[str, float]] = {}
    idle = statistics.median(idle_costs) if idle_costs else 0.0
    result["querywatch_idle_listener_us_per_statement"] = round(idle, 3)
    for c in configs:
        if c in PAIRED:
            # querywatch: plus what its listeners cost the twin's statements as well.
            extra = idle if c in QUERYWATCH else 0.0
            added[c] = {ep: med(diffs[(c, ep)]) + extra * q for ep, (_, q) in ENDPOINTS.items()}
            base_of[c] = {ep: med(bare[(c, ep)]) for ep in ENDPOINTS}
            spread[c] = {}
            for ep in ENDPOINTS:
                medians = round_diffs[(c, ep)]
                if len(medians) >= 2:
                    q = statistics.quantiles(medians, n=4)
                    spread[c][ep] = (q[0], q[2])
                else:
                    spread[c][ep] = (medians[0], medians[0])
        elif c != "none" and "none" in configs:
            added[c] = {ep: med(inst[(c, ep)]) - med(bare[("none", ep)]) for ep in ENDPOINTS}
            base_of[c] = {ep: med(bare[("none", ep)]) for ep in ENDPOINTS}
    if idle_costs:
        print()
        print(
            f"querywatch's listeners outside a request: {idle:.2f} µs a statement"
            f" (per worker: {', '.join(f'{x:.2f}' for x in idle_costs)}), added below"
        )
    print()
    print("Added by each instrumentation, µs a request (25th-75th percentile of batch medians)")
    print(f"{'':<16}" + "".join(f"{ep:>22}" for ep in ENDPOINTS))
    for c, by_ep in added.items():
        row = f"{c:<16}"
        for ep, v in by_ep.items():
            lo, hi = spread.get(c, {}).get(ep, (float("nan"), float("nan")))
            row += f"{v:>8.1f} ({lo:>5.0f}-{hi:<5.0f})" if c in spread else f"{v:>22.1f}"
        print(row)
    print()
    print(f"{'':<16}{'per request µs':>16}{'per query µs':>14}{'10-query median':>17}")
    for c, by_ep in added.items():
        points = [(q, by_ep[ep]) for ep, (_, q) in ENDPOINTS.items()]
        intercept, slope = _fit(points)
        ten = by_ep["10-query"] / base_of[c]["10-query"] * 100
        result["overhead"][c] = {
            "per_request_us": round(intercept, 2),
            "per_query_us": round(slope, 2),
            "ten_query_median_pct": round(ten, 2),
            "added_us_by_endpoint": {ep: round(v, 2) for ep, v in by_ep.items()},
            "paired": c in PAIRED,
        }
        print(f"{c:<16}{intercept:>16.1f}{slope:>14.2f}{ten:>16.1f}%")
    if "querywatch" in added and "opentelemetry" in added:
        qw, ot = added["querywatch"], added["opentelemetry"]
        ratio = {ep: round(qw[ep] / ot[ep], 3) for ep in ENDPOINTS if ot[ep] > 0}
        result["querywatch_over_opentelemetry"] = ratio
        print()
        print(
            "querywatch's added time as a share of OpenTelemetry's, by endpoint:",
            ", ".join(f"{ep} {r:.1%}" for ep, r in ratio.items()),
        )
    for beside in ("otel+querywatch", "sentry+querywatch"):
        if "querywatch" in added and beside in added:
            alone, there = added["querywatch"], added[beside]
            ratio = {ep: round(there[ep] / alone[ep], 3) for ep in ENDPOINTS if alone[ep] > 0}
            result[f"{beside}_over_querywatch"] = ratio
            print(
                f"querywatch beside {beside.split('+')[0]}, over querywatch alone, by"
                " endpoint: " + ", ".join(f"{ep} x{r:.2f}" for ep, r in ratio.items())
            )
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nWrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
