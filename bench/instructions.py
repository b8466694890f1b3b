"""Instructions querywatch adds to a request, counted by valgrind (callgrind).

Timings on a shared machine drift by more than the differences worth chasing; an
instruction count does not (the same binary, inputs and environment give the same count,
whatever else runs). Each configuration serves one endpoint ``n`` and ``n + extra`` times
in a process of its own under ``valgrind --tool=callgrind``; the difference divided by
``extra`` is the count a request, start-up and warm-up excluded. The flusher is set far
apart so its writes do not land in one run and not the other. Instructions are not time
(cache misses are not counted), so report time from overhead.py; use this to see whether
a change to capture made it do less. No statement counts as slow here (valgrind slows
each fiftyfold), the background threads are stopped after the warm-up and every module
is compiled before counting: the count is the request path's. What the warm-up left
is frozen out of the cyclic collector's sight (``gc.freeze()``), so a full collection
walks what the counted requests left, not the whole heap; the young collections that a
request's own garbage triggers are counted.

It still moves with where the process's objects land in memory. CPython's method cache
hashes each type's version tag with the address of the attribute's name, so which
lookups miss it (and search the class's MRO) depends on the layout. Address
randomization does not vary that (obmalloc places objects at the same offsets in their
arenas), so one tree always gets one arbitrary layout, and two trees that differ by one
module differ by up to 4% on layout alone. So each run shifts the layout by a seed of
its own before anything is imported: a few objects of every small size class (where
later objects land) and a few classes (which version tags later types get). The runs of
every configuration use the same seeds, and each count is the median over them; each
run's count is printed, so the spread shows.

    python bench/instructions.py [--repeat 5] [--endpoints 10-query,51-query]
    python bench/instructions.py --compare ../before/.venv/bin/python   # before/after
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

#: Each endpoint's path and, by default, how many requests a count is taken over (fewer
#: for the longer requests: each is counted over as many instructions).
ENDPOINTS = {
    "1-query": ("/api/products/3", 200),
    "10-query": ("/api/admin/overview", 100),
    "51-query": ("/api/orders/recent", 40),
}

#: The shop app, served 30 times to warm up, its background threads then stopped: the
#: part of a counting script that bytecodes.py shares, with ``config``, ``db_url``,
#: ``workdir`` and ``path`` already bound.
WARM = """
from querywatch.demo import shop
# "sentry" and "otel" (alone or "+querywatch"): beside sentry-sdk (traces_sample_rate 1,
# events dropped) or OpenTelemetry's Flask and SQLAlchemy instrumentation, as overhead.py
# sets them up.
beside = config.split("+")[0] if config.startswith(("sentry", "otel")) else None
if beside == "sentry":
    import sentry_sdk
    from sentry_sdk.transport import Transport

    class _Drop(Transport):
        def capture_envelope(self, envelope):
            return None

    sentry_sdk.init(dsn="https://public@sentry.invalid/1", traces_sample_rate=1.0,
                    transport=_Drop)
if beside == "otel":
    import opentelemetry.trace  # querywatch notices it at init
if config in ("none", "sentry", "otel"):
    app = shop.create_app(db_url, querywatch=False)
else:
    app = shop.create_app(db_url, instance_path=workdir + "/instance", config={
        "QUERYWATCH_STORE_URL": f"sqlite:///{workdir}/qw.db",
        "QUERYWATCH_FLUSH_INTERVAL": 3600,
        # Under valgrind or a tracer every statement is many times slower: no read may
        # pass for slow, or which ones do (a sample kept, a finding) would vary by run.
        "QUERYWATCH_SLOW_QUERY_MS": 1e9,
        # "guard": a guard configured (a budget and a bulkhead on an endpoint not
        # counted here), not engaged: what configuring it costs every request.
        **({"QUERYWATCH_GUARD": {"endpoints": {"GET /api/orders/lookup": {
            "statement_timeout_ms": 200, "max_concurrent": 2}}}} if config == "guard" else {}),
    })
if beside == "otel":
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    with app.app_context():
        SQLAlchemyInstrumentor().instrument(
            engine=shop.db.engine, tracer_provider=provider, skip_dep_check=True
        )
client = app.test_client()
for _ in range(30):
    client.get(path)
if config not in ("none", "sentry", "otel"):
    # The background threads fold and write on the wall clock, which the counting
    # stretches many times over: stopped after the warm-up, so the count is the request
    # path's alone (their cost is overhead.py's to measure).
    state = app.extensions["querywatch"]
    for worker in (state.flusher, state.advice_worker, state.incident_worker):
        if worker is not None:
            worker._stop.set()
            if worker._thread is not None:
                worker._thread.join()
            worker.ensure_started = lambda: None
"""

SERVE = (
    """
import gc
import random
import sys
config, db_url, workdir, path, n, seed = sys.argv[1:7]
if int(seed):
    # This run's layout (the module's docstring): where later objects land in each of
    # obmalloc's size classes, and which version tags later types get.
    rnd = random.Random(int(seed))
    shifted = [bytes(size) for size in range(1, 512, 8) for _ in range(rnd.randrange(64))]
    for i in range(rnd.randrange(256)):
        getattr(type(f"_Shift{i}", (), {}), "x", None)
"""
    + WARM
    + """
# What the warm-up left is moved out of the collector's sight: a full collection in the
# counted window walks what the counted requests left, not the whole heap.
gc.collect()
gc.freeze()
for _ in range(int(n)):
    assert client.get(path).status_code == 200
"""
)


def count(
    config: str,
    db_url: str,
    workdir: str,
    path: str,
    n: int,
    python: str = sys.executable,
    seed: int = 0,
) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            python,
            "-c",
            SERVE,
            config,
            db_url,
            workdir,
            path,
            str(n),
            str(seed),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=True,
    )
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(m.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=20)
    parser.add_argument(
        "--extra",
        type=int,
        help="Requests a count is taken over (default: 200, 100 and 40 by endpoint).",
    )
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="Runs a count, each with a layout of its own; the median is reported.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="The first run's layout seed (the next runs take the next ones): runs with"
        " other seeds add layouts to pool with an earlier run's.",
    )
    parser.add_argument(
        "--compare",
        metavar="PYTHON",
        help="Also count querywatch under this interpreter (another checkout's virtualenv):"
        " a before/after on one database, in one run.",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2

    from sqlalchemy import create_engine

    from querywatch.demo import shop

    workdir = tempfile.mkdtemp(prefix="qw-instr-")
    db_url = f"sqlite:///{workdir}/shop.db"
    engine = create_engine(db_url)
    shop.seed(engine, 0.05)
    engine.dispose()

    endpoints = [e for e in args.endpoints.split(",") if e]
    extra = {ep: args.extra or ENDPOINTS[ep][1] for ep in endpoints}
    pythons = {"none": sys.executable, "querywatch": sys.executable}
    if args.compare:
        pythons["compared"] = args.compare
    jobs = [
        (config, ep, n, r)
        for r in range(args.repeat)
        for ep in endpoints
        for config in pythons
        for n in (args.base, args.base + extra[ep])
    ]

    def run(job: tuple[str, str, int, int]) -> int:
        config, ep, n, r = job
        mode = "none" if config == "none" else "querywatch"
        workdir_ = tempfile.mkdtemp(dir=workdir)
        # Run r of every configuration has the same layout seed (0 would leave it as is).
        seed = args.seed + r
        return count(mode, db_url, workdir_, ENDPOINTS[ep][0], n, pythons[config], seed)

    # Each interpreter serves once natively first, so every module it imports is compiled
    # and its bytecode cached: a count that compiled a module and its pair that did not
    # differ by the parser's millions of instructions (divided by ``extra``, over 1% of a
    # request's count).
    for python in dict.fromkeys(pythons.values()):
        for mode in ("none", "querywatch"):
            for ep in endpoints:
                path = ENDPOINTS[ep][0]
                warm = [python, "-c", SERVE, mode, db_url, tempfile.mkdtemp(dir=workdir)]
                subprocess.run([*warm, path, "0", "0"], capture_output=True, check=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        raw = dict(zip(jobs, pool.map(run, jobs), strict=True))
    # A request's count in each run (its pair of counts), then the median over the runs.
    runs = {
        (c, ep): [
            (raw[(c, ep, args.base + extra[ep], r)] - raw[(c, ep, args.base, r)]) / extra[ep]
            for r in range(args.repeat)
        ]
        for c in pythons
        for ep in endpoints
    }
    head = f"{'endpoint':<12}{'none':>14}{'querywatch':>14}{'added':>12}{'':>8}"
    if args.compare:
        head += f"{'compared':>14}{'added':>12}{'this/compared':>15}"
    print(head)
    for ep in endpoints:
        per = {c: statistics.median(runs[(c, ep)]) for c in pythons}
        added = per["querywatch"] - per["none"]
        line = (
            f"{ep:<12}{per['none']:>14,.0f}{per['querywatch']:>14,.0f}{added:>12,.0f}"
            f"{added / per['none']:>8.1%}"
        )
        if args.compare:
            other = per["compared"] - per["none"]
            ratio = per["querywatch"] / per["compared"]
            line += f"{per['compared']:>14,.0f}{other:>12,.0f}{ratio:>15.3f}"
        print(line)
    print(
        f"instructions a request, the median of {args.repeat} runs, a layout each;"
        f" each run's, by layout seed from {args.seed}:"
    )
    for (c, ep), values in runs.items():
        print(f"  {ep:<10}{c:<12}" + "  ".join(f"{v:,.0f}" for v in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
