"""The result cache in one process, against a real SQLite database: hits, dependencies
taken from the captured statements, invalidation at commit (never at rollback), the race
with a concurrent commit, stampedes, values, and a property test against uncached runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import threading
import time
import typing as t

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update

from querywatch import QueryWatch
from querywatch._compat import create_engine
from querywatch._sql import statement_tables
from querywatch.demo import shop
from querywatch.exceptions import CacheValueError


@pytest.fixture
def qw(app: t.Any) -> QueryWatch:
    """The app's QueryWatch instance (the shop made it)."""
    found: QueryWatch = app.extensions["querywatch"].owner
    return found


def _stock(product_id: int) -> int:
    return int(
        shop.db.session.scalar(select(shop.Product.stock).where(shop.Product.id == product_id))
    )


def _set_stock(product_id: int, stock: int, *, commit: bool = True) -> None:
    shop.db.session.execute(
        update(shop.Product).where(shop.Product.id == product_id).values(stock=stock)
    )
    if commit:
        shop.db.session.commit()
    else:
        shop.db.session.rollback()


def test_statement_tables() -> None:
    assert statement_tables("SELECT a.x FROM a JOIN b ON b.id = a.b_id WHERE a.y = ?") == (
        frozenset({"a", "b"}),
        frozenset(),
    )
    assert statement_tables("UPDATE products SET stock=? WHERE products.id = ?")[1] == {"products"}
    assert statement_tables('INSERT INTO "order" (id) VALUES (%(id)s)')[1] == {"order"}
    assert statement_tables("DELETE FROM items WHERE id IN (SELECT id FROM old)")[1] == {"items"}
    assert statement_tables("WITH x AS (SELECT 1 FROM a) SELECT * FROM x")[0] == {"a"}
    assert statement_tables("TRUNCATE TABLE logs")[1] == {"logs"}


def test_hit_then_invalidated_by_a_commit_to_a_table_it_read(app: t.Any, qw: QueryWatch) -> None:
    calls = []

    @qw.cached(ttl=60)
    def stock(pid: int) -> int:
        calls.append(pid)
        return _stock(pid)

    with app.app_context():
        first = stock(3)
        assert stock(3) == first
        assert calls == [3]
        # A write to another table leaves it valid.
        shop.db.session.execute(text("UPDATE customers SET name = 'x' WHERE id = 1"))
        shop.db.session.commit()
        assert stock(3) == first
        assert calls == [3]
        # A rolled-back write to its table invalidates nothing.
        _set_stock(3, first + 100, commit=False)
        assert stock(3) == first
        assert calls == [3]
        # A committed one does, before commit() returns.
        _set_stock(3, first + 7)
        assert stock(3) == first + 7
        assert calls == [3, 3]
    s = app.extensions["querywatch"].cache.stats[stock.cache_name]
    assert (s.hits, s.misses, s.invalidations) == (3, 2, 1)


def test_without_invalidation_an_entry_lives_its_ttl(app: t.Any, qw: QueryWatch) -> None:
    """``invalidate=False``: a committed write to the table it read leaves the entry
    (stale on purpose) until its TTL ends; a ``ttl=0.3`` entry is recomputed after."""
    calls = []

    @qw.cached(ttl=0.3, invalidate=False)
    def stock(pid: int) -> int:
        calls.append(pid)
        return _stock(pid)

    with app.app_context():
        first = stock(4)
        _set_stock(4, first + 7)
        assert stock(4) == first  # the write did not drop it
        assert calls == [4]
        time.sleep(0.5)
        assert stock(4) == first + 7
        assert calls == [4, 4]


def test_request_reads_its_own_write_in_the_cache(
    client: t.Any, app: t.Any, qw: QueryWatch
) -> None:
    @qw.cached()
    def count_orders() -> int:
        return int(shop.db.session.scalar(select(func.count(shop.Order.id))))

    @app.get("/t/orders/count")
    def view() -> t.Any:
        return {"n": count_orders()}

    n = client.get("/t/orders/count").get_json()["n"]
    assert (
        client.post(
            "/api/orders", json={"customer_id": 1, "items": [{"product_id": 2}]}
        ).status_code
        == 201
    )
    assert client.get("/t/orders/count").get_json()["n"] == n + 1


def test_a_value_computed_across_a_commit_is_not_kept(
    app: t.Any, qw: QueryWatch, sqlite_shop_url: str
) -> None:
    """The computation reads the old stock, then another connection commits a new one
    before it ends: the caller gets what it computed, but the entry is not stored."""
    other = create_engine(sqlite_shop_url)
    calls = []

    @qw.cached()
    def stock_then_write(pid: int) -> int:
        value = _stock(pid)
        calls.append(value)
        if len(calls) == 1:
            with other.begin() as conn:
                conn.execute(
                    text("UPDATE products SET stock = stock + 1 WHERE id = :i"), {"i": pid}
                )
        return value

    with app.app_context():
        before = stock_then_write(4)
        after = stock_then_write(4)
        assert after == before + 1  # recomputed, not the value read before the commit
        assert stock_then_write(4) == after
    assert len(calls) == 2
    assert app.extensions["querywatch"].cache.stats[stock_then_write.cache_name].races == 1
    other.dispose()


def test_readers_see_every_commit_from_other_threads(app: t.Any, qw: QueryWatch) -> None:
    @qw.cached()
    def stock(pid: int) -> int:
        value = _stock(pid)
        time.sleep(0.002)  # a computation long enough to overlap the commits
        return value

    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with app.app_context():
                stock(5)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for th in readers:
        th.start()
    try:
        with app.app_context():
            for value in range(1000, 1100):
                _set_stock(5, value)
                # After commit() returns, no reader anywhere may get an older value.
                got = stock(5)
                if got != value:
                    errors.append(f"wrote {value}, read {got}")
    finally:
        stop.set()
        for th in readers:
            th.join()
    assert errors == []


def test_fifty_concurrent_misses_compute_once(app: t.Any, qw: QueryWatch) -> None:
    runs = []

    @qw.cached()
    def slow_stock(pid: int) -> int:
        runs.append(pid)
        time.sleep(0.3)
        return _stock(pid)

    barrier = threading.Barrier(50)
    results: list[int] = []

    def call() -> None:
        barrier.wait()
        with app.app_context():
            results.append(slow_stock(6))

    threads = [threading.Thread(target=call) for _ in range(50)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert runs == [6]
    assert len(results) == 50
    assert len(set(results)) == 1


@dataclasses.dataclass
class Summary:
    name: str
    price: decimal.Decimal
    when: dt.date


def test_values_come_back_as_their_types(app: t.Any, qw: QueryWatch) -> None:
    @qw.cached()
    def summary() -> dict[str, t.Any]:
        row = shop.db.session.execute(select(shop.Product.id, shop.Product.name)).first()
        return {
            "row": row,
            "s": Summary("x", decimal.Decimal("1.10"), dt.date(2026, 1, 2)),
            "at": dt.datetime(2026, 1, 2, 3, 4, 5),
        }

    with app.app_context():
        first = summary()
        again = summary()
    assert again["s"] == Summary("x", decimal.Decimal("1.10"), dt.date(2026, 1, 2))
    assert again["at"] == dt.datetime(2026, 1, 2, 3, 4, 5)
    assert again["row"] == {"id": first["row"].id, "name": first["row"].name}


def test_unserializable_result_names_the_function_and_type(app: t.Any, qw: QueryWatch) -> None:
    @qw.cached()
    def bad() -> object:
        return object()

    with app.app_context(), pytest.raises(CacheValueError) as info:
        bad()
    assert "test_cache.test_unserializable_result_names_the_function_and_type.<locals>.bad" in str(
        info.value
    )
    assert "type object" in str(info.value)


@pytest.mark.allow_internal_errors
def test_a_corrupted_entry_is_a_miss(app: t.Any, qw: QueryWatch) -> None:
    calls = []

    @qw.cached()
    def stock(pid: int) -> int:
        calls.append(pid)
        return _stock(pid)

    with app.app_context():
        stock(7)
        cache = app.extensions["querywatch"].cache
        (key,) = [k for k in cache.backend._data if k.startswith(stock.cache_name)]
        entry = cache.backend._data[key]
        cache.backend._data[key] = entry._replace(
            data=b'T{"__qw__": "dataclass", "t": "os:system", "v": {}}'
        )
        assert stock(7) == _stock(7)
    assert calls == [7, 7]
    assert cache.stats[stock.cache_name].errors == 1


def test_invalidate_by_key_and_by_table_and_bypass(app: t.Any, qw: QueryWatch) -> None:
    calls = []

    def compute() -> int:
        calls.append(1)
        return _stock(8)

    with app.app_context():
        cache = qw.cache
        cache.get_or_compute("k", compute)
        cache.get_or_compute("k", compute)
        cache.invalidate("k")
        cache.get_or_compute("k", compute)
        cache.invalidate(table="products")
        cache.get_or_compute("k", compute)
        cache.get_or_compute("k", compute, bypass=True)
        cache.get_or_compute("k", compute)
    assert len(calls) == 4


def test_autocommit_write_outside_a_request_bumps(
    app: t.Any, qw: QueryWatch, sqlite_shop_url: str
) -> None:
    @qw.cached()
    def stock(pid: int) -> int:
        return _stock(pid)

    auto = create_engine(sqlite_shop_url, isolation_level="AUTOCOMMIT")
    with app.app_context():
        before = stock(9)
        with auto.connect() as conn:
            conn.execute(text("UPDATE products SET stock = :s WHERE id = 9"), {"s": before + 3})
        assert stock(9) == before + 3
    auto.dispose()


OPS = st.lists(
    st.tuples(
        st.sampled_from(["read", "commit", "rollback"]), st.integers(1, 3), st.integers(0, 50)
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_random_interleavings_agree_with_uncached_runs(
    app: t.Any, qw: QueryWatch, ops: list[tuple[str, int, int]]
) -> None:
    @qw.cached(name="prop.stock")
    def stock(pid: int) -> int:
        return _stock(pid)

    with app.app_context():
        for op, pid, value in ops:
            if op == "read":
                assert stock(pid) == _stock(pid)
            else:
                _set_stock(pid, value, commit=op == "commit")
            assert stock(pid) == _stock(pid)


def test_counts_reach_the_store_and_the_report(app: t.Any, qw: QueryWatch) -> None:
    from querywatch._report import build_report

    @qw.cached(name="report.stock")
    def stock(pid: int) -> int:
        return _stock(pid)

    with app.app_context():
        for _ in range(4):
            stock(2)
        _set_stock(2, 11)
        stock(2)
    state = app.extensions["querywatch"]
    assert state.flusher.flush()
    # Flushed once: a second flush adds nothing.
    assert state.flusher.flush()
    report = build_report(state.store, since=time.time() - 120)
    (row,) = [c for c in report["cache"] if c["function"] == "report.stock"]
    assert (row["hits"], row["misses"], row["invalidations"]) == (3, 2, 1)
    assert row["hit_ratio"] == 0.6


class Basket:
    """No JSON form: needs pickle."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Basket) and other.items == self.items


def test_pickle_is_signed_and_a_forged_one_is_never_unpickled(app: t.Any, qw: QueryWatch) -> None:
    import pickle

    calls = []

    @qw.cached(pickle=True, name="basket")
    def basket(pid: int) -> Basket:
        calls.append(pid)
        return Basket([pid, _stock(pid)])

    app.config["SECRET_KEY"] = "s3cret"
    with app.app_context():
        value = basket(2)
        assert basket(2) == value
        assert calls == [2]
        cache = app.extensions["querywatch"].cache
        (key,) = [k for k in cache.backend._data if k.startswith("basket:")]
        entry = cache.backend._data[key]
        # A pickle someone else wrote, under the real entry's signature: refused before
        # it is unpickled, and the value computed again.
        forged = pickle.dumps(Basket([666]))
        cache.backend._data[key] = entry._replace(data=entry.data[:33] + forged)
        assert basket(2) == value
        assert calls == [2, 2]


def test_pickle_without_a_secret_says_so(tmp_path: t.Any, sqlite_shop_url: str) -> None:
    a = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "i2"),
        config={"QUERYWATCH_FLUSH_INTERVAL": 3600, "QUERYWATCH_ADVISE": False},
    )
    q = a.extensions["querywatch"].owner

    @q.cached(pickle=True, name="nosecret")
    def f() -> int:
        return 1

    with a.app_context(), pytest.raises(CacheValueError, match="set the app's SECRET_KEY"):
        f()


def test_memory_cache_under_several_workers_warns(
    tmp_path: t.Any, sqlite_shop_url: str, monkeypatch: pytest.MonkeyPatch, caplog: t.Any
) -> None:
    from querywatch import _failopen

    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    monkeypatch.setattr(_failopen, "_last_logged", {})
    a = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "i3"),
        config={"QUERYWATCH_FLUSH_INTERVAL": 3600, "QUERYWATCH_ADVISE": False},
    )
    with caplog.at_level("WARNING", logger="querywatch"):
        _ = a.extensions["querywatch"].cache
    assert "invalidates the entries of its own process only" in caplog.text
    assert "QUERYWATCH_CACHE_URL" in caplog.text


def test_stale_while_revalidate_serves_the_previous_value_meanwhile(
    app: t.Any, qw: QueryWatch
) -> None:
    gate = threading.Event()
    calls: list[int] = []

    @qw.cached(stale_while_revalidate=True, name="swr.stock")
    def stock(pid: int) -> int:
        calls.append(pid)
        if len(calls) == 2:
            gate.wait(5)  # the recomputation after the write is slow
        return _stock(pid)

    with app.app_context():
        old = stock(3)
        _set_stock(3, old + 50)
    got: dict[str, int] = {}

    def lead() -> None:
        with app.app_context():
            got["leader"] = stock(3)

    leader = threading.Thread(target=lead)
    leader.start()
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    with app.app_context():
        assert stock(3) == old  # the previous value, at once, while the leader computes
    gate.set()
    leader.join()
    assert got["leader"] == old + 50
    with app.app_context():
        assert stock(3) == old + 50
    st = app.extensions["querywatch"].cache.stats["swr.stock"]
    assert st.stale == 1
    assert calls == [3, 3]


def test_an_outer_cached_function_depends_on_what_inner_hits_read(
    app: t.Any, qw: QueryWatch
) -> None:
    """The inner call is a hit (no statement runs inside the outer computation), yet a
    write to the inner's table must invalidate the outer too."""

    @qw.cached(name="nested.inner")
    def inner(pid: int) -> int:
        return _stock(pid)

    @qw.cached(name="nested.outer")
    def outer(pid: int) -> int:
        return inner(pid) + 1

    with app.app_context():
        base = inner(5)  # cached first: outer will see a hit
        assert outer(5) == base + 1
        _set_stock(5, base + 40)
        assert outer(5) == base + 41


def test_memory_backend_is_bounded_by_entries_and_bytes() -> None:
    from querywatch.cache import MemoryBackend

    mem = MemoryBackend(max_entries=3, max_bytes=1_000_000)
    for i in range(10):
        mem.set(f"k{i}", b"P1", {}, 60)
    assert len(mem) == 3
    assert [k for k in mem._data] == ["k7", "k8", "k9"]  # least recently used went first
    mem.get("k7")  # touched: now the most recent
    mem.set("k10", b"P1", {}, 60)
    assert [k for k in mem._data] == ["k9", "k7", "k10"]
    small = MemoryBackend(max_entries=100, max_bytes=1000)
    for i in range(10):
        small.set(f"b{i}", b"P" + b"x" * 297, {}, 60)
    assert small.bytes <= 1000
    assert len(small) == 3
    small.set("huge", b"P" + b"x" * 5000, {}, 60)  # larger than the whole cache: not kept
    assert "huge" not in small._data


def test_a_call_after_a_commit_never_takes_a_computation_begun_before_it(
    app: t.Any, qw: QueryWatch
) -> None:
    """A leader reads the old row and is still computing when a commit returns; a call
    made after that commit joins the leader's flight, and must not get its value."""
    started, release = threading.Event(), threading.Event()
    seen: list[int] = []

    @qw.cached(name="coalesce.stock")
    def stock(pid: int) -> int:
        value = _stock(pid)
        seen.append(value)
        if len(seen) == 1:
            started.set()
            release.wait(5)  # the leader holds on to the old value
        return value

    with app.app_context():
        base = _stock(6)

    def lead() -> None:
        with app.app_context():
            stock(6)

    leader = threading.Thread(target=lead)
    leader.start()
    assert started.wait(5)
    with app.app_context():
        _set_stock(6, base + 5)  # committed: every call from now on must see it
        threading.Timer(0.2, release.set).start()
        assert stock(6) == base + 5
    leader.join()


def test_the_breaker_opens_after_failures_in_a_row_and_probes_once() -> None:
    """Three failures in a row open it; calls are refused; failures of calls begun
    before it opened do not lengthen it; once its time is over one caller probes, the
    others are refused; a failed probe doubles the wait, a good one closes it."""
    from querywatch.cache import Breaker

    b = Breaker(failures=3, backoff=60.0, max_backoff=300.0)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert not b.is_open
    b.success()  # in a row: a success starts the count again
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.is_open
    assert b.trips == 1
    until = b._open_until
    b.failure()  # a call that began before it opened
    assert b._open_until == until
    assert not b.allow()
    assert not b.allow_peek()
    assert b.refused == 1
    b._open_until = time.monotonic() - 1  # its time is over
    assert b.allow_peek()
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else meanwhile
    b.failure()  # the probe failed
    assert b.is_open
    assert b._backoff == 120.0
    assert b.trips == 1
    b._open_until = time.monotonic() - 1
    assert b.allow()
    b.success()
    assert not b.is_open
    assert b.allow()
    assert b._backoff == 60.0


def test_a_misspelt_cache_option_is_refused_by_name(app: t.Any) -> None:
    """The options are written once (``CacheOptions``) for ``@qw.cached`` and
    ``@cached_query``; a misspelt one is still refused, by name, at decoration."""
    from querywatch import cached_query

    qw = app.extensions["querywatch"].owner
    with pytest.raises(TypeError, match="tabels"):
        qw.cached(tabels=["orders"])
    with pytest.raises(TypeError, match="stale_while_revalidat\\b"):
        cached_query(ttl=5, stale_while_revalidat=True)
