"""The result cache on Redis, shared by several OS processes over one database: a write
committed in one process invalidates the entries of all, before its commit returns."""

from __future__ import annotations

import multiprocessing
import os
import time
import typing as t
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import update

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
            committed = int(r.get(prefix + "test:committed") or 0)
            got = stock(1)
            reads += 1
            if got < committed:
                violations.append((committed, got))
            shop.db.session.remove()
        hits = app.extensions["querywatch"].cache.stats["stock"].hits
    out.put(("reader", violations[:5], len(violations), reads, hits))


def _writer(db_url: str, redis_url: str, prefix: str, workdir: str, n: int, out: t.Any) -> None:
    import redis

    app = _app(db_url, redis_url, prefix, workdir)
    r = redis.Redis.from_url(redis_url)
    with app.app_context():
        for v in range(1, n + 1):
            _set_stock(1, v)
            # The commit has returned: from now on no reader may see less than v.
            r.set(prefix + "test:committed", v)
            if v % 5 == 0:
                _set_stock(1, -1, commit=False)  # rolled back: changes nothing
            time.sleep(0.02)
    out.put(("writer", n))


@pytest.fixture
def shared(tmp_path: t.Any, redis_url: str) -> t.Iterator[tuple[str, str, str, str]]:
    import redis

    db_url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(db_url)
    shop.seed(engine, scale=0.002)
    with engine.begin() as conn:
        conn.execute(update(shop.Product).where(shop.Product.id == 1).values(stock=0))
    engine.dispose()
    prefix = f"qwtest:{uuid.uuid4().hex[:8]}:"
    yield db_url, redis_url, prefix, str(tmp_path)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(prefix + "*"))
    if keys:
        client.delete(*keys)


def test_read_your_writes_across_processes(shared: tuple[str, str, str, str]) -> None:
    db_url, redis_url, prefix, workdir = shared
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(db_url, redis_url, prefix, workdir, 6.0, out))
        for _ in range(3)
    ]
    procs.append(ctx.Process(target=_writer, args=(db_url, redis_url, prefix, workdir, 60, out)))
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
