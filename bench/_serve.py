"""What the benchmarks that start servers share: a free port, waiting for it to answer,
and the worker processes of a gunicorn master."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, seconds: float = 60
) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; exits the benchmark
    if ``proc`` ends first or nothing does within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise SystemExit(f"nothing answered on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def workers_of(master: int) -> list[int]:
    """The process ids of ``master``'s children (a gunicorn master's workers)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True, check=False
    ).stdout
    return sorted(int(p) for p in out.split())
