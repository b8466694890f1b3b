"""A frozen Redis (SIGSTOP) under the result cache: what a cached call costs meanwhile.

A Redis of its own is started, the shop's product lookup is cached in it, and then the
Redis process is stopped with SIGSTOP (its connections stay open, nothing answers:
every command waits for its socket timeout). Over a few seconds of calls, the p50 and
p99 of cached calls are compared with uncached calls (``cache_bypass=True``) of the same
run, with the circuit breaker and without it (a breaker that never opens).

    python bench/redis_freeze.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from sqlalchemy import create_engine
from sqlalchemy import select

from _serve import free_port
from _serve import wait_for_port
from querywatch.cache import Breaker
from querywatch.demo import shop

SECONDS = 4.0


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port, proc, seconds=10)
    return proc


def quantiles(took: list[float]) -> tuple[float, float]:
    took = sorted(took)
    return took[len(took) // 2] * 1000, took[min(len(took) - 1, int(len(took) * 0.99))] * 1000


def run(breaker: bool, workdir: str, db: str) -> tuple[tuple[float, float], tuple[float, float]]:
    port = free_port()
    proc = start_redis(port, workdir)
    app = shop.create_app(
        db,
        instance_path=os.path.join(workdir, "instance"),
        config={
            "QUERYWATCH_CACHE_URL": f"redis://127.0.0.1:{port}/0",
            "QUERYWATCH_ADVISE": False,
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
        },
    )
    state = app.extensions["querywatch"]
    if not breaker:
        state.cache.backend.breaker = Breaker(failures=10**9)

    @state.owner.cached(name="product")
    def product(pid: int) -> str:
        return str(shop.db.session.scalar(select(shop.Product.name).where(shop.Product.id == pid)))

    cached: list[float] = []
    direct: list[float] = []
    try:
        with app.app_context():
            for i in range(50):
                product(i % 10 + 1)  # warm: entries in Redis
            proc.send_signal(signal.SIGSTOP)
            end = time.monotonic() + SECONDS
            i = 0
            while time.monotonic() < end:
                i += 1
                start = time.perf_counter()
                product(i % 10 + 1)
                cached.append(time.perf_counter() - start)
                start = time.perf_counter()
                product(i % 10 + 1, cache_bypass=True)
                direct.append(time.perf_counter() - start)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        state.flusher._stop.set()
    return quantiles(cached), quantiles(direct)


def main() -> None:
    import logging

    logging.getLogger("querywatch").setLevel(logging.ERROR)  # the failures are expected
    workdir = tempfile.mkdtemp(prefix="qw-freeze-")
    db = f"sqlite:///{workdir}/shop.db"
    engine = create_engine(db)
    shop.seed(engine, scale=0.002)
    engine.dispose()
    print(f"Redis frozen by SIGSTOP for {SECONDS:g} s of calls (socket timeout 0.25 s)")
    for breaker in (False, True):
        (c50, c99), (d50, d99) = run(breaker, workdir, db)
        label = "with the breaker   " if breaker else "without the breaker"
        print(
            f"{label}: cached p50 {c50:7.2f} ms p99 {c99:7.2f} ms; uncached p50 {d50:5.2f} ms"
            f" p99 {d99:5.2f} ms; p99 ratio {c99 / d99:6.2f}x (target: within 2x)"
        )


if __name__ == "__main__":
    main()
