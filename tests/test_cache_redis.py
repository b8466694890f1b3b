"""The result cache on Redis, shared by several OS processes over one database: a write
committed in one process invalidates the entries of all, before its commit returns."""

from __future__ import annotations

import multiprocessing
import os
import re
import time
import typing as t
import uuid

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy import update

from querywatch._compat import create_engine
from querywatch.demo import shop

pytestmark = pytest.mark.redis


def _app(db_url: str, redis_url: str, prefix: str, workdir: str) -> t.Any:
    return shop.create_app(
        db_url,
        instance_path=os.path.join(workdir, f"instance-{os.getpid()}"),
        config={
            "QUERYWATCH_CACHE_URL": redis_url,
            "QUERYWATCH_CACHE_PREFIX": prefix,
            "QUERYWATCH_ADVISE": False,
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
        },
    )


def _stock_fn(app: t.Any) -> t.Any:
    qw = app.extensions["querywatch"].owner

    @qw.cached(name="stock")
    def stock(pid: int) -> int:
        stmt = select(shop.Product.stock).where(shop.Product.id == pid)
        return int(shop.db.session.scalar(stmt))

    return stock


def _set_stock(pid: int, value: int, *, commit: bool = True) -> None:
    shop.db.session.execute(update(shop.Product).where(shop.Product.id == pid).values(stock=value))
    if commit:
        shop.db.session.commit()
    else:
        shop.db.session.rollback()


def _reader(
    db_url: str, redis_url: str, prefix: str, workdir: str, seconds: float, out: t.Any
) -> None:
    import redis

    app = _app(db_url, redis_url, prefix, workdir)
    stock = _stock_fn(app)
    r = redis.Redis.from_url(redis_url)
    violations: list[tuple[int, int]] = []
    reads = 0
    with app.app_context():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for pid in (1, 2):  # each written by its own process
                committed = int(r.get(f"{prefix}test:committed:{pid}") or 0)
                got = stock(pid)
                reads += 1
                if got < committed:
                    violations.append((committed, got))
                shop.db.session.remove()
        hits = app.extensions["querywatch"].cache.stats["stock"].hits
    out.put(("reader", violations[:5], len(violations), reads, hits))


def _writer(
    db_url: str, redis_url: str, prefix: str, workdir: str, pid: int, n: int, out: t.Any
) -> None:
    import redis

    app = _app(db_url, redis_url, prefix, workdir)
    r = redis.Redis.from_url(redis_url)
    with app.app_context():
        for v in range(1, n + 1):
            _set_stock(pid, v)
            # The commit has returned: from now on no reader may see less than v.
            r.set(f"{prefix}test:committed:{pid}", v)
            if v % 5 == 0:
                _set_stock(pid, -1, commit=False)  # rolled back: changes nothing
            time.sleep(0.02)
    out.put(("writer", n))


@pytest.fixture
def shared(tmp_path: t.Any, redis_url: str) -> t.Iterator[tuple[str, str, str, str]]:
    import redis

    db_url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(db_url)
    shop.seed(engine, scale=0.002)
    with engine.begin() as conn:
        conn.execute(update(shop.Product).where(shop.Product.id.in_([1, 2])).values(stock=0))
    engine.dispose()
    prefix = f"qwtest:{uuid.uuid4().hex[:8]}:"
    yield db_url, redis_url, prefix, str(tmp_path)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(prefix + "*"))
    if keys:
        client.delete(*keys)


def test_read_your_writes_across_processes(shared: tuple[str, str, str, str]) -> None:
    """Three readers and two writers, each its own OS process, over one SQLite file and
    one Redis: no read returns less than what a writer's returned commit wrote."""
    db_url, redis_url, prefix, workdir = shared
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(db_url, redis_url, prefix, workdir, 6.0, out))
        for _ in range(3)
    ]
    procs += [
        ctx.Process(target=_writer, args=(db_url, redis_url, prefix, workdir, pid, 60, out))
        for pid in (1, 2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    readers = [r for r in results if r[0] == "reader"]
    assert len(readers) == 3
    for _, sample, n_violations, reads, hits in readers:
        assert n_violations == 0, sample
        assert reads > 50
        assert hits > 0  # the cache did serve: the check is not vacuous


def test_rollback_invalidates_nothing_and_commit_does(shared: tuple[str, str, str, str]) -> None:
    db_url, redis_url, prefix, workdir = shared
    app = _app(db_url, redis_url, prefix, workdir)
    stock = _stock_fn(app)
    with app.app_context():
        assert stock(1) == 0
        _set_stock(1, 5, commit=False)
        assert stock(1) == 0
        _set_stock(1, 6)
        assert stock(1) == 6
        st = app.extensions["querywatch"].cache.stats["stock"]
        assert (st.hits, st.misses, st.invalidations) == (1, 2, 1)


def _stampede(
    db_url: str, redis_url: str, prefix: str, workdir: str, threads: int, out: t.Any
) -> None:
    import threading

    import redis

    app = _app(db_url, redis_url, prefix, workdir)
    qw = app.extensions["querywatch"].owner
    r = redis.Redis.from_url(redis_url)

    @qw.cached(name="slow")
    def slow(pid: int) -> int:
        r.incr(prefix + "test:runs")
        time.sleep(0.5)
        stmt = select(shop.Product.stock).where(shop.Product.id == pid)
        return int(shop.db.session.scalar(stmt))

    while not r.get(prefix + "test:go"):  # every process starts at once
        time.sleep(0.005)
    barrier = threading.Barrier(threads)
    results: list[int] = []

    def call() -> None:
        barrier.wait()
        with app.app_context():
            results.append(slow(2))

    ts = [threading.Thread(target=call) for _ in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    out.put(results)


def test_fifty_misses_in_five_processes_compute_once(shared: tuple[str, str, str, str]) -> None:
    import redis

    db_url, redis_url, prefix, workdir = shared
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_stampede, args=(db_url, redis_url, prefix, workdir, 10, out))
        for _ in range(5)
    ]
    for p in procs:
        p.start()
    time.sleep(3)  # let every process import and wait
    client = redis.Redis.from_url(redis_url)
    client.set(prefix + "test:go", 1)
    results = [x for _ in procs for x in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert len(results) == 50
    assert len(set(results)) == 1
    assert int(client.get(prefix + "test:runs") or 0) == 1


@pytest.mark.allow_internal_errors
def test_a_foreign_value_in_redis_is_a_miss(shared: tuple[str, str, str, str]) -> None:
    import redis

    db_url, redis_url, prefix, workdir = shared
    app = _app(db_url, redis_url, prefix, workdir)
    stock = _stock_fn(app)
    client = redis.Redis.from_url(redis_url)
    with app.app_context():
        assert stock(1) == 0
        (key,) = [k for k in client.scan_iter(prefix + "c:*")]
        for garbage in (
            b"not json at all",
            b'{}\nT{"__qw__": "dataclass", "t": "os:system", "v": {"command": "true"}}',
            b'{}\n{"__qw__": "dataclass", "t": "os:system", "v": {"command": "true"}}',
            b"\x80\x04\x95pickle",
        ):
            client.set(key, garbage)
            assert stock(1) == 0  # computed again, never raised, never executed
        assert app.extensions["querywatch"].cache.stats["stock"].errors >= 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, workdir: str) -> t.Any:
    import shutil
    import subprocess

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--dbfilename",
            "outage.rdb",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=0.5)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"redis-server did not start on port {port}")


def _on_own_redis(shared: tuple[str, str, str, str]) -> tuple[t.Any, int, t.Any]:
    """A Redis of the test's own (its process, its port) and the shop on it, with a
    cached ``stock`` behind ``GET /t/stock``."""
    db_url, _, prefix, workdir = shared
    port = _free_port()
    proc = _start_redis(port, workdir)
    app = _app(db_url, f"redis://127.0.0.1:{port}/0", prefix, workdir)
    stock = _stock_fn(app)

    @app.get("/t/stock")
    def view() -> t.Any:
        return {"stock": stock(1)}

    return proc, port, app


def _until_caching_resumes(client: t.Any, st: t.Any, expected: dict[str, int]) -> None:
    """Ask until a call is a hit again; every answer meanwhile is ``expected``."""
    hits = st.hits
    deadline = time.monotonic() + 30
    while st.hits == hits:
        assert client.get("/t/stock").get_json() == expected
        assert time.monotonic() < deadline, "caching did not resume"
        time.sleep(0.05)


@pytest.mark.allow_internal_errors
def test_redis_outage_costs_no_request_and_serves_nothing_stale(
    shared: tuple[str, str, str, str],
) -> None:
    """Redis stops mid-run and comes back with its data (saved at shutdown): calls
    compute meanwhile, errors are counted, a write committed during the outage is not
    hidden by an entry from before it, and caching resumes."""
    import redis

    proc, port, app = _on_own_redis(shared)
    client = app.test_client()
    st = app.extensions["querywatch"].cache.stats["stock"]
    try:
        assert client.get("/t/stock").get_json() == {"stock": 0}
        assert client.get("/t/stock").get_json() == {"stock": 0}
        assert st.hits == 1
        redis.Redis(port=port).shutdown(save=True)  # Redis goes away, its data saved
        proc.wait(timeout=10)
        for _ in range(3):
            resp = client.get("/t/stock")
            assert resp.status_code == 200
            assert resp.get_json() == {"stock": 0}
        with app.app_context():
            _set_stock(1, 7)  # committed while Redis is down: its bump is lost
        assert client.get("/t/stock").get_json() == {"stock": 7}
        assert st.errors >= 3
        backend = app.extensions["querywatch"].cache.backend
        assert backend.breaker.trips == 1  # three failures in a row: Redis is bypassed
        proc = _start_redis(port, shared[3])  # back, with the entry that says 0
        # The breaker probes Redis once its backoff is over; until then and after, every
        # answer is the committed value, never the entry from before the outage.
        _until_caching_resumes(client, st, {"stock": 7})
        assert not backend.breaker.is_open
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_frozen_redis_is_bypassed_and_serves_nothing_stale_after(
    shared: tuple[str, str, str, str],
) -> None:
    """Redis frozen (SIGSTOP: connections open, nothing answers, every command waits
    for its socket timeout): after three timeouts in a row the cache stops asking it,
    calls compute directly, a write committed meanwhile is seen at once, and after
    SIGCONT caching resumes without ever serving the entry from before the freeze."""
    import signal

    proc, _, app = _on_own_redis(shared)
    client = app.test_client()
    cache = app.extensions["querywatch"].cache
    st = cache.stats["stock"]
    breaker = cache.backend.breaker
    try:
        assert client.get("/t/stock").get_json() == {"stock": 0}
        assert client.get("/t/stock").get_json() == {"stock": 0}
        assert st.hits == 1
        proc.send_signal(signal.SIGSTOP)
        for _ in range(20):
            assert client.get("/t/stock").get_json() == {"stock": 0}
        assert breaker.trips == 1
        assert st.errors == 3  # three socket timeouts, then no more round trips
        assert breaker.refused >= 19
        assert st.bypassed >= 19
        scrape = client.get("/metrics").get_data(as_text=True)
        name = app.extensions["querywatch"].name
        # Other apps of the shop's name in this process (earlier tests) add theirs.
        assert f'querywatch_cache_backend_up{{app="{name}"}} 0.0' in scrape
        trips = re.search(rf'querywatch_cache_backend_trips_total{{app="{name}"}} (\S+)', scrape)
        assert trips is not None
        assert float(trips.group(1)) >= 1
        with app.app_context():
            _set_stock(1, 9)  # committed while Redis is frozen: its bump is not sent
        assert client.get("/t/stock").get_json() == {"stock": 9}
        proc.send_signal(signal.SIGCONT)
        _until_caching_resumes(client, st, {"stock": 9})
        assert not breaker.is_open
        assert client.get("/t/stock").get_json() == {"stock": 9}
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["read", "commit", "rollback"]), st.integers(1, 3), st.integers(0, 50)
    ),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_random_interleavings_on_redis_agree_with_uncached_runs(
    shared: tuple[str, str, str, str], ops: list[tuple[str, int, int]]
) -> None:
    db_url, redis_url, prefix, workdir = shared
    app = _apps.get(prefix)
    if app is None:
        app = _apps[prefix] = _app(db_url, redis_url, prefix, workdir)
    stock = _stock_fn(app)
    with app.app_context():
        for op, pid, value in ops:
            if op != "read":
                _set_stock(pid, value, commit=op == "commit")
            stmt = select(shop.Product.stock).where(shop.Product.id == pid)
            assert stock(pid) == int(shop.db.session.scalar(stmt))


_apps: dict[str, t.Any] = {}


def test_nested_hits_carry_their_tables_on_redis(shared: tuple[str, str, str, str]) -> None:
    db_url, redis_url, prefix, workdir = shared
    app = _app(db_url, redis_url, prefix, workdir)
    qw = app.extensions["querywatch"].owner
    inner = _stock_fn(app)

    @qw.cached(name="outer")
    def outer(pid: int) -> int:
        return inner(pid) + 1

    with app.app_context():
        assert inner(2) == 0
        assert outer(2) == 1
        _set_stock(2, 9)
        assert outer(2) == 10
