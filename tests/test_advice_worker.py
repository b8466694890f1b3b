"""The advisor in the running app: slow or hot shapes get explained in the background,
once per TTL across processes, and the report cites what it found."""

from __future__ import annotations

import threading
import time
import typing as t

import pytest

from conftest import on_finished
from querywatch._advice_worker import queries_from_store
from querywatch._compat import create_engine
from querywatch._report import build_report
from querywatch.demo import shop


def _shop_app(tmp_path: t.Any, **config: t.Any) -> t.Any:
    """The shop on SQLite (10,000 orders) with querywatch configured by ``config``."""
    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, scale=0.05)
    engine.dispose()
    return shop.create_app(
        url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_SCAN_MIN_ROWS": 5000, **config},
    )


@pytest.fixture
def busy_shop(tmp_path: t.Any) -> t.Any:
    app = _shop_app(tmp_path, QUERYWATCH_FLUSH_INTERVAL=3600, QUERYWATCH_ADVISE_INTERVAL=3600)
    client = app.test_client()
    for i in range(1, 4):
        assert client.get(f"/api/orders/lookup?email=customer{i}@example.com").status_code == 200
        assert client.get(f"/api/products/{i}").status_code == 200
    state = app.extensions["querywatch"]
    assert state.flusher.flush()
    yield app
    state.flusher._stop.set()
    state.advice_worker.stop()
    with app.app_context():
        shop.db.engine.dispose()


def test_a_round_explains_the_hot_shapes_and_records_advice(busy_shop: t.Any) -> None:
    state = busy_shop.extensions["querywatch"]
    analysed = state.advice_worker.run_once()
    assert analysed == 2  # QUERYWATCH_ADVISE_PER_ROUND
    advice = state.store.advice()
    assert [(a.table, a.keys) for a in advice] == [("orders", ("customer_email",))]
    # Planned in an in-memory copy of the schema: the app's own file is only read.
    assert advice[0].verified_by == "planned on a schema copy"
    report = build_report(state.store, since=time.time() - 600)
    scans = [f for f in report["findings"] if f["kind"] == "full_scan"]
    assert [f["endpoint"] for f in scans] == ["GET /api/orders/lookup"]
    assert "Verified fix: CREATE INDEX IF NOT EXISTS ix_orders_customer_email" in scans[0]["fix"]
    # Analysed once per TTL: the next round finds nothing new to do.
    assert state.advice_worker.run_once() == 0


def test_one_claim_per_ttl_across_processes(busy_shop: t.Any) -> None:
    """Two workers (as two gunicorn processes would) racing for the same shapes never
    analyse one twice: the claim is an atomic update in the store."""
    state = busy_shop.extensions["querywatch"]
    fps = [q.fingerprint for q in queries_from_store(state.store, since=time.time() - 600)]
    now = time.time()
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(state.store.claim_for_advice(fps[0], now, 3600))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wins.count(True) == 1
    assert state.store.claim_for_advice(fps[0], now + 3601, 3600)


def test_the_worker_runs_off_the_request_thread(tmp_path: t.Any) -> None:
    app = _shop_app(tmp_path, QUERYWATCH_FLUSH_INTERVAL=0.2, QUERYWATCH_ADVISE_INTERVAL=0.3)
    state = app.extensions["querywatch"]
    seen_threads: set[str] = set()
    original = state.advice_worker.run_once

    def spy(now: float | None = None) -> int:
        seen_threads.add(threading.current_thread().name)
        return original(now)

    state.advice_worker.run_once = spy  # type: ignore[method-assign]
    client = app.test_client()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not state.store.advice():
            assert client.get("/api/orders/lookup?email=customer1@example.com").status_code == 200
            time.sleep(0.2)
        assert [a.keys for a in state.store.advice()] == [("customer_email",)]
        assert seen_threads == {"querywatch-advisor"}
    finally:
        state.flusher._stop.set()
        state.advice_worker.stop()
        with app.app_context():
            shop.db.engine.dispose()


def test_in_memory_database_turns_the_worker_off(tmp_path: t.Any) -> None:
    app = shop.create_app(
        "sqlite://",
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_FLUSH_INTERVAL": 3600, "QUERYWATCH_ADVISE_INTERVAL": 3600},
    )
    with app.app_context():
        shop.seed(shop.db.engine, scale=0.01)
    client = app.test_client()
    assert client.get("/api/orders/lookup?email=customer1@example.com").status_code == 200
    state = app.extensions["querywatch"]
    assert state.flusher.flush()
    assert state.advice_worker.run_once() == 0
    assert "in-memory" in (state.advice_worker.disabled or "")
    state.flusher._stop.set()
    state.advice_worker.stop()


def test_slow_reads_lend_their_real_parameters(tmp_path: t.Any) -> None:
    """A slow read keeps its statement and parameters (in memory only); the next round
    explains the shape with them instead of drawing values, then drops them."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    app = _shop_app(
        tmp_path,
        QUERYWATCH_FLUSH_INTERVAL=3600,
        QUERYWATCH_ADVISE_INTERVAL=3600,
        QUERYWATCH_SLOW_QUERY_MS=0.001,  # every read is "slow" here
    )
    state = app.extensions["querywatch"]
    records: list[t.Any] = []
    on_finished(app, lambda r, f: records.append(r), live=True)
    client = app.test_client()
    assert client.get("/api/orders/lookup?email=customer42@example.com").status_code == 200
    (lookup,) = [q for q in records[-1].queries if "customer_email" in q.fingerprint.shape]
    statement, params, engine_url, memory_connection = lookup.sample
    assert memory_connection is None  # a database file: no connection is kept
    assert "customer_email" in statement
    assert list(params) == ["customer42@example.com"]
    assert engine_url.database.endswith("shop.db")
    assert state.flusher.flush()

    explained: list[tuple[str, t.Any]] = []

    def spy(conn: t.Any, cursor: t.Any, stmt: str, parameters: t.Any, *a: t.Any) -> None:
        if stmt.startswith("EXPLAIN"):
            explained.append((stmt, parameters))

    event.listen(Engine, "before_cursor_execute", spy)
    try:
        assert state.advice_worker.run_once() >= 1
    finally:
        event.remove(Engine, "before_cursor_execute", spy)
    lookups = [p for s, p in explained if "customer_email" in s and "qw_candidate" not in s]
    assert lookups
    assert all(list(p) == ["customer42@example.com"] for p in lookups)
    assert state.advice_worker._samples == {} or all(
        "customer_email" not in s for s, *_ in state.advice_worker._samples.values()
    )
    assert [a.keys for a in state.store.advice()] == [("customer_email",)]
    state.flusher._stop.set()
    state.advice_worker.stop()
    with app.app_context():
        shop.db.engine.dispose()


def test_fast_reads_keep_no_sample(app: t.Any, client: t.Any, records: list[t.Any]) -> None:
    assert client.get("/api/products/3").status_code == 200
    record, _ = records[-1]
    assert record.queries
    assert all(getattr(q, "sample", None) is None for q in record.queries)


def test_each_app_keeps_samples_by_its_own_threshold(tmp_path: t.Any) -> None:
    """The sample threshold is the app's own: an app that keeps every read (a tiny
    slow-query threshold) no longer makes another app in the process keep its reads'
    parameters, and an app that does not advise keeps none; a CI gate collector keeps
    every read while it is open."""
    from querywatch.ci.gate import Collector
    from querywatch.ci.gate import gate_settings

    for name in ("eager", "quiet"):
        (tmp_path / name).mkdir()
    eager = _shop_app(
        tmp_path / "eager",
        QUERYWATCH_FLUSH_INTERVAL=3600,
        QUERYWATCH_ADVISE_INTERVAL=3600,
        QUERYWATCH_SLOW_QUERY_MS=0.001,  # every read is "slow" here
    )
    quiet = _shop_app(
        tmp_path / "quiet",
        QUERYWATCH_FLUSH_INTERVAL=3600,
        QUERYWATCH_ADVISE=False,
        QUERYWATCH_SLOW_QUERY_MS=0.001,
    )
    seen: dict[str, list[t.Any]] = {"eager": [], "quiet": []}
    for name, app in (("eager", eager), ("quiet", quiet)):
        on_finished(app, lambda r, f, name=name: seen[name].append(r), live=True)
    url = "/api/orders/lookup?email=customer7@example.com"
    assert eager.test_client().get(url).status_code == 200
    assert quiet.test_client().get(url).status_code == 200
    kept = {
        name: [getattr(q, "sample", None) is not None for q in records[-1].queries]
        for name, records in seen.items()
    }
    assert kept["eager"]
    assert all(kept["eager"])
    assert kept["quiet"]
    assert not any(kept["quiet"])

    with Collector("gate", gate_settings(("querywatch",))):
        assert quiet.test_client().get(url).status_code == 200
    assert seen["quiet"][-1].queries
    assert all(getattr(q, "sample", None) is not None for q in seen["quiet"][-1].queries)
    assert quiet.test_client().get(url).status_code == 200
    assert not any(getattr(q, "sample", None) is not None for q in seen["quiet"][-1].queries)
    for app in (eager, quiet):
        state = app.extensions["querywatch"]
        state.flusher._stop.set()
        state.advice_worker.stop()
