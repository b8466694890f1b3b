"""The private names of SQLAlchemy and Flask live in ``querywatch._compat``; on an
SQLAlchemy they were not written for, capture, the cache and the metrics run on public
interfaces instead. These tests run them on that fallback, on this machine's SQLAlchemy."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy
from sqlalchemy import select
from sqlalchemy import update

from conftest import on_finished
from querywatch import _compat
from querywatch.demo import shop


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path on its fallback, as on an untested SQLAlchemy."""
    monkeypatch.setattr(_compat.FAST, "reads", False)
    monkeypatch.setattr(_compat.FAST, "commit", False)
    monkeypatch.setattr(_compat.FAST, "pool_wait", False)


def test_the_fast_paths_run_only_on_the_releases_they_were_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The two stacks CI runs, SQLAlchemy 1.4 and 2.x, both on the fast paths.
    assert _compat._release(sqlalchemy.__version__) in _compat.SQLALCHEMY_TESTED
    assert (_compat.FAST.reads, _compat.FAST.commit, _compat.FAST.pool_wait) == (True,) * 3
    assert _compat._release("1.4.54") == (1, 4)
    assert _compat._release("2.0.36") == (2, 0)
    assert _compat._release("2.1.0b2") == (2, 1)
    monkeypatch.setattr(sqlalchemy, "__version__", "3.0.0")
    untested = _compat._Paths()
    assert (untested.reads, untested.commit, untested.pool_wait) == (False,) * 3


def _lookup(app: t.Any, seen: list[t.Any]) -> t.Any:
    """One request to a read of 10 orders; its record."""
    on_finished(app, lambda r, f: seen.append(r), live=True)
    assert app.test_client().get("/api/orders/recent?limit=10").status_code == 200
    return seen[-1]


def test_reads_are_timed_on_either_path(app: t.Any) -> None:
    """The fast path times a read as SQLAlchemy's fetch strategy; the fallback, through
    a wrapper of the DBAPI cursor. Either way the record holds the same statements, rows
    and N+1 loop, each with its duration."""
    from querywatch.capture._timing import _TimedCursor
    from querywatch.capture._timing import _TimedRead

    fast = _lookup(app, [])
    assert any(type(q) is _TimedRead for q in fast.queries)

    slow: list[t.Any] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_compat.FAST, "reads", False)
        record = _lookup(app, slow)
    assert not any(type(q) is _TimedRead for q in record.queries)
    assert [q.fingerprint.id for q in record.queries] == [q.fingerprint.id for q in fast.queries]
    assert [q.rows for q in record.queries] == [q.rows for q in fast.queries]
    assert all(q.done and q.duration > 0 for q in record.queries)
    assert record.query_count == fast.query_count == 11
    assert _TimedCursor.__name__  # the wrapper that timed them


@pytest.mark.usefixtures("fallback")
def test_the_cache_is_invalidated_by_a_commit_on_the_fallback(app: t.Any) -> None:
    """Without the dialect's ``do_commit`` wrapped, a commit's tables are bumped when its
    connection goes back to the pool (Flask-SQLAlchemy's session returns it inside
    ``commit()``); a rollback bumps nothing."""
    qw = app.extensions["querywatch"].owner
    calls: list[int] = []

    @qw.cached(ttl=60)
    def stock(pid: int) -> int:
        calls.append(pid)
        return int(shop.db.session.scalar(select(shop.Product.stock).where(shop.Product.id == pid)))

    def set_stock(pid: int, value: int, *, commit: bool) -> None:
        shop.db.session.execute(
            update(shop.Product).where(shop.Product.id == pid).values(stock=value)
        )
        if commit:
            shop.db.session.commit()
        else:
            shop.db.session.rollback()

    with app.app_context():
        first = stock(3)
        assert stock(3) == first
        assert calls == [3]
        set_stock(3, first + 100, commit=False)
        assert stock(3) == first
        assert calls == [3]
        set_stock(3, first + 7, commit=True)
        assert stock(3) == first + 7
        assert calls == [3, 3]


@pytest.mark.usefixtures("fallback")
def test_metrics_are_served_without_the_pool_wait(app: t.Any) -> None:
    """Without ``pool._do_get`` wrapped, the pools' wait is not measured; everything else
    is served."""
    client = app.test_client()
    assert client.get("/api/products/3").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'http_route="/api/products/<int:product_id>"' in text
    with app.app_context():
        assert not getattr(shop.db.engine.pool, "_querywatch_timed", False)
