"""Prometheus output, checked with the real promtool."""

from __future__ import annotations

import shutil
import subprocess
import typing as t

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import REGISTRY
from sqlalchemy import select

from conftest import PG_DRIVER
from conftest import _unavailable
from querywatch.demo import shop


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        _unavailable("promtool", "not installed; Debian package 'prometheus'")
    return path


def test_cache_counters_are_valid_prometheus_metrics(app: t.Any) -> None:
    qw = app.extensions["querywatch"].owner

    @qw.cached(name="metrics.stock")
    def stock(pid: int) -> int:
        stmt = select(shop.Product.stock).where(shop.Product.id == pid)
        return int(shop.db.session.scalar(stmt))

    with app.app_context():
        for _ in range(3):
            stock(4)
    text = generate_latest(REGISTRY).decode()
    labels = f'app="{app.name}",function="metrics.stock"'
    assert f'querywatch_cache_lookups_total{{{labels},result="hit"}} 2.0' in text
    assert f'querywatch_cache_lookups_total{{{labels},result="miss"}} 1.0' in text
    assert f"querywatch_cache_invalidations_total{{{labels}}} 0.0" in text
    done = subprocess.run(
        [_promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _promtool_check(text: str) -> None:
    done = subprocess.run(
        [_promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples of an exposition, by their sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_endpoint_serves_the_app_s_histograms(client: t.Any) -> None:
    """``/metrics``: request durations by url rule (never the raw path) and status,
    statement durations by operation and shape id (never SQL), queries a request, N+1
    findings and the pool, with OpenTelemetry's bucket boundaries; promtool accepts it."""
    for _ in range(3):
        assert client.get("/api/orders/recent?limit=10").status_code == 200
        assert client.get("/api/products/3").status_code == 200
    assert client.get("/api/products/999999").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=1.0.0; charset=utf-8"
    text = response.get_data(as_text=True)
    _promtool_check(text)
    http = _samples(text, "http_server_request_duration_seconds_count")
    route = "/api/products/<int:product_id>"
    assert http == {
        (("http_request_method", "GET"), ("http_response_status_code", "200"),
         ("http_route", "/api/orders/recent")): 3.0,
        (("http_request_method", "GET"), ("http_response_status_code", "200"),
         ("http_route", route)): 3.0,
        (("http_request_method", "GET"), ("http_response_status_code", "404"),
         ("http_route", route)): 1.0,
    }  # fmt: skip
    assert "/api/products/3" not in text  # the rule, never the path
    buckets = _samples(text, "http_server_request_duration_seconds_bucket")
    les = sorted({float(dict(k)["le"]) for k in buckets})
    assert les == [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, float("inf")]  # fmt: skip
    db = _samples(text, "db_client_operation_duration_seconds_count")
    assert sum(db.values()) == 3 * 11 + 3 * 1 + 1  # recent: 1 + 10 lazy loads a request
    for labels in db:
        d = dict(labels)
        assert d["db_operation_name"] == "SELECT"
        assert len(d["db_query_shape"]) == 16
        assert "SELECT" not in d["db_query_shape"]
    db_les = sorted({float(dict(k)["le"]) for k in
                     _samples(text, "db_client_operation_duration_seconds_bucket")})  # fmt: skip
    assert db_les == [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, float("inf")]
    queries = _samples(text, "querywatch_request_queries_sum")
    assert queries[(("http_route", "/api/orders/recent"),)] == 33.0
    n1 = _samples(text, "querywatch_n_plus_one_total")
    assert n1 == {(("http_route", "/api/orders/recent"),): 3.0}
    pool = _samples(text, "db_client_connections_usage")
    assert set(pool) == {
        (("pool_name", "default"), ("state", "used")),
        (("pool_name", "default"), ("state", "idle")),
    }
    # querywatch's own endpoint is not the app's traffic.
    again = _samples(client.get("/metrics").get_data(as_text=True),
                     "http_server_request_duration_seconds_count")  # fmt: skip
    assert again == http


def test_what_an_outage_drops_is_exported(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """Requests kept while the store cannot be written, then dropped past three hours,
    are counted on /metrics."""
    from querywatch._stats import MAX_PENDING_SECONDS

    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_STORE_URL": f"sqlite:///{tmp_path}/gone/qw.db",
                "QUERYWATCH_FLUSH_INTERVAL": 3600, "QUERYWATCH_BUCKET_SECONDS": 60},
    )  # fmt: skip
    state = app.extensions["querywatch"]
    client = app.test_client()
    assert client.get("/api/products/1").status_code == 200
    assert client.get("/api/products/2").status_code == 200
    assert state.flusher.flush() is False  # the store's folder is not there
    # Those two requests' bucket is now more than three hours behind a new one.
    state.stats.fold()
    snap = state.stats.drain()
    old = next(iter(snap.buckets.values()))
    snap.buckets = {0: old, MAX_PENDING_SECONDS + 60: type(old)()}
    state.stats.restore(snap)
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'querywatch_dropped_total{what="requests"} 2.0' in scrape
    state.flusher._stop.set()


def test_shape_label_is_capped(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """Past ``QUERYWATCH_METRICS_MAX_SHAPES`` shapes, statements count under ``other``."""
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_FLUSH_INTERVAL": 3600, "QUERYWATCH_METRICS_MAX_SHAPES": 2},
    )
    client = app.test_client()
    assert client.get("/api/admin/overview").status_code == 200  # 10 distinct shapes
    text = client.get("/metrics").get_data(as_text=True)
    db = _samples(text, "db_client_operation_duration_seconds_count")
    shapes = sorted(dict(k)["db_query_shape"] for k in db)
    assert len(shapes) == 3
    assert "other" in shapes
    assert db[(("db_operation_name", "SELECT"), ("db_query_shape", "other"))] == 8.0
    with app.app_context():
        shop.db.engine.dispose()


def test_metrics_token(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """With ``QUERYWATCH_METRICS_TOKEN``, a scrape without the bearer token gets 401."""
    token = "s3cret-token-for-scrapes"
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_FLUSH_INTERVAL": 3600, "QUERYWATCH_METRICS_TOKEN": token},
    )
    client = app.test_client()
    denied = client.get("/metrics")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert "http_server_request_duration_seconds" in ok.get_data(as_text=True)
    with app.app_context():
        shop.db.engine.dispose()


def test_readiness_reports_each_database_and_its_pool(client: t.Any) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    data = response.get_json()
    assert data["status"] == "ready"
    (db,) = data["databases"]
    assert db["name"] == "default"
    assert db["ok"] is True
    assert set(db["pool"]) == {"size", "checked_out", "idle", "overflow", "max", "saturation"}


def test_readiness_fails_within_its_timeout_when_the_database_is_gone(tmp_path: t.Any) -> None:
    """A database that does not answer makes ``/readyz`` answer 503 with the reason,
    within the configured timeout; the app's other requests are unaffected."""
    import socket

    listener = socket.socket()  # accepts connections, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        app = shop.create_app(
            f"postgresql+{PG_DRIVER}://postgres@127.0.0.1:{port}/test",
            instance_path=str(tmp_path / "instance"),
            config={"QUERYWATCH_FLUSH_INTERVAL": 3600, "QUERYWATCH_READY_TIMEOUT": 0.5},
        )
        client = app.test_client()
        # The listener never answers: the probe returns at all only through its timeout.
        response = client.get("/readyz")
        assert response.status_code == 503
        data = response.get_json()
        assert data["status"] == "unavailable"
        assert data["databases"][0]["error"] == "no answer within 0.5 s"
        assert client.get("/healthz").status_code == 200
    finally:
        listener.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_prometheus(tmp_path: t.Any, target_port: int) -> tuple[t.Any, int]:
    """Debian's Prometheus on 127.0.0.1, scraping ``target_port`` every second."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        _unavailable("Prometheus", "not installed; Debian package 'prometheus'")
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: shop\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def _wait_for_value(port: int, promql: str, expected: float, seconds: float = 60) -> list[t.Any]:
    """Ask Prometheus ``promql`` until its one sample is ``expected`` (or time is up)."""
    import json as jsonlib
    import time
    import urllib.parse
    import urllib.request

    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"
    result: list[t.Any] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                result = jsonlib.load(r)["data"]["result"]
        except OSError:
            result = []
        if len(result) == 1 and float(result[0]["value"][1]) == expected:
            break
        time.sleep(0.5)
    return result


def test_a_real_prometheus_scrapes_the_app(app: t.Any, tmp_path: t.Any) -> None:
    """Debian's Prometheus, started here on 127.0.0.1, scrapes the shop served by a real
    threaded server: its query API returns our histogram with the url rule and status
    labels, and counts exactly the requests sent."""
    import threading
    import urllib.request

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    app_port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc, prom_port = _start_prometheus(tmp_path, app_port)
    try:
        sent = 25
        for i in range(sent):
            with urllib.request.urlopen(
                f"http://127.0.0.1:{app_port}/api/products/{i % 10 + 1}"
            ) as r:
                assert r.status == 200
        result = _wait_for_value(
            prom_port,
            'http_server_request_duration_seconds_count{http_route="/api/products/<int:product_id>"}',
            sent,
        )
        assert len(result) == 1, result
        labels = result[0]["metric"]
        assert labels["job"] == "shop"
        assert labels["http_request_method"] == "GET"
        assert labels["http_response_status_code"] == "200"
        assert float(result[0]["value"][1]) == sent
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.shutdown()


GUNICORN_CONF = """
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""


def test_gunicorn_workers_are_counted_together(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """Under gunicorn with 4 workers (prometheus_client's multiprocess mode, as
    docs/monitoring.md sets it up), the request count a real Prometheus sees equals the
    requests sent, whichever worker served each and whichever answered the scrape."""
    import os
    import sys
    import time
    import urllib.request

    mp_dir = tmp_path / "prometheus-multiproc"
    mp_dir.mkdir()
    (tmp_path / "wsgi_shop.py").write_text(
        "from querywatch.demo import shop\n"
        f"app = shop.create_app({sqlite_shop_url!r}, instance_path={str(tmp_path / 'inst')!r},"
        " config={'QUERYWATCH_ADVISE': False})\n"
    )
    (tmp_path / "gunicorn.conf.py").write_text(GUNICORN_CONF)
    port = _free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    log = (tmp_path / "gunicorn.log").open("w")
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}",
         "-c", str(tmp_path / "gunicorn.conf.py"), "wsgi_shop:app"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    proc = None
    try:
        # Every worker booted and its app loaded (a worker loads the app after it logs
        # its boot): else the first worker up may serve every request.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (tmp_path / "gunicorn.log").read_text().count("Booting worker") >= 4:
                break
            time.sleep(0.2)
        healthy = 0
        while time.monotonic() < deadline and healthy < 20:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    healthy += 1
            except OSError:
                time.sleep(0.2)
        time.sleep(1.0)
        proc, prom_port = _start_prometheus(tmp_path, port)
        sent = 60

        def get(i: int) -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/products/{i % 10 + 1}") as r:
                return int(r.status)

        # Eight at a time: a sync worker serves one at a time, so the others take turns.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(get, range(sent))) == [200] * sent
        result = _wait_for_value(
            prom_port,
            'sum(http_server_request_duration_seconds_count{http_route="/api/products/<int:product_id>"})',
            sent,
        )
        assert len(result) == 1, result
        assert float(result[0]["value"][1]) == sent
        pids = {p.name.split("_")[-1].split(".")[0] for p in mp_dir.glob("histogram_*.db")}
        assert len(pids) >= 2, pids  # several workers served and wrote their files
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        gunicorn.terminate()
        gunicorn.wait(timeout=20)
        log.close()


def test_pool_waits_and_timeouts(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """A pool of one connection, held elsewhere: the request waits its timeout and
    fails, and the metrics count the wait and the timeout of that pool."""
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 1, "max_overflow": 0, "pool_timeout": 1},
        },
    )
    metrics = app.extensions["querywatch"].metrics
    metrics.fold()  # times the pool's checkouts from now on
    client = app.test_client()
    assert client.get("/api/products/3").status_code == 200
    with app.app_context():
        held = shop.db.engine.connect()
    try:
        app.config["PROPAGATE_EXCEPTIONS"] = False  # the app answers 500, as in production
        assert client.get("/api/products/4").status_code == 500
    finally:
        held.close()
    text = client.get("/metrics").get_data(as_text=True)
    _promtool_check(text)
    timeouts = _samples(text, "db_client_connection_timeouts_total")
    assert timeouts == {(("pool_name", "default"),): 1.0}
    waits = _samples(text, "db_client_connection_wait_time_seconds_count")
    assert waits[(("pool_name", "default"),)] >= 3  # two requests and the held one
    waited = _samples(text, "db_client_connection_wait_time_seconds_sum")
    assert waited[(("pool_name", "default"),)] >= 0.9  # the timeout, 1 s
    with app.app_context():
        shop.db.engine.dispose()


@pytest.mark.allow_internal_errors
def test_finished_records_reach_every_receiver_even_past_one_that_raises(
    app: t.Any, client: t.Any
) -> None:
    """A finished unit of work is announced one way, querywatch's ``record_finished``
    signal, which the app's metrics receive too. A receiver that raises is counted and
    skipped: the request succeeds and the metrics and later receivers still get it."""
    from querywatch import _failopen
    from querywatch.signals import record_finished

    def broken(sender: t.Any, **_: t.Any) -> None:
        raise ZeroDivisionError("bug")

    seen: list[tuple[t.Any, str, int]] = []

    def receiver(sender: t.Any, record: t.Any, findings: list[t.Any], **_: t.Any) -> None:
        seen.append((sender, record.name, len(findings)))

    record_finished.connect(broken, sender=app)
    record_finished.connect(receiver, sender=app)
    try:
        before = _failopen.internal_error_counts().get("signals.record_finished", 0)
        assert client.get("/api/products/3").status_code == 200
        assert seen == [(app, "GET /api/products/<int:product_id>", 0)]
        assert _failopen.internal_error_counts()["signals.record_finished"] == before + 1
        text = client.get("/metrics").get_data(as_text=True)
        http = _samples(text, "http_server_request_duration_seconds_count")
        assert http == {
            (("http_request_method", "GET"), ("http_response_status_code", "200"),
             ("http_route", "/api/products/<int:product_id>")): 1.0,
        }  # fmt: skip
    finally:
        record_finished.disconnect(broken)
        record_finished.disconnect(receiver)
