"""Where capture's time per statement goes, in one process.

An A/B in one process, on the shop's N+1 endpoint (51 statements): querywatch's listeners
removed ("off"), the full capture, and capture with one part of the end of a request
replaced by a no-op. Installing and removing listeners invalidates the interpreter's
caches for SQLAlchemy's classes, so each mode is warmed before it is timed; for the
statement path itself, count instructions instead (bench/README.md, "callgrind").
Modes run in a shuffled order each round, with the garbage collector paused during the
timed requests, so drift and collections hit every mode alike. Medians of per-batch
medians; differences per statement include the request hooks' share.

    python bench/decompose.py [--path /api/orders/recent] [--rounds 30]

This is for finding what to optimize; the figures to report come from overhead.py.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
import typing as t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="/api/orders/recent")
    parser.add_argument("--queries", type=int, default=51, help="statements per request")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    from sqlalchemy import create_engine

    from querywatch import capture
    from querywatch.demo import shop

    workdir = tempfile.mkdtemp(prefix="qw-decompose-")
    url = f"sqlite:///{workdir}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, 0.05)
    engine.dispose()
    app = shop.create_app(
        url, instance_path=f"{workdir}/instance", config={"QUERYWATCH_FLUSH_INTERVAL": 3600}
    )
    client = app.test_client()

    from querywatch import _stats as stats
    from querywatch.capture import _record
    from querywatch.capture import _timing
    from querywatch.extension import _state as extension_state

    # Each part is patched where it is called: aggregation where records fold their
    # statements and where a read past the cap folds itself.
    parts: dict[str, list[tuple[t.Any, str]]] = {
        "aggregation": [(_record, "_aggregate"), (_timing, "_aggregate")],
        "detectors": [(extension_state, "detect")],
        "stats": [(stats.Stats, "add")],
    }
    originals = {
        (name, i): getattr(owner, attr)
        for name, places in parts.items()
        for i, (owner, attr) in enumerate(places)
    }
    variants: dict[str, dict[str, t.Any] | None] = {
        "off": None,
        "full": {},
        "without aggregation": {"aggregation": lambda record, q: None},
        "without detectors": {"detectors": lambda record, settings: []},
        "without stats": {"stats": lambda self, record, findings: None},
    }

    def set_mode(patches: dict[str, t.Any] | None) -> None:
        for name, places in parts.items():
            for i, (owner, attr) in enumerate(places):
                setattr(owner, attr, originals[name, i])
        if patches is None:
            capture.uninstall()
            return
        capture.install()
        for name, fn in patches.items():
            for owner, attr in parts[name]:
                setattr(owner, attr, fn)

    results: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(3)
    for _ in range(args.rounds):
        order = list(variants.items())
        rng.shuffle(order)
        for name, patches in order:
            set_mode(patches)
            for _ in range(20):  # warm: re-specialize after the mode switch
                client.get(args.path)
            gc.disable()
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                client.get(args.path)
                times.append(time.perf_counter() - t0)
            gc.enable()
            results[name].append(statistics.median(times) * 1e6)
    set_mode({})
    base = statistics.median(results["off"])
    full = statistics.median(results["full"]) - base
    print(f"{args.path}: {args.queries} statements a request, {args.rounds} rounds")
    print(f"{'mode':<26}{'median µs':>12}{'added µs':>10}{'per stmt':>10}{'part':>8}")
    for name in variants:
        median = statistics.median(results[name])
        added = median - base
        part = "" if name in ("off", "full") else f"{(full - added) / args.queries:6.2f}"
        print(f"{name:<26}{median:>12.0f}{added:>10.0f}{added / args.queries:>10.2f}{part:>8}")
    print("'part': µs a statement that the replaced part costs (full minus the mode).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
