"""The replay itself: the shop served on a real server under load, the outage, the
alert, the incident and its escalation, the evidence, the fix and the recovery."""

from __future__ import annotations

import dataclasses
import datetime as dt
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
from sqlalchemy.engine import make_url
from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

from .._compat import create_engine
from .._text import duration_text
from ..alerts.evidence import culprit
from ..dashboard import dashboard_url
from ..exceptions import CalmPaged
from ..exceptions import DemoError
from ..incidents.manager import Incidents
from . import shop
from .hooks import Inbox
from .hooks import Received
from .load import LOOKUP_ROUTE
from .load import LOOKUP_SHARE
from .options import AFTER_LOOKUPS
from .options import AFTER_PATIENCE
from .options import BUSY_PROBE_SECONDS
from .options import BUSY_PROBE_SLICES
from .options import CALM_MINUTES
from .options import ESCALATION_MINUTES
from .options import MIN_BAD_EVENTS
from .options import MIN_BAD_FLOOR
from .options import MIN_RATE
from .options import OVERRIDES
from .options import PATIENCE
from .options import QUIET_SPIN_MS
from .options import RATE
from .options import SECRET_BYTES
from .options import SETTLE_PATIENCE
from .options import SETTLE_WINDOW
from .options import STATEMENT_TIMEOUT_MS
from .options import THRESHOLD_MS
from .options import WARM_UP_SECONDS
from .options import DemoOptions
from .summary import _migration
from .summary import summarize
from .traffic import Traffic
from .traffic import machine_pace
from .traffic import p95_ms

if t.TYPE_CHECKING:
    from flask import Flask
    from werkzeug.serving import BaseWSGIServer


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
    #: The responder starts applying the fix (the index build, or the cache switched on).
    fixing: float | None = None
    fix: float | None = None
    recovered: float | None = None
    alert_resolved: float | None = None
    incident_resolved: float | None = None
    ended: float | None = None


class Replay:
    def __init__(
        self, options: DemoOptions, *, console: Console, slowdown_floor: float = 1.0
    ) -> None:
        self.options = options
        self.scale = options.scale
        self.speed = options.speed
        #: None: :data:`RATE`, lighter on a busy machine (set by :meth:`_calibrate`).
        self.rate_given = options.rate
        self.rate = options.rate or RATE
        self.fix_kind = options.fix
        self.console = console
        self.quiet = options.quiet
        self.advise_timeout = options.advise_timeout
        self.workdir = os.path.abspath(options.workdir)
        # The shop's instance folder holds its SQLite database, as Flask apps keep it,
        # and querywatch's store.
        self.instance = os.path.join(self.workdir, "instance")
        self.url = options.database_url or f"sqlite:///{os.path.join(self.instance, 'shop.db')}"
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
        #: The least slowdown taken, whatever is measured (a restart after a page).
        self.slowdown_floor = slowdown_floor
        #: The part of it that is the processor's speed (not the other programs).
        self.cpu_slowdown = 1.0
        #: How much longer the shop's statement timeout is on this machine.
        self.timeout_scale = 1.0
        self.threshold_ms = float(THRESHOLD_MS)
        #: What the latency thresholds are multiplied by here.
        self.threshold_scale = 1.0
        self.live: Live | None = None
        self.closed = False
        #: Times the replay started over after a page in the calm (:class:`CalmPaged`).
        self.restarts = 0

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
                # Who made each request (the load names a customer): the share of
                # users an incident affects.
                "QUERYWATCH_USER": shop.request_user,
                # The shop's guard; --guard sets what containment does (off: no guard).
                "QUERYWATCH_GUARD": (
                    None
                    if self.options.guard == "off"
                    else {**shop.GUARD, "containment": self.options.guard}
                ),
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
        share, spin_ms = machine_pace(BUSY_PROBE_SECONDS, BUSY_PROBE_SLICES)
        busy = 1 / min(1.0, max(share, 0.05))
        cpu = max(1.0, spin_ms / QUIET_SPIN_MS)
        slowdown = max(measured := cpu * busy, self.slowdown_floor)
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
        why = (
            f"This machine is busy or slow: this process got {min(share, 1.0):.0%} of a"
            f" core, at x{cpu:.1f} a quiet one's time for the same work."
            if measured >= self.slowdown_floor
            else "The run before paged in the calm: this one takes the machine to be"
            f" x{self.slowdown:.1f} slower than a quiet one."
        )
        self.console.print(
            f"{why} The latency objectives are x{slowdown:.1f} longer for this replay"
            f" ({self.threshold_ms:g} ms instead of {THRESHOLD_MS} ms).{lighter}",
            highlight=False,
        )

    @property
    def min_bad_events(self) -> int:
        """The bad requests a page needs in its short window at this replay's rate."""
        return max(MIN_BAD_FLOOR, round(MIN_BAD_EVENTS * self.rate / RATE))

    def threshold_for(self, route: str) -> float | None:
        """The latency objective's threshold for ``route`` in this replay (None: the
        route has no latency objective)."""
        if route in OVERRIDES:
            spec = OVERRIDES[route]
            return self._scaled(spec["threshold_ms"]) if spec else None
        return self.threshold_ms

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
        self.traffic = Traffic(
            self.port, self.sizes, self.rate, timeout=5.0, retries=self.options.retries
        )
        with self.console.status("Warming up: the load's first requests..."):
            # A busy machine takes longer to open the pool's connections and settle.
            time.sleep(WARM_UP_SECONDS * self.slowdown)
            waited, settled = self.traffic.settle(
                self.rate, self.threshold_for, SETTLE_WINDOW, SETTLE_PATIENCE * self.slowdown
            )
        if waited > 1.5:  # said: the calm starts later than a quiet machine's would
            self.console.print(
                f"The shop {'met' if settled else 'had not met'} its objectives"
                f" {waited:.0f} s after the warm-up; the replay's clock starts now.",
                highlight=False,
            )
        flusher.flush()
        m.started = float(math.floor(time.time()))
        self.state.store.prune(m.started, width=1)
        flusher.defer_alerts(0)
        incidents = Incidents(self.state.store)
        if not self.quiet:
            self.live = Live(self._table("calm"), console=self.console, refresh_per_second=4)
            self.live.start()
        try:
            retries = self.options.retries
            self.say(
                f"Calm traffic, {self.rate:.0f} requests a second"
                + (f"; the clients retry a failed GET up to {retries} times." if retries else ".")
            )
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
        return summarize(self, incidents)

    def _calm_page(self) -> t.Any:
        """A page during the calm means the objective does not hold here before 14:00."""
        found = self._page_firing()
        if found is not None:
            msg = (
                f"A page fired before 14:00 ({found.summary.split('. ')[0]}): the shop is"
                " slower on this machine than its objectives allow, so the replay would not"
                " show the outage. Try a smaller --scale or --rate."
            )
            raise CalmPaged(msg)
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
        self.moments.fixing = time.time()
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
