"""The guard's statement budgets, on each database, in a Flask-SQLAlchemy app."""

from __future__ import annotations

import threading
import typing as t
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import relationship
from sqlalchemy.pool import QueuePool

from conftest import on_finished
from querywatch import QueryWatch
from querywatch import _failopen
from querywatch._compat import ENGINE_OPTIONS
from querywatch._compat import SQLALCHEMY_14
from querywatch.exceptions import GuardConfigError
from querywatch.guard import Bulkhead
from querywatch.guard import is_cancelled
from querywatch.guard import load_guard

#: A statement each database runs for far longer than a 50 ms budget: half a second of
#: sleep on the servers, five million rows of a recursive CTE on SQLite.
SLOW = {
    "sqlite": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r"
    " WHERE n < 5000000) SELECT count(*) FROM r",
    "postgresql": "SELECT 1 FROM pg_sleep(0.5)",
    "mariadb": "SELECT SLEEP(0.5)",
}
#: What it answers when it runs to the end.
ANSWER = {"sqlite": 5000000, "postgresql": 1, "mariadb": 0}


class Hold:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.peak = 0
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()


def make_app(
    url: str, dialect: str, tmp_path: t.Any, guard: t.Any, pool_size: int = 1
) -> tuple[Flask, SQLAlchemy]:
    """A shop as Flask-SQLAlchemy apps are written: customers and their orders (a table
    named ``order``), one pooled connection so every request reuses it."""

    # One a test: its models are its own. On SQLAlchemy 2 the app's own declarative
    # base, as 2.x apps write it; 1.4 has none (Flask-SQLAlchemy's own).
    if SQLALCHEMY_14:
        db = SQLAlchemy()
    else:
        from sqlalchemy.orm import DeclarativeBase

        class Base(DeclarativeBase):
            pass

        db = SQLAlchemy(model_class=Base)

    class Customer(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "user"
        id: Mapped[int] = sa.Column(sa.Integer, primary_key=True)
        email: Mapped[str] = sa.Column(sa.String(100), nullable=False)
        orders: Mapped[list[Order]] = relationship("Order", back_populates="customer")

    class Order(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "order"
        id: Mapped[int] = sa.Column(sa.Integer, primary_key=True)
        user_id: Mapped[int] = sa.Column(sa.Integer, sa.ForeignKey("user.id"), nullable=False)
        customer: Mapped[Customer] = relationship("Customer", back_populates="orders")

    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        # A pool, shared by threads (SQLAlchemy 1.4 gives a SQLite file none by default).
        SQLALCHEMY_ENGINE_OPTIONS={
            "poolclass": QueuePool,
            "pool_size": pool_size,
            "max_overflow": 0,
            **({"connect_args": {"check_same_thread": False}} if dialect == "sqlite" else {}),
        },
        QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db",
        QUERYWATCH_FLUSH_INTERVAL=3600,
        QUERYWATCH_GUARD=guard,
    )
    db.init_app(app)
    slow = sa.text(SLOW[dialect])

    @app.get("/report")
    def report() -> t.Any:
        return jsonify(n=db.session.execute(slow).scalar())

    @app.get("/export")
    def export() -> t.Any:
        return jsonify(n=db.session.execute(slow).scalar())

    @app.get("/orders/<int:user_id>")
    def orders(user_id: int) -> t.Any:
        customer = db.session.get(Customer, user_id)
        return jsonify(ids=[o.id for o in customer.orders] if customer else [])

    @app.get("/stream")
    def stream() -> t.Any:
        # A server-side cursor on PostgreSQL and MariaDB: the budget must not go through it.
        rows = db.session.execute(
            sa.select(Order.id).order_by(Order.id), execution_options={"stream_results": True}
        )
        return jsonify(ids=[r.id for r in rows])

    @app.post("/orders/<int:user_id>")
    def new_order(user_id: int) -> t.Any:
        order = Order(user_id=user_id)
        db.session.add(order)
        db.session.commit()
        return jsonify(id=order.id), 201

    # An endpoint whose requests hold a pooled connection until the test lets them go.
    hold = app.extensions["test.hold"] = Hold()

    @app.get("/hold")
    def held() -> t.Any:
        db.session.execute(sa.text("SELECT 1"))
        with hold.lock:
            hold.inside += 1
            hold.peak = max(hold.peak, hold.inside)
        hold.entered.release()
        assert hold.gate.wait(60)
        with hold.lock:
            hold.inside -= 1
        return jsonify(ok=True)

    @app.errorhandler(DBAPIError)
    def database_error(e: DBAPIError) -> t.Any:
        # What the app's own handler sees: the driver's error, wrapped by SQLAlchemy.
        return jsonify(error=type(e.orig).__name__, cancelled=is_cancelled(e.orig)), 503

    with app.app_context():
        db.drop_all()
        db.create_all()
        db.session.add(Customer(id=1, email="a@example.com", orders=[Order(), Order()]))
        db.session.commit()
    QueryWatch(app)
    return app, db


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        # The other PostgreSQL driver: its transaction state and cancel error differ.
        pytest.param("psycopg2", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def dialect_url(request: pytest.FixtureRequest, tmp_path: t.Any) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", f"sqlite:///{tmp_path}/app.db"
    if request.param == "psycopg2":
        # Not in the dev extras: with psycopg2 installed, postgresql:// URLs would go to
        # it instead of psycopg 3, which the configuration tests check.
        pytest.importorskip(
            "psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)"
        )
        url = sa.engine.make_url(request.getfixturevalue("postgres_url"))
        return "postgresql", url.set(drivername="postgresql+psycopg2").render_as_string(False)
    fixture = "postgres_url" if request.param == "postgresql" else "mariadb_url"
    return request.param, request.getfixturevalue(fixture)


def _shutdown(app: Flask, db: SQLAlchemy) -> None:
    state = app.extensions["querywatch"]
    state.flusher._stop.set()
    state.advice_worker.stop()
    with app.app_context():
        db.engine.dispose()


def test_a_statement_over_its_endpoints_budget_is_cancelled_and_counted(
    dialect_url: tuple[str, str], tmp_path: t.Any
) -> None:
    dialect, url = dialect_url
    app, db = make_app(
        url,
        dialect,
        tmp_path,
        {
            "endpoints": {
                "GET /report": {"statement_timeout_ms": 50},
                # A budget no insert comes near, however loaded the server: what is
                # checked is that it does not outlive the request's transaction.
                "POST /orders/<int:user_id>": {"statement_timeout_ms": 2000},
                "GET /stream": {"statement_timeout_ms": 2000},
            }
        },
    )
    seen: list[t.Any] = []
    on_finished(app, lambda record, findings: seen.append(record), live=True)
    try:
        client = app.test_client()
        # The budgeted endpoint: the database cancels its statement, and the app's own
        # handler gets the driver's error for it.
        res = client.get("/report")
        assert res.status_code == 503
        assert res.json["cancelled"] is True
        expected = {"sqlite": "OperationalError", "postgresql": "QueryCanceled"}
        assert res.json["error"] == expected.get(dialect, "OperationalError")
        # A budgeted endpoint whose transaction commits, then the same statement on an
        # endpoint without a budget, on the same pooled connection: it runs to the end
        # (nothing of the budget outlived its request).
        assert client.post("/orders/1").json == {"id": 3}
        assert client.get("/export").json == {"n": ANSWER[dialect]}
        assert client.get("/orders/1").json == {"ids": [1, 2, 3]}
        assert client.get("/stream").json == {"ids": [1, 2, 3]}
        # Again on the budgeted one: cancelled again, and counted by route and shape.
        assert client.get("/report").status_code == 503
        guard = app.extensions["querywatch"].guard
        counts = guard.cancellations.snapshot()
        assert list(counts.values()) == [2]
        ((route, shape),) = counts
        assert route == "GET /report"
        # The shape is the slow statement's, as the request's record has it.
        failed = [q for r in seen if r.name == "GET /report" for q in r.queries if q.error]
        assert [q.fingerprint.id for q in failed] == [shape, shape]
        metrics = client.get("/metrics").text
        line = (
            "querywatch_guard_statements_cancelled_total{db_query_shape="
            f'"{shape}",http_request_method="GET",http_route="/report"}} 2.0'
        )
        assert line in metrics
    finally:
        _shutdown(app, db)


def test_a_default_budget_holds_every_endpoint_but_those_exempted(tmp_path: t.Any) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path}/app.db",
        "sqlite",
        tmp_path,
        {"statement_timeout_ms": 50, "endpoints": {"GET /export": {"statement_timeout_ms": 0}}},
    )
    try:
        client = app.test_client()
        assert client.get("/report").json["cancelled"] is True
        assert client.get("/export").json == {"n": 5000000}
        assert client.get("/orders/1").json == {"ids": [1, 2]}
        # Work outside a request is not an endpoint's: no budget.
        qw = app.extensions["querywatch"].owner
        with app.app_context(), qw.capture("nightly"):
            assert db.session.execute(sa.text(SLOW["sqlite"])).scalar() == 5000000
        guard = app.extensions["querywatch"].guard
        assert [route for route, _ in guard.cancellations.snapshot()] == ["GET /report"]
    finally:
        _shutdown(app, db)


def test_without_a_guard_no_record_carries_a_budget(tmp_path: t.Any) -> None:
    app, db = make_app(f"sqlite:///{tmp_path}/app.db", "sqlite", tmp_path, None)
    try:
        state = app.extensions["querywatch"]
        assert state.guard is None
        assert app.test_client().get("/export").json == {"n": 5000000}
        with app.test_request_context("/report"):
            assert state.new_record("GET /report", "request").budget is None
    finally:
        _shutdown(app, db)


def test_an_endpoint_the_app_does_not_serve_is_named_with_the_closest_one(
    tmp_path: t.Any,
) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path}/app.db",
        "sqlite",
        tmp_path,
        {"endpoints": {"GET /reports": {"statement_timeout_ms": 50}}},
    )
    try:
        guard = app.extensions["querywatch"].guard
        assert guard.unknown_endpoints() == [
            "QUERYWATCH_GUARD names the endpoint 'GET /reports', which the app does not"
            " serve. Did you mean 'GET /report'?"
        ]
    finally:
        _shutdown(app, db)


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ([1, 2], "(top)", "expected a table"),
        ({"statement_timeout": 5}, "statement_timeout", "not a setting of the guard"),
        ({"statement_timeout_ms": -1}, "statement_timeout_ms", "whole number of milliseconds"),
        ({"statement_timeout_ms": 2.5}, "statement_timeout_ms", "whole number"),
        ({"statement_timeout_ms": True}, "statement_timeout_ms", "whole number"),
        ({"endpoints": []}, "endpoints", "a table of endpoints"),
        ({"endpoints": {"/report": {}}}, "endpoints.'/report'", "its method and URL rule"),
        ({"endpoints": {"GET /r": 5}}, "endpoints.'GET /r'", "expected a table"),
        (
            {"endpoints": {"GET /r": {"timeout_ms": 5}}},
            "endpoints.'GET /r'.timeout_ms",
            "not a setting of an endpoint",
        ),
        (
            {"endpoints": {"GET /r": {"statement_timeout_ms": "200"}}},
            "endpoints.'GET /r'.statement_timeout_ms",
            "whole number",
        ),
        (
            {"endpoints": {"GET /r": {"max_concurrent": 0}}},
            "endpoints.'GET /r'.max_concurrent",
            "at least 1",
        ),
        (
            {"endpoints": {"GET /r": {"max_concurrent": "4"}}},
            "endpoints.'GET /r'.max_concurrent",
            "at least 1",
        ),
        (
            {"endpoints": {"GET /r": {"max_wait_ms": 50}}},
            "endpoints.'GET /r'.max_wait_ms",
            "set max_concurrent with it",
        ),
        (
            {"endpoints": {"GET /r": {"max_concurrent": 2, "max_wait_ms": -5}}},
            "endpoints.'GET /r'.max_wait_ms",
            "whole number",
        ),
        ({"containment": "on"}, "containment", "one of off, shadow, enforce"),
        ({"culprit_share": 1.5}, "culprit_share", "a share between 0 and 1"),
        ({"max_shed_share": 0}, "max_shed_share", "a share between 0 and 1"),
        (
            {"endpoints": {"GET /r": {"never_shed": "yes"}}},
            "endpoints.'GET /r'.never_shed",
            "true or false",
        ),
    ],
)
def test_a_malformed_guard_stops_start_up_naming_the_field(
    value: t.Any, field: str, words: str, tmp_path: t.Any
) -> None:
    with pytest.raises(GuardConfigError) as info:
        load_guard(value)
    assert info.value.field == field
    assert words in str(info.value)
    # And through init_app: nothing starts.
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["QUERYWATCH_GUARD"] = value
    with pytest.raises(GuardConfigError):
        QueryWatch(app)
    assert "querywatch" not in app.extensions


def test_the_guard_reads_a_toml_file(tmp_path: t.Any) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(
        'statement_timeout_ms = 5000\n\n[endpoints."GET /api/orders/lookup"]\n'
        "statement_timeout_ms = 200\n"
    )
    config = load_guard(str(path))
    assert config is not None
    assert config.statement_timeout("GET /api/orders/lookup") == 200
    assert config.statement_timeout("GET /api/products") == 5000
    path.write_text("statement_timeout_ms = \n")
    with pytest.raises(GuardConfigError, match="is not valid TOML"):
        load_guard(str(path))
    with pytest.raises(GuardConfigError, match="cannot be read"):
        load_guard(str(tmp_path / "missing.toml"))


def test_a_bulkhead_holds_an_endpoint_to_its_limit_under_50_concurrent_requests(
    tmp_path: t.Any,
) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path}/app.db",
        "sqlite",
        tmp_path,
        {"endpoints": {"GET /hold": {"max_concurrent": 3, "max_wait_ms": 20}}},
        pool_size=5,
    )
    hold = app.extensions["test.hold"]
    bulkhead = app.extensions["querywatch"].guard.bulkheads["GET /hold"]
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            futures = [pool.submit(lambda: app.test_client().get("/hold")) for _ in range(50)]
            # Three hold their permits (and connections) until let go; every other
            # request found the endpoint full, waited its 20 ms and was shed.
            for _ in range(3):
                assert hold.entered.acquire(timeout=60)
            _until(lambda: sum(f.done() for f in futures) >= 47)
            shed = [f.result() for f in futures if f.done()]
            assert [r.status_code for r in shed] == [503] * 47
            # Meanwhile the rest of the app has its threads and connections.
            client = app.test_client()
            assert [client.get("/orders/1").status_code for _ in range(10)] == [200] * 10
            # A browser is answered in HTML.
            page = client.get("/hold", headers={"Accept": "text/html,*/*;q=0.8"})
            assert page.status_code == 503
            assert page.mimetype == "text/html"
            assert b"GET /hold is at its limit of 3 requests at once" in page.data
            assert (bulkhead.in_flight, bulkhead.shed) == (3, 48)
            hold.gate.set()
            responses = [f.result(timeout=60) for f in futures]
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 3 + [503] * 47
        assert hold.peak == 3
        for r in responses:
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "1"
                assert r.json == {
                    "error": "overloaded",
                    "message": "GET /hold is at its limit of 3 requests at once; retry in 1 s.",
                    "retry_after": 1,
                }
        assert (bulkhead.in_flight, bulkhead.waited, bulkhead.shed) == (0, 48, 48)
        metrics = app.test_client().get("/metrics").text
        for line in (
            'querywatch_guard_limit{http_request_method="GET",http_route="/hold"} 3.0',
            'querywatch_guard_in_flight{http_request_method="GET",http_route="/hold"} 0.0',
            'querywatch_guard_waited_total{http_request_method="GET",http_route="/hold"} 48.0',
            'querywatch_guard_shed_total{http_request_method="GET",http_route="/hold"} 48.0',
        ):
            assert line in metrics
    finally:
        hold.gate.set()
        _shutdown(app, db)


def _until(condition: t.Callable[[], bool]) -> None:
    """Wait for a state other threads reach (a minute at most, for a broken build)."""
    for _ in range(12_000):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError("the state was not reached")


def test_a_waiting_request_takes_the_permit_a_finished_one_gives_back(tmp_path: t.Any) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path}/app.db",
        "sqlite",
        tmp_path,
        {"endpoints": {"GET /hold": {"max_concurrent": 1, "max_wait_ms": 60_000}}},
        pool_size=3,
    )
    hold = app.extensions["test.hold"]
    bulkhead = app.extensions["querywatch"].guard.bulkheads["GET /hold"]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(lambda: app.test_client().get("/hold"))
            assert hold.entered.acquire(timeout=60)
            second = pool.submit(lambda: app.test_client().get("/hold"))
            _until(lambda: bulkhead.waited == 1)  # the second found the endpoint full
            assert not second.done()
            assert hold.peak == 1
            hold.gate.set()
            assert [first.result(60).status_code, second.result(60).status_code] == [200, 200]
        assert hold.peak == 1
        assert (bulkhead.in_flight, bulkhead.waited, bulkhead.shed) == (0, 1, 0)
    finally:
        hold.gate.set()
        _shutdown(app, db)


@pytest.mark.allow_internal_errors
def test_an_error_inside_the_bulkhead_sheds_nothing(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path}/app.db",
        "sqlite",
        tmp_path,
        {"endpoints": {"GET /orders/<int:user_id>": {"max_concurrent": 1, "max_wait_ms": 0}}},
    )

    def broken(self: Bulkhead) -> bool:
        raise RuntimeError("injected")

    monkeypatch.setattr(Bulkhead, "enter", broken)
    before = _failopen.internal_error_counts().get("guard.admit", 0)
    try:
        client = app.test_client()
        assert [client.get("/orders/1").status_code for _ in range(5)] == [200] * 5
        assert _failopen.internal_error_counts()["guard.admit"] == before + 5
    finally:
        _shutdown(app, db)


def test_a_limit_is_never_below_one_and_a_raised_one_admits_the_waiting() -> None:
    bulkhead = Bulkhead("GET /x", 0, 60_000)
    assert bulkhead.limit == 1
    assert bulkhead.enter()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(bulkhead.enter()))
    waiter.start()
    _until(lambda: bulkhead.waited == 1)
    bulkhead.set_limit(2)
    waiter.join(60)
    assert results == [True]
    assert bulkhead.in_flight == 2
    bulkhead.set_limit(-3)
    assert bulkhead.limit == 1


def test_a_shed_clients_retry_is_told_from_a_new_request() -> None:
    """A client shed on an endpoint and back within the retry window is counted as a
    retry (and, shed again, as a retry shed), so the shed share can leave it out; a
    client not named is always a new request."""
    bulkhead = Bulkhead("GET /x", 1, 0)
    assert bulkhead.enter("a")  # holds the permit
    assert not bulkhead.enter("b")
    assert not bulkhead.enter("b")  # b's retry, shed again
    assert not bulkhead.enter("c")
    assert not bulkhead.enter(None)
    assert not bulkhead.enter(None)
    counts = (bulkhead.arrived, bulkhead.shed, bulkhead.retried, bulkhead.shed_retried)
    assert counts == (6, 5, 1, 1)
    bulkhead.leave()
    assert bulkhead.enter("c")  # c's retry, admitted
    assert (bulkhead.retried, bulkhead.shed_retried, bulkhead.shed) == (2, 1, 5)


def test_a_head_request_is_held_to_its_gets_budget_and_bulkhead(tmp_path: t.Any) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path}/app.db",
        "sqlite",
        tmp_path,
        {
            "endpoints": {
                "GET /report": {"statement_timeout_ms": 50},
                "GET /hold": {"max_concurrent": 1, "max_wait_ms": 0},
            }
        },
        pool_size=3,
    )
    hold = app.extensions["test.hold"]
    guard = app.extensions["querywatch"].guard
    try:
        client = app.test_client()
        # Flask runs the GET view for a HEAD: the same statement, cancelled the same way.
        assert client.head("/report").status_code == 503
        assert [route for route, _ in guard.cancellations.snapshot()] == ["HEAD /report"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            holder = pool.submit(lambda: app.test_client().get("/hold"))
            assert hold.entered.acquire(timeout=60)
            assert client.head("/hold").status_code == 503
            hold.gate.set()
            assert holder.result(60).status_code == 200
        assert guard.bulkheads["GET /hold"].shed == 1
        assert guard.unknown_endpoints() == []
    finally:
        hold.gate.set()
        _shutdown(app, db)


def test_a_teardown_of_the_app_that_raises_does_not_keep_the_permit(tmp_path: t.Any) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path}/app.db",
        "sqlite",
        tmp_path,
        {"endpoints": {"GET /orders/<int:user_id>": {"max_concurrent": 1, "max_wait_ms": 0}}},
    )
    broken = [True]

    @app.teardown_request
    def flaky(exc: BaseException | None) -> None:
        # Registered after QueryWatch, so Flask runs it first; raising, it stops the rest.
        if broken[0]:
            broken[0] = False
            raise RuntimeError("a teardown of the app's own")

    bulkhead = app.extensions["querywatch"].guard.bulkheads["GET /orders/<int:user_id>"]
    seen: list[t.Any] = []
    on_finished(app, lambda record, findings: seen.append(record), live=True)
    try:
        client = app.test_client()
        with pytest.raises(RuntimeError, match="a teardown of the app's own"):
            client.get("/orders/1")
        # The permit came back and the record was finished all the same.
        assert bulkhead.in_flight == 0
        assert [r.name for r in seen] == ["GET /orders/<int:user_id>"]
        assert [client.get("/orders/1").status_code for _ in range(3)] == [200] * 3
        assert (bulkhead.in_flight, bulkhead.shed) == (0, 0)
        assert len(seen) == 4
    finally:
        _shutdown(app, db)


@pytest.mark.postgres
def test_a_transaction_opened_without_the_budget_gets_it_at_its_first_guarded_statement(
    postgres_url: str, tmp_path: t.Any
) -> None:
    """Plain SQLAlchemy, one connection across a commit: the next transaction is opened by
    a statement that carries no budget (querywatch_ignore), and the guarded statement
    after it still gets its own."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db",
        QUERYWATCH_FLUSH_INTERVAL=3600,
        QUERYWATCH_GUARD={"endpoints": {"GET /plain": {"statement_timeout_ms": 50}}},
    )
    engine = sa.create_engine(postgres_url, **ENGINE_OPTIONS)  # 2.0's commit() on 1.4

    @app.get("/plain")
    def plain() -> t.Any:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))  # opens a transaction, with the budget
            conn.commit()
            conn.execute(sa.text("SELECT 2").execution_options(querywatch_ignore=True))
            try:
                conn.execute(sa.text(SLOW["postgresql"]))
            except DBAPIError as e:
                return jsonify(cancelled=is_cancelled(e.orig))
        return jsonify(cancelled=False)

    QueryWatch(app)
    state = app.extensions["querywatch"]
    try:
        assert app.test_client().get("/plain").json == {"cancelled": True}
    finally:
        state.flusher._stop.set()
        state.advice_worker.stop()
        engine.dispose()


@pytest.mark.postgres
def test_a_contained_endpoints_statements_run_without_parallel_workers(
    postgres_url: str, tmp_path: t.Any
) -> None:
    """While containment limits an endpoint (enforce), its statements run with no parallel
    workers, in their own transaction only: a limit of one then holds its scans to one
    server process, where a parallel plan's scan takes three. Its statement timeout
    stays; other endpoints, shadow mode and a lifted endpoint keep the server's plan."""
    from querywatch.guard import Containment

    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db",
        QUERYWATCH_FLUSH_INTERVAL=3600,
        QUERYWATCH_GUARD={
            "containment": "enforce",
            "endpoints": {"GET /lookup": {"statement_timeout_ms": 3000}},
        },
    )
    engine = sa.create_engine(postgres_url)

    def settings() -> t.Any:
        with engine.connect() as conn:
            workers = conn.execute(sa.text("SHOW max_parallel_workers_per_gather")).scalar()
            timeout = conn.execute(sa.text("SHOW statement_timeout")).scalar()
        return jsonify(workers=workers, timeout=timeout)

    app.add_url_rule("/lookup", "lookup", settings)
    app.add_url_rule("/other", "other", settings)
    QueryWatch(app)
    state = app.extensions["querywatch"]
    guard = state.guard
    client = app.test_client()

    def contain(mode: str) -> None:
        c = Containment("GET /lookup", mode, 1, "slo:latency:page", None, None, None, 0, 0)
        guard.apply({"GET /lookup": c})

    try:
        server = client.get("/other").json
        assert server["workers"] != "0"
        assert client.get("/lookup").json == {"workers": server["workers"], "timeout": "3s"}
        contain("enforce")
        assert client.get("/lookup").json == {"workers": "0", "timeout": "3s"}
        assert client.get("/other").json == server
        # The setting ended with the transaction: the pooled connection is as it was.
        with engine.connect() as conn:
            assert (
                conn.execute(sa.text("SHOW max_parallel_workers_per_gather")).scalar()
                == (server["workers"])
            )
        contain("shadow")
        assert client.get("/lookup").json["workers"] == server["workers"]
        contain("enforce")
        guard.apply({})
        assert client.get("/lookup").json["workers"] == server["workers"]
    finally:
        state.flusher._stop.set()
        state.advice_worker.stop()
        engine.dispose()
