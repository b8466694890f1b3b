from __future__ import annotations

import functools
import pathlib
import typing as t

import pytest
from flask import jsonify
from sqlalchemy import func
from sqlalchemy import select

from conftest import on_finished
from querywatch._detectors import N_PLUS_ONE
from querywatch._detectors import REPEATED_QUERY
from querywatch._detectors import SLOW_QUERY
from querywatch._text import relpath
from querywatch._text import site_text
from querywatch.demo import shop

HERE = __name__.split(".")[0]


@pytest.fixture
def loop_app(sqlite_shop_url: str, tmp_path: t.Any) -> t.Any:
    """The shop plus endpoints that loop in ways the ORM does not know about."""
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={"TESTING": True, "QUERYWATCH_APP_PACKAGES": ["querywatch.demo", HERE]},
    )

    def count_items(order_id: int) -> int:
        return shop.db.session.scalar(
            select(func.count(shop.OrderItem.id)).where(shop.OrderItem.order_id == order_id)
        )

    @app.get("/serializer-loop")
    def serializer_loop() -> t.Any:
        orders = shop.db.session.scalars(select(shop.Order).limit(8)).all()
        return jsonify([count_items(o.id) for o in orders])

    @app.get("/three-sites")
    def three_sites() -> t.Any:
        s = shop.db.session
        q = select(shop.Product).where(shop.Product.id == 1)
        a = s.scalars(q.where(shop.Product.stock >= 0)).first()
        b = s.scalars(q.where(shop.Product.stock >= 1)).first()
        c = s.scalars(q.where(shop.Product.stock >= 2)).first()
        d = s.scalars(q.where(shop.Product.stock >= 3)).first()
        e = s.scalars(q.where(shop.Product.stock >= 4)).first()
        return jsonify([x is not None for x in (a, b, c, d, e)])

    @app.get("/lazy-and-get")
    def lazy_and_get() -> t.Any:
        orders = shop.db.session.scalars(select(shop.Order).order_by(shop.Order.id).limit(8)).all()
        # One line: a lazy load of each order's customer, and a lookup of a customer by
        # its key that library code runs (as a login loader does for current_user).
        get = functools.partial(shop.db.session.get, shop.Customer, 10**9)
        return jsonify([[o.customer.name, get()] for o in orders])  # lazy-and-get

    @app.get("/refresh")
    def refresh() -> t.Any:
        s = shop.db.session
        customer = s.get(shop.Customer, 1)
        seen = []
        for _ in range(3):
            s.commit()  # the commit
            seen.append(customer.email)  # expired by the commit: reloaded
        return jsonify(seen)

    @app.get("/repeat")
    def repeat() -> t.Any:
        s = shop.db.session
        counts = [s.scalar(select(func.count(shop.Product.id))) for _ in range(3)]
        return jsonify(counts)

    @app.get("/repeat-two-places")
    def repeat_two_places() -> t.Any:
        s = shop.db.session
        first = s.scalar(select(func.count(shop.Product.id)))
        second = s.scalar(select(func.count(shop.Product.id)))
        return jsonify([first, second])

    yield app
    with app.app_context():
        shop.db.engine.dispose()


def _findings(app: t.Any, path: str) -> list[t.Any]:
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append(f))
    assert app.test_client().get(path).status_code == 200
    return seen[-1]


def test_n_plus_one_names_the_relationship(client: t.Any, records: list[t.Any]) -> None:
    """Lazy loads in a loop are one N+1 finding naming ``Order.items``, its call site,
    count, time and the fix."""
    assert client.get("/api/orders/recent").status_code == 200
    record, findings = records[-1]
    (f,) = [f for f in findings if f.kind == N_PLUS_ONE]
    assert f.relationship == "Order.items"
    assert f.count == 50  # one lazy load per order listed
    assert record.query_count == 51
    assert f.total > 0
    assert f.site is not None
    # The comprehension has a frame of its own before Python 3.12.
    assert f.site.function in ("<listcomp>", "recent_orders")
    # Both lines: where the lazy loads ran, and the query that loaded the orders (where
    # selectinload goes), and N per unit of work.
    lines = pathlib.Path(shop.__file__).read_text().splitlines()
    parents = 1 + next(i for i, x in enumerate(lines) if "orders = db.session.scalars(query)" in x)
    shop_file = relpath(shop.__file__)
    assert f.fix == (
        f"50 lazy loads of Order.items in one unit of work, triggered at {site_text(f.site)}."
        f" The parents were loaded at {shop_file}:{parents} (recent_orders): add"
        " .options(selectinload(Order.items))."
    )


def test_loop_outside_the_orm_is_n_plus_one(loop_app: t.Any) -> None:
    """A count query per item in a serializer is an N+1 too, without a relationship."""
    findings = _findings(loop_app, "/serializer-loop")
    (f,) = [f for f in findings if f.kind == N_PLUS_ONE]
    assert f.relationship is None
    assert f.count == 8
    assert f.site.function == "count_items"
    assert f.fix == (
        f"8 lookups in one unit of work at {site_text(f.site)}: batch them into one query"
        " with IN (...), outside the loop."
    )


def test_one_shape_from_several_call_sites_is_not_a_loop(loop_app: t.Any) -> None:
    """Five executions of one shape from five lines are five places, not one loop."""
    findings = _findings(loop_app, "/three-sites")
    assert [f for f in findings if f.kind == N_PLUS_ONE] == []


def test_repeated_identical_query(loop_app: t.Any) -> None:
    """The same read with the same parameters three times is one repeated-query finding."""
    findings = _findings(loop_app, "/repeat")
    (f,) = [f for f in findings if f.kind == REPEATED_QUERY]
    assert f.count == 3
    assert f.fingerprint.shape == "SELECT count(products.id) AS count_1 FROM products"
    assert "@qw.cached" in f.fix  # the remedy when other requests ask for it too
    # Same parameters: not an N+1.
    assert [f for f in findings if f.kind == N_PLUS_ONE] == []


def test_repeated_identical_query_from_two_places(loop_app: t.Any) -> None:
    """The same read with the same parameters from two lines is a repeat too."""
    findings = _findings(loop_app, "/repeat-two-places")
    (f,) = [f for f in findings if f.kind == REPEATED_QUERY]
    assert f.count == 2


def test_slow_query_threshold(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """Statements at or over QUERYWATCH_SLOW_QUERY_MS are slow-query findings."""
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_SLOW_QUERY_MS": 0.0001},
    )
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append(f))
    assert (
        app.test_client().get("/api/orders/lookup?email=customer1@example.com").status_code == 200
    )
    (f,) = [f for f in seen[-1] if f.kind == SLOW_QUERY]
    assert "orders.customer_email = ?" in f.fingerprint.shape
    assert f.count == 1
    with app.app_context():
        shop.db.engine.dispose()


def test_n_plus_one_threshold_is_configurable(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """Below QUERYWATCH_N_PLUS_ONE_THRESHOLD a loop is not reported."""
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_N_PLUS_ONE_THRESHOLD": 51},
    )
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append(f))
    assert app.test_client().get("/api/orders/recent").status_code == 200
    assert [f for f in seen[-1] if f.kind == N_PLUS_ONE] == []
    with app.app_context():
        shop.db.engine.dispose()


def test_findings_are_deduplicated_with_counts(client: t.Any, app: t.Any) -> None:
    """Findings are kept once per (kind, endpoint, fingerprint) with first/last seen and
    how often they occurred."""
    for _ in range(3):
        assert client.get("/api/orders/recent").status_code == 200
    snap = app.extensions["querywatch"].stats.drain()
    n1 = [f for f in snap.findings.values() if f.kind == N_PLUS_ONE]
    assert len(n1) == 1
    assert n1[0].occurrences == 3
    assert n1[0].queries == 150
    assert n1[0].endpoint == "GET /api/orders/recent"
    assert n1[0].first_seen <= n1[0].last_seen


def _line_of(marker: str) -> int:
    lines = pathlib.Path(__file__).read_text().splitlines()
    return 1 + next(i for i, x in enumerate(lines) if x.rstrip().endswith(marker))


def test_a_lazy_load_and_a_lookup_at_one_line_are_two_things(loop_app: t.Any) -> None:
    """Seen: the lazy loads of a relationship and the login loader's SELECT ... WHERE
    user.id = ? credited to one place, so an N+1 said 15 where 13 were lazy loads."""
    findings = _findings(loop_app, "/lazy-and-get")
    (n1,) = [f for f in findings if f.kind == N_PLUS_ONE]
    assert n1.relationship == "Order.customer"
    assert n1.count == 8  # the lazy loads alone
    assert n1.fix.startswith("8 lazy loads of Order.customer in one unit of work, triggered at")
    (again,) = [f for f in findings if f.kind == REPEATED_QUERY]
    assert again.relationship is None
    assert again.count == 8


def test_a_reload_after_a_commit_is_not_a_cache_case(loop_app: t.Any) -> None:
    """Seen: a repeated read that was SQLAlchemy reloading an object expired by a commit
    (expire_on_commit) was told "cache it with @qw.cached". Caching ORM entities across
    requests is wrong: the finding names the commit and the real fixes."""
    findings = _findings(loop_app, "/refresh")
    (f,) = [f for f in findings if f.kind == REPEATED_QUERY]
    assert f.relationship == "Customer (refreshed after a commit)"
    assert f.count == 4  # the first load, and three reloads
    assert "@qw.cached" not in f.fix
    commit = f"tests/test_detectors.py:{_line_of('# the commit')} (refresh)"
    assert f.fix.startswith(
        "SQLAlchemy reloads Customer after each commit expires it (expire_on_commit); the"
        f" last commit ran at {commit}. Not a cache case:"
    )
