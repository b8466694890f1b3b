"""Memory under a stream of new query shapes: does a worker's RSS level off?

The shop under gunicorn (sync workers), its advisor on, and a load that sends about
``--rate`` requests a second, each running a statement of a shape never seen before (an
alias that changes every request): the worst case for everything querywatch keeps per
shape. Every 10 s the RSS of each worker is read from ``/proc``; at the end the slope of
each worker's RSS after the warm-up (the first third of the run, at most 10 minutes) is
printed in MB a minute. Flat means under 1 MB a minute.

    python bench/soak.py --minutes 30            # the figure in bench/README.md
    python bench/soak.py --minutes 3 --querywatch off

Needs gunicorn (the ``dev`` extra). The store is SQLite in a temporary folder unless
``--store URL``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

from _serve import free_port
from _serve import wait_for_port
from _serve import workers_of

APP = """
import os
from flask import jsonify
from sqlalchemy import text
from querywatch.demo import shop

app = shop.create_app(
    os.environ["SOAK_DB"],
    instance_path=os.environ["SOAK_INSTANCE"],
    querywatch=os.environ["SOAK_QUERYWATCH"] == "on",
    config={
        "QUERYWATCH_STORE_URL": os.environ["SOAK_STORE"],
        "QUERYWATCH_SLOW_QUERY_MS": 1,
    },
)


@app.get("/soak/<int:n>")
def soak(n):
    # A shape of its own each request: the alias is part of the statement's shape.
    row = shop.db.session.execute(
        text(f"SELECT id AS c{n}, name FROM products WHERE id = :i"), {"i": n % 10 + 1}
    ).first()
    return jsonify(id=row[0] if row else None)
"""


def rss_mb(pid: int) -> float | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MB): MB a minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=190.0, help="new shapes a second")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--querywatch", choices=("on", "off"), default="on")
    ap.add_argument("--store", default=None, help="store URL (default: SQLite, temporary)")
    args = ap.parse_args()

    from sqlalchemy import create_engine

    from querywatch.demo import shop

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="qw-soak-"))
    db = f"sqlite:///{tmp}/shop.db"
    engine = create_engine(db)
    shop.seed(engine, scale=0.01)
    engine.dispose()
    (tmp / "soak_app.py").write_text(APP)
    port = free_port()
    env = {
        **os.environ,
        "SOAK_DB": db,
        "SOAK_INSTANCE": str(tmp / "instance"),
        "SOAK_STORE": args.store or f"sqlite:///{tmp}/querywatch.db",
        "SOAK_QUERYWATCH": args.querywatch,
        "PYTHONPATH": str(tmp),
    }
    master = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "soak_app:app"],
        env=env,
    )  # fmt: skip
    wait_for_port(port, master)

    stop = threading.Event()
    counter = iter(range(10**12))
    lock = threading.Lock()
    sent = [0, 0]  # ok, failed
    threads = 8

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        interval = threads / args.rate
        next_at = time.monotonic()
        while not stop.is_set():
            with lock:
                n = next(counter)
            try:
                conn.request("GET", f"/soak/{n}")
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                sent[0 if ok else 1] += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()

    pool = [threading.Thread(target=load, daemon=True) for _ in range(threads)]
    for th in pool:
        th.start()
    start = time.monotonic()
    samples: dict[int, list[tuple[float, float]]] = {}
    print(f"soak: {args.minutes:g} min at {args.rate:g} new shapes/s, {args.workers} gunicorn"
          f" workers, querywatch {args.querywatch}")  # fmt: skip
    try:
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            for pid in workers_of(master.pid):
                mb = rss_mb(pid)
                if mb is not None:
                    samples.setdefault(pid, []).append((elapsed / 60, mb))
            if int(elapsed) % 60 < 10:
                line = ", ".join(f"{pid}: {pts[-1][1]:.0f} MB" for pid, pts in samples.items())
                print(f"  {elapsed / 60:5.1f} min  {sent[0]:,} ok, {sent[1]:,} failed  {line}",
                      flush=True)  # fmt: skip
            time.sleep(10)
    finally:
        stop.set()
        for th in pool:
            th.join(35)
        master.send_signal(signal.SIGTERM)
        master.wait(60)
    warm = min(args.minutes / 3, 10.0)
    print(f"requests: {sent[0]:,} ok, {sent[1]:,} failed ({sent[0] / (args.minutes * 60):.0f}/s)")
    worst = 0.0
    for pid, pts in samples.items():
        after = [p for p in pts if p[0] >= warm]
        s = slope(after)
        worst = max(worst, s)
        print(
            f"worker {pid}: RSS {pts[0][1]:.0f} MB at start, {after[0][1] if after else 0:.0f}"
            f" MB after {warm:g} min warm-up, {pts[-1][1]:.0f} MB at the end;"
            f" slope after warm-up {s:+.2f} MB/min"
        )
    print(f"worst slope: {worst:+.2f} MB/min ({'flat' if worst < 1.0 else 'GROWING'}: < 1 MB/min)")


if __name__ == "__main__":
    main()
