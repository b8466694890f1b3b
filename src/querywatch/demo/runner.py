"""``querywatch demo``: the seed outage replayed on the shop app.

The shop is served on 127.0.0.1 by a real threaded WSGI server with querywatch on. A
load generator sends requests over HTTP at a flat rate (open loop: the rate does not drop
when the server slows down, as real users do not wait for each other). At "14:00" the
request mix changes: the unoptimized order lookup takes its share, while the total rate
stays the same. Every number printed is measured during the run.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import secrets
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import create_engine
from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

from ..dashboard import dashboard_url
from ..report import build_report
from ..report import compact_shape
from ..report import render_report
from ..stats import percentile
from . import shop

if t.TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

__all__ = ["run_demo"]

CULPRIT_ENDPOINT = "GET /api/orders/lookup"

#: (weight, method, path template) before the onset: the shop's everyday traffic.
CALM_MIX: tuple[tuple[float, str, str], ...] = (
    (0.35, "GET", "/api/products?category={category}"),
    (0.25, "GET", "/api/products/{product}"),
    (0.20, "GET", "/api/customers/{customer}/orders"),
    (0.10, "GET", "/api/orders/recent"),
    (0.05, "GET", "/api/admin/overview"),
    (0.05, "POST", "/api/orders"),
)
#: Share of requests the support team's order lookup takes from the onset on.
LOOKUP_SHARE = 0.30


@dataclasses.dataclass
class _Sample:
    at: float
    phase: str
    path: str
    status: int
    seconds: float


@dataclasses.dataclass
class _Load:
    """What the load generator measured, shared with the progress display."""

    samples: list[_Sample] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    sent: int = 0

    def add(self, s: _Sample) -> None:
        with self.lock:
            self.samples.append(s)

    def window(self, since: float) -> list[_Sample]:
        with self.lock:
            return [s for s in self.samples if s.at >= since]


def _p95(samples: t.Sequence[_Sample]) -> float:
    if not samples:
        return 0.0
    xs = sorted(s.seconds for s in samples)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def _pick(rng: random.Random, mix: t.Sequence[tuple[float, str, str]]) -> tuple[str, str]:
    r = rng.random() * sum(w for w, _, _ in mix)
    for w, method, path in mix:
        r -= w
        if r <= 0:
            return method, path
    return mix[-1][1], mix[-1][2]


def _request(
    port: int, method: str, path: str, body: dict[str, t.Any] | None, timeout: float
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (TimeoutError, OSError):
        return 0  # timed out or refused: what a user sees as an error
    finally:
        conn.close()


def _drive(
    port: int,
    load: _Load,
    sizes: dict[str, int],
    *,
    duration: float,
    onset: float,
    rate: float,
    stop: threading.Event,
) -> None:
    """Send requests at ``rate`` per second for ``duration`` seconds; from ``onset`` on,
    the order lookup takes :data:`LOOKUP_SHARE` of them."""
    rng = random.Random(7)
    incident_mix = tuple((w * (1 - LOOKUP_SHARE), m, p) for w, m, p in CALM_MIX) + (
        (LOOKUP_SHARE, "GET", "/api/orders/lookup?email=customer{customer}@example.com"),
    )
    start = time.perf_counter()
    interval = 1.0 / rate
    with ThreadPoolExecutor(max_workers=32, thread_name_prefix="demo-load") as pool:
        n = 0
        while not stop.is_set():
            due = start + n * interval
            now = time.perf_counter()
            if due - start >= duration:
                break
            if due > now:
                time.sleep(due - now)
            phase = "calm" if due - start < onset else "incident"
            method, template = _pick(rng, CALM_MIX if phase == "calm" else incident_mix)
            path = template.format(
                category=rng.choice(shop.CATEGORIES),
                product=rng.randint(1, sizes["products"]),
                customer=rng.randint(1, sizes["customers"]),
            )
            body = None
            if method == "POST":
                body = {
                    "customer_id": rng.randint(1, sizes["customers"]),
                    "items": [{"product_id": rng.randint(1, sizes["products"]), "quantity": 1}],
                }

            def one(
                method: str = method, path: str = path, body: t.Any = body, phase: str = phase
            ) -> None:
                t0 = time.perf_counter()
                status = _request(port, method, path, body, timeout=5.0)
                load.add(_Sample(t0 - start, phase, path, status, time.perf_counter() - t0))

            pool.submit(one)
            load.sent += 1
            n += 1


def _progress_table(load: _Load, started: float, duration: float, onset: float) -> Table:
    elapsed = time.perf_counter() - started
    recent = load.window(max(0.0, elapsed - 5.0))
    errors = sum(1 for s in recent if s.status == 0 or s.status >= 500)
    phase = "calm traffic" if elapsed < onset else "14:00 - the order lookup takes its share"
    table = Table.grid(padding=(0, 2))
    table.add_row("[bold]phase[/bold]", phase)
    table.add_row("[bold]elapsed[/bold]", f"{min(elapsed, duration):5.1f} s of {duration:.0f} s")
    table.add_row("[bold]requests sent[/bold]", f"{load.sent:,}")
    table.add_row(
        "[bold]last 5 s[/bold]",
        f"{len(recent) / 5.0:5.1f} req/s, p95 {_p95(recent) * 1000:7.1f} ms, {errors} errors",
    )
    return table


def _phase_stats(samples: t.Sequence[_Sample], seconds: float) -> dict[str, t.Any]:
    errors = sum(1 for s in samples if s.status == 0 or s.status >= 500)
    return {
        "requests": len(samples),
        "rate_per_s": round(len(samples) / seconds, 2) if seconds > 0 else 0.0,
        "p95_ms": round(_p95(samples) * 1000, 1),
        "errors": errors,
        "lookup_share": round(
            sum(1 for s in samples if s.path.startswith("/api/orders/lookup"))
            / max(1, len(samples)),
            3,
        ),
    }


class _QuietHandler(WSGIRequestHandler):
    """The demo prints its own progress; a log line per request would bury it."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def _serve(app: t.Any) -> tuple[BaseWSGIServer, threading.Thread]:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="demo-server", daemon=True)
    thread.start()
    return server, thread


def run_demo(
    *,
    scale: float = 1.0,
    duration: float = 40.0,
    rate: float = 40.0,
    database_url: str | None = None,
    workdir: str = "querywatch-demo",
    keep_serving: bool = False,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Run the demo; returns the process exit code (0 when the culprit stands first)."""
    console = console or Console(stderr=as_json)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    url = database_url or f"sqlite:///{os.path.join(workdir, 'shop.db')}"
    instance = os.path.join(workdir, "instance")
    os.makedirs(instance, exist_ok=True)
    store_path = os.path.join(instance, "querywatch.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(store_path + suffix):
            os.remove(store_path + suffix)

    # 1. The shop's data: seeded once per scale, reused afterwards.
    engine = create_engine(url)
    sizes = shop.sizes(scale)
    t0 = time.perf_counter()
    if shop.seeded_version(engine) != (shop.SEED_VERSION, scale):
        with console.status("Seeding the shop database...") as status:
            counts = shop.seed(engine, scale, progress=lambda m: status.update(f"Seeding: {m}"))
        console.print(
            f"Seeded {counts['orders']:,} orders, {counts['order_items']:,} items,"
            f" {counts['customers']:,} customers in {time.perf_counter() - t0:.1f} s"
            f" ({engine.url.render_as_string(hide_password=True)})."
        )
    else:
        console.print(f"Reusing the seeded shop database ({engine.url.render_as_string()}).")
    engine.dispose()

    # 2. The shop, served for real, with querywatch on.
    app = shop.create_app(
        url,
        instance_path=instance,
        config={
            "QUERYWATCH_FLUSH_INTERVAL": 1.0,
            "QUERYWATCH_STORE_URL": f"sqlite:///{store_path}",
            # The advisor runs once, after the traffic (below), not in the middle of it.
            "QUERYWATCH_ADVISE_INTERVAL": 24 * 3600,
            "QUERYWATCH_ADVISE_PER_ROUND": 5,
            # The dashboard, live while the demo runs, behind a token made for this run.
            "QUERYWATCH_DASHBOARD_TOKEN": secrets.token_urlsafe(24),
        },
    )
    server, _thread = _serve(app)
    port = server.server_port
    dashboard = dashboard_url(app, "127.0.0.1", port, app.config["QUERYWATCH_DASHBOARD_TOKEN"])
    console.print(f"Shop API on http://127.0.0.1:{port}/api/products (querywatch on).")
    console.print(f"Dashboard: {dashboard}", highlight=False, soft_wrap=True)

    # 3. Traffic: calm, then at "14:00" the lookup takes its share at the same total rate.
    onset = duration * 0.4
    load = _Load()
    stop = threading.Event()
    started_wall = time.time()
    started = time.perf_counter()
    driver = threading.Thread(
        target=_drive,
        args=(port, load, sizes),
        kwargs={"duration": duration, "onset": onset, "rate": rate, "stop": stop},
        daemon=True,
    )
    driver.start()
    try:
        with Live(
            _progress_table(load, started, duration, onset),
            console=console,
            refresh_per_second=4,
            transient=False,
        ) as live:
            while driver.is_alive():
                driver.join(0.25)
                live.update(_progress_table(load, started, duration, onset))
    except KeyboardInterrupt:
        stop.set()
        driver.join()
    ended_wall = time.time()
    console.print()

    # 4. Evidence: measured by the load generator, and the report from querywatch's store.
    qw_state = app.extensions["querywatch"]
    qw_state.flusher.flush()
    # The background advisor's round, run now: plans, findings, a verified index.
    with console.status("Asking the planner about the costliest query shapes..."):
        qw_state.advice_worker.run_once()
    calm = [s for s in load.samples if s.phase == "calm"]
    incident = [s for s in load.samples if s.phase == "incident"]
    calm_stats = _phase_stats(calm, onset)
    incident_stats = _phase_stats(incident, max(1e-9, duration - onset))
    report = build_report(qw_state.store, since=started_wall - 1, until=ended_wall + 1)
    top = report["queries"][0] if report["queries"] else None
    top_endpoint = top["endpoints"][0]["endpoint"] if top and top["endpoints"] else None
    culprit_first = top_endpoint == CULPRIT_ENDPOINT
    change = (
        incident_stats["rate_per_s"] / calm_stats["rate_per_s"] - 1.0
        if calm_stats["rate_per_s"]
        else 0.0
    )
    fix = _verified_index(qw_state, top["fingerprint"] if top else None)
    summary = {
        "calm": calm_stats,
        "incident": incident_stats,
        "traffic_change": round(change, 4),
        "culprit_endpoint": top_endpoint,
        "culprit_shape": top["shape"] if top else None,
        "culprit_share_of_db_time": top["share"] if top else None,
        "culprit_first": culprit_first,
        "server_p95_ms": _endpoint_p95(qw_state),
        "verified_index": fix,
        "dashboard_url": dashboard,
    }
    if as_json:
        print(json.dumps({"demo": summary, "report": report}, indent=2))
    else:
        console.rule("querywatch report for the run")
        render_report(report, console, traffic=False)
        console.rule("What happened at 14:00")
        console.print(
            f"Traffic did not rise: {calm_stats['rate_per_s']:.1f} req/s before 14:00,"
            f" {incident_stats['rate_per_s']:.1f} req/s after ({change:+.0%})."
            f" p95 latency went from {calm_stats['p95_ms']:.0f} ms to"
            f" {incident_stats['p95_ms']:.0f} ms; {incident_stats['errors']} requests failed."
        )
        if top is not None:
            console.print(
                f"The database time went to {top_endpoint}:"
                f" {compact_shape(top['shape'], 160)}"
                f" ({top['share']:.0%} of all DB time, {top['calls']:,} calls,"
                f" mean {top['mean_ms']:.1f} ms).",
                highlight=False,
            )
        if fix is not None:
            console.print(
                f"Verified index ({fix['verified_by']}): {fix['ddl']} The planner's estimate"
                f" for that query falls from {fix['cost_before']:,.1f} to"
                f" {fix['cost_after']:,.1f}"
                + (" (rows read, SQLite)." if fix["dialect"] == "sqlite" else "."),
                highlight=False,
            )
        if culprit_first:
            console.print("[bold green]The unoptimized endpoint's query stands first.[/bold green]")
        else:
            console.print(
                f"[bold red]Expected {CULPRIT_ENDPOINT} first, got {top_endpoint}.[/bold red]"
            )
        console.print(f"Store: {store_path} (querywatch report --store sqlite:///{store_path})")

    if keep_serving:
        console.print(
            f"Still serving on http://127.0.0.1:{port}, dashboard {dashboard};"
            " press Ctrl+C to stop.",
            highlight=False,
            soft_wrap=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    server.shutdown()
    qw_state.flusher.stop()
    qw_state.advice_worker.stop()
    with app.app_context():
        shop.db.engine.dispose()
    return 0 if culprit_first else 1


def _verified_index(state: t.Any, fingerprint: str | None) -> dict[str, t.Any] | None:
    """The advisor's verified index for the culprit's shape, if it found one."""
    if fingerprint is None:
        return None
    found = state.store.advice([fingerprint])
    if not found:
        return None
    a = found[0]
    return {
        "ddl": a.ddl,
        "alembic": a.alembic,
        "dialect": a.dialect,
        "verified_by": a.verified_by,
        "cost_before": a.cost_before,
        "cost_after": a.cost_after,
    }


def _endpoint_p95(state: t.Any) -> dict[str, float]:
    """Server-side p95 per endpoint, from querywatch's store (last 10 minutes)."""
    win = state.store.window(time.time() - 600, time.time() + 60)
    return {
        name: round(percentile(ep.hist, 0.95, 0.0, ep.max) * 1000, 1)
        for name, ep in sorted(win.endpoints.items())
    }
