"""Memory held by querywatch after 100,000 distinct query shapes pass through one process.

Runs real statements on an in-memory SQLite engine inside ``qw.capture`` jobs (1,000
distinct shapes a job), flushing to a SQLite store as the background thread would, and
measures with tracemalloc what querywatch's own modules still hold, plus the process's
resident set before and after.

    python bench/memory.py [--shapes 100000] [--per-job 1000]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
import tracemalloc


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=int, default=100_000)
    parser.add_argument("--per-job", type=int, default=1000)
    parser.add_argument("--flush-every", type=int, default=5, help="jobs between flushes")
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="no tracemalloc (it costs memory itself): only the process's resident set",
    )
    parser.add_argument(
        "--without-querywatch",
        action="store_true",
        help="run the same statements with querywatch off, for the RSS baseline",
    )
    args = parser.parse_args()

    from flask import Flask
    from sqlalchemy import create_engine

    from querywatch import QueryWatch

    workdir = tempfile.mkdtemp(prefix="qw-mem-")
    app = Flask("membench", instance_path=workdir)
    app.config["QUERYWATCH_FLUSH_INTERVAL"] = 3600
    app.config["QUERYWATCH_ENABLED"] = not args.without_querywatch
    qw = QueryWatch(app)
    state = app.extensions["querywatch"]
    engine = create_engine("sqlite://")
    conn = engine.connect()
    conn.exec_driver_sql("SELECT 1").all()  # warm up SQLAlchemy before measuring

    gc.collect()
    rss_before = _rss_mb()
    if not args.rss_only:
        tracemalloc.start()
    started = time.perf_counter()
    done = 0
    job = 0
    while done < args.shapes:
        with qw.capture(f"batch-{job % 10}"):
            for _ in range(min(args.per_job, args.shapes - done)):
                # A distinct column alias is a distinct shape.
                conn.exec_driver_sql(f"SELECT {done} AS col_{done}").all()
                done += 1
        job += 1
        if job % args.flush_every == 0 and not args.without_querywatch:
            assert qw.flush(app), "the store could not be written"
    if not args.without_querywatch:
        qw.flush(app)
    elapsed = time.perf_counter() - started
    gc.collect()
    print(
        f"{done:,} distinct shapes in {job} jobs, {elapsed:.1f} s"
        + (" (querywatch off)" if args.without_querywatch else "")
    )
    if not args.rss_only:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        package = os.path.dirname(os.path.abspath(__import__("querywatch").__file__))
        held = 0
        by_file: dict[str, int] = {}
        for stat in snapshot.statistics("filename"):
            name = stat.traceback[0].filename
            if name.startswith(package):
                held += stat.size
                short = os.path.relpath(name, package)
                by_file[short] = by_file.get(short, 0) + stat.size
        print(f"held by querywatch's modules (tracemalloc): {held / 2**20:.2f} MiB")
        for name, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {name:<28} {size / 2**20:8.2f} MiB")
    rss_after = _rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"process RSS: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after"
        f" (+{rss_after - rss_before:.1f} MiB; peak {peak:.1f} MiB)"
    )
    if not args.without_querywatch:
        stored = len(state.store.window(0, time.time() + 60).shapes)
        print(
            f"shapes folded into 'other' by the cap: {state.stats.folded_shapes:,};"
            f" shapes with aggregates in the store: {stored:,}"
        )
    conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
