"""The shop under real load: gunicorn sync workers, wrk on 127.0.0.1, querywatch on and
off, interleaved.

Each round runs wrk for ``--seconds`` against a server with querywatch and one without
(the order alternates), on a mix of the shop's endpoints (a product list, a product, a
page of recent orders). For each run: requests a second and p99 latency (wrk's), and the
CPU the workers spent per request (from ``/proc``, user and system). Prints each
round's figures and the medians of the ratios on/off.

    python bench/gunicorn_load.py                # 5 rounds of 10 s, 4 workers
    python bench/gunicorn_load.py --rounds 3 --seconds 5

Needs gunicorn (the ``dev`` extra) and wrk (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

from _serve import free_port
from _serve import wait_for_port
from _serve import workers_of

APP = """
import os
from querywatch.demo import shop

app = shop.create_app(
    os.environ["LOAD_DB"],
    instance_path=os.environ["LOAD_INSTANCE"],
    querywatch=os.environ["LOAD_QUERYWATCH"] == "on",
    config={"QUERYWATCH_STORE_URL": os.environ["LOAD_STORE"]},
)
"""

MIX = """
local paths = {"/api/products?category=books", "/api/products/7", "/api/orders/recent",
               "/api/products/3", "/api/products?category=games"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"""


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def serve(workdir: pathlib.Path, on: bool, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "LOAD_DB": f"sqlite:///{workdir}/shop.db",
        "LOAD_INSTANCE": str(workdir / ("instance-on" if on else "instance-off")),
        "LOAD_STORE": f"sqlite:///{workdir}/querywatch.db",
        "LOAD_QUERYWATCH": "on" if on else "off",
        "PYTHONPATH": str(workdir),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "load_app:app"],
        env=env,
    )  # fmt: skip
    wait_for_port(port, proc)
    return proc, port


def wrk(port: int, seconds: float, connections: int, script: pathlib.Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "-s",
         str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert m is not None, out
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p99_ms": p99,
        "requests": total,
        "errors": int(errors.group(1)) if errors else 0,
    }


def run(workdir: pathlib.Path, on: bool, args: argparse.Namespace) -> dict[str, float]:
    proc, port = serve(workdir, on, args.workers)
    try:
        script = workdir / "mix.lua"
        wrk(port, 2, args.connections, script)  # warm-up: imports, caches, first flushes
        pids = workers_of(proc.pid)
        before = cpu_seconds(pids)
        result = wrk(port, args.seconds, args.connections, script)
        result["cpu_ms_per_request"] = (cpu_seconds(pids) - before) * 1000 / result["requests"]
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package 'wrk')")

    from sqlalchemy import create_engine

    from querywatch.demo import shop

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="qw-load-"))
    engine = create_engine(f"sqlite:///{workdir}/shop.db")
    shop.seed(engine, scale=0.05)
    engine.dispose()
    (workdir / "load_app.py").write_text(APP)
    (workdir / "mix.lua").write_text(MIX)
    print(f"gunicorn {args.workers} sync workers, wrk -c {args.connections}, {args.seconds:g} s"
          f" a run, {args.rounds} rounds (on and off interleaved)")  # fmt: skip
    ratios: dict[str, list[float]] = {"rps": [], "p99_ms": [], "cpu_ms_per_request": []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        res = {on: run(workdir, on, args) for on in order}
        for k in ratios:
            ratios[k].append(res[True][k] / res[False][k])
        print(
            f"round {r + 1}: rps {res[True]['rps']:.0f} on / {res[False]['rps']:.0f} off"
            f" (x{ratios['rps'][-1]:.3f}); p99 {res[True]['p99_ms']:.1f} / "
            f"{res[False]['p99_ms']:.1f} ms (x{ratios['p99_ms'][-1]:.3f}); CPU"
            f" {res[True]['cpu_ms_per_request']:.3f} / {res[False]['cpu_ms_per_request']:.3f}"
            f" ms a request (x{ratios['cpu_ms_per_request'][-1]:.3f}); non-2xx"
            f" {res[True]['errors']} / {res[False]['errors']}",
            flush=True,
        )
    print(
        "median ratios on/off: rps x{:.3f} (target >= 0.95), p99 x{:.3f}, CPU a request"
        " x{:.3f} (target <= 1.05)".format(
            *(statistics.median(ratios[k]) for k in ("rps", "p99_ms", "cpu_ms_per_request"))
        )
    )


if __name__ == "__main__":
    main()
