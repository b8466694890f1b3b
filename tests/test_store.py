from __future__ import annotations

import multiprocessing
import os
import shutil
import time
import typing as t

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy import text

from conftest import PG_DRIVER
from querywatch import QueryWatch
from querywatch._compat import create_engine
from querywatch._config import load_settings
from querywatch._stats import MAX_QUEUED
from querywatch._stats import MAX_QUEUED_ENTRIES
from querywatch._stats import OTHER
from querywatch._stats import Stats
from querywatch._stats import bucket_index
from querywatch.capture import LoopStats
from querywatch.capture import Record
from querywatch.exceptions import SchemaVersionError
from querywatch.fingerprint import fingerprint
from querywatch.store import Store
from querywatch.store import schema

_SETTINGS = load_settings(Flask(__name__))


def _record(endpoint: str, sql: str, calls: int, seconds: float, when: float) -> Record:
    r = Record(name=endpoint, kind="request", settings=_SETTINGS, started_wall=when)
    fp = fingerprint(sql)
    s = LoopStats(fp, None)
    for _ in range(calls):
        s.calls += 1
        s.total += seconds
        s.min = min(s.min, seconds)
        s.max = max(s.max, seconds)
        s.rows += 1
        i = bucket_index(seconds)
        s.hist[i] = s.hist.get(i, 0) + 1
    r.loops[(fp.id, None, None)] = s
    r.query_count = calls
    r.db_time = calls * seconds
    r.duration = calls * seconds + 0.001
    r.status = 200
    return r


@pytest.fixture
def store_url(any_store_url: str) -> str:
    """Every store database (SQLite, PostgreSQL, MariaDB), not only conftest's two."""
    return any_store_url


def test_write_merges_and_reads_back(store_url: str) -> None:
    """Two processes' snapshots of the same minute add up: calls, time, min/max,
    histograms, endpoints and findings."""
    store = Store(store_url)
    assert store.migrate() == schema.SCHEMA_VERSION
    now = time.time()
    for _ in range(2):
        stats = Stats()
        stats.add(_record("GET /a", "SELECT * FROM t WHERE id = 1", 10, 0.002, now), [])
        stats.add(_record("GET /b", "SELECT * FROM t WHERE id = 2", 5, 0.010, now), [])
        store.write(stats.drain())
    win = store.window(now - 120, now + 60)
    fp = fingerprint("SELECT * FROM t WHERE id = ?").id
    agg = win.shapes[fp]
    assert agg.calls == 30
    assert agg.total == pytest.approx(0.02 * 2 + 0.05 * 2)
    assert agg.min == pytest.approx(0.002)
    assert agg.max == pytest.approx(0.010)
    assert sum(agg.hist.values()) == 30
    assert win.endpoint_shapes[("GET /a", fp)].calls == 20
    assert win.endpoints["GET /a"].requests == 2
    assert win.endpoints["GET /b"].statuses == {"2xx": 2}
    shapes = store.shapes([fp])
    assert shapes[fp].shape == "SELECT * FROM t WHERE id = ?"
    store.dispose()


def test_requests_count_as_they_arrive_in_the_bucket_they_started_in(store_url: str) -> None:
    """A request counts as traffic when it starts, before it ends: two processes' arrivals
    add up per bucket, a failed flush gives them back, and ending the request does not
    count it twice."""
    store = Store(store_url)
    width = 10
    base = 1_800_000_000.0
    for _ in range(2):
        stats = Stats(bucket_seconds=width)
        for k in range(3):
            stats.arrive(base + k)  # bucket `base`
        stats.arrive(base + width + 1)  # the next bucket, still running
        snap = stats.drain()
        stats.restore(snap)  # as after a failed flush
        stats.arrive(base + width + 2)
        stats.add(_record("GET /a", "SELECT 1", 1, 0.001, base + 1), [])  # one has ended
        store.write(stats.drain())
    assert store.arrivals(base, base + width) == 6
    assert store.arrivals(base + width, base + 2 * width) == 4
    assert store.arrivals(base, base + 2 * width) == 10
    assert store.arrivals(base + 2 * width, base + 3 * width) is None
    assert store.window(base, base + 2 * width, width=width).endpoints["GET /a"].requests == 2
    store.dispose()


def test_the_costliest_reads_are_ranked_by_the_database(store_url: str) -> None:
    """300 read shapes over two endpoints, a write and a read without a sample among
    them: the advisor's input is the top 5 by total time summed over endpoints and
    minutes, with their endpoints by time, and only those 5 are loaded."""
    from querywatch._advice_worker import queries_from_store

    store = Store(store_url)
    now = time.time()
    stats = Stats(max_shapes=1000)
    for i in range(300):
        sql = f"SELECT * FROM t{i} WHERE id = 1"
        stats.add(_record("GET /a", sql, 1, 0.001 * (i % 97 + 1), now), [])
        stats.add(_record("GET /b", sql, 2, 0.001 * (i % 89 + 1), now - 60), [])
    stats.add(_record("POST /w", "UPDATE t0 SET a = 1 WHERE id = 2", 50, 1.0, now), [])
    long = "SELECT " + ", ".join(f"c{i}" for i in range(2000)) + " FROM wide"  # no sample
    stats.add(_record("GET /a", long, 50, 1.0, now), [])
    store.write(stats.drain())
    win = store.window(now - 180, now + 60)
    shapes = store.shapes(win.shapes)
    expected = sorted(
        (fp for fp, sh in shapes.items() if sh.operation == "SELECT" and sh.sample),
        key=lambda fp: (-win.shapes[fp].total, fp),
    )[:5]
    top = queries_from_store(store, since=now - 180, until=now + 60, limit=5)
    assert [q.fingerprint for q in top] == expected
    first = win.shapes[expected[0]]
    assert top[0].calls == first.calls == 3
    assert top[0].total_s == pytest.approx(first.total)
    a = win.endpoint_shapes[("GET /a", expected[0])].total
    b = win.endpoint_shapes[("GET /b", expected[0])].total
    assert top[0].endpoints == (("GET /a", "GET /b") if a >= b else ("GET /b", "GET /a"))
    only = queries_from_store(store, since=now - 180, limit=5, fingerprints=[expected[3]])
    assert [q.fingerprint for q in only] == [expected[3]]
    store.dispose()


@pytest.mark.mariadb
def test_a_mariadb_store_gets_double_precision_times(mariadb_url: str) -> None:
    """MariaDB's FLOAT is single precision: a Unix time to within about two minutes (a
    lease written to last 30 s had expired on reading). Version 5 makes every time and
    duration DOUBLE, in place, keeping the rows."""
    engine = create_engine(mariadb_url)
    try:
        store = Store(mariadb_url)
        store.migrate()
        store.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE qw_leases MODIFY expires FLOAT NOT NULL")
            conn.exec_driver_sql("ALTER TABLE qw_shapes MODIFY advised_at FLOAT NULL")
            conn.exec_driver_sql("UPDATE qw_meta SET value = '4' WHERE `key` = 'schema_version'")
            conn.exec_driver_sql(
                "INSERT INTO qw_leases VALUES ('old', 'h', 1800000030.0, 1800000000.0)"
            )
        store = Store(mariadb_url)
        assert store.migrate() == schema.SCHEMA_VERSION
        with engine.connect() as conn:
            types = dict(
                conn.exec_driver_sql(
                    "SELECT CONCAT(table_name, '.', column_name), data_type FROM"
                    " information_schema.columns WHERE table_schema = DATABASE() AND"
                    " column_name IN ('expires', 'acquired', 'advised_at', 'total_s', 'at')"
                ).all()
            )
        assert types
        assert set(types.values()) == {"double"}, types
        with engine.connect() as conn:  # the row is kept (its time as FLOAT stored it)
            assert conn.exec_driver_sql("SELECT holder FROM qw_leases").scalars().all() == ["h"]
        t0 = 1_800_000_000.0
        assert store.acquire_lease("new", "a", t0, 30)
        assert not store.acquire_lease("new", "b", t0 + 20, 30)
        store.dispose()
    finally:
        with engine.begin() as conn:
            for tbl in reversed(schema.metadata.sorted_tables):
                conn.execute(text(f"DROP TABLE IF EXISTS {tbl.name}"))
        engine.dispose()


def test_a_lease_is_taken_over_on_record_and_released_at_once(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder that stops renewing loses its lease when it expires: the taker is
    logged (a warning: the holder died or stalled) and ``acquired`` moves. A holder
    that releases it (a clean exit) hands it over at the next round, not at expiry."""
    import logging

    caplog.set_level(logging.INFO, logger="querywatch")
    store = Store(store_url)
    t0 = 1_800_000_000.0
    assert store.acquire_lease("alerts", "host-a:1", t0, 30)
    assert store.acquire_lease("alerts", "host-a:1", t0 + 10, 30)  # renewed
    assert not store.acquire_lease("alerts", "host-b:2", t0 + 20, 30)
    assert store.acquire_lease("alerts", "host-b:2", t0 + 41, 30)  # a's expired at t0 + 40
    with store.engine.connect() as conn:
        row = conn.execute(select(schema.leases).where(schema.leases.c.name == "alerts")).one()
    assert (row.holder, row.acquired) == ("host-b:2", t0 + 41)
    (took,) = [r for r in caplog.records if "taken over" in r.getMessage()]
    assert took.levelno == logging.WARNING
    assert "by host-b:2 from host-a:1 (its lease expired 1.0 s ago)" in took.getMessage()
    store.release_lease("alerts", "host-b:2")
    assert store.lease_holder("alerts", t0 + 42) is None
    assert store.acquire_lease("alerts", "host-a:1", t0 + 42, 30)  # at once, not at t0 + 71
    handed = [r for r in caplog.records if "taken over" in r.getMessage()][-1]
    assert handed.levelno == logging.INFO
    assert "(its lease released)" in handed.getMessage()
    store.dispose()


def test_a_clean_exit_releases_the_leases(tmp_path: t.Any) -> None:
    """The flusher's last stop (at exit) gives up the alerts and incidents leases this
    process holds; the incidents lease lasts three worker intervals, no 30 s floor."""
    from querywatch.incidents.worker import LEASE as INCIDENTS

    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db",
        QUERYWATCH_FLUSH_INTERVAL=3600,
        QUERYWATCH_INCIDENT_INTERVAL=0.5,
        QUERYWATCH_ESCALATION={"targets": {"log": {"type": "log"}},
                               "levels": [{"targets": ["log"]}]},
    )  # fmt: skip
    QueryWatch(app)
    state = app.extensions["querywatch"]
    state.flusher.evaluate_alerts(force=True)
    now = time.time()
    assert state.incident_worker.run_once(now=now) is not None
    store = state.store
    assert store.lease_holder("alerts", time.time()) is not None
    with store.engine.connect() as conn:
        row = conn.execute(select(schema.leases).where(schema.leases.c.name == INCIDENTS)).one()
    assert row.expires == pytest.approx(now + 1.5)
    state.flusher.stop()
    assert store.lease_holder("alerts", time.time()) is None
    assert store.lease_holder(INCIDENTS, time.time()) is None


def test_a_store_url_without_its_driver_says_what_to_install() -> None:
    from querywatch._config import missing_driver
    from querywatch.exceptions import StoreError

    with pytest.raises(StoreError) as e:
        Store("mssql+pyodbc://qw:secret@db.example/querywatch")
    message = str(e.value)
    assert "needs the Python driver 'pyodbc', which is not installed here" in message
    assert "pip install pyodbc" in message
    assert "secret" not in message
    assert missing_driver("sqlite:///x.db") is None
    assert missing_driver(f"postgresql+{PG_DRIVER}://127.0.0.1/test") is None  # installed
    assert "no dialect 'postgresql+nosuch'" in (missing_driver("postgresql+nosuch://x") or "")
    assert "is not a database URL" in (missing_driver("not a url") or "")


def test_schema_version_and_forward_migration(tmp_path: t.Any) -> None:
    """A new store is created at the current version; a newer one is refused clearly."""
    url = f"sqlite:///{tmp_path}/v.db"
    store = Store(url)
    store.migrate()
    assert store.schema_version() == schema.SCHEMA_VERSION
    with store.engine.begin() as conn:
        conn.execute(schema.meta.update().values(value="99"))
    store.dispose()
    with pytest.raises(SchemaVersionError) as info:
        Store(url).migrate()
    assert str(info.value) == (
        f"The querywatch store at sqlite:///{tmp_path}/v.db has schema version 99, newer than"
        f" this querywatch knows ({schema.SCHEMA_VERSION}). Upgrade querywatch, or point"
        " 'QUERYWATCH_STORE_URL' at another database."
    )


def test_a_version_1_store_is_upgraded_in_place(tmp_path: t.Any) -> None:
    """A store written before the advisor (version 1) gains ``sample_sql`` and
    ``qw_advice`` (2), the alert tables (3), the incident tables (4), double precision on
    MariaDB (5), the arrivals (6), the trace ids (7), and keeps its rows."""
    url = f"sqlite:///{tmp_path}/v1.db"
    engine = create_engine(url)
    with engine.begin() as conn:
        # Version 1's tables, as that release created them.
        conn.exec_driver_sql(
            "CREATE TABLE qw_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(255) NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO qw_meta VALUES ('schema_version', '1')")
        conn.exec_driver_sql(
            "CREATE TABLE qw_shapes (fingerprint VARCHAR(32) PRIMARY KEY, shape TEXT NOT NULL,"
            " operation VARCHAR(16) NOT NULL, site_file VARCHAR(512), site_line INTEGER,"
            " site_function VARCHAR(255), first_seen FLOAT NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO qw_shapes VALUES ('abc', 'SELECT ?', 'SELECT', NULL, NULL, NULL, 1.0)"
        )
        for tbl in (schema.query_stats, schema.endpoint_stats, schema.findings):
            tbl.create(conn)
        # Without the columns added since.
        conn.exec_driver_sql("ALTER TABLE qw_query_stats DROP COLUMN max_trace")
        conn.exec_driver_sql("ALTER TABLE qw_findings DROP COLUMN trace_id")
    engine.dispose()
    store = Store(url)
    assert store.migrate() == 7
    assert store.schema_version() == 7
    assert store.arrivals(0, 1e12) is None
    # The trace ids (7): the slowest call's and a finding's.
    stats = Stats()
    record = _record("GET /traced", "SELECT 1 FROM traced", 1, 0.5, 1000.0)
    record.trace_id = "ab" * 16
    stats.add(record, [])
    store.write(stats.drain())
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT max_trace FROM qw_query_stats").scalar() == "ab" * 16
        assert conn.exec_driver_sql("SELECT count(trace_id) FROM qw_findings").scalar() == 0
    assert store.shapes(["abc"])["abc"].shape == "SELECT ?"
    assert store.shapes(["abc"])["abc"].sample is None
    assert store.advice() == []
    assert store.alert_states() == {}
    assert store.acquire_lease("alerts", "me", 100.0, 10.0)
    store.dispose()


def _worker(url: str, endpoint: str, n: int, when: float) -> None:
    store = Store(url)
    for _ in range(n):
        stats = Stats()
        stats.add(_record(endpoint, "SELECT 1 FROM shared_shape", 3, 0.001, when), [])
        stats.add(_record("GET /shared", "SELECT 1 FROM shared_shape", 1, 0.001, when), [])
        store.write(stats.drain())
    store.dispose()


def test_several_processes_merge_correctly(tmp_path: t.Any) -> None:
    """Four OS processes flushing the same minute into one SQLite store lose nothing."""
    url = f"sqlite:///{tmp_path}/multi.db"
    Store(url).migrate()
    when = time.time()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(url, f"GET /w{i}", 25, when)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    win = Store(url).window(when - 120, when + 60)
    fp = fingerprint("SELECT 1 FROM shared_shape").id
    assert win.shapes[fp].calls == 4 * 25 * 4
    assert win.endpoints["GET /shared"].requests == 100
    assert all(win.endpoints[f"GET /w{i}"].requests == 25 for i in range(4))


def test_shape_cap_folds_the_long_tail_into_other() -> None:
    """Past max_shapes distinct fingerprints, new shapes count as 'other' until the next
    flush; totals stay exact."""
    stats = Stats(max_shapes=10)
    now = time.time()
    for i in range(25):
        stats.add(_record("GET /x", f"SELECT * FROM t{i}", 2, 0.001, now), [])
    snap = stats.drain()
    (bucket,) = snap.buckets.values()
    fps = {fp for (_, fp) in bucket.queries}
    assert len(fps) == 11
    assert bucket.queries[("GET /x", OTHER)].calls == 30
    assert sum(a.calls for a in bucket.queries.values()) == 50
    assert stats.folded_shapes == 15


def test_finished_requests_queue_boundedly_and_fold_exactly() -> None:
    """Finished units of work wait in a bounded queue, off the request path: a full queue
    is folded at once by whoever fills it, a drain folds what is left, and the totals are
    exact."""
    stats = Stats()
    now = time.time()
    for _ in range(MAX_QUEUED - 1):
        stats.add(_record("GET /x", "SELECT 1", 2, 0.001, now), [])
    assert len(stats._queue) == MAX_QUEUED - 1
    stats.add(_record("GET /x", "SELECT 1", 2, 0.001, now), [])
    assert len(stats._queue) == 0  # folded when full
    stats.add(_record("GET /y", "SELECT 2", 3, 0.001, now), [])
    assert len(stats._queue) == 1
    snap = stats.drain()
    assert len(stats._queue) == 0
    (bucket,) = snap.buckets.values()
    assert bucket.endpoints["GET /x"].requests == MAX_QUEUED
    assert sum(a.calls for (ep, _), a in bucket.queries.items() if ep == "GET /x") == (
        2 * MAX_QUEUED
    )
    assert bucket.endpoints["GET /y"].requests == 1


def test_queue_of_many_shape_jobs_is_bounded_by_entries() -> None:
    """Jobs of many shapes each: the queue folds by the loop entries it holds, so memory
    stays bounded whatever a unit of work captured."""
    stats = Stats(max_shapes=100_000)
    now = time.time()
    per_job = 1000
    for j in range(MAX_QUEUED_ENTRIES // per_job + 1):
        r = _record("job:x", "SELECT 0", 1, 0.001, now)
        for i in range(1, per_job):
            fp = fingerprint(f"SELECT {j} AS c{i}")
            r.loops[(fp.id, None, None)] = LoopStats(fp, None, None, 1, 0.001, 0, 0, 0.001, 0.001)
        stats.add(r, [])
        assert stats._queued_entries <= MAX_QUEUED_ENTRIES
        assert len(stats._queue) <= MAX_QUEUED_ENTRIES // per_job
    snap = stats.drain()
    assert sum(a.calls for b in snap.buckets.values() for a in b.queries.values()) == (
        (MAX_QUEUED_ENTRIES // per_job + 1) * per_job
    )


def test_a_request_still_running_is_traffic_already(tmp_path: t.Any) -> None:
    """The app's request counts as it starts (in the store at the next flush, while it
    still runs) and once as it ends; querywatch's own endpoints are not traffic."""
    import threading

    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["QUERYWATCH_STORE_URL"] = f"sqlite:///{tmp_path}/store.db"
    app.config["QUERYWATCH_FLUSH_INTERVAL"] = 3600
    qw = QueryWatch(app)
    started, release = threading.Event(), threading.Event()

    @app.get("/slow")
    def slow() -> str:
        started.set()
        release.wait(30)
        return "done"

    client = app.test_client()
    assert client.get("/metrics").status_code == 200
    t0 = time.time()
    worker = threading.Thread(target=client.get, args=("/slow",))
    worker.start()
    try:
        assert started.wait(30)
        assert qw.flush() is True
        store = app.extensions["querywatch"].store
        assert store.arrivals(t0 - 120, t0 + 120) == 1
        assert store.endpoint_totals(t0 - 120, t0 + 120) == {}
    finally:
        release.set()
        worker.join(30)
    assert qw.flush() is True
    assert store.arrivals(t0 - 120, t0 + 120) == 1
    assert store.endpoint_totals(t0 - 120, t0 + 120)["GET /slow"].requests == 1
    state = app.extensions["querywatch"]
    state.flusher._stop.set()
    state.advice_worker.stop()


def test_failed_flush_keeps_the_data(tmp_path: t.Any) -> None:
    """A flush that fails puts its snapshot back; the next flush writes everything."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["QUERYWATCH_STORE_URL"] = f"sqlite:///{tmp_path}/gone/store.db"
    app.config["QUERYWATCH_FLUSH_INTERVAL"] = 3600
    qw = QueryWatch(app)
    engine = create_engine("sqlite://")
    with engine.connect() as c:
        for _ in range(3):
            with qw.capture("j"):
                c.exec_driver_sql("SELECT 1").all()
    state = app.extensions["querywatch"]
    assert qw.flush() is False  # the folder does not exist
    assert state.flusher.failures == 1
    os.makedirs(tmp_path / "gone")
    assert qw.flush() is True
    win = state.store.window(time.time() - 600, time.time() + 60)
    assert win.endpoints["job:j"].requests == 3
    state.flusher._stop.set()
    state.advice_worker.stop()


@pytest.mark.parametrize("width", [1, 10, 60])
def test_an_outage_keeps_hours_not_buckets(
    width: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store unreachable, flushes failing and restoring: 240 s of 10 requests a
    second are all kept whatever the bucket width (1 s buckets kept 3 minutes, and 600
    of the 2,400 requests went unseen); past three hours the oldest go, counted and said
    once."""
    import logging

    from querywatch import _failopen
    from querywatch._stats import MAX_PENDING_SECONDS

    monkeypatch.setattr(_failopen, "_last_logged", {})  # said once a minute, this test's
    caplog.set_level(logging.WARNING, logger="querywatch")
    stats = Stats(bucket_seconds=width)
    start = 1_800_000_000.0
    for i in range(2400):
        stats.add(_record("GET /a", "SELECT 1", 1, 0.001, start + i / 10), [])
        if i % 100 == 99:
            stats.restore(stats.drain())  # a flush that failed
    snap = stats.drain()
    assert sum(b.endpoints["GET /a"].requests for b in snap.buckets.values()) == 2400
    assert stats.dropped_requests == 0
    stats.restore(snap)
    # Four hours on, one request a minute: the first hour's buckets go, and say so.
    later = start + 240
    for m in range(4 * 60):
        stats.add(_record("GET /a", "SELECT 1", 1, 0.001, later + 60 * m), [])
        stats.restore(stats.drain())
    snap = stats.drain()
    newest = max(snap.buckets)
    assert min(snap.buckets) > newest - MAX_PENDING_SECONDS
    kept = sum(b.endpoints["GET /a"].requests for b in snap.buckets.values())
    assert kept + stats.dropped_requests == 2400 + 4 * 60
    assert stats.dropped_requests >= 2400
    said = [r for r in caplog.records if "dropped the aggregates" in r.getMessage()]
    assert len(said) == 1


def test_an_outage_under_a_flood_of_endpoints_is_bounded_by_entries() -> None:
    """Entries, not only time: 300 minutes' buckets of 1,000 endpoints each stay under
    MAX_PENDING_ENTRIES (checked as each bucket opens: the newest may add its own)."""
    from querywatch._stats import MAX_PENDING_ENTRIES

    stats = Stats(bucket_seconds=60, max_endpoints=1000)
    start = 1_800_000_000.0
    for m in range(300):
        for e in range(1000):
            stats.add(_record(f"GET /e{e}", "SELECT 1", 1, 0.001, start + 60 * m), [])
    snap = stats.drain()
    entries = sum(len(b.queries) + len(b.endpoints) for b in snap.buckets.values())
    newest = snap.buckets[max(snap.buckets)]
    assert entries <= MAX_PENDING_ENTRIES + len(newest.queries) + len(newest.endpoints)
    assert stats.dropped_requests == 300 * 1000 - sum(
        ep.requests for b in snap.buckets.values() for ep in b.endpoints.values()
    )


def _traffic(client: t.Any) -> list[int]:
    return [
        client.get("/api/products").status_code,
        client.get("/api/products/999999").status_code,
        client.get("/api/orders/recent").status_code,
        client.post("/api/orders", json={"bad": 1}).status_code,
        client.get("/nope").status_code,
    ]


def test_store_removed_mid_run_costs_the_app_nothing(
    app: Flask, client: t.Any, tmp_path: t.Any
) -> None:
    """With the store's database deleted mid-run, every request keeps its status code;
    the failure is counted, and the data is written once the store is back."""
    state = app.extensions["querywatch"]
    expected = _traffic(client)
    assert expected == [200, 404, 200, 400, 404]
    assert state.flusher.flush() is True
    store_dir = tmp_path / "instance"
    state.store.dispose()
    shutil.rmtree(store_dir)
    for _ in range(5):
        assert _traffic(client) == expected
        assert state.flusher.flush() is False
    assert state.flusher.failures == 5
    os.makedirs(store_dir)
    assert state.flusher.flush() is True
    win = state.store.window(time.time() - 600, time.time() + 60)
    # Everything since the store came back, including what was kept during the outage.
    assert win.endpoints["GET /api/products"].requests == 5


@pytest.mark.postgres
def test_store_made_read_only_mid_run(
    sqlite_shop_url: str, postgres_url: str, tmp_path: t.Any
) -> None:
    """A PostgreSQL store switched to read-only mid-run: same status codes, counted
    failures, nothing lost once it is writable again."""
    from querywatch.demo import shop

    admin = create_engine(
        postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
    )
    db_name = postgres_url.rsplit("/", 1)[1]
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_STORE_URL": postgres_url, "QUERYWATCH_FLUSH_INTERVAL": 3600},
    )
    client = app.test_client()
    state = app.extensions["querywatch"]
    before = state.store.window(time.time() - 600, time.time() + 60).endpoints
    base = before["GET /api/products"].requests if "GET /api/products" in before else 0
    expected = _traffic(client)
    assert state.flusher.flush() is True

    def set_read_only(on: bool) -> None:
        with admin.connect() as conn:
            conn.execute(
                text(
                    f"ALTER DATABASE {db_name} SET default_transaction_read_only"
                    f" = {'on' if on else 'off'}"
                )
            )
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": db_name},
            )

    set_read_only(True)
    try:
        for _ in range(3):
            assert _traffic(client) == expected
            assert state.flusher.flush() is False
        assert state.flusher.failures == 3
    finally:
        set_read_only(False)
    assert state.flusher.flush() is True
    after = state.store.window(time.time() - 600, time.time() + 60).endpoints
    assert after["GET /api/products"].requests == base + 4
    state.store.dispose()
    admin.dispose()
    with app.app_context():
        shop.db.engine.dispose()


def test_store_statements_are_never_captured(
    app: Flask, client: t.Any, records: list[t.Any]
) -> None:
    """querywatch's own store queries, even inside a unit of work, are not recorded."""
    client.get("/api/products")
    state = app.extensions["querywatch"]
    qw = QueryWatch()
    with app.app_context(), qw.capture("flush-inside") as record:
        assert state.flusher.flush() is True
        state.store.window(0, time.time())
    assert record.query_count == 0


def test_pending_aggregates_are_flushed_at_exit(tmp_path: t.Any) -> None:
    """A process that exits normally writes what it had not flushed yet."""
    import subprocess
    import sys
    import textwrap

    store_url = f"sqlite:///{tmp_path}/exit.db"
    script = textwrap.dedent(
        f"""
        from flask import Flask
        from querywatch._compat import create_engine
        from querywatch import QueryWatch

        app = Flask("exiting", instance_path={str(tmp_path)!r})
        app.config["QUERYWATCH_STORE_URL"] = {store_url!r}
        app.config["QUERYWATCH_FLUSH_INTERVAL"] = 3600
        qw = QueryWatch(app)
        engine = create_engine("sqlite://")
        with engine.connect() as conn:
            for _ in range(3):
                with qw.capture("before-exit"):
                    conn.exec_driver_sql("SELECT 1").all()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    win = Store(store_url).window(time.time() - 600, time.time() + 60)
    assert win.endpoints["job:before-exit"].requests == 3


def test_prune_bounds_what_grows_and_keeps_incidents(tmp_path: t.Any) -> None:
    """Old buckets of every kind, old alert changes, alerts resolved long ago and
    delivered notifications go; firing alerts, pending notifications and incidents stay."""
    from querywatch.alerts import Objective
    from querywatch.incidents import Incidents
    from querywatch.incidents import Outbox
    from querywatch.store import AlertChange

    store = Store(f"sqlite:///{tmp_path}/p.db")
    old, new = 1_700_000_000.0, 1_700_900_000.0
    for when in (old, new):
        stats = Stats(objectives=[Objective("availability", 0.999)])
        record = _record("GET /a", "SELECT 1 FROM t", 1, 0.001, when)
        record.user = "u1"
        stats.add(record, [])
        store.write(stats.drain())
        store.write_cache_stats(int(when // 60) * 60, {"f": {"hits": 1}})
        store.write_pool_stats(int(when // 60) * 60, {"default": (1, 0.001, 0, 0.1)})
    store.set_alert_states(
        [AlertChange("gone", "slo", "page", "firing", old, "s", {}),
         AlertChange("stays", "slo", "page", "firing", old, "s", {})]
    )  # fmt: skip
    store.set_alert_state(AlertChange("gone", "slo", "page", "resolved", old + 60, "s", {}))
    incidents = Incidents(store)
    sent, _ = incidents.trigger("k1", "Delivered long ago", now=old)
    Outbox(incidents).run_once(now=old)
    incidents.trigger("k2", "Still pending", now=old)  # its message is not sent
    removed = store.prune(new - 3600)
    assert removed > 0
    with store.engine.connect() as conn:
        for tbl in (
            schema.query_stats,
            schema.endpoint_stats,
            schema.slo_stats,
            schema.slo_totals,
            schema.slo_users,
            schema.pool_stats,
            schema.cache_stats,
        ):
            minutes = {r.minute for r in conn.execute(select(tbl))}
            assert minutes == {int(new // 60) * 60}, tbl.name
        assert [r.key for r in conn.execute(select(schema.alerts))] == ["stays"]
        assert [r.status for r in conn.execute(select(schema.outbox))] == ["pending"]
        assert conn.execute(select(schema.alert_events)).first() is None
    assert [i.title for i in incidents.recent()] == ["Still pending", "Delivered long ago"]
    assert incidents.timeline(sent.id)
    store.dispose()


def test_a_store_that_is_down_is_one_line_a_minute_with_its_cause(
    app: Flask,
    client: t.Any,
    tmp_path: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the store's database gone (a folder in its place), the alert evaluation and
    the flush each log one line with the cause, not a traceback, and not again within
    the minute; every failure is counted."""
    import logging

    from querywatch import _failopen

    monkeypatch.setattr(_failopen, "_last_logged", {})
    state = app.extensions["querywatch"]
    assert client.get("/api/products").status_code == 200
    state.store.dispose()
    store_dir = tmp_path / "instance"
    shutil.rmtree(store_dir)
    os.makedirs(store_dir / "querywatch.db")
    before = _failopen.internal_error_counts().get("alerts.evaluate", 0)
    with caplog.at_level(logging.WARNING, logger="querywatch"):
        for _ in range(3):
            assert client.get("/api/products").status_code == 200
            assert state.flusher.flush() is False
            assert state.flusher.evaluate_alerts(force=True) is None
    lines = [r for r in caplog.records if r.name == "querywatch"]
    assert [r.exc_info for r in lines] == [None, None]
    flush, evaluate = (r.getMessage() for r in lines)
    assert flush.startswith("querywatch could not write to its store (OperationalError: ")
    assert evaluate.startswith("querywatch could not evaluate its alerts (OperationalError: ")
    assert "unable to open database file" in evaluate
    assert "\n" not in flush + evaluate
    assert _failopen.internal_error_counts()["alerts.evaluate"] == before + 3
    assert state.flusher.failures == 3
