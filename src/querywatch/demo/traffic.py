"""The users' side of the replay: a load process that requests the shop at a steady rate
and reports each request as it comes back (:class:`Traffic`)."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
import threading
import time
import typing as t

from ..exceptions import DemoError
from .options import KEEP_SAMPLES

if t.TYPE_CHECKING:
    pass


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # wall clock, when the request left
    phase: str
    route: str
    status: int
    seconds: float
    #: The customer it was made for (``X-User``).
    user: str = ""

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


def _spin(n: int = 20_000) -> int:
    """Python arithmetic, the measure of the machine's speed (no I/O, no allocation)."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def machine_pace(seconds: float, slices: int) -> tuple[float, float]:
    """(the least share of a core this thread got in any of ``slices`` slices of
    ``seconds``, the CPU milliseconds one :func:`_spin` took): how busy and how fast this
    machine is now. The least share, as programs that have just started (or stop for a
    moment) would make the whole probe's average look quieter than the next minutes."""
    shares, cpu_total, rounds = [], 0.0, 0
    for _ in range(slices):
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        while time.perf_counter() - wall0 < seconds / slices:
            _spin()
            rounds += 1
        cpu_s = time.thread_time() - cpu0
        cpu_total += cpu_s
        shares.append(cpu_s / (time.perf_counter() - wall0))
    return min(shares), cpu_total / rounds * 1000


def missed(samples: t.Iterable[Sample], threshold_ms: t.Callable[[str], float | None]) -> int:
    """The answered requests slower than their route's threshold (None: no latency
    objective)."""
    n = 0
    for s in samples:
        limit = threshold_ms(s.route)
        n += limit is not None and not s.failed and s.seconds * 1000 > limit
    return n


def p95_ms(samples: t.Sequence[Sample]) -> float | None:
    if not samples:
        return None
    xs = sorted(s.seconds for s in samples)
    return round(xs[min(len(xs) - 1, int(0.95 * len(xs)))] * 1000, 2)


class Traffic:
    """The load process and what it measured (a bounded list of samples)."""

    def __init__(
        self, port: int, sizes: dict[str, int], rate: float, timeout: float, retries: int
    ) -> None:
        self.samples: collections.deque[Sample] = collections.deque(maxlen=KEEP_SAMPLES)
        self.lock = threading.Lock()
        self.sent = 0
        cmd = [
            sys.executable,
            "-m",
            "querywatch.demo.load",
            str(port),
            "--rate",
            str(rate),
            "--customers",
            str(sizes["customers"]),
            "--products",
            str(sizes["products"]),
            "--timeout",
            str(timeout),
            "--retries",
            str(retries),
        ]
        self.proc = subprocess.Popen(  # noqa: S603 (our own module, our own arguments)
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, name="demo-load-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                at, phase, route, status, seconds, user = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.samples.append(
                    Sample(at, phase, route, int(status), float(seconds), str(user))
                )
                self.sent += 1

    def command(self, word: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def between(
        self, since: float, until: float | None = None, route: str | None = None
    ) -> list[Sample]:
        with self.lock:
            return [
                s
                for s in self.samples
                if s.at >= since
                and (until is None or s.at < until)
                and (route is None or s.route == route)
            ]

    def settle(
        self,
        rate: float,
        threshold_ms: t.Callable[[str], float | None],
        window: float,
        patience: float,
    ) -> tuple[float, bool]:
        """Wait, at most ``patience`` seconds, for ``window`` seconds of requests that met
        the objectives: most of those due answered, none failed, at most 1% slower than
        its route's threshold. Returns (seconds waited, whether they did)."""
        began = time.time()
        while True:
            now = time.time()
            # What had the time to come back (a request slower than a second misses
            # the objectives anyway).
            recent = self.between(now - window - 1.0, now - 1.0)
            if (
                len(recent) >= 0.8 * rate * window
                and not any(s.failed for s in recent)
                and missed(recent, threshold_ms) <= 0.01 * len(recent)
            ):
                return now - began, True
            if now - began >= patience:
                return now - began, False
            if self.proc.poll() is not None:
                raise DemoError("The load process ended on its own.")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the process (it finishes what is in flight) and wait for it."""
        if self.proc.poll() is None:
            self.command("stop")
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
