"""The dashboard at ``/_querywatch``: auth, CSRF, escaping, the JSON API, fail-open, and
the pages in headless Chromium (Debian's ``chromium``, driven by Playwright)."""

from __future__ import annotations

import os
import pathlib
import shutil
import threading
import time
import typing as t

import pytest
from flask import Flask

from conftest import GUARDED_TOKEN
from conftest import _unavailable
from querywatch import QueryWatch
from querywatch._compat import create_engine
from querywatch.demo import shop
from querywatch.fingerprint import fingerprint

TOKEN = "dashboard-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARTIFACTS = pathlib.Path(
    os.environ.get(
        "QUERYWATCH_ARTIFACTS", pathlib.Path(__file__).resolve().parents[1] / "artifacts"
    )
)
LOOKUP = "/api/orders/lookup?email=customer{}@example.com"
#: An endpoint name and a query text an attacker could get into the store.
EVIL_ENDPOINT = "GET /<img src=x onerror=alert('endpoint')>"
EVIL_SQL = "SELECT \"<script>alert('shape')</script>\" FROM products WHERE id = 1"
PAGES = ("", "endpoints", "shapes", "findings", "alerts", "incidents", "cache")


def _shop(tmp_path: t.Any, **config: t.Any) -> Flask:
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    # 50,000 orders: the lookup's scan stays the costliest shape even when a busy
    # machine stalls a few of the product requests (on 10,000 it once did not).
    shop.seed(engine, scale=0.25)
    engine.dispose()
    return shop.create_app(
        url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_ADVISE": False, **config},
    )


@pytest.fixture
def app(tmp_path: t.Any) -> Flask:
    """The shop with a token, some traffic (the lookup is the costliest shape), an index
    suggestion from the advisor, and a request whose endpoint and query text carry
    markup."""
    from querywatch._stats import bucket_index
    from querywatch.capture import LoopStats
    from querywatch.capture import Record

    a = _shop(tmp_path, QUERYWATCH_DASHBOARD_TOKEN=TOKEN)
    client = a.test_client()
    for i in range(30):
        assert client.get(LOOKUP.format(i % 7 + 1)).status_code == 200
        assert client.get(f"/api/products/{i % 9 + 1}").status_code == 200
    for _ in range(3):
        assert client.get("/api/orders/recent?limit=5").status_code == 200
    state = a.extensions["querywatch"]
    r = Record(
        name=EVIL_ENDPOINT, kind="request", settings=state.settings, started_wall=time.time()
    )
    fp = fingerprint(EVIL_SQL)
    loop = LoopStats(fp, None)
    loop.calls, loop.total, loop.min, loop.max, loop.rows = 1, 1e-5, 1e-5, 1e-5, 1
    loop.hist[bucket_index(1e-5)] = 1
    r.loops[(fp.id, None, None)] = loop
    r.query_count, r.db_time, r.duration, r.status = 1, 1e-5, 2e-5, 200
    state.stats.add(r, [])
    assert state.flusher.flush()
    lookup = _culprit(a)
    assert state.advice_worker.analyse_now(lookup) >= 1
    return a


def _culprit(app: Flask) -> str:
    client = app.test_client()
    shapes = client.get("/_querywatch/api/shapes", headers=AUTH).get_json()["shapes"]
    return next(
        s["fingerprint"]
        for s in shapes
        if s["endpoints"] and s["endpoints"][0]["endpoint"] == "GET /api/orders/lookup"
    )


def test_without_the_token_nothing_is_shown(app: Flask, tmp_path: t.Any) -> None:
    """Pages answer 401 with how to log in, the API 401 in JSON; a wrong token is as
    good as none; an app with neither a token nor debug mode has no dashboard (404),
    and in debug mode only loopback clients see it."""
    client = app.test_client()
    for p in PAGES:
        r = client.get(f"/_querywatch/{p}")
        assert r.status_code == 401
        assert b"QUERYWATCH_DASHBOARD_TOKEN" in r.data
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="querywatch"'
    r = client.get(
        "/_querywatch/api/shapes", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}
    )
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.get_json()["error"]
    assert client.get("/_querywatch/?token=wrong").status_code == 401
    # The token itself is refused in the address (access logs keep addresses), and the
    # answer does not repeat it.
    for where in ("/_querywatch/", "/_querywatch/api/overview"):
        r = client.get(f"{where}?token={TOKEN}")
        assert r.status_code == 401
        assert TOKEN.encode() not in r.data

    plain = _shop(tmp_path / "plain")
    assert plain.test_client().get("/_querywatch/", headers=AUTH).status_code == 404
    assert plain.test_client().get("/_querywatch/api/overview").status_code == 404
    plain.debug = True
    assert plain.test_client().get("/_querywatch/").status_code == 200
    far = plain.test_client().get("/_querywatch/", environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert far.status_code == 404


def test_a_login_code_in_the_address_becomes_a_cookie_once(app: Flask) -> None:
    """A login code (not the token) opens the dashboard once, for ten minutes: it leaves
    the address at once for a cookie. Used again, expired or forged, it is refused, and
    the API never takes one."""
    from querywatch.dashboard import login_code

    client = app.test_client()
    code = login_code(TOKEN)
    assert TOKEN not in code
    r = client.get(f"/_querywatch/shapes?window=6h&code={code}")
    assert r.status_code == 303
    assert r.headers["Location"] == "/_querywatch/shapes?window=6h"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/_querywatch" in cookie
    assert TOKEN not in cookie
    assert client.get("/_querywatch/shapes?window=6h").status_code == 200
    fresh = app.test_client()
    again = fresh.get(f"/_querywatch/?code={code}")
    assert again.status_code == 401
    assert b"already used" in again.data
    expired = login_code(TOKEN, now=time.time() - 601)
    assert fresh.get(f"/_querywatch/?code={expired}").status_code == 401
    forged = code.split(".")[0] + "." + "0" * 32
    assert fresh.get(f"/_querywatch/?code={forged}").status_code == 401
    other = login_code("another-token-0123456789")
    assert fresh.get(f"/_querywatch/?code={other}").status_code == 401
    assert fresh.get(f"/_querywatch/api/overview?code={login_code(TOKEN)}").status_code == 401


def test_the_login_form_posts_the_token_and_sets_the_cookie(app: Flask) -> None:
    """The 401 page's form posts the token in the body, never in an address; it goes
    back to the page asked for, never to another site."""
    client = app.test_client()
    page = client.get("/_querywatch/findings?window=6h")
    assert page.status_code == 401
    assert b'action="/_querywatch/login"' in page.data
    assert b'value="/_querywatch/findings?window=6h"' in page.data
    wrong = client.post("/_querywatch/login", data={"token": "nope", "next": "/_querywatch/"})
    assert wrong.status_code == 401
    assert b"not the dashboard" in wrong.data
    r = client.post(
        "/_querywatch/login", data={"token": TOKEN, "next": "/_querywatch/findings?window=6h"}
    )
    assert r.status_code == 303
    assert r.headers["Location"] == "/_querywatch/findings?window=6h"
    assert client.get("/_querywatch/findings?window=6h").status_code == 200
    away = app.test_client().post(
        "/_querywatch/login", data={"token": TOKEN, "next": "//evil.example/x"}
    )
    assert away.headers["Location"] == "/_querywatch/"


def test_actions_need_the_csrf_token_and_the_same_origin(app: Flask) -> None:
    client = app.test_client()
    fp = _culprit(app)
    url = f"/_querywatch/api/shapes/{fp}/analyse"
    r = client.post(url, headers=AUTH)
    assert r.status_code == 403
    assert "X-CSRF-Token" in r.get_json()["error"]
    csrf = client.get("/_querywatch/api/csrf", headers=AUTH).get_json()["csrf"]
    r = client.post(url, headers={**AUTH, "X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert r.status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": csrf}).status_code == 401
    r = client.post(url, headers={**AUTH, "X-CSRF-Token": csrf})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["suggestions"] >= 1
    assert body["advice"][0]["ddl"].startswith("CREATE INDEX")
    assert body["reason"] is None
    # A shape with no index to add says why, first.
    shapes = client.get("/_querywatch/api/shapes", headers=AUTH).get_json()["shapes"]
    product = next(
        s["fingerprint"]
        for s in shapes
        if s["endpoints"] and s["endpoints"][0]["endpoint"] == "GET /api/products/<int:product_id>"
    )
    r = client.post(
        f"/_querywatch/api/shapes/{product}/analyse", headers={**AUTH, "X-CSRF-Token": csrf}
    )
    assert r.get_json()["suggestions"] == 0
    assert r.get_json()["reason"].startswith("No index to add: the plan already finds its rows")
    r = client.post(
        "/_querywatch/api/shapes/nosuchshape/analyse", headers={**AUTH, "X-CSRF-Token": csrf}
    )
    assert r.status_code == 422
    assert "No read shape 'nosuchshape'" in r.get_json()["error"]


def test_the_json_api_behind_each_page(app: Flask) -> None:
    client = app.test_client()
    overview = client.get("/_querywatch/api/overview?window=15m", headers=AUTH).get_json()
    assert overview["window"] == "15m"
    assert "GET /api/orders/lookup" in overview["headline"]
    assert overview["summary"]["requests"] == 64
    assert overview["timeline"][-1]["requests"] >= 1
    assert overview["shapes"][0]["fingerprint"] == _culprit(app)
    shapes = client.get("/_querywatch/api/shapes", headers=AUTH).get_json()["shapes"]
    lookup = next(s for s in shapes if s["fingerprint"] == _culprit(app))
    assert lookup["advice"][0]["ddl"].startswith("CREATE INDEX")
    assert "full_scan" in lookup["flags"]
    endpoints = client.get("/_querywatch/api/endpoints", headers=AUTH).get_json()["endpoints"]
    assert {e["endpoint"] for e in endpoints} >= {"GET /api/orders/lookup", EVIL_ENDPOINT}
    findings = client.get("/_querywatch/api/findings", headers=AUTH).get_json()["findings"]
    assert any(f["kind"] == "n_plus_one" for f in findings)
    assert client.get("/_querywatch/api/alerts", headers=AUTH).get_json()["alerts"] == []
    cache = client.get("/_querywatch/api/cache", headers=AUTH).get_json()["cache"]
    assert cache == []  # the product list was not asked for
    # The dashboard's own requests are not the app's traffic.
    again = client.get("/_querywatch/api/overview?window=15m", headers=AUTH).get_json()
    assert again["summary"]["requests"] == 64


def test_markup_in_the_store_is_shown_as_text(app: Flask) -> None:
    client = app.test_client()
    for p in PAGES:
        html = client.get(f"/_querywatch/{p}", headers=AUTH).get_data(as_text=True)
        assert "<script>alert" not in html
        assert "<img src=x" not in html
    shapes = client.get("/_querywatch/shapes", headers=AUTH).get_data(as_text=True)
    assert "&lt;script&gt;alert(&#39;shape&#39;)&lt;/script&gt;" in shapes
    r = client.get("/_querywatch/", headers=AUTH)
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"


def test_a_store_that_is_down_fails_the_dashboard_not_the_app(app: Flask, tmp_path: t.Any) -> None:
    from querywatch import _failopen

    state = app.extensions["querywatch"]
    state.store.dispose()
    db = pathlib.Path(state.settings.store_url.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        pathlib.Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.mkdir()
    _failopen.RAISE_INTERNAL_ERRORS = False
    client = app.test_client()
    r = client.get("/_querywatch/", headers=AUTH)
    assert r.status_code == 503
    assert b"The querywatch store cannot be read" in r.data
    assert b"The application is not affected" in r.data
    r = client.get("/_querywatch/api/shapes", headers=AUTH)
    assert r.status_code == 503
    assert r.get_json()["error"].startswith("The querywatch store cannot be read")
    assert client.get(LOOKUP.format(1)).status_code == 200
    assert _failopen.internal_error_counts().get("dashboard", 0) >= 2


@pytest.mark.postgres
def test_a_frozen_store_costs_a_page_seconds_not_a_worker_thread(
    postgres_url: str, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL store whose tables a migration holds locked: a page waits at most
    READ_TIMEOUT and says the store is slow (503), pages asked for while two reads still
    wait answer at once, the app's own requests are served, and once the lock goes the
    dashboard answers again."""
    from sqlalchemy import text as sql

    from querywatch import _failopen
    from querywatch import dashboard

    a = _shop(tmp_path, QUERYWATCH_DASHBOARD_TOKEN=TOKEN, QUERYWATCH_STORE_URL=postgres_url,
              QUERYWATCH_FLUSH_INTERVAL=3600)  # fmt: skip
    client = a.test_client()
    try:
        assert client.get(LOOKUP.format(1)).status_code == 200
        # The first page (the store's first connection) with the usual time allowed; the
        # short one only while the store is held, so a busy machine cannot fail the page.
        assert client.get("/_querywatch/", headers=AUTH).status_code == 200
        default_timeout = dashboard.READ_TIMEOUT
        monkeypatch.setattr(dashboard, "READ_TIMEOUT", 0.5)
        _failopen.RAISE_INTERNAL_ERRORS = False
        locker = create_engine(postgres_url)
        conn = locker.connect()
        trans = conn.begin()
        try:
            conn.execute(
                sql("LOCK TABLE qw_query_stats, qw_endpoint_stats IN ACCESS EXCLUSIVE MODE")
            )
            slow = [client.get("/_querywatch/", headers=AUTH) for _ in range(2)]
            for r in slow:
                assert r.status_code == 503
                assert b"The querywatch store is slow: it did not answer within 0.5 s" in r.data
            # Two reads still wait on the lock: the next page does not queue behind them.
            r = client.get("/_querywatch/api/shapes", headers=AUTH)
            assert r.status_code == 503
            assert "earlier reads are still waiting" in r.get_json()["error"]
            assert client.get(LOOKUP.format(2)).status_code == 200
        finally:
            trans.rollback()
            conn.close()
            locker.dispose()
        monkeypatch.setattr(dashboard, "READ_TIMEOUT", default_timeout)
        deadline = time.monotonic() + 30
        while client.get("/_querywatch/", headers=AUTH).status_code != 200:
            assert time.monotonic() < deadline, "the dashboard did not come back"
            time.sleep(0.1)
    finally:
        # Whatever happened, the store's connections go, so none outlives the test.
        state = a.extensions["querywatch"]
        state.flusher._stop.set()
        state.store.dispose()
        from querywatch.store import schema

        engine = create_engine(postgres_url)
        with engine.begin() as c:
            for tbl in reversed(schema.metadata.sorted_tables):
                c.execute(sql(f"DROP TABLE IF EXISTS {tbl.name}"))
        engine.dispose()


# --- in the browser ---------------------------------------------------------------------


@pytest.fixture
def browser() -> t.Iterator[t.Any]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        _unavailable("Chromium", "not installed; Debian package 'chromium'")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright", "not installed; pip install playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def served(app: Flask) -> t.Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_pages_in_chromium(
    app: Flask, served: str, browser: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Logged in through the form, every page loads without a console error and is
    saved as a screenshot; the overview names the culprit query and endpoint; sorting
    works both ways; Copy puts the index DDL on the clipboard; Analyse now runs the
    advisor; markup from the store never runs. The server's access log never holds the
    token."""
    import logging

    caplog.set_level(logging.INFO, logger="werkzeug")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=served)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))

    response = page.goto(f"{served}/_querywatch/")
    assert response is not None
    assert response.status == 401
    page.fill("input[name=token]", TOKEN)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"{served}/_querywatch/", page.content()
    # The first answer was the login page's 401, which Chromium reports as a console
    # error; from here on, none is expected.
    assert problems == ["Failed to load resource: the server responded with a status of 401"
                        " (UNAUTHORIZED)"]  # fmt: skip
    problems.clear()
    assert page.url == f"{served}/_querywatch/"
    headline = page.inner_text("#headline")
    assert "FROM orders WHERE orders.customer_email = ?" in headline
    assert "GET /api/orders/lookup" in headline
    assert page.locator("#shares li").count() >= 3
    assert page.locator("figure.chart svg polyline").count() == 4
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
    for name in PAGES[1:]:
        r = page.goto(f"{served}/_querywatch/{name}")
        assert r is not None
        assert r.status == 200, name
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)

    page.goto(f"{served}/_querywatch/endpoints")

    def column(index: int) -> list[float]:
        return [
            float(v)
            for v in page.locator(f"#endpoints tbody tr td:nth-child({index})").evaluate_all(
                "cells => cells.map(c => c.dataset.value)"
            )
        ]

    page.click("#endpoints th:has-text('p95')")
    assert page.get_attribute("#endpoints th:has-text('p95')", "aria-sort") == "descending"
    p95 = column(4)
    assert p95 == sorted(p95, reverse=True)
    assert len(set(p95)) > 1
    page.click("#endpoints th:has-text('p95')")
    assert column(4) == sorted(p95)
    page.click("#endpoints th:has-text('Endpoint')")
    names = page.locator("#endpoints tbody tr td:nth-child(1)").all_inner_texts()
    assert names == sorted(names, key=str.lower, reverse=True)

    page.goto(f"{served}/_querywatch/shapes")
    row = page.locator(f"#shape-{_culprit(app)}")
    ddl = row.locator(".ddl code").first.inner_text()
    assert ddl.startswith("CREATE INDEX")
    from playwright.sync_api import expect

    copy = row.locator("button.copy").first
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == ddl
    row.locator("button.action").click()
    expect(row.locator(".result")).to_contain_text("suggestion", timeout=20_000)
    assert "<script>alert('shape')</script>" in page.inner_text("#shapes")
    assert page.locator("img").count() == 0
    page.goto(f"{served}/_querywatch/endpoints")
    assert EVIL_ENDPOINT in page.inner_text("#endpoints")

    # An incident, acknowledged from its page (token cookie + CSRF header from the page).
    from querywatch.incidents import Incidents

    incidents = Incidents(app.extensions["querywatch"].store)
    inc, _ = incidents.trigger("slo:availability", "<script>alert('incident')</script> failing")
    page.goto(f"{served}/_querywatch/incidents")
    page.click(f"#incidents a:has-text('#{inc.id}')")
    assert (
        page.inner_text("#incident-title")
        == f"#{inc.id} <script>alert('incident')</script> failing"
    )
    assert page.inner_text("#incident-status") == "triggered"
    page.screenshot(path=str(ARTIFACTS / "dashboard-incident.png"), full_page=True)
    page.fill("input[name=actor]", "carol")
    page.click("button[value=ack]")
    # Each action posts, then the page comes back: on a busy machine, seconds.
    expect(page.locator("#incident-status")).to_have_text("acknowledged", timeout=20_000)
    assert "Acknowledged by carol." in page.inner_text("#timeline")
    page.fill("input[name=actor]", "carol")
    page.fill("input[name=text]", "Index being built.")
    page.click("button[value=update]")
    expect(page.locator("#timeline")).to_contain_text("Index being built.", timeout=20_000)
    assert problems == []
    context.close()
    access = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert any("POST /_querywatch/login" in line for line in access)
    assert not any(TOKEN in line for line in access)


def test_the_dashboard_refuses_chromium_without_the_token(served: str, browser: t.Any) -> None:
    page = browser.new_page()
    r = page.goto(f"{served}/_querywatch/shapes")
    assert r is not None
    assert r.status == 401
    assert "QUERYWATCH_DASHBOARD_TOKEN" in page.inner_text("body")
    page.close()


def test_the_dashboard_is_not_added_over_a_route_of_the_app(tmp_path: t.Any) -> None:
    a = Flask(__name__)
    a.config.update(
        QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db", QUERYWATCH_DASHBOARD_TOKEN=TOKEN
    )

    @a.get("/_querywatch")
    def mine() -> str:
        return "mine"

    QueryWatch(a)
    assert a.test_client().get("/_querywatch", headers=AUTH).get_data(as_text=True) == "mine"


def test_incident_actions_through_the_api(app: Flask) -> None:
    """The incident API behind the page: the same token, a CSRF check on every action,
    who did it on the timeline, and clear errors."""
    from querywatch.incidents import Incidents

    incidents = Incidents(app.extensions["querywatch"].store)
    inc, _ = incidents.trigger("checkout", "Checkout slow")
    client = app.test_client()
    csrf = client.get("/_querywatch/api/csrf", headers=AUTH).get_json()["csrf"]
    post = {**AUTH, "X-CSRF-Token": csrf}
    url = f"/_querywatch/api/incidents/{inc.id}"
    assert client.get("/_querywatch/api/incidents").status_code == 401
    listed = client.get("/_querywatch/api/incidents", headers=AUTH).get_json()["incidents"]
    assert [i["title"] for i in listed] == ["Checkout slow"]
    assert client.post(f"{url}/ack", headers=AUTH, json={"actor": "carol"}).status_code == 403
    r = client.post(f"{url}/ack", headers=post, json={"actor": "carol"})
    assert r.status_code == 200
    assert r.get_json()["incident"]["status"] == "acknowledged"
    assert r.get_json()["timeline"][-1]["actor"] == "carol"
    r = client.post(f"{url}/ack", headers=post, json={"actor": "carol"})
    assert r.status_code == 409
    assert "only a triggered incident is acknowledged" in r.get_json()["error"]
    r = client.post(f"{url}/note", headers=post, json={"actor": "dave", "text": " "})
    assert (r.status_code, r.get_json()["error"]) == (409, "A note needs text.")
    r = client.post(f"{url}/assign", headers=post, json={"actor": "dave"})
    assert (r.status_code, r.get_json()["error"]) == (400, "Assigning needs an 'owner'.")
    r = client.post(f"{url}/assign", headers=post, json={"actor": "dave", "owner": "erin"})
    assert r.get_json()["incident"]["owner"] == "erin"
    r = client.post(f"{url}/dance", headers=post, json={})
    assert r.status_code == 404
    assert "the actions are ack, resolve, note, fix, update, assign" in r.get_json()["error"]
    r = client.post("/_querywatch/api/incidents/999/ack", headers=post, json={})
    assert r.status_code == 404
    assert r.get_json()["error"].startswith("No incident #999.")
    r = client.post(f"{url}/resolve", headers=post, json={"actor": "erin", "text": "Index built"})
    assert r.get_json()["incident"]["status"] == "resolved"
    detail = client.get(url, headers=AUTH).get_json()
    assert [e["kind"] for e in detail["timeline"]] == [
        "alert_fired", "acknowledged", "assigned", "resolved"
    ]  # fmt: skip


def test_a_person_pins_and_lifts_a_containment_from_the_alerts_page(
    guarded_shop: Flask, browser: t.Any
) -> None:
    """The guard's table on the alerts page, in Chromium: Pin with a limit pins it there
    (every process reads it from the store), Lift lifts it, and a lift that finds the
    endpoint already lifted elsewhere says so in the row instead of failing silently."""
    from werkzeug.serving import make_server

    from querywatch.guard._state import lift
    from querywatch.guard._state import read
    from querywatch.store import AlertChange
    from test_guard_containment import EVIDENCE

    endpoint = "GET /api/orders/lookup"
    app = guarded_shop
    state = app.extensions["querywatch"]
    store = state.store
    page_alert = AlertChange(
        "slo:latency:page", "slo", "page", "firing", 1560.0, "latency", EVIDENCE
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served = f"http://127.0.0.1:{server.server_port}"
    try:
        store.set_alert_states([page_alert])
        state.guard.contain(store, leader=True, now=1561.0, width=60)
        assert read(store)[endpoint].limit == 1
        page = browser.new_context().new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{served}/_querywatch/alerts")
        page.fill("input[name=token]", GUARDED_TOKEN)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.goto(f"{served}/_querywatch/alerts")
        row = page.locator("#guard tbody tr")
        assert row.locator("td").nth(2).inner_text() == "1"
        row.locator("input[name=limit]").fill("3")
        with page.expect_navigation():
            row.locator("button", has_text="Pin").click()
        c = read(store)[endpoint]
        assert (c.limit, c.pinned, c.mode) == (3, True, "enforce")
        row = page.locator("#guard tbody tr")
        assert row.locator("td").nth(2).inner_text() == "3"
        assert row.locator("td").nth(4).inner_text() == "pinned"
        with page.expect_navigation():
            row.locator("button", has_text="Lift").click()
        assert read(store) == {}
        assert page.inner_text("#guard tbody") == "No endpoint is contained."
        # Contained again, then lifted from the command line while the page is open.
        store.set_alert_states([page_alert._replace(state="resolved", at=1600.0)])
        store.set_alert_states([page_alert._replace(at=1700.0)])
        state.guard.contain(store, leader=True, now=1701.0, width=60)
        page.reload()
        lift(store, endpoint, 1700.0)
        row = page.locator("#guard tbody tr")
        row.locator("button", has_text="Lift").click()
        result = row.locator(".result")
        result.filter(has_text="not contained").wait_for()
        assert result.inner_text() == "GET /api/orders/lookup is not contained."
        assert problems == []
    finally:
        server.shutdown()
