"""No value an app's statements carry reaches anything querywatch keeps or shows.

Canary values go through every path a value can take on PostgreSQL: bound parameters
that a slow read lends to the advisor, a literal formatted into the SQL, a value the
database folds before it prints it (``lower(:e)``), and a value quoted back in the
database's error. Then every place querywatch writes to is searched for them: the store's
tables, ``/metrics``, the dashboard's pages and JSON, ``querywatch report --json``, the
logs, the notifications (webhook and mail) and the postmortem."""

from __future__ import annotations

import json
import logging
import time
import typing as t

import pytest
from flask import jsonify
from flask import request
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text

from querywatch._compat import create_engine
from querywatch.demo import shop

#: Each canary holds ``canary`` and a tag of its own, in any case.
BOUND = "Canary.Bound.7F3A@Example.COM"  # folded by lower() to canary.bound.7f3a@...
INLINE = "canary-inline-55e2@example.com"
BAD_NUMBER = "canary-error-9d1c"
TAGS = ("canary", "7f3a", "55e2", "9d1c")
DASHBOARD_TOKEN = "dashboard-token-0123456789"


def _add_probe_routes(app: t.Any) -> None:
    """Four endpoints, one for each way a value travels."""

    @app.get("/probe/bound")
    def bound() -> t.Any:
        email = request.args["email"]
        rows = shop.db.session.scalars(
            select(shop.Order).where(shop.Order.customer_email == email)
        ).all()
        return jsonify(n=len(rows))

    @app.get("/probe/folded")
    def folded() -> t.Any:
        email = request.args["email"]
        rows = shop.db.session.scalars(
            select(shop.Order).where(func.lower(shop.Order.customer_email) == func.lower(email))
        ).all()
        return jsonify(n=len(rows))

    @app.get("/probe/inline")
    def inline() -> t.Any:
        email = request.args["email"].replace("'", "''")
        rows = shop.db.session.execute(
            text(f"SELECT id, status FROM orders WHERE customer_email = '{email}'")
        ).all()
        return jsonify(n=len(rows))

    @app.get("/probe/error")
    def error() -> t.Any:
        from sqlalchemy.exc import DataError

        try:
            shop.db.session.execute(
                text("SELECT id FROM orders WHERE id = CAST(:v AS integer)"),
                {"v": request.args["v"]},
            ).all()
        except DataError:
            shop.db.session.rollback()
            return jsonify(error="not a number")
        return jsonify(error=None)


@pytest.fixture
def pg_shop(tmp_path: t.Any) -> t.Iterator[str]:
    from conftest import POSTGRES_URL
    from conftest import _fresh_database

    databases = _fresh_database(POSTGRES_URL, "PostgreSQL")
    url = next(databases)
    engine = create_engine(url)
    shop.seed(engine, scale=0.01)
    engine.dispose()
    yield url
    next(databases, None)


@pytest.mark.postgres
def test_canary_values_reach_nothing_querywatch_keeps_or_shows(
    pg_shop: str, tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    from click.testing import CliRunner

    from conftest import smtp_server
    from querywatch.cli import cli
    from querywatch.incidents import Incidents
    from querywatch.incidents.postmortem import render
    from test_incidents import SECRET
    from test_incidents import Receiver

    caplog.set_level(logging.DEBUG)
    mails: list[t.Any] = []

    class Mailbox:
        async def handle_DATA(self, server: t.Any, session: t.Any, envelope: t.Any) -> str:  # noqa: N802
            import email

            mails.append(email.message_from_bytes(envelope.content))
            return "250 OK"

    receiver = Receiver()
    store_url = f"sqlite:///{tmp_path}/store.db"
    with smtp_server(Mailbox()) as port:
        app = shop.create_app(
            pg_shop,
            instance_path=str(tmp_path / "instance"),
            config={
                "QUERYWATCH_STORE_URL": store_url,
                "QUERYWATCH_DASHBOARD_TOKEN": DASHBOARD_TOKEN,
                # Every read is slow: each lends its parameters to the advisor.
                "QUERYWATCH_SLOW_QUERY_MS": 0.001,
                "QUERYWATCH_SCAN_MIN_ROWS": 100,
                "QUERYWATCH_ADVISE_INTERVAL": 0.2,
                "QUERYWATCH_BUCKET_SECONDS": 1,
                "QUERYWATCH_FLUSH_INTERVAL": 0.2,
                "QUERYWATCH_ALERT_INTERVAL": 0.2,
                "QUERYWATCH_INCIDENT_INTERVAL": 0.2,
                "QUERYWATCH_ALERT_TIME_SCALE": 1 / 720,
                "QUERYWATCH_ALERT_NEW_FULL_SCAN": True,
                "QUERYWATCH_OBJECTIVES": [
                    # Every request breaks it: the page fires and opens an incident.
                    {
                        "name": "probe latency",
                        "endpoint": "GET /probe/bound",
                        "target": 0.99,
                        "threshold_ms": 0.001,
                    },
                ],
                "QUERYWATCH_ESCALATION": {
                    "targets": {
                        "hook": {"type": "webhook", "url": receiver.url, "secret": SECRET},
                        "mail": {
                            "type": "email",
                            "to": ["devops@example.com"],
                            "host": "127.0.0.1",
                            "port": port,
                        },
                    },
                    "levels": [{"targets": ["hook", "mail"], "delay_minutes": 15}],
                    "update_minutes": 600,
                },
            },  # fmt: skip
        )
        _add_probe_routes(app)
        state = app.extensions["querywatch"]
        client = app.test_client()
        store = state.store

        def traffic() -> None:
            for path in (
                f"/probe/bound?email={BOUND}",
                f"/probe/folded?email={BOUND}",
                f"/probe/inline?email={INLINE}",
                f"/probe/error?v={BAD_NUMBER}",
            ):
                assert client.get(path).status_code == 200

        def wait(what: str, check: t.Callable[[], t.Any], seconds: float = 60) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                traffic()
                if check():
                    return
                time.sleep(0.02)
            raise AssertionError(f"no {what} within {seconds} s")

        try:
            wait("page", lambda: receiver.received and mails)
            worker = state.advice_worker
            wait(
                "the advisor's rounds on the probes' reads of orders",
                lambda: (
                    (fps := _reads_of_orders(store))
                    and len(fps) >= 4
                    and all(fp in worker._recent for fp in fps)
                ),
            )
            wait(
                "a full-scan ticket",
                lambda: any(
                    a.kind == "full_scan" and a.state == "firing"
                    for a in store.alert_states().values()
                ),
            )
            incidents = Incidents(store)
            (incident,) = incidents.recent()
            incidents.resolve(incident.id, "carol", "fixed")
            wait("resolve message", lambda: receiver.received[-1]["action"] == "resolve", 30)
            postmortem = render(incidents.get(incident.id), incidents.timeline(incident.id), store)
            state.flusher.flush()

            auth = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
            seen: dict[str, str] = {"postmortem": postmortem}
            seen["metrics"] = client.get("/metrics").get_data(as_text=True)
            for page in ("", "endpoints", "shapes", "findings", "alerts", "incidents", "cache"):
                seen[f"page /{page}"] = client.get(f"/_querywatch/{page}", headers=auth).get_data(
                    as_text=True
                )
                api = page or "overview"
                seen[f"api {api}"] = client.get(f"/_querywatch/api/{api}", headers=auth).get_data(
                    as_text=True
                )
            seen["incident page"] = client.get(
                f"/_querywatch/incidents/{incident.id}", headers=auth
            ).get_data(as_text=True)
            seen["incident api"] = client.get(
                f"/_querywatch/api/incidents/{incident.id}", headers=auth
            ).get_data(as_text=True)
            report = CliRunner().invoke(
                cli, ["report", "--store", store_url, "--since", "1h", "--json"]
            )
            assert report.exit_code == 0, report.output
            seen["report json"] = report.output
            seen["webhooks"] = json.dumps(receiver.received)
            seen["mails"] = "\n".join(m.as_string() for m in mails)
        finally:
            state.flusher._stop.set()
            state.advice_worker.stop()
            with app.app_context():
                shop.db.engine.dispose()
            receiver.close()

    # The advisor run by hand on statements a person pasted: one the database refuses,
    # quoting the value in its error, and one with the value inline. Its findings go to
    # the store too.
    sql = tmp_path / "pasted.sql"
    sql.write_text(
        f"SELECT id FROM orders WHERE id = CAST('{BAD_NUMBER}' AS integer);\n"
        f"SELECT id, status FROM orders WHERE customer_email = '{INLINE}';\n"
    )
    base = ["advise", "--sql", str(sql), "--database-url", pg_shop, "--store", store_url]
    for extra in (["--json"], []):
        out = CliRunner().invoke(cli, [*base, "--scan-min-rows", "100", *extra])
        assert out.exit_code == 0, out.output
        seen[f"advise {' '.join(extra) or 'text'}"] = out.output
    assert "invalid input syntax for type integer: ?" in seen["advise --json"]
    engine = create_engine(store_url)
    with engine.connect() as conn:
        for (table,) in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")):
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            seen[f"store {table}"] = repr(rows)
    engine.dispose()
    seen["logs"] = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name.startswith("querywatch")
    )

    # The paths were taken: the advisor planned the lookups with the canaries, the
    # alerts and the notifications went out.
    assert "Fix: Seq Scan on orders (filter:" in seen["store qw_alerts"]
    assert "(lower((customer_email)::text) = ?::text)" in seen["api findings"]
    leaks = {
        where: sorted({tag for tag in TAGS if tag in body.lower()})
        for where, body in seen.items()
        if any(tag in body.lower() for tag in TAGS)
    }
    assert leaks == {}


def _reads_of_orders(store: t.Any) -> list[str]:
    """The read shapes stored so far that read ``orders``."""
    fps = store.window(0, time.time() + 60).shapes
    return [s.fingerprint for s in store.shapes(fps).values() if "FROM orders" in s.shape]


@pytest.mark.parametrize(
    "db", [pytest.param("postgresql", marks=pytest.mark.postgres),
           pytest.param("mariadb", marks=pytest.mark.mariadb)],
)  # fmt: skip
def test_a_database_error_keeps_its_names_and_loses_its_values(
    db: str, request: pytest.FixtureRequest
) -> None:
    """Real errors that quote the value they choked on: the line querywatch keeps of
    them names the table, column or key, never the value."""
    from sqlalchemy.exc import DBAPIError

    from querywatch._redact import error_line

    url = request.getfixturevalue("postgres_url" if db == "postgresql" else "mariadb_url")
    strict = {"init_command": "SET SESSION sql_mode = 'STRICT_ALL_TABLES'"}
    engine = create_engine(url, connect_args=strict if db == "mariadb" else {})
    table = "qw_privacy_errors"
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            conn.execute(text(f"CREATE TABLE {table} (email VARCHAR(60) UNIQUE, n INTEGER)"))
            conn.execute(text(f"INSERT INTO {table} VALUES ('{INLINE}', 1)"))
        failing = [
            (f"INSERT INTO {table} VALUES (:e, 2)", {"e": INLINE}),
            (f"INSERT INTO {table} (email, n) VALUES ('x', :v)", {"v": BAD_NUMBER}),
            ("SELECT * FROM qw_no_such_table WHERE a = :v", {"v": BAD_NUMBER}),
        ]
        lines = []
        for sql, params in failing:
            with engine.begin() as conn:
                try:
                    conn.execute(text(sql), params)
                except DBAPIError as e:
                    error = e
                else:
                    raise AssertionError(f"{sql} did not fail")
            if "no_such" not in sql:
                assert any(tag in str(error).lower() for tag in TAGS[1:]), str(error)
            lines.append(error_line(error))
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
    for line in lines:
        assert not any(tag in line.lower() for tag in TAGS), line
    text_ = "\n".join(lines)
    assert "qw_no_such_table" in text_  # the name that says what is wrong is kept
    unique = "qw_privacy_errors_email_key" if db == "postgresql" else "'email'"
    assert unique in text_, text_


@pytest.mark.parametrize(
    ("db", "no_backslash_escapes"),
    [("sqlite", False),
     pytest.param("postgresql", False, marks=pytest.mark.postgres),
     pytest.param("mariadb", False, marks=pytest.mark.mariadb),
     pytest.param("mariadb", True, marks=pytest.mark.mariadb)],
)  # fmt: skip
def test_inline_values_are_masked_by_the_quoting_of_the_database_that_ran_them(
    db: str, no_backslash_escapes: bool, tmp_path: t.Any, request: pytest.FixtureRequest
) -> None:
    """``'C:\\'`` is a whole string on PostgreSQL and SQLite, and on MariaDB in
    NO_BACKSLASH_ESCAPES mode; elsewhere MariaDB reads ``'it\\'s'`` as one. Each app runs
    the statement its database reads as two strings, and neither reaches the store."""
    if db == "sqlite":
        shop_url = f"sqlite:///{tmp_path}/shop.db"
    else:
        shop_url = request.getfixturevalue("postgres_url" if db == "postgresql" else "mariadb_url")
    engine = create_engine(shop_url)
    shop.seed(engine, scale=0.002)
    engine.dispose()
    backslash = db == "mariadb" and not no_backslash_escapes
    config: dict[str, t.Any] = {"QUERYWATCH_STORE_URL": f"sqlite:///{tmp_path}/store.db"}
    if no_backslash_escapes:
        config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "connect_args": {"init_command": "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"}
        }
    app = shop.create_app(shop_url, instance_path=str(tmp_path / "instance"), config=config)
    path = "it\\'s" if backslash else "C:\\"

    @app.get("/probe/path")
    def by_path() -> t.Any:
        rows = shop.db.session.execute(
            text(
                f"SELECT id FROM orders WHERE customer_email = '{path}'"
                f" OR customer_email = '{INLINE}'"
            )
        ).all()
        return jsonify(n=len(rows))

    state = app.extensions["querywatch"]
    try:
        assert app.test_client().get("/probe/path").status_code == 200
        assert state.flusher.flush()
        engine = create_engine(config["QUERYWATCH_STORE_URL"])
        with engine.connect() as conn:
            tables = [r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))]
            dump = repr([conn.execute(text(f'SELECT * FROM "{tb}"')).all() for tb in tables
                         if not tb.startswith("sqlite_") and not tb.startswith("ix_")])  # fmt: skip
        engine.dispose()
    finally:
        state.flusher._stop.set()
        state.advice_worker.stop()
        with app.app_context():
            shop.db.engine.dispose()
    assert "customer_email = ? OR customer_email = ?" in dump
    assert not any(tag in dump.lower() for tag in TAGS)
