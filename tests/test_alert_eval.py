"""Alerts evaluated over the store: objectives from config, burn rates read from the
buckets, per-shape rules, the lease that makes one process evaluate, the evidence an
alert carries, and state changes written once."""

from __future__ import annotations

import multiprocessing
import time
import typing as t

import pytest
from flask import Flask

from querywatch import QueryWatch
from querywatch._compat import create_engine
from querywatch._config import load_settings
from querywatch._stats import Stats
from querywatch._stats import bucket_index
from querywatch.alerts import LEASE
from querywatch.alerts import AlertRules
from querywatch.alerts import Evaluator
from querywatch.alerts import Objective
from querywatch.alerts import parse_objectives
from querywatch.capture import CallSite
from querywatch.capture import LoopStats
from querywatch.capture import Record
from querywatch.exceptions import ConfigError
from querywatch.fingerprint import fingerprint
from querywatch.store import PlanFindingRow
from querywatch.store import Store
from querywatch.store import StoredAdvice

_SETTINGS = load_settings(Flask(__name__))

AVAILABILITY = Objective("availability", 0.999)
LATENCY = Objective("latency", 0.99, "latency", 300.0)
#: An hour in a minute: 1h/5m -> 60 s/5 s, 6h/30m -> 6 min/30 s, 3d/6h -> 72 min/6 min.
SCALE = 1 / 60

LOOKUP_SQL = "SELECT id, total FROM orders WHERE email = 'a@example.com'"
PRODUCT_SQL = "SELECT id, name FROM products WHERE id = 1"
LOOKUP_SITE = CallSite("/srv/shop/views.py", 88, "search_orders")


def _request(
    endpoint: str, sql: str, seconds: float, when: float, status: int = 200, site: t.Any = None
) -> Record:
    r = Record(name=endpoint, kind="request", settings=_SETTINGS, started_wall=when)
    fp = fingerprint(sql)
    s = LoopStats(fp, site)
    s.calls, s.total, s.min, s.max, s.rows = 1, seconds, seconds, seconds, 1
    s.hist[bucket_index(seconds)] = 1
    r.loops[(fp.id, None, None)] = s
    r.query_count = 1
    r.db_time = seconds
    r.duration = seconds + 0.002
    r.status = status
    return r


def _replay(
    store: Store,
    start: float,
    seconds: int,
    *,
    per_second: int = 10,
    incident: tuple[float, float] | None = None,
    objectives: t.Sequence[Objective] = (AVAILABILITY, LATENCY),
) -> None:
    """The seed's afternoon in miniature, in 1-second buckets: a steady 10 requests a
    second; during ``incident`` the same rate, but 3 in 10 go to the order lookup, which
    takes 2 s and fails (a timeout) half the time."""
    stats = Stats(bucket_seconds=1, objectives=objectives)
    for s in range(seconds):
        when = start + s
        bad = incident is not None and incident[0] <= when < incident[1]
        for i in range(per_second):
            at = when + i / per_second
            if bad and i % 10 < 3:
                stats.add(
                    _request(
                        "GET /api/orders/lookup",
                        LOOKUP_SQL,
                        2.0,
                        at,
                        500 if i % 2 else 200,
                        LOOKUP_SITE,
                    ),
                    [],
                )
            else:
                stats.add(_request("GET /api/products/<int:id>", PRODUCT_SQL, 0.002, at), [])
        if s % 60 == 59:
            store.write(stats.drain())
    store.write(stats.drain())


def _rules(**kw: t.Any) -> AlertRules:
    base: dict[str, t.Any] = {
        "objectives": (AVAILABILITY, LATENCY),
        "scale": SCALE,
        "bucket_seconds": 1,
        "shape_p95_ms": None,
        "new_n_plus_one": False,
        "new_full_scan": False,
    }
    base.update(kw)
    return AlertRules(**base)


def test_burn_rate_alerts_fire_with_evidence_and_resolve(store_url: str) -> None:
    """Ten minutes calm, then 100 s of the seed's incident at a flat request rate (10%
    failing, 30% slow): the alerts fire in the workbook's order (the availability ticket
    first, the pages once 2% of the budget is gone), the evidence says traffic is flat
    and names the lookup's shape, endpoint, call site, plan flag and verified index; the
    pages resolve once the short windows are clean, the tickets stay."""
    store = Store(store_url)
    t0 = float(int(time.time()) - 3600)
    onset, end = t0 + 600, t0 + 700
    _replay(store, t0, 760, incident=(onset, end))
    lookup_fp = fingerprint(LOOKUP_SQL).id
    store.record_advice(
        [
            StoredAdvice(
                lookup_fp, "sqlite", "orders", "ix_orders_email", ("email",),
                "CREATE INDEX IF NOT EXISTS ix_orders_email ON orders (email);", "", "",
                "sqlite", 1000.0, 10.0, None, None, t0, t0,
            )
        ]
    )  # fmt: skip
    store.record_plan_findings(
        [PlanFindingRow("full_scan", "GET /api/orders/lookup", lookup_fp, 1, 2.0, None, "")], t0
    )
    ev = Evaluator(store, _rules(), holder="test")

    assert ev.run(onset - 10) == []  # calm: nothing fires
    # 6 s in, 1x the budget's rate over 3d/6h (72 min / 6 min scaled): the ticket.
    assert [c.key for c in ev.run(onset + 6) or []] == ["slo:availability:ticket"]
    # 30 s in: the 1h/5m pair burns 50x (availability) and 15x (latency).
    changes = ev.run(onset + 30)
    assert changes is not None
    fired = {c.key: c for c in changes}
    assert set(fired) == {"slo:availability:page", "slo:latency:page", "slo:latency:ticket"}
    page = fired["slo:availability:page"]
    assert (page.state, page.kind, page.severity) == ("firing", "slo", "page")
    e = page.evidence
    assert 0.9 <= e["traffic"]["ratio"] <= 1.1, e["traffic"]
    assert e["errors"]["ratio_now"] == pytest.approx(0.10, abs=0.02)
    assert e["db_share"]["now"] > 0.9
    top = e["shapes"][0]
    assert top["fingerprint"] == lookup_fp
    assert top["endpoint"] == "GET /api/orders/lookup"
    assert top["call_site"] == {
        "file": "/srv/shop/views.py",
        "line": 88,
        "function": "search_orders",
    }
    assert top["flags"] == ["full_scan"]
    assert top["index"] == "CREATE INDEX IF NOT EXISTS ix_orders_email ON orders (email);"
    assert top["share_of_db_time"] > 0.95
    assert e["bad_endpoints"][0]["endpoint"] == "GET /api/orders/lookup"
    assert page.summary.startswith(
        "SLO availability (99.9% of requests succeed): the error budget burns"
    )
    assert "Traffic is flat (x" in page.summary
    assert "one query shape in GET /api/orders/lookup takes" in page.summary
    assert "at /srv/shop/views.py:88 in search_orders" in page.summary
    assert "suggested index: CREATE INDEX IF NOT EXISTS ix_orders_email" in page.summary

    # Still burning: no new change, the state stays firing.
    assert ev.run(onset + 60) == []
    # 10 s after the errors stopped the 6h/30m pair's short window (30 s) still burns.
    assert ev.run(end + 10) == []
    later = ev.run(end + 40)
    assert later is not None
    assert {c.key: c.state for c in later} == {
        "slo:availability:page": "resolved",
        "slo:latency:page": "resolved",
    }
    states = store.alert_states()
    assert states["slo:availability:ticket"].state == "firing"
    assert states["slo:availability:page"].state == "resolved"
    events = store.alert_events()
    assert [(x.key, x.state) for x in events if x.key == "slo:availability:page"] == [
        ("slo:availability:page", "firing"),
        ("slo:availability:page", "resolved"),
    ]
    assert events[-1].summary.startswith("Resolved after 110 s: SLO latency")
    store.dispose()


def _held_page(tmp_path: t.Any) -> tuple[Store, Evaluator, t.Any, t.Any, float]:
    """The seed's incident in the store, both pages fired, and the guard (enforce)
    limiting the lookup for the latency page: (store, evaluator, guard, limit, the
    incident's end)."""
    from querywatch.guard import Containment
    from querywatch.guard import Guard
    from querywatch.guard import load_guard
    from querywatch.guard._state import write

    store = Store(f"sqlite:///{tmp_path}/qw.db")
    t0 = float(int(time.time()) - 3600)
    onset, end = t0 + 600, t0 + 700
    _replay(store, t0, 760, incident=(onset, end))
    ev = Evaluator(store, _rules(), holder="test")
    config = load_guard({"containment": "enforce"})
    assert config is not None
    guard = Guard(Flask(__name__), config)
    ev.holds = lambda: guard.holds(store)
    ev.run(onset + 30)
    limit = Containment(
        "GET /api/orders/lookup", "enforce", 2, "slo:latency:page", None, 10.0, 2000.0,
        onset + 31, onset + 31,
    )  # fmt: skip
    write(store, {limit.endpoint: limit})
    return store, ev, guard, limit, end


@pytest.mark.allow_internal_errors
def test_a_page_held_by_the_guards_limit_resolves_once_the_limit_lifts(
    tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The guard limits the lookup the latency page blamed; once the short windows are
    clean (the limit, not a fix, may have done that) the latency page stays firing,
    said once, while the availability page, which engaged nothing, resolves. It resolves
    when the limit lifts. Shadow mode, a pinned limit and a holds function that fails
    hold nothing."""
    store, ev, guard, limit, end = _held_page(tmp_path)
    from querywatch.guard import Guard
    from querywatch.guard import load_guard
    from querywatch.guard._state import write

    with caplog.at_level("INFO", logger="querywatch.alerts"):
        later = ev.run(end + 40)
        assert ev.run(end + 41) == []
    assert {c.key: c.state for c in later or []} == {"slo:availability:page": "resolved"}
    assert store.alert_states()["slo:latency:page"].state == "firing"
    assert ev.held == {"slo:latency:page": "the guard limits GET /api/orders/lookup to 2 at once"}
    said = [r.getMessage() for r in caplog.records if "holds again" in r.getMessage()]
    assert said == [
        "querywatch alert slo:latency:page: its objective holds again, but only while"
        " the guard limits GET /api/orders/lookup to 2 at once; it stays firing until"
        " the limit lifts (after a fix)"
    ]
    # A pinned limit and a shadow one hold nothing; nor does a guard in shadow mode.
    import dataclasses

    for held in (
        dataclasses.replace(limit, pinned=True),
        dataclasses.replace(limit, mode="shadow"),
    ):
        write(store, {limit.endpoint: held})
        assert guard.holds(store) == {}
    write(store, {limit.endpoint: limit})
    shadow = load_guard({"containment": "shadow"})
    assert shadow is not None
    assert Guard(Flask(__name__), shadow).holds(store) == {}
    # A holds function that fails holds nothing (counted): the alert resolves as its
    # objective says, once the limit lifted or not.
    from querywatch import _failopen

    def broken() -> t.Mapping[str, str]:
        raise RuntimeError("store gone")

    before = _failopen.internal_error_counts().get("alerts.holds", 0)
    ev.holds = broken
    resolved = ev.run(end + 42)
    assert {c.key: c.state for c in resolved or []} == {"slo:latency:page": "resolved"}
    assert _failopen.internal_error_counts().get("alerts.holds", 0) == before + 1
    store.dispose()


def test_a_held_page_resolves_when_its_limit_lifts(tmp_path: t.Any) -> None:
    from querywatch.guard._state import write

    store, ev, _, _, end = _held_page(tmp_path)
    assert {c.key for c in ev.run(end + 40) or []} == {"slo:availability:page"}
    # The fix: the limit lifts; the page resolves at the next evaluation.
    write(store, {})
    assert {c.key: c.state for c in ev.run(end + 41) or []} == {"slo:latency:page": "resolved"}
    assert ev.held == {}
    store.dispose()


def test_a_traffic_surge_is_called_one(tmp_path: t.Any) -> None:
    """The other hypothesis: three times the requests, nothing slower."""
    store = Store(f"sqlite:///{tmp_path}/s.db")
    t0 = float(int(time.time()) - 3600)
    _replay(store, t0, 100, per_second=10)
    _replay(store, t0 + 100, 20, per_second=30)
    from querywatch.alerts import evidence

    ev = evidence.gather(store, t0 + 119.5, 10, width=1, gap=10)
    assert ev["traffic"]["ratio"] == pytest.approx(3.0, rel=0.1)
    assert ev["hypothesis"].startswith("Traffic rose (x3.")


def test_requests_still_running_are_traffic_not_a_fall(tmp_path: t.Any) -> None:
    """An alert reads traffic while requests are slow: those of the last buckets are
    still running. Counted as they end, a flat 10 a second read "Traffic fell (x0.65)";
    counted as they arrive, it is flat."""

    def run(path: str, *, arrivals: bool) -> dict[str, t.Any]:
        store = Store(f"sqlite:///{tmp_path}/{path}")
        t0 = float(int(time.time()) - 3600)
        stats = Stats(bucket_seconds=1, objectives=(LATENCY,))
        for s in range(30):
            for i in range(10):
                at = t0 + s + i / 10
                if arrivals:
                    stats.arrive(at)
                # The last five seconds: 7 in 10 requests have not ended yet.
                if s < 25 or i < 3:
                    stats.add(_request("GET /api/products/<int:id>", PRODUCT_SQL, 0.002, at), [])
        store.write(stats.drain())
        from querywatch.alerts import evidence

        ev = evidence.gather(store, t0 + 30.5, 10, width=1, gap=10)
        store.dispose()
        return ev

    ended = run("ended.db", arrivals=False)
    assert ended["traffic"]["counted"] == "ended"
    assert ended["traffic"]["ratio"] == pytest.approx(0.65)
    assert ended["hypothesis"].startswith("Traffic fell (x0.65)")
    arrived = run("arrived.db", arrivals=True)
    assert arrived["traffic"]["counted"] == "arrived"
    assert arrived["traffic"]["requests_now"] == arrived["traffic"]["requests_before"] == 100
    assert arrived["hypothesis"].startswith("Traffic is flat (x1.00)")


def test_retries_are_told_from_a_surge_by_users(tmp_path: t.Any) -> None:
    """Where the app names its users, requests that double while the users stay the
    same are clients retrying, and the hypothesis says so; twice the users is a surge."""

    def run(path: str, *, users_now: int) -> dict[str, t.Any]:
        store = Store(f"sqlite:///{tmp_path}/{path}")
        t0 = float(int(time.time()) - 3600)
        stats = Stats(bucket_seconds=1, objectives=(LATENCY,))
        for s in range(30):
            if 10 <= s < 20:
                continue
            for i in range(20 if s >= 20 else 10):
                at = t0 + s + i / 20
                r = _request("GET /api/products/<int:id>", PRODUCT_SQL, 0.002, at)
                # Before: 10 users a second; now each sends its request twice, or
                # twice as many users come.
                n = 10 if s < 20 else users_now
                r.user = f"u{s}-{i % n}"
                stats.arrive(at)
                stats.add(r, [])
        store.write(stats.drain())
        from querywatch.alerts import evidence

        ev = evidence.gather(store, t0 + 30.5, 10, width=1, gap=10, objective="latency")
        store.dispose()
        return ev

    retries = run("retries.db", users_now=10)
    assert retries["traffic"]["ratio"] == pytest.approx(2.0)
    assert retries["traffic"]["users_ratio"] == pytest.approx(1.0)
    assert retries["hypothesis"].startswith(
        "Requests rose (x2.00) but users did not (x1.00): clients retrying, not a surge"
    )
    surge = run("surge.db", users_now=20)
    assert surge["traffic"]["users_ratio"] == pytest.approx(2.0)
    assert surge["hypothesis"].startswith("Traffic rose (x2.00)")


def test_an_override_is_its_own_objective(tmp_path: t.Any) -> None:
    """The report endpoint may take 2 s: its slow requests burn its own budget, not the
    general latency objective's."""
    objectives = parse_objectives(
        [
            {
                "name": "latency",
                "target": "99%",
                "threshold_ms": 300,
                "overrides": {"GET /api/orders/lookup": {"threshold_ms": 1000}},
            }
        ]
    )
    assert [o.name for o in objectives] == ["latency GET /api/orders/lookup", "latency"]
    store = Store(f"sqlite:///{tmp_path}/s.db")
    t0 = float(int(time.time()) - 3600)
    _replay(store, t0, 200, incident=(t0 + 100, t0 + 200), objectives=objectives)
    changes = Evaluator(store, _rules(objectives=objectives), holder="t").run(t0 + 150)
    assert changes is not None
    assert {c.key for c in changes} == {
        "slo:latency GET /api/orders/lookup:page",
        "slo:latency GET /api/orders/lookup:ticket",
    }
    sums = store.slo_sums(["latency"], [1000.0], t0 + 200, 1)
    total, bad = sums["latency"][0]
    assert (total, bad) == (2000 - 300, 0)  # the lookup's requests are not counted


def test_per_shape_rules(tmp_path: t.Any) -> None:
    """A shape's p95 over the threshold, an N+1 loop and a full scan first seen since
    alerting began each fire once, and resolve when gone; findings from before do not."""
    store = Store(f"sqlite:///{tmp_path}/s.db")
    t0 = float(int(time.time()) - 3600)
    old_fp = fingerprint("SELECT * FROM old_table WHERE a = 1").id
    store.record_plan_findings(
        [PlanFindingRow("full_scan", "GET /old", old_fp, 1, 1.0, None, "old")], t0 - 100
    )
    rules = _rules(
        objectives=(), shape_p95_ms=500.0, shape_min_calls=10, new_n_plus_one=True,
        new_full_scan=True,
    )  # fmt: skip
    ev = Evaluator(store, rules, holder="t")
    assert ev.run(t0) == []  # sets the start of alerting; the old scan is not new
    _replay(store, t0, 60, incident=(t0 + 40, t0 + 60), objectives=())
    lookup_fp = fingerprint(LOOKUP_SQL).id
    store.record_plan_findings(
        [PlanFindingRow("full_scan", "GET /api/orders/lookup", lookup_fp, 1, 2.0, None, "idx")],
        t0 + 50,
    )
    stats = Stats(bucket_seconds=1)
    loop_rec = _request("GET /authors", "SELECT * FROM books WHERE author_id = 1", 0.001, t0 + 55)
    from querywatch._detectors import Finding

    n1 = Finding(
        "n_plus_one", fingerprint("SELECT * FROM books WHERE author_id = 1"), 20, 0.02,
        None, "Author.books", "selectinload(Author.books)",
    )  # fmt: skip
    stats.add(loop_rec, [n1])
    store.write(stats.drain())
    changes = ev.run(t0 + 60)
    assert changes is not None
    assert {c.key for c in changes} == {
        f"shape_p95:GET /api/orders/lookup:{lookup_fp}",
        f"full_scan:GET /api/orders/lookup:{lookup_fp}",
        f"n_plus_one:GET /authors:{n1.fingerprint.id}",
    }
    p95 = next(c for c in changes if c.kind == "shape_p95")
    assert "p95 2048 ms" in p95.summary or "p95 2" in p95.summary
    assert p95.severity == "ticket"
    # Five minutes (scaled: 5 s) without the slow shape resolve its alert; the findings'
    # alerts last an hour (scaled: 60 s) after they were last seen.
    _replay(store, t0 + 60, 10, objectives=())
    assert {c.key for c in ev.run(t0 + 70) or []} == {
        f"shape_p95:GET /api/orders/lookup:{lookup_fp}"
    }
    assert {c.state for c in ev.run(t0 + 130) or []} == {"resolved"}
    assert all(a.state == "resolved" for a in store.alert_states().values())


def _evaluate_in_process(url: str, now: float, rounds: int, use_lease: bool, out: t.Any) -> None:
    store = Store(url)
    ev = Evaluator(store, _rules(), holder=None)
    evaluated = fired = 0
    for i in range(rounds):
        at = now + i * 0.01
        changes = ev.run(at, lease_seconds=60) if use_lease else ev.evaluate(at)
        if changes is not None:
            evaluated += 1
            fired += sum(1 for c in changes if c.state == "firing")
    out.put((evaluated, fired))
    store.dispose()


@pytest.mark.parametrize("use_lease", [True, False], ids=["lease", "no-lease"])
def test_two_processes_never_double_fire(store_url: str, use_lease: bool) -> None:
    """Two processes evaluate the same store at the same moments: with the lease exactly
    one of them evaluates; even without it (both evaluating) each alert fires once,
    because a state change is written in a transaction that checks the state."""
    store = Store(store_url)
    t0 = float(int(time.time()) - 3600)
    _replay(store, t0, 130, incident=(t0 + 100, t0 + 130))
    store.migrate()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_evaluate_in_process, args=(store_url, t0 + 125, 20, use_lease, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    evaluated = sorted(r[0] for r in results)
    if use_lease:
        assert evaluated == [0, 20]
    else:
        assert evaluated == [20, 20]
    assert sum(r[1] for r in results) == 4
    events = store.alert_events()
    assert sorted(e.key for e in events) == [
        "slo:availability:page",
        "slo:availability:ticket",
        "slo:latency:page",
        "slo:latency:ticket",
    ]
    store.dispose()


def test_the_lease_passes_on_when_its_holder_stops(tmp_path: t.Any) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    assert store.acquire_lease(LEASE, "a", 100.0, 30.0)
    assert not store.acquire_lease(LEASE, "b", 110.0, 30.0)
    assert store.acquire_lease(LEASE, "a", 120.0, 30.0)  # renewed
    assert not store.acquire_lease(LEASE, "b", 149.0, 30.0)
    assert store.acquire_lease(LEASE, "b", 150.5, 30.0)  # a stopped renewing
    assert store.lease_holder(LEASE, 151.0) == "b"
    assert not store.acquire_lease(LEASE, "a", 151.0, 30.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            [{"name": "latency", "target": 0.99, "threshold_ms": "fast"}],
            "'QUERYWATCH_OBJECTIVES[0].threshold_ms' must be a number of milliseconds greater"
            " than 0, such as 300, got 'fast'.",
        ),
        (
            [{"name": "availability", "target": 99.9}],
            "'QUERYWATCH_OBJECTIVES[0].target' must be a share of good requests between 0 and"
            " 1, such as 0.999 or '99.9%', got 99.9.",
        ),
        (
            ["availability:99.9", {"name": "x", "target": 0.9, "treshold_ms": 3}],
            "'QUERYWATCH_OBJECTIVES[1]' must be a dict of name, kind, target, threshold_ms,"
            " endpoint, overrides (not 'treshold_ms': did you mean 'threshold_ms'?), such as"
            " {'name': 'latency', 'target': 0.99, 'threshold_ms': 300}, got {'name': 'x',"
            " 'target': 0.9, 'treshold_ms': 3}.",
        ),
        (
            [{"name": "l", "target": 0.99, "threshold_ms": 300, "overrides": {"GET /r": 5}}],
            "'QUERYWATCH_OBJECTIVES[0].overrides['GET /r']' must be a dict of target and"
            " threshold_ms or None, such as {'threshold_ms': 2000}, got 5.",
        ),
        (
            "availability",
            "'QUERYWATCH_OBJECTIVES' must be a list of objectives, such as"
            " ['availability:99.9', 'latency:99:300ms'], got 'availability'.",
        ),
    ],
)
def test_bad_objectives_are_refused_naming_the_field(value: t.Any, message: str) -> None:
    app = Flask(__name__)
    app.config["QUERYWATCH_OBJECTIVES"] = value
    with pytest.raises(ConfigError) as info:
        QueryWatch(app)
    assert str(info.value) == message


def test_an_app_alerts_by_itself_and_survives_a_broken_store(tmp_path: t.Any) -> None:
    """Wired end to end: requests are counted against the objectives, flushed, and the
    app's flusher thread fires the availability page within seconds of a failing
    endpoint (an hour compressed to 10 s). Then the store breaks: requests still
    succeed, the evaluation failure is counted."""
    from querywatch import _failopen

    app = Flask(__name__)
    app.config.update(
        QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db",
        QUERYWATCH_BUCKET_SECONDS=1,
        QUERYWATCH_FLUSH_INTERVAL=0.2,
        QUERYWATCH_ALERT_INTERVAL=0.2,
        QUERYWATCH_ALERT_TIME_SCALE=1 / 360,
        QUERYWATCH_ADVISE=False,
        QUERYWATCH_OBJECTIVES=["availability:99.9"],
    )

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    @app.get("/fail")
    def fail() -> tuple[str, int]:
        return "no", 503

    qw = QueryWatch(app)
    client = app.test_client()
    for _ in range(30):
        assert client.get("/ok").status_code == 200
    started = time.monotonic()
    deadline = started + 15
    store = qw.store(app)
    fired = None
    while time.monotonic() < deadline and fired is None:
        client.get("/fail")
        client.get("/ok")
        time.sleep(0.02)
        states = store.alert_states()
        fired = states.get("slo:availability:page")
    assert fired is not None, "no page within 15 s"
    assert fired.state == "firing"
    assert fired.evidence["bad_endpoints"][0]["endpoint"] == "GET /fail"
    assert store.lease_holder(LEASE, time.time()) is not None

    # The store's file becomes a directory: every write and read fails.
    _failopen.RAISE_INTERNAL_ERRORS = False
    store.dispose()
    (tmp_path / "qw.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"qw.db{suffix}").unlink(missing_ok=True)
    (tmp_path / "qw.db").mkdir()
    before = _failopen.internal_error_counts().get("alerts.evaluate", 0)
    for _ in range(5):
        assert client.get("/ok").status_code == 200
    state = app.extensions["querywatch"]
    assert state.flusher.evaluate_alerts(force=True) is None
    assert _failopen.internal_error_counts().get("alerts.evaluate", 0) == before + 1
    assert client.get("/ok").status_code == 200


def test_pool_waits_reach_the_store_for_the_evidence(tmp_path: t.Any) -> None:
    """Checkouts, their wait and the pool's saturation go to the store at each flush,
    summed over processes, so an alert's evidence shows whether the pool ran out."""
    from querywatch.alerts import evidence
    from querywatch.demo import shop

    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, scale=0.002)
    engine.dispose()
    app = shop.create_app(
        url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_ADVISE": False, "QUERYWATCH_BUCKET_SECONDS": 1},
    )
    client = app.test_client()
    state = app.extensions["querywatch"]
    assert client.get("/api/products/1").status_code == 200
    state.metrics._pools_checked = -10.0
    state.metrics.fold()  # wraps the pool's checkout
    for i in range(20):
        assert client.get(f"/api/products/{i % 5 + 1}").status_code == 200
    assert state.flusher.flush()
    time.sleep(1.05)  # the bucket is complete
    pools = state.store.pool_window(time.time() - 10, time.time() + 1)
    (name,) = pools
    checkouts, waited, timeouts, saturation = pools[name]
    assert checkouts == 20
    assert 0 < waited < 1
    assert timeouts == 0
    assert saturation is not None
    ev = evidence.gather(state.store, time.time(), 5, width=1)
    assert ev["pools"][0]["checkouts"] == 20
    assert ev["pools"][0]["pool"] == name
    # Nothing new: nothing written, and the next flush does not count them again.
    assert state.metrics.take_pool_counts() == {}


def test_the_culprit_is_the_shape_that_grew_not_the_steady_one() -> None:
    """Seconds after the onset the new lookup has had two calls (32 ms) while the
    product page's steady shape took 40 ms in a window twice as long as the one before
    (it holds the current bucket): the lookup is blamed, the steady shape is not."""
    from querywatch.alerts.evidence import culprit

    def shape(name: str, now: float, before: float) -> dict[str, t.Any]:
        return {"fingerprint": name, "time_now_s": now, "time_before_s": before}

    ev = {
        "window": {"before": [0, 1], "now": [3600, 3602]},
        "shapes": [shape("products", 0.040, 0.020), shape("lookup", 0.032, 0.0)],
    }
    top = culprit(ev)
    assert top is not None
    assert top["fingerprint"] == "lookup"
    assert culprit({"shapes": [shape("idle", 0.0, 0.1)]}) is None


def test_the_culprit_is_where_the_objectives_bad_requests_are() -> None:
    """The demo's replay on PostgreSQL: the lookup's scan slowed the recent-orders page's
    N+1 from 1 to 3 ms a call, and over its 450 calls that grew more (0.9 s) than the scan
    (0.5 s); but 82% of the objective's bad requests are lookups: the scan is blamed.
    When no shape of the bad endpoints grew (their requests waited for a connection),
    the shape that grew most is."""
    from querywatch.alerts.evidence import culprit

    def shape(name: str, endpoint: str, now: float, before: float) -> dict[str, t.Any]:
        return {
            "fingerprint": name,
            "endpoint": endpoint,
            "time_now_s": now,
            "time_before_s": before,
        }

    lookup = shape("scan", "GET /api/orders/lookup", 0.5, 0.0)
    n_plus_one = shape("items", "GET /api/orders/recent", 1.35, 0.45)
    steady = shape("products", "GET /api/products", 0.2, 0.2)
    ev: dict[str, t.Any] = {
        "window": {"before": [0, 60], "now": [3600, 3660]},
        "shapes": [n_plus_one, lookup, steady],
    }
    top = culprit(ev)
    assert top is not None
    assert top["fingerprint"] == "items"  # without the objective: the biggest growth
    ev["bad_endpoints"] = [
        {"endpoint": "GET /api/orders/lookup", "events": 90, "bad": 41},
        {"endpoint": "GET /api/orders/recent", "events": 30, "bad": 9},
    ]
    top = culprit(ev)
    assert top is not None
    assert top["fingerprint"] == "scan"
    # The bad requests are all checkout waits on the product page, whose shape did not
    # grow: the shape that grew most, wherever it is, holds the connections.
    ev["bad_endpoints"] = [{"endpoint": "GET /api/products", "events": 90, "bad": 50}]
    top = culprit(ev)
    assert top is not None
    assert top["fingerprint"] == "items"


def test_a_late_page_blames_the_bad_endpoints_costliest_shape() -> None:
    """The busy-machine replay's page fired 38 s into the outage, and its window before
    was inside the outage too: the lookup's scan took 1.46 s in the 4 s now against 1.13 s
    in the 3 s before, so it did not grow, while a customer page's shape went from 0 to
    5 ms. All the bad requests are lookups, which spend 98% of their time in the
    database: the scan is blamed, not the customer page. If the lookups' time were not
    database time (they waited for connections), the shape that grew most would be."""
    from querywatch.alerts.evidence import culprit

    def shape(name: str, endpoint: str, now: float, before: float) -> dict[str, t.Any]:
        return {"fingerprint": name, "endpoint": endpoint, "time_now_s": now,
                "time_before_s": before}  # fmt: skip

    lookup_ep, customer_ep = "GET /api/orders/lookup", "GET /api/customers/<int:id>/orders"
    ev: dict[str, t.Any] = {
        "window": {"before": [1796421334, 1796421337], "now": [1796421365, 1796421369]},
        "shapes": [
            shape("scan", lookup_ep, 1.461893, 1.129316),
            shape("by-customer", customer_ep, 0.005261, 0.0),
            shape("items", "GET /api/orders/recent", 0.05129, 0.054885),
        ],
        "bad_endpoints": [{"endpoint": lookup_ep, "events": 12, "bad": 7}],
        "endpoints": [
            {"endpoint": lookup_ep, "requests": 12, "time_s": 1.487761, "db_share": 0.9826},
            {"endpoint": customer_ep, "requests": 3, "time_s": 0.011478, "db_share": 0.4583},
        ],
    }
    top = culprit(ev)
    assert top is not None
    assert top["fingerprint"] == "scan"
    ev["endpoints"][0]["db_share"] = 0.1
    top = culprit(ev)
    assert top is not None
    assert top["fingerprint"] == "by-customer"
