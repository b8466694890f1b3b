"""``querywatch demo``: the seed outage replayed on the shop app, from the first slow
request to the postmortem.

The shop is served on 127.0.0.1 by a real threaded WSGI server with querywatch on; a
separate process (:mod:`querywatch.demo.load`) sends it requests over HTTP at a flat
rate. The replay's clock runs ``speed`` times faster than the real one for everything
that reads time in hours (alert windows, escalation delays): at the default 120, an hour
passes in 30 s. The conductor below plays the people: at "14:00" the order lookup takes
its share of the traffic; querywatch's alert fires and opens an incident; the backend
team's webhook hears it, nobody acknowledges, devops hears it; the demo acknowledges,
reads the evidence, has the advisor verify the index, runs the CI gate, applies the fix
(an index, or the cache), and waits for querywatch to see the recovery, resolve the
alert and the incident. The postmortem is drafted from the incident's timeline.

Every figure printed is measured during the run: by the load process (what users saw)
or by querywatch (the store).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import secrets
import subprocess
import sys
import threading
import time
import typing as t

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

from .._console import make_console
from .._console import print_whole
from ..alerts.evidence import culprit
from ..dashboard import dashboard_url
from ..exceptions import DemoError
from ..incidents.manager import Incidents
from ..incidents.postmortem import render as render_postmortem
from ..stats import percentile
from ..text import compact_shape
from ..text import duration_text
from ..text import stored_site_text as _site_text
from . import shop
from .hooks import Inbox
from .hooks import Received
from .load import LOOKUP_ROUTE
from .load import LOOKUP_SHARE

if t.TYPE_CHECKING:
    from flask import Flask
    from werkzeug.serving import BaseWSGIServer

__all__ = ["FIXES", "run_demo"]

FIXES = ("index", "cache", "none")
CULPRIT_ENDPOINT = LOOKUP_ROUTE
#: The shop's latency objective on a quiet machine: its everyday requests take 1-3 ms at
#: the demo's size. A slower or busier machine scales it (see :data:`QUIET_SPIN_MS`).
THRESHOLD_MS = 20
#: The CPU time of :func:`_spin` on a quiet machine (2-core x86_64, CPython 3.11). The
#: replay measures it and the share of a core it gets before it starts: on a machine k
#: times slower, the objectives' thresholds are k times longer (the statement timeout
#: follows a slower processor only), so the calm meets its objectives and the outage
#: breaks them whatever the machine (a laptop running a browser and an IDE is 2-4 times
#: slower).
QUIET_SPIN_MS = 1.3
#: Seconds the replay measures the machine for before it starts, in slices.
BUSY_PROBE_SECONDS = 1.0
BUSY_PROBE_SLICES = 10
#: The shop's traffic on a quiet machine, in requests a second (``--rate`` sets another).
#: The shop and querywatch share one Python process, which takes about a quarter of a
#: quiet core to serve it; on a machine k times slower the traffic is k times lighter
#: (not under :data:`MIN_RATE`), or its requests would queue behind each other and the
#: calm would page. The objectives' windows still hold enough requests to page on.
RATE = 40.0
MIN_RATE = 12.0
#: A page needs this many bad requests in its short window at :data:`RATE`, as many
#: fewer as the traffic is lighter, and never under :data:`MIN_BAD_FLOOR`: one statement
#: timeout among the calm's requests is a 99.9% objective's 14x burn, and beside CPU
#: burners the calm's first seconds hold a few slow requests (three paged once). At 12
#: requests a second a fixed ten let the pages fire only late in the outage (38 s in),
#: or not at all on PostgreSQL at an hour in 10 s.
MIN_BAD_EVENTS = 10
MIN_BAD_FLOOR = 5
#: The requests that are slow by design keep their own thresholds (the N+1 endpoint: 51
#: round trips, 50-150 ms on PostgreSQL; the write) or none (the admin overview's counts).
OVERRIDES = {
    "GET /api/orders/recent": {"threshold_ms": 250},
    "POST /api/orders": {"threshold_ms": 100},
    "GET /api/admin/overview": None,
}
#: The shop's database cancels a statement after this long, as production databases
#: are told to (PostgreSQL's statement_timeout): a request whose query runs longer fails
#: (500) instead of holding its connection. The calm shop's statements take a few ms;
#: the lookup's scan of 600,000 orders about 45 ms alone, more when scans overlap.
STATEMENT_TIMEOUT_MS = 100.0
#: Minutes (of the replay's clock) of calm before 14:00: the evidence compares the last
#: five minutes with five minutes an hour earlier, which must hold calm traffic.
CALM_MINUTES = 70
#: Escalation: the backend team's on-call has this long to acknowledge before devops
#: is told (replay minutes).
ESCALATION_MINUTES = 15
#: Real seconds of traffic before the replay's clock starts (not measured).
WARM_UP_SECONDS = 2.0
#: Seconds any one statement of the responder's "Analyse now" may take: building the
#: candidate index on 600,000 orders takes about 2 s on a quiet machine and several times
#: that on a busy one; the responder waits for it (the app's own advisor keeps 2 s).
ADVISE_TIMEOUT = 120.0
#: Real seconds each stage may take before the demo gives up and says which.
PATIENCE = 120.0
#: The lookups' p95 after the fix is taken over at least this many of them (the traffic
#: goes on after the incident resolved until they are measured, at most
#: AFTER_PATIENCE real seconds after the recovery): over the fifty of a fast replay's
#: few seconds, the p95 was the third slowest, and one burst of the shop's slow
#: endpoints holding the interpreter decided it.
AFTER_LOOKUPS = 200
AFTER_PATIENCE = 60.0
SECRET_BYTES = 24
KEEP_SAMPLES = 200_000


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # wall clock, when the request left
    phase: str
    route: str
    status: int
    seconds: float

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


def _spin(n: int = 20_000) -> int:
    """Python arithmetic, the measure of the machine's speed (no I/O, no allocation)."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def p95_ms(samples: t.Sequence[Sample]) -> float | None:
    if not samples:
        return None
    xs = sorted(s.seconds for s in samples)
    return round(xs[min(len(xs) - 1, int(0.95 * len(xs)))] * 1000, 2)


class Traffic:
    """The load process and what it measured (a bounded list of samples)."""

    def __init__(self, port: int, sizes: dict[str, int], rate: float, timeout: float) -> None:
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
                at, phase, route, status, seconds = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.samples.append(Sample(at, phase, route, int(status), float(seconds)))
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


class _QuietHandler(WSGIRequestHandler):
    """The demo prints its own progress; a log line per request would bury it."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


@dataclasses.dataclass
class Moments:
    """Wall-clock times of what happened."""

    started: float = 0.0
    onset: float | None = None
    alert: float | None = None
    incident: float | None = None
    level1: float | None = None
    level2: float | None = None
    ack: float | None = None
    fix: float | None = None
    recovered: float | None = None
    alert_resolved: float | None = None
    incident_resolved: float | None = None
    ended: float | None = None


class Replay:
    def __init__(
        self,
        *,
        scale: float,
        speed: float,
        rate: float | None,
        database_url: str | None,
        fix: str,
        workdir: str,
        console: Console,
        quiet: bool,
        advise_timeout: float = ADVISE_TIMEOUT,
    ) -> None:
        if fix not in FIXES:
            msg = f"--fix must be one of {', '.join(FIXES)}, got {fix!r}."
            raise ValueError(msg)
        if speed <= 0 or scale <= 0 or (rate is not None and rate <= 0):
            msg = "--scale, --speed and --rate must be greater than 0."
            raise ValueError(msg)
        self.scale = scale
        self.speed = speed
        #: None: :data:`RATE`, lighter on a busy machine (set by :meth:`_calibrate`).
        self.rate_given = rate
        self.rate = rate or RATE
        self.fix_kind = fix
        self.console = console
        self.quiet = quiet
        self.advise_timeout = advise_timeout
        self.workdir = os.path.abspath(workdir)
        # The shop's instance folder holds its SQLite database, as Flask apps keep it,
        # and querywatch's store.
        self.instance = os.path.join(self.workdir, "instance")
        self.url = database_url or f"sqlite:///{os.path.join(self.instance, 'shop.db')}"
        self.store_path = os.path.join(self.instance, "querywatch.db")
        self.log_path = os.path.join(self.workdir, "querywatch.log")
        self.moments = Moments()
        self.app: Flask | None = None
        self.server: BaseWSGIServer | None = None
        self.traffic: Traffic | None = None
        self.inbox: Inbox | None = None
        self.incident_id: int | None = None
        self.findings: dict[str, t.Any] = {}
        #: How much slower than a quiet machine this one is (measured in setup), and
        #: the latency objective's threshold it gives.
        self.slowdown = 1.0
        #: The part of it that is the processor's speed (not the other programs).
        self.cpu_slowdown = 1.0
        #: How much longer the shop's statement timeout is on this machine.
        self.timeout_scale = 1.0
        self.threshold_ms = float(THRESHOLD_MS)
        #: What the latency thresholds are multiplied by here.
        self.threshold_scale = 1.0
        self.live: Live | None = None
        self.closed = False

    # --- time ---------------------------------------------------------------------------

    @property
    def dashboard(self) -> str:
        """The dashboard's address with a fresh login code (it opens the dashboard once,
        within 10 minutes: each address printed is a new one)."""
        assert self.app is not None, "the shop is not served yet"
        return dashboard_url(self.app, "127.0.0.1", self.port, self._dashboard_token)

    def real(self, replay_seconds: float) -> float:
        return replay_seconds / self.speed

    def clock(self, at: float | None = None) -> str:
        """The replay's clock: 14:00 at the onset."""
        at = time.time() if at is None else at
        onset = self.moments.onset or (self.moments.started + self.real(CALM_MINUTES * 60))
        when = dt.datetime(2023, 8, 10, 14, 0) + dt.timedelta(seconds=(at - onset) * self.speed)
        return when.strftime("%H:%M")

    def after_onset(self, at: float | None) -> str:
        if at is None or self.moments.onset is None:
            return "-"
        real = at - self.moments.onset
        return f"{real:.1f} s ({duration_text(real * self.speed)} replayed)"

    def say(self, text: str, at: float | None = None) -> None:
        if self.quiet:
            return
        self.console.print(f"[dim]{self.clock(at)}[/dim]  {text}", highlight=False, soft_wrap=True)

    # --- set-up -------------------------------------------------------------------------

    def setup(self) -> None:
        os.makedirs(self.instance, exist_ok=True)
        # querywatch's own log (alerts, incidents, internal errors) goes to a file in the
        # work folder: the replay prints what happens in its own words.
        self._log_handler = logging.FileHandler(self.log_path, mode="w", encoding="utf-8")
        self._log_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        qw_logger = logging.getLogger("querywatch")
        self._log_propagate = qw_logger.propagate
        qw_logger.addHandler(self._log_handler)
        qw_logger.propagate = False
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.store_path + suffix):
                os.remove(self.store_path + suffix)
        engine = create_engine(self.url)
        try:
            t0 = time.perf_counter()
            if shop.seeded_version(engine) != (shop.SEED_VERSION, self.scale):
                with self.console.status("Seeding the shop database...") as status:
                    counts = shop.seed(
                        engine,
                        self.scale,
                        progress=lambda m: status.update(f"Seeding the shop database: {m}"),
                    )
                self.console.print(
                    f"Seeded {counts['orders']:,} orders, {counts['order_items']:,} items,"
                    f" {counts['customers']:,} customers in {time.perf_counter() - t0:.1f} s"
                    f" ({engine.url.render_as_string(hide_password=True)}).",
                    highlight=False,
                )
            else:
                dropped = shop.drop_email_indexes(engine)
                self.console.print(
                    "Reusing the seeded shop database"
                    f" ({engine.url.render_as_string(hide_password=True)})"
                    + (f"; dropped the last run's fix ({', '.join(dropped)})." if dropped else "."),
                    highlight=False,
                )
            if engine.dialect.name == "postgresql":
                self._hypopg(engine)
        finally:
            engine.dispose()
        self.sizes = shop.sizes(self.scale)
        self._calibrate()

        secret = secrets.token_urlsafe(SECRET_BYTES)
        self.inbox = Inbox(secret, on_message=self._heard)
        hour = self.real(3600)
        interval = min(0.5, max(0.1, hour / 60))
        token = secrets.token_urlsafe(SECRET_BYTES)
        self.app = shop.create_app(
            self.url,
            instance_path=self.instance,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS * self.timeout_scale,
            config={
                "QUERYWATCH_STORE_URL": f"sqlite:///{self.store_path}",
                "QUERYWATCH_BUCKET_SECONDS": 1,
                "QUERYWATCH_FLUSH_INTERVAL": interval,
                "QUERYWATCH_ALERT_INTERVAL": interval,
                "QUERYWATCH_INCIDENT_INTERVAL": interval,
                "QUERYWATCH_ALERT_TIME_SCALE": 1 / self.speed,
                # The per-shape p95 rule pages nobody; the objectives tell this story.
                "QUERYWATCH_ALERT_SHAPE_P95_MS": None,
                "QUERYWATCH_ALERT_MIN_BAD_EVENTS": self.min_bad_events,
                "QUERYWATCH_OBJECTIVES": [
                    "availability:99.9",
                    {
                        "name": "latency",
                        "target": 0.99,
                        "threshold_ms": self.threshold_ms,
                        "overrides": {
                            ep: spec and {"threshold_ms": self._scaled(spec["threshold_ms"])}
                            for ep, spec in OVERRIDES.items()
                        },
                    },
                ],
                "QUERYWATCH_ESCALATION": {
                    "targets": {
                        "backend": {
                            "type": "webhook",
                            "url": f"{self.inbox.url}/backend",
                            "secret": secret,
                        },
                        "devops": {
                            "type": "webhook",
                            "url": f"{self.inbox.url}/devops",
                            "secret": secret,
                        },
                    },
                    "teams": {
                        "backend": {
                            "rotation": ["alice", "bob"],
                            "shift": "1w",
                            "start": "2023-08-07T09:00:00+00:00",
                        },
                        "devops": {
                            "rotation": ["carol", "dave"],
                            "shift": "1w",
                            "start": "2023-08-07T09:00:00+00:00",
                        },
                    },
                    "levels": [
                        {
                            "team": "backend",
                            "targets": ["backend"],
                            "delay_minutes": ESCALATION_MINUTES,
                        },
                        {
                            "team": "devops",
                            "targets": ["devops"],
                            "delay_minutes": ESCALATION_MINUTES,
                        },
                    ],
                    "update_minutes": 600,
                },
                # The advisor is asked by the responder (below), not on a timer.
                "QUERYWATCH_ADVISE_INTERVAL": 24 * 3600,
                "QUERYWATCH_DASHBOARD_TOKEN": token,
            },  # fmt: skip
        )
        self.state = self.app.extensions["querywatch"]
        self.server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler
        )
        threading.Thread(target=self.server.serve_forever, name="demo-server", daemon=True).start()
        self.port = self.server.server_port
        self._dashboard_token = token
        self.console.print(
            f"Shop API on http://127.0.0.1:{self.port}/api/products (querywatch on);"
            f" on-call webhooks at {self.inbox.url}/backend and /devops.",
            highlight=False,
        )
        self.console.print(f"Dashboard: {self.dashboard}", highlight=False, soft_wrap=True)
        self.console.print(
            f"Replay clock: 1 hour in {self.real(3600):.0f} s. Objective: 99% of requests"
            f" under {self.threshold_ms:g} ms, and 99.9% answered. Escalation: backend, then"
            f" devops after {ESCALATION_MINUTES} min.",
            highlight=False,
        )

    def _calibrate(self) -> None:
        """How much slower than a quiet machine this one runs now; the latency
        objectives are scaled by it, and the traffic lightened. Two factors, from a loop
        of Python arithmetic run for :data:`BUSY_PROBE_SECONDS`: its CPU time against a
        quiet machine's (a slower processor), and the share of a core the thread got
        (other programs running; the thread's own CPU time, as the process's would count
        its other threads too)."""
        # In slices: the least share any slice got, as programs that have just started
        # (or stop for a moment) would make the whole probe's average look quieter
        # than the replay's next minutes.
        shares, cpu_total, rounds = [], 0.0, 0
        for _ in range(BUSY_PROBE_SLICES):
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            while time.perf_counter() - wall0 < BUSY_PROBE_SECONDS / BUSY_PROBE_SLICES:
                _spin()
                rounds += 1
            cpu_s = time.thread_time() - cpu0
            cpu_total += cpu_s
            shares.append(cpu_s / (time.perf_counter() - wall0))
        share = min(shares)
        spin_ms = cpu_total / rounds * 1000
        busy = 1 / min(1.0, max(share, 0.05))
        cpu = max(1.0, spin_ms / QUIET_SPIN_MS)
        slowdown = cpu * busy
        if slowdown < 1.25:
            return  # a quiet machine: the objectives as they are
        self.slowdown = slowdown
        self.cpu_slowdown = cpu
        lighter = ""
        if self.rate_given is None:
            self.rate = float(max(MIN_RATE, round(RATE / slowdown)))
            lighter = f" The traffic is {self.rate:g} requests a second instead of {RATE:g}."
        if make_url(self.url).get_backend_name() == "sqlite":
            # SQLite works in this process, so a request, and each of its statements,
            # is as much slower as the process: the statement timeout too, or the
            # calm's admin counts would fail past it; the lookup's overlapping scans
            # still do, as in the outage.
            self.timeout_scale = slowdown
        else:
            # A database server is not slowed with this process: a request's time is
            # half ours and half the server's (in log terms), and the threshold grows
            # by the square root, or the lookup's scan on the server would stay under
            # it. Its statement timeout follows a slower processor only.
            self.timeout_scale = cpu
            slowdown = math.sqrt(slowdown)
        self.threshold_scale = slowdown
        self.threshold_ms = self._scaled(THRESHOLD_MS)
        self.console.print(
            f"This machine is busy or slow: this process got {min(share, 1.0):.0%} of a"
            f" core, at x{cpu:.1f} a quiet one's time for the same work. The latency"
            f" objectives are x{slowdown:.1f} longer for this replay"
            f" ({self.threshold_ms:g} ms instead of {THRESHOLD_MS} ms).{lighter}",
            highlight=False,
        )

    @property
    def min_bad_events(self) -> int:
        """The bad requests a page needs in its short window at this replay's rate."""
        return max(MIN_BAD_FLOOR, round(MIN_BAD_EVENTS * self.rate / RATE))

    def _scaled(self, threshold_ms: float) -> float:
        """A latency threshold for this machine, rounded up to 5 ms so that it reads as
        one a person would write."""
        return float(math.ceil(threshold_ms * self.threshold_scale / 5) * 5)

    def _hypopg(self, engine: t.Any) -> None:
        """The advisor verifies PostgreSQL indexes with HypoPG's hypothetical indexes,
        which need the extension in the shop's database."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS hypopg"))
        except SQLAlchemyError as e:
            first = str(getattr(e, "orig", e)).splitlines()[0]
            self.console.print(
                f"[yellow]HypoPG is not available ({first}): the advisor cannot verify an"
                " index without it. Install it on the server (Debian/Ubuntu:"
                " postgresql-<version>-hypopg) and run the demo again.[/yellow]",
                highlight=False,
            )

    # --- what the on-call inboxes hear ------------------------------------------------

    def _heard(self, got: Received) -> None:
        inc = got.message.get("incident") or {}
        if got.action == "trigger" and got.team == "backend":
            self.moments.level1 = self.moments.level1 or got.at
        if got.action in ("trigger", "escalate") and got.team == "devops":
            self.moments.level2 = self.moments.level2 or got.at
        text = f"[bold]webhook {got.team}[/bold] <- {got.action} #{inc.get('id')}"
        if got.action == "trigger":
            text += f" {inc.get('severity')}: {inc.get('hypothesis') or got.message.get('text')}"
        else:
            text += f": {str(got.message.get('text')).splitlines()[0]}"
        self.say(text, got.at)

    # --- the live display ---------------------------------------------------------------

    def _table(self, stage: str) -> Table:
        now = time.time()
        recent = self.traffic.between(now - 3.0) if self.traffic else []
        errors = sum(1 for s in recent if s.failed)
        lookups = sum(1 for s in recent if s.route == LOOKUP_ROUTE)
        table = Table.grid(padding=(0, 2))
        table.add_row("[bold]replay clock[/bold]", f"{self.clock()}  ({stage})")
        table.add_row("[bold]real time[/bold]", f"{now - self.moments.started:5.1f} s")
        table.add_row(
            "[bold]last 3 s[/bold]",
            f"{len(recent) / 3.0:5.1f} req/s, p95 {p95_ms(recent) or 0:6.1f} ms,"
            f" {errors} errors, lookups {lookups / max(1, len(recent)):.0%}",
        )
        table.add_row("[bold]requests[/bold]", f"{self.traffic.sent if self.traffic else 0:,}")
        return table

    def wait(self, stage: str, done: t.Callable[[], t.Any], patience: float = PATIENCE) -> t.Any:
        """Refresh the display until ``done()`` is true; :class:`DemoError` after
        ``patience`` seconds."""
        deadline = time.time() + patience
        while True:
            found = done()
            if found:
                return found
            if time.time() > deadline:
                raise DemoError(f"No {stage} within {patience:.0f} s.")
            if self.traffic is not None and self.traffic.proc.poll() is not None:
                raise DemoError("The load process ended on its own.")
            if self.live is not None:
                self.live.update(self._table(stage))
            time.sleep(0.2)

    # --- the replay ---------------------------------------------------------------------

    def warm_up(self) -> None:
        """A few requests to each everyday endpoint before the clock starts, as a deploy's
        health checks would: the first request of each compiles its statements and opens
        connections, and the replay measures the shop, not its start-up."""
        assert self.app is not None
        client = self.app.test_client()
        for _ in range(3):
            for path in (
                "/api/products?category=books",
                "/api/products/1",
                "/api/customers/1/orders",
                "/api/orders/recent",
                "/api/admin/overview",
            ):
                client.get(path).close()
            client.post("/api/orders", json={"customer_id": 1, "items": [{"product_id": 1}]})

    def run(self) -> dict[str, t.Any]:
        assert self.app is not None
        assert self.inbox is not None
        m = self.moments
        self.warm_up()
        # The load's first seconds (its threads, the server's, querywatch's store being
        # created) are slower than the shop: they run before the clock starts, with the
        # alerts held, and are pruned from the store.
        flusher = self.state.flusher
        flusher.defer_alerts(3600)
        self.traffic = Traffic(self.port, self.sizes, self.rate, timeout=5.0)
        with self.console.status("Warming up: the load's first requests..."):
            # A busy machine takes longer to open the pool's connections and settle.
            time.sleep(WARM_UP_SECONDS * self.slowdown)
        flusher.flush()
        m.started = float(math.floor(time.time()))
        self.state.store.prune(m.started, width=1)
        flusher.defer_alerts(0)
        incidents = Incidents(self.state.store)
        if not self.quiet:
            self.live = Live(self._table("calm"), console=self.console, refresh_per_second=4)
            self.live.start()
        try:
            self.say(f"Calm traffic, {self.rate:.0f} requests a second.")
            calm_end = m.started + self.real(CALM_MINUTES * 60)
            self.wait(
                "calm",
                lambda: self._calm_page() or time.time() >= calm_end,
                patience=calm_end - time.time() + 5,
            )

            self.traffic.command("incident")
            m.onset = time.time()
            self.say(
                f"[bold]The support team's order lookup takes {LOOKUP_SHARE:.0%} of the"
                " requests[/bold]; the total rate stays the same."
            )
            alert = self.wait("paging alert", self._page_firing)
            m.alert = alert.since
            self.say(
                f"[bold red]Alert[/bold red] {alert.key} fired {self.after_onset(m.alert)}"
                f" after the onset: {alert.summary.split('. ')[0]}.",
                m.alert,
            )
            inc = self.wait("incident", lambda: next(iter(incidents.recent(open_only=True)), None))
            self.incident_id = inc.id
            m.incident = inc.created_at
            self.wait("level 1 notification", lambda: m.level1)
            self.wait("level 2 notification", lambda: m.level2)
            inc = incidents.acknowledge(inc.id, "carol (devops)")
            m.ack = inc.acknowledged_at
            self.say(f"carol (devops) acknowledges #{inc.id}.", m.ack)

            culprit = self._culprit(inc.evidence)
            self.findings["culprit"] = culprit
            advice = self._analyse(incidents, culprit)
            self.findings["gate_before"] = self._gate(None)
            if self.fix_kind == "none":
                self.say("--fix=none: nobody fixes it; watching it burn.")
                burn_end = time.time() + self.real(3600)
                self.wait("burn", lambda: time.time() >= burn_end, patience=self.real(3600) + 5)
            else:
                self._apply_fix(incidents, advice)
                m.recovered = self.wait("recovery", self._recovered)
                self.say(
                    f"The lookups' p95 is under {self.threshold_ms:g} ms again,"
                    f" {self.after_onset(m.recovered)} after the onset."
                )
                self.wait("alert resolution", self._alert_resolved)
                inc = self.wait(
                    "incident resolution",
                    lambda: (i := incidents.get(inc.id)).status == "resolved" and i,
                )
                m.incident_resolved = inc.resolved_at
                self.wait(
                    "resolve notifications",
                    lambda: len(self.inbox.received(action="resolve")) >= 2 if self.inbox else 0,
                    patience=30,
                )
                self.wait(f"{AFTER_LOOKUPS} lookups measured after the fix", self._measured)
            m.ended = time.time()
            # The replay is over: what stopping the load does to the last windows is
            # not the shop's doing, and pages nobody.
            self.state.flusher.defer_alerts(3600)
            self.traffic.stop()
            if self.fix_kind != "none":
                # Once the traffic is measured: the gate's process would take the CPU
                # the shop's requests after the fix are timed with.
                self.findings["gate_after"] = self._gate(
                    _migration(advice) if self.fix_kind == "index" and advice else None
                )
        finally:
            if self.live is not None:
                self.live.stop()
                self.live = None
                self.console.print()
        self.state.flusher.flush()
        if self.incident_id is not None and m.incident_resolved is not None:
            inc = incidents.get(self.incident_id)
            if inc.status != "resolved":
                self.findings["reopened"] = inc.title
        return self._summary(incidents)

    def _calm_page(self) -> t.Any:
        """A page during the calm means the objective does not hold here before 14:00."""
        found = self._page_firing()
        if found is not None:
            msg = (
                f"A page fired before 14:00 ({found.summary.split('. ')[0]}): the shop is"
                " slower on this machine than its objectives allow, so the replay would not"
                " show the outage. Try a smaller --scale or --rate."
            )
            raise DemoError(msg)
        return False

    def _page_firing(self) -> t.Any:
        for a in self.state.store.alert_states().values():
            if a.severity == "page" and a.state == "firing":
                return a
        return None

    def _alert_resolved(self) -> bool:
        pages = [a for a in self.state.store.alert_states().values() if a.severity == "page"]
        if pages and all(a.state != "firing" for a in pages):
            self.moments.alert_resolved = max(a.updated for a in pages)
            self.say(
                f"[green]Alert resolved[/green] {self.after_onset(self.moments.alert_resolved)}"
                " after the onset.",
                self.moments.alert_resolved,
            )
            return True
        return False

    def _culprit(self, evidence: dict[str, t.Any]) -> dict[str, t.Any]:
        """The shape the incident's evidence blames (the hypothesis's)."""
        top = culprit(evidence) if evidence.get("shapes") else None
        if top is None:
            raise DemoError("The incident's evidence names no query shape.")
        return dict(top)

    def _analyse(self, incidents: Incidents, culprit: dict[str, t.Any]) -> t.Any:
        """The responder clicks "Analyse now": the advisor verifies an index."""
        worker = self.state.advice_worker
        assert worker is not None
        fp = culprit["fingerprint"]
        t0 = time.perf_counter()
        worker.analyse_now(fp, timeout=self.advise_timeout)
        took = time.perf_counter() - t0
        found = self.state.store.advice([fp])
        if not found:
            reason = worker.reasons.get(fp, "the advisor recorded no reason")
            self.findings["advice_reason"] = reason
            self.say(f"The advisor found no index for the culprit's shape: {reason}")
            if "statement timeout" in reason:
                msg = (
                    f"The advisor's statements ran past their {self.advise_timeout:g} s"
                    f" timeout ({took:.1f} s in all) on this machine; rerun with"
                    f" --advise-timeout {max(600, 4 * self.advise_timeout):g}, or on a"
                    " quieter machine."
                )
                raise DemoError(msg)
            return None
        a = found[0]
        gain = a.cost_before / a.cost_after if a.cost_before and a.cost_after else None
        self.findings["advice"] = a
        self.say(
            f"Advisor ({a.verified_by}): {a.ddl} estimated x{gain:,.0f} cheaper"
            f" ({a.cost_before:,.0f} -> {a.cost_after:,.1f})."
            if gain
            else f"Advisor ({a.verified_by}): {a.ddl}"
        )
        assert self.incident_id is not None
        incidents.note(self.incident_id, "carol (devops)", f"Advisor ({a.verified_by}): {a.ddl}")
        return a

    def _gate(self, ddl: str | None) -> dict[str, t.Any]:
        """The shop's CI gate (``querywatch check``) on its test of the lookup, with the
        fix's migration when there is one."""
        gate_dir = os.path.join(self.workdir, "gate")
        os.makedirs(gate_dir, exist_ok=True)
        db = os.path.join(gate_dir, "shop.db")
        if os.path.exists(db):
            os.remove(db)
        requests_file = os.path.join(gate_dir, "lookup.yaml")
        # The shop's own budget and its test of the lookup, taken from checks.yaml.
        with open(shop.CHECKS_FILE, encoding="utf-8") as f:
            checks = yaml.safe_load(f)
        checks["requests"] = [
            r for r in checks["requests"] if r["path"].startswith("/api/orders/lookup")
        ]
        with open(requests_file, "w", encoding="utf-8") as f:
            yaml.safe_dump(checks, f, sort_keys=False)
        migrations = [ddl] if ddl else []
        app_spec = (
            f"querywatch.demo.shop:create_app({f'sqlite:///{db}'!r},"
            f" querywatch=False, migrations={migrations!r})"
        )
        cmd = [
            sys.executable, "-m", "querywatch", "check", "--app", app_spec,
            "--seed", "querywatch.demo.shop:seed_for_check", "--requests", requests_file,
            "--annotations", "none",
        ]  # fmt: skip
        t0 = time.perf_counter()
        env = {**os.environ, "COLUMNS": "200"}
        done = subprocess.run(  # noqa: S603 (our own command)
            cmd, capture_output=True, text=True, cwd=gate_dir, env=env, timeout=120, check=False
        )
        lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
        result = {
            "passed": done.returncode == 0,
            "exit_code": done.returncode,
            "headline": lines[0] if lines else done.stderr.strip()[-300:],
            "output": done.stdout,
            "seconds": round(time.perf_counter() - t0, 2),
            "migration": ddl,
        }
        verdict = "[green]passed[/green]" if result["passed"] else "[red]failed[/red]"
        detail = next((ln.strip() for ln in lines if ln.strip().startswith("Full scan")), "")
        self.say(
            "CI gate (querywatch check, the shop's lookup test"
            + (f", with {ddl}" if ddl else "")
            + f"): {verdict}: {result['headline']}"
            + (f" {detail}" if detail else "")
        )
        return result

    def _apply_fix(self, incidents: Incidents, advice: t.Any) -> None:
        assert self.app is not None
        assert self.incident_id is not None
        if self.fix_kind == "index":
            if advice is None:
                reason = self.findings.get("advice_reason") or "the advisor gave no reason"
                raise DemoError(f"No verified index to apply: {reason}")
            engine = create_engine(self.url)
            try:
                t0 = time.perf_counter()
                # Autocommit: PostgreSQL's CREATE INDEX CONCURRENTLY runs outside a
                # transaction (and does not block the shop's writes while it builds).
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql(advice.ddl)
                took = time.perf_counter() - t0
            finally:
                engine.dispose()
            self.moments.fix = time.time()
            text = f"{advice.ddl} (built in {took:.2f} s)"
        else:
            self.app.config["SHOP_CACHE_LOOKUP"] = True
            self.moments.fix = time.time()
            text = "The order lookup reads through querywatch's cache (shop.orders_by_email)."
        incidents.note(self.incident_id, "carol (devops)", text, kind="fix_applied")
        incidents.update(self.incident_id, "carol (devops)", f"Fix applied: {text}")
        self.say(f"[bold green]Fix applied[/bold green]: {text}", self.moments.fix)

    def _recovered(self) -> float | None:
        """The first moment after the fix from which the lookups' p95 over two seconds is
        under the objective's threshold (measured by the load process)."""
        fix = self.moments.fix
        assert fix is not None
        assert self.traffic is not None
        lookups = self.traffic.between(fix, route=LOOKUP_ROUTE)
        span = 2.0
        if not lookups or lookups[-1].at - lookups[0].at < span:
            return None
        for i, s in enumerate(lookups):
            if s.at + span > lookups[-1].at:
                return None
            window = [x for x in lookups[i:] if x.at < s.at + span]
            if len(window) >= 5 and (p95_ms(window) or 0) < self.threshold_ms:
                return s.at
        return None

    def _measured(self) -> bool:
        """Enough lookups since the recovery for their p95 to mean something."""
        recovered = self.moments.recovered
        assert recovered is not None
        assert self.traffic is not None
        lookups = self.traffic.between(recovered, route=LOOKUP_ROUTE)
        return len(lookups) >= AFTER_LOOKUPS or time.time() > recovered + AFTER_PATIENCE

    # --- the summary --------------------------------------------------------------------

    def _server_p95(self, since: float, until: float) -> float | None:
        win = self.state.store.window(since, until, endpoint=CULPRIT_ENDPOINT, width=1)
        ep = win.endpoints.get(CULPRIT_ENDPOINT)
        if ep is None or not ep.requests:
            return None
        return round(percentile(ep.hist, 0.95, 0.0, ep.max) * 1000, 2)

    def _summary(self, incidents: Incidents) -> dict[str, t.Any]:
        m = self.moments
        assert self.traffic is not None
        assert m.onset is not None
        assert m.ended is not None
        tr = self.traffic
        fix_at = m.fix or m.ended
        # A second for the requests in flight at the fix to drain.
        after_from = (m.recovered or fix_at + 1.0) if m.fix else m.ended
        calm = tr.between(m.started + 1.0, m.onset)
        during = tr.between(m.onset, fix_at)
        after = tr.between(after_from, m.ended) if m.fix else []

        def stats(samples: list[Sample], seconds: float) -> dict[str, t.Any]:
            failed = sum(1 for s in samples if s.failed)
            return {
                "requests": len(samples),
                "rate_per_s": round(len(samples) / seconds, 2) if seconds > 0 else None,
                "p95_ms": p95_ms(samples),
                "errors": failed,
                "error_ratio": round(failed / len(samples), 4) if samples else None,
            }

        phases: dict[str, t.Any] = {
            "before": stats(calm, m.onset - m.started - 1.0),
            "during": stats(during, fix_at - m.onset),
            "after": stats(after, m.ended - after_from) if after else None,
        }
        lk_during = [s for s in during if s.route == LOOKUP_ROUTE]
        lk_after = [s for s in after if s.route == LOOKUP_ROUTE]
        p_during, p_after = p95_ms(lk_during), p95_ms(lk_after)
        server_during = self._server_p95(m.onset, fix_at)
        # Whole buckets after the fix: the one it fell in also holds the slow lookups.
        server_after = self._server_p95(math.ceil(after_from), m.ended + 1) if m.fix else None
        culprit = self.findings.get("culprit") or {}
        advice = self.findings.get("advice")
        inc = incidents.get(self.incident_id) if self.incident_id else None
        timeline = incidents.timeline(inc.id) if inc else []
        first = next(
            (r.message for r in self.inbox.received(action="trigger")), None
        ) if self.inbox else None  # fmt: skip
        postmortem_path = None
        if inc is not None:
            postmortem_path = os.path.join(self.workdir, "postmortem.md")
            with open(postmortem_path, "w", encoding="utf-8") as f:
                f.write(render_postmortem(inc, timeline, self.state.store))
        ratio = (
            phases["during"]["rate_per_s"] / phases["before"]["rate_per_s"]
            if phases["before"]["rate_per_s"] and phases["during"]["rate_per_s"]
            else None
        )
        named = culprit.get("endpoint") == CULPRIT_ENDPOINT and "orders.customer_email" in (
            culprit.get("shape") or ""
        )
        improvement = round(p_during / p_after, 1) if p_during and p_after else None
        server_improvement = (
            round(server_during / server_after, 1) if server_during and server_after else None
        )
        mean_during = _mean_ms(lk_during)
        mean_after = _mean_ms(lk_after)
        gates = (self.findings.get("gate_before"), self.findings.get("gate_after"))
        if self.fix_kind == "index":
            fix_verified = bool(
                gates[0] and not gates[0]["passed"] and gates[1] and gates[1]["passed"]
            )
        else:
            fix_verified = bool(m.fix and p_after is not None and p_after < self.threshold_ms)
        checks = {
            "alert_fired": m.alert is not None and m.alert >= m.onset,
            "root_cause_named": named,
            "fix_verified": fix_verified,
            "recovery_measured": bool(
                m.recovered
                and m.alert_resolved
                and m.incident_resolved
                and p_after
                and not self.findings.get("reopened")
            ),
        }

        def since_onset(at: float | None) -> float | None:
            return round(at - m.onset, 2) if at is not None and m.onset is not None else None

        why: dict[str, str] = {}
        if not checks["alert_fired"]:
            why["alert_fired"] = "no paging alert fired after the onset"
        if not checks["root_cause_named"]:
            why["root_cause_named"] = (
                f"the evidence blamed {culprit.get('endpoint')}: {culprit.get('shape')}"
            )
        if not checks["fix_verified"]:
            if self.fix_kind == "none":
                why["fix_verified"] = "no fix was applied (--fix=none)"
            elif self.fix_kind == "cache":
                why["fix_verified"] = (
                    f"the lookups' p95 after the fix is {p_after} ms, over the"
                    f" {self.threshold_ms:g} ms objective: cache misses still scan orders, and the"
                    " gate still fails on the full scan (--fix=index removes it)"
                )
            else:
                why["fix_verified"] = "the gate did not fail before the index and pass after"
        if self.findings.get("reopened"):
            # The shop paged again after the fix: the loop did not stay closed, and the
            # incident's evidence (and its postmortem) now tell of that page instead.
            why["recovery_measured"] = (
                f"the incident reopened after it resolved: {self.findings['reopened']}"
            )
        elif not checks["recovery_measured"]:
            why["recovery_measured"] = "latency did not recover, or the alert or the incident"
            why["recovery_measured"] += " did not resolve"
        summary: dict[str, t.Any] = {
            "loop_closed": all(checks.values()),
            "checks": checks,
            "not_closed_because": why,
            "fix": self.fix_kind,
            "speed": self.speed,
            "scale": self.scale,
            "database": make_url(self.url).get_backend_name(),
            # The latency objective's threshold, scaled by how much slower than a quiet
            # machine this one answered the shop's quick requests before the replay.
            "objective_ms": self.threshold_ms,
            "slowdown": round(self.slowdown, 2),
            "rate": self.rate,
            # The bad requests a page needs in its short window at that rate.
            "min_bad_events": self.min_bad_events,
            "times_s": {
                "onset_to_alert": since_onset(m.alert),
                "alert_to_level2": round(m.level2 - m.alert, 2) if m.level2 and m.alert else None,
                "alert_to_ack": round(m.ack - m.alert, 2) if m.ack and m.alert else None,
                "onset_to_fix": since_onset(m.fix),
                "onset_to_recovery": since_onset(m.recovered),
                "onset_to_alert_resolved": since_onset(m.alert_resolved),
                "onset_to_incident_resolved": since_onset(m.incident_resolved),
                "whole_replay": round(m.ended - m.started, 2),
            },
            "traffic": {
                "rate_before": phases["before"]["rate_per_s"],
                "rate_during": phases["during"]["rate_per_s"],
                "ratio": round(ratio, 3) if ratio else None,
            },
            "phases": phases,
            "culprit": {
                "endpoint": culprit.get("endpoint"),
                "shape": culprit.get("shape"),
                "call_site": culprit.get("call_site"),
                "share_of_db_time": culprit.get("share_of_db_time"),
                "p95_ms_during": p_during,
                "p95_ms_after": p_after,
                "improvement": improvement,
                "server_p95_ms_during": server_during,
                "server_p95_ms_after": server_after,
                "server_improvement": server_improvement,
                "mean_ms_during": mean_during,
                "mean_ms_after": mean_after,
            },
            "index": (
                {
                    "ddl": advice.ddl,
                    "verified_by": advice.verified_by,
                    "estimated_gain": round(advice.cost_before / advice.cost_after, 1)
                    if advice.cost_before and advice.cost_after
                    else None,
                    "measured_gain": round(mean_during / mean_after, 1)
                    if mean_during and mean_after and self.fix_kind == "index"
                    else None,
                }
                if advice is not None
                else None
            ),
            "gate": {"before": gates[0], "after": gates[1]},
            "incident": (
                {
                    "id": inc.id,
                    "status": inc.status,
                    "severity": inc.severity,
                    "first_notification": first,
                    "notifications": [
                        {"team": r.team, "action": r.action, "after_onset_s": since_onset(r.at)}
                        for r in (self.inbox.received() if self.inbox else [])
                    ],
                }
                if inc is not None
                else None
            ),
            "postmortem": postmortem_path,
            "dashboard_url": self.dashboard,
            "store": self.store_path,
        }
        summary["root_cause"] = self._sentence(summary)
        return summary

    def _sentence(self, s: dict[str, t.Any]) -> str:
        """The evidence in one sentence, with the estimated and the measured gain."""
        c, ix = s["culprit"], s["index"]
        ratio = s["traffic"]["ratio"]
        parts = [
            f"Traffic was flat (x{ratio:.2f})" if ratio and 0.67 < ratio < 1.5 else
            f"Traffic changed (x{ratio or 0:.2f})",
        ]  # fmt: skip
        what = f"{compact_shape(c['shape'], 120)} in {c['endpoint']}"
        if c.get("call_site"):
            what += f" at {_site_text(c['call_site'])}"
        share = c.get("share_of_db_time")
        parts.append(
            f"{share:.0%} of database time went to {what}" if share else f"the culprit is {what}"
        )
        if ix:
            gain = f"estimated x{ix['estimated_gain']:,.0f}" if ix["estimated_gain"] else ""
            if ix.get("measured_gain"):
                gain += (
                    f", measured x{ix['measured_gain']:,.0f} (mean {c['mean_ms_during']:.1f}"
                    f" -> {c['mean_ms_after']:.2f} ms)"
                )
            parts.append(f"the verified index {ix['ddl']} ({ix['verified_by']}; {gain})")
        return "; ".join(parts) + "."

    # --- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the load, the server and querywatch's threads; close the connections.
        Safe to call twice and after a failure at any point."""
        if self.closed:
            return
        self.closed = True
        if self.live is not None:
            self.live.stop()
        if self.traffic is not None:
            self.traffic.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.app is not None:
            state = self.app.extensions["querywatch"]
            for worker in (state.incident_worker, state.advice_worker):
                if worker is not None:
                    worker.stop()
            state.flusher.stop()
            with self.app.app_context():
                shop.db.engine.dispose()
            state.store.engine.dispose()
        if self.inbox is not None:
            self.inbox.close()
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            qw_logger = logging.getLogger("querywatch")
            qw_logger.removeHandler(handler)
            qw_logger.propagate = self._log_propagate
            handler.close()


def _migration(advice: t.Any) -> str:
    """The advisor's index as the shop's migration, for the gate's database (SQLite in
    CI, whatever the dialect the advice was verified on)."""
    keys = ", ".join(advice.keys)
    return f"CREATE INDEX IF NOT EXISTS {advice.index_name} ON {advice.table} ({keys})"


def _mean_ms(samples: t.Sequence[Sample]) -> float | None:
    if not samples:
        return None
    return round(sum(s.seconds for s in samples) / len(samples) * 1000, 3)


def print_summary(summary: dict[str, t.Any], console: Console) -> None:
    s = summary
    times, c = s["times_s"], s["culprit"]

    def sec(x: float | None) -> str:
        return f"{x:.1f} s ({duration_text(x * s['speed'])} replayed)" if x is not None else "-"

    def ms(x: float | None) -> str:
        return f"{x:,.1f} ms" if x is not None else "-"

    console.rule("The replay, measured")
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("onset -> alert", sec(times["onset_to_alert"]))
    table.add_row("alert -> devops told", sec(times["alert_to_level2"]))
    table.add_row("alert -> acknowledged", sec(times["alert_to_ack"]))
    table.add_row("onset -> fix", sec(times["onset_to_fix"]))
    table.add_row("onset -> recovery", sec(times["onset_to_recovery"]))
    table.add_row("onset -> alert resolved", sec(times["onset_to_alert_resolved"]))
    table.add_row("onset -> incident resolved", sec(times["onset_to_incident_resolved"]))
    ph = s["phases"]
    table.add_row(
        "p95, all requests",
        f"before {ms(ph['before']['p95_ms'])}, during {ms(ph['during']['p95_ms'])},"
        f" after {ms(ph['after']['p95_ms']) if ph['after'] else '-'}",
    )
    table.add_row(
        "errors",
        f"before {ph['before']['errors']}, during {ph['during']['errors']},"
        f" after {ph['after']['errors'] if ph['after'] else '-'}",
    )
    table.add_row(
        f"p95 of {c['endpoint'] or CULPRIT_ENDPOINT}",
        f"during {ms(c['p95_ms_during'])}, after {ms(c['p95_ms_after'])}"
        + (f": x{c['improvement']:,.1f} better" if c["improvement"] else "")
        + (
            f" (querywatch's own: {ms(c['server_p95_ms_during'])} -> "
            f"{ms(c['server_p95_ms_after'])})"
            if c["server_p95_ms_during"]
            else ""
        ),
    )
    table.add_row(
        "traffic",
        f"{s['traffic']['rate_before'] or 0:.1f} req/s before 14:00,"
        f" {s['traffic']['rate_during'] or 0:.1f} during (x{s['traffic']['ratio'] or 0:.2f})",
    )
    g = s["gate"]
    if g["before"]:
        table.add_row(
            "CI gate",
            "failed before the fix"
            if not g["before"]["passed"]
            else "passed before the fix (it should have failed)",
        )
    if g["after"]:
        table.add_row("", "passed after it" if g["after"]["passed"] else "failed after it")
    print_whole(console, table)
    console.print(f"Root cause: {s['root_cause']}", highlight=False, soft_wrap=True)
    if s["postmortem"]:
        console.print(f"Postmortem: {s['postmortem']}", highlight=False)
    console.print(
        f"Store: {s['store']} (querywatch report --store sqlite:///{s['store']} --since 1h)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"Dashboard: {s['dashboard_url']}", highlight=False, soft_wrap=True)
    if s["loop_closed"]:
        console.print(
            "[bold green]Loop closed:[/bold green] alert fired, root cause named, fix"
            " verified, recovery measured."
        )
    else:
        console.print("[bold red]Loop not closed:[/bold red]")
        for check, reason in s["not_closed_because"].items():
            console.print(f"  {check.replace('_', ' ')}: {reason}.", highlight=False)


def run_demo(
    *,
    scale: float = 3.0,
    speed: float = 120.0,
    rate: float | None = None,
    database_url: str | None = None,
    fix: str = "index",
    workdir: str = "querywatch-demo",
    keep_serving: bool = False,
    as_json: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    advise_timeout: float = ADVISE_TIMEOUT,
) -> int:
    """Replay the outage; the exit code: 0 when the loop closed (alert fired, root cause
    named, fix verified, recovery measured), 1 when it did not, 130 on Ctrl-C."""
    # Progress goes to the console (stderr with --json, nothing with --quiet); the
    # summary, the reason a replay stopped and Ctrl-C's message always reach ``out``.
    out = console or make_console(stderr=as_json)
    console = console or make_console(stderr=as_json, quiet=quiet)
    replay = Replay(
        scale=scale,
        speed=speed,
        rate=rate,
        database_url=database_url,
        fix=fix,
        workdir=workdir,
        console=console,
        quiet=quiet,
        advise_timeout=advise_timeout,
    )
    summary: dict[str, t.Any] | None = None
    try:
        replay.setup()
        try:
            summary = replay.run()
        except DemoError as e:
            out.print(f"[bold red]The replay stopped:[/bold red] {e}")
        except Exception as e:  # the replay stops, and says why; the rest is closed below
            out.print(
                f"[bold red]The replay stopped:[/bold red] {type(e).__name__}: {e}"
                f" (querywatch's log: {replay.log_path})",
                highlight=False,
            )
        if summary is not None:
            if as_json:
                print(json.dumps(summary, indent=2, default=str))
            else:
                print_summary(summary, out)
        if keep_serving and replay.server is not None:
            console.print(
                f"Still serving on http://127.0.0.1:{replay.port}, dashboard"
                f" {replay.dashboard}; press Ctrl+C to stop.",
                highlight=False,
                soft_wrap=True,
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    except KeyboardInterrupt:
        out.print("\nInterrupted: stopping the load, the server and querywatch.")
        replay.close()
        return 130
    finally:
        replay.close()
    return 0 if summary is not None and summary["loop_closed"] else 1
