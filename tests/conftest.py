from __future__ import annotations

import contextlib
import os
import typing as t
import uuid

import pytest

# The dialects the tests connect with, imported before any in-process pytester run:
# pytester forgets the modules a run imported, and importing the PostgreSQL dialect a
# second time registers its SQL functions again (an SAWarning, an error here).
import sqlalchemy.dialects.mysql.pymysql  # noqa: F401
from sqlalchemy import text

from querywatch import _failopen
from querywatch._compat import SQLALCHEMY_14
from querywatch._compat import create_engine
from querywatch.demo import shop

#: The PostgreSQL driver of the stack under test: psycopg 3, or psycopg2 on SQLAlchemy
#: 1.4, which has no dialect for psycopg 3.
PG_DRIVER = "psycopg2" if SQLALCHEMY_14 else "psycopg"
if SQLALCHEMY_14:
    import sqlalchemy.dialects.postgresql.psycopg2  # noqa: F401
else:
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

pytest_plugins = ["pytester"]

REQUIRE_SERVICES = os.environ.get("QUERYWATCH_REQUIRE_SERVICES") == "1"
POSTGRES_URL = os.environ.get(
    "QUERYWATCH_TEST_POSTGRES_URL",
    f"postgresql+{PG_DRIVER}://postgres@127.0.0.1:5432/test",
)
MARIADB_URL = os.environ.get(
    "QUERYWATCH_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)


REDIS_URL = os.environ.get("QUERYWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """A reachable Redis (tests keep to keys of their own prefix)."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        client.close()
    except Exception as e:
        _unavailable("Redis", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return REDIS_URL


def on_finished(app: t.Any, fn: t.Callable[[t.Any, t.Any], None], *, live: bool = False) -> None:
    """Call ``fn(record, findings)`` for every unit of work ``app`` finishes: a receiver
    of querywatch's ``record_finished`` signal for this app (held strongly; blinker drops
    it with the app). It is handed the read-only views a user's receiver gets, or with
    ``live=True`` querywatch's working record, for tests of its internals."""
    from querywatch.signals import record_finished
    from querywatch.signals import takes_live_record

    def receiver(sender: t.Any, record: t.Any, findings: t.Any, **_: t.Any) -> None:
        fn(record, findings)

    if live:
        takes_live_record(receiver)
    record_finished.connect(receiver, sender=app, weak=False)


def _unavailable(service: str, reason: str) -> t.NoReturn:
    msg = f"{service} is not reachable ({reason})."
    if REQUIRE_SERVICES:
        pytest.fail(msg + " QUERYWATCH_REQUIRE_SERVICES=1 makes this a failure.")
    pytest.skip(msg + " Start it, or set QUERYWATCH_REQUIRE_SERVICES=1 to fail instead.")


@contextlib.contextmanager
def busy_machine(per_core: int = 2) -> t.Iterator[int]:
    """``per_core`` CPU-burning processes per core for the block, as a laptop running a
    browser and an IDE beside the test is busy. Yields how many run."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(per_core * (os.cpu_count() or 1))
    ]
    try:
        yield len(procs)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@contextlib.contextmanager
def smtp_server(handler: t.Any, **options: t.Any) -> t.Iterator[int]:
    """A real SMTP server (aiosmtpd) on a free port of 127.0.0.1 for the block; yields the
    port. Its connections still open at the end are closed here: aiosmtpd's own ``stop``
    leaves them to the garbage collector, whose ResourceWarning ("unclosed transport")
    then fails whichever test runs when it collects them."""
    import asyncio
    import socket

    from aiosmtpd.controller import Controller

    sessions: list[t.Any] = []

    class _Controller(Controller):  # type: ignore[misc]
        def factory(self) -> t.Any:
            session = super().factory()
            sessions.append(session)
            return session

    with socket.socket() as sock:  # a free port (the controller checks it by connecting)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = _Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()

    async def close_connections() -> None:
        for session in sessions:
            # After STARTTLS the socket is the original transport's, under the TLS one.
            transport = session._original_transport or session.transport
            if transport is not None:
                transport.abort()
        for _ in range(3):  # abort() closes the socket on the loop's next turn
            await asyncio.sleep(0)

    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(close_connections(), controller.loop).result(10)
        controller.stop()


@pytest.fixture(autouse=True)
def no_background_thread_outlives_its_test() -> t.Iterator[None]:
    """An app's advisor thread wakes every 30 s; one left from an earlier test would
    analyse that test's database in the middle of a later one. Its flusher and incident
    worker would go on writing and evaluating alerts on a store nobody reads, taking the
    interpreter from the timed tests that follow (the demo's)."""
    yield
    from querywatch.extension._state import PROCESS

    for state in PROCESS.states():
        state.advice_worker._stop.set()
        state.flusher._stop.set()
        if state.incident_worker is not None:
            state.incident_worker._stop.set()


@pytest.fixture(autouse=True)
def internal_errors(request: pytest.FixtureRequest) -> t.Iterator[None]:
    """querywatch swallows its own errors in production; in tests they fail loudly."""
    allow = request.node.get_closest_marker("allow_internal_errors") is not None
    _failopen.RAISE_INTERNAL_ERRORS = not allow
    yield
    _failopen.RAISE_INTERNAL_ERRORS = False


def _fresh_database(server_url: str, kind: str) -> t.Iterator[str]:
    """A database of its own on a real server, dropped afterwards."""
    name = f"qw_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as e:
        _unavailable(kind, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    url = server_url.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            if kind == "PostgreSQL":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> t.Iterator[str]:
    yield from _fresh_database(POSTGRES_URL, "PostgreSQL")


@pytest.fixture(scope="session")
def mariadb_url() -> t.Iterator[str]:
    yield from _fresh_database(MARIADB_URL, "MariaDB")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def shop_url(request: pytest.FixtureRequest, tmp_path: t.Any) -> str:
    """The shop database on each dialect, seeded small."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/shop.db"
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("mariadb_url")
    engine = create_engine(url)
    try:
        shop.seed(engine, scale=0.002)
    finally:
        engine.dispose()
    return url


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def advisor_db_url(request: pytest.FixtureRequest, tmp_path_factory: t.Any) -> str:
    """The advisor's test schema (``advisor_data``) on each database, loaded once a
    module."""
    import advisor_data

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('advisor')}/advisor.db"
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = request.getfixturevalue("mariadb_url")
    advisor_data.load(url)
    return url


@pytest.fixture
def sqlite_shop_url(tmp_path: t.Any) -> str:
    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, scale=0.002)
    engine.dispose()
    return url


#: The token of :func:`guarded_shop`'s dashboard.
GUARDED_TOKEN = "dashboard-token-0123456789"


@pytest.fixture
def guarded_shop(sqlite_shop_url: str, tmp_path: t.Any) -> t.Any:
    """The shop app with the guard enforcing containment and the dashboard on
    (:data:`GUARDED_TOKEN`), its background threads held."""
    a = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={
            "QUERYWATCH_ADVISE": False,
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
            "QUERYWATCH_DASHBOARD_TOKEN": GUARDED_TOKEN,
            "QUERYWATCH_GUARD": {"containment": "enforce"},
        },
    )
    yield a
    state = a.extensions["querywatch"]
    state.flusher._stop.set()
    state.advice_worker.stop()
    with a.app_context():
        shop.db.engine.dispose()
    state.store.engine.dispose()


@pytest.fixture
def app(sqlite_shop_url: str, tmp_path: t.Any) -> t.Any:
    """The shop app on SQLite with querywatch on and a store in its instance folder."""
    a = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        config={
            "TESTING": True,
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
            # In the instance folder, where the store tests look for it (a test app's
            # store is a temporary one unless it is set).
            "QUERYWATCH_STORE_URL": f"sqlite:///{tmp_path}/instance/querywatch.db",
        },
    )
    yield a
    state = a.extensions["querywatch"]
    state.flusher._stop.set()
    state.advice_worker.stop()
    with a.app_context():
        shop.db.engine.dispose()


@pytest.fixture
def client(app: t.Any) -> t.Any:
    return app.test_client()


@pytest.fixture
def records(app: t.Any) -> list[t.Any]:
    """Every (record, findings) the app finishes during the test."""
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append((r, f)))
    return seen


def _store_on(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[str]:
    """A store on ``request.param``'s database: a SQLite file, or a server's test
    database whose querywatch tables are dropped afterwards."""
    from querywatch.store import schema

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    url = request.getfixturevalue(
        "postgres_url" if request.param == "postgresql" else "mariadb_url"
    )
    yield url
    engine = create_engine(url)
    with engine.begin() as conn:
        for tbl in reversed(schema.metadata.sorted_tables):
            conn.execute(text(f"DROP TABLE IF EXISTS {tbl.name}"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[str]:
    """A store on SQLite (a file) and on PostgreSQL (its tables dropped afterwards)."""
    yield from _store_on(request, tmp_path)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def any_store_url(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[str]:
    """A store on each database querywatch keeps its store in (SQLite, PostgreSQL,
    MariaDB), empty."""
    yield from _store_on(request, tmp_path)
