"""``querywatch advise``: from the shapes the shop's traffic left in the store to a verified
index, written back so ``querywatch report`` cites it."""

from __future__ import annotations

import json
import pathlib
import typing as t

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from conftest import PG_DRIVER
from querywatch._compat import create_engine
from querywatch.cli import cli
from querywatch.demo import shop


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def served_shop(request: pytest.FixtureRequest, tmp_path: t.Any) -> tuple[str, str]:
    """(shop database URL, store URL) after some traffic on every endpoint."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/shop.db"
    else:
        url = request.getfixturevalue("postgres_url")
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS hypopg"))
        engine.dispose()
    engine = create_engine(url)
    shop.seed(engine, scale=0.05)  # 10,000 orders
    engine.dispose()
    store_url = f"sqlite:///{tmp_path}/store.db"
    app = shop.create_app(
        url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_STORE_URL": store_url, "QUERYWATCH_FLUSH_INTERVAL": 3600},
    )
    client = app.test_client()
    for i in range(1, 6):
        assert client.get(f"/api/orders/lookup?email=customer{i}@example.com").status_code == 200
        assert client.get(f"/api/customers/{i}/orders").status_code == 200
        assert client.get("/api/orders/recent?limit=5").status_code == 200
        assert client.get("/api/products?category=books").status_code == 200
    state = app.extensions["querywatch"]
    assert state.flusher.flush()
    state.flusher._stop.set()
    state.advice_worker.stop()
    with app.app_context():
        shop.db.engine.dispose()
    return url, store_url


def test_advise_finds_the_lookup_index_and_records_it(served_shop: tuple[str, str]) -> None:
    url, store_url = served_shop
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "advise",
            "--store",
            store_url,
            "--database-url",
            url,
            "--json",
            "--scan-min-rows",
            "5000",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    first = data["suggestions"][0]
    assert first["table"] == "orders"
    assert first["keys"] == ["customer_email"]
    (served,) = first["queries"]
    assert served["endpoints"] == ["GET /api/orders/lookup"]
    assert served["cost_after"] <= served["cost_before"] / 2
    assert "customer1@example.com" not in result.output  # drawn values are never shown
    lookup = next(q for q in data["queries"] if "WHERE orders.customer_email" in q["shape"])
    assert "full_scan" in [f["kind"] for f in lookup["findings"]], lookup

    # The report now cites the plan finding with its verified fix.
    result = runner.invoke(cli, ["report", "--store", store_url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    scans = [
        f
        for f in report["findings"]
        if f["kind"] == "full_scan" and f["endpoint"] == "GET /api/orders/lookup"
    ]
    assert len(scans) == 1
    assert "Verified fix: CREATE INDEX" in scans[0]["fix"]
    assert "(customer_email)" in scans[0]["fix"]

    # And the text form says it for people.
    result = runner.invoke(
        cli, ["advise", "--store", store_url, "--database-url", url, "--no-record"]
    )
    assert result.exit_code == 0, result.output
    assert "Suggested indexes" in result.output
    assert "ix_orders_customer_email" in result.output

    # One shape alone, as a slow-query finding's fix says to ask for it.
    result = runner.invoke(
        cli,
        ["advise", "--store", store_url, "--database-url", url, "--no-record", "--json"]
        + ["--shape", lookup["fingerprint"]],
    )
    assert result.exit_code == 0, result.output
    assert [q["fingerprint"] for q in json.loads(result.output)["queries"]] == [
        lookup["fingerprint"]
    ]
    # The default takes every shape of this window; a lower --limit says how many it
    # left out, and how to take them all.
    shapes = len(data["queries"])
    assert not any("left out" in n for n in data["notes"])
    result = runner.invoke(
        cli,
        ["advise", "--store", store_url, "--database-url", url, "--no-record", "--json"]
        + ["--limit", "2"],
    )
    assert result.exit_code == 0, result.output
    notes = json.loads(result.output)["notes"]
    assert notes[0] == (
        f"{shapes - 2} cheaper read shapes of the window left out (--limit 2); pass"
        f" --limit {shapes} to analyse every one (an index that serves several shapes shows"
        " once all are in)."
    )
    result = runner.invoke(
        cli, ["advise", "--store", store_url, "--database-url", url, "--shape", "nope"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("No read query shape nope with a runnable sample")


def test_advise_sql_file_reports_each_statement(tmp_path: t.Any) -> None:
    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, scale=0.05)
    sql = tmp_path / "queries.sql"
    sql.write_text(
        "-- the lookup\n"
        "SELECT id FROM orders WHERE customer_email = 'customer3@example.com';\n"
        "DELETE FROM orders;\n"
        "SELECT nonsense FROM;\n"
    )
    result = CliRunner().invoke(cli, ["advise", "--database-url", url, "--sql", str(sql), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    lookup, delete, bad = data["queries"]
    assert data["suggestions"][0]["keys"] == ["customer_email"]
    assert lookup["errors"] == []
    assert "never explained nor run" in delete["errors"][0]
    assert bad["errors"][0].startswith("The statement could not be parsed")
    # Each shape without a suggestion says why, first; the one served says nothing.
    assert lookup["no_suggestion"] is None
    assert delete["no_suggestion"] == delete["errors"][0]
    text_out = CliRunner().invoke(cli, ["advise", "--database-url", url, "--sql", str(sql)])
    assert "No index suggested (why, for each shape)" in text_out.output
    assert "none that was tried improved a plan enough" not in text_out.output
    assert "never explained nor run" in text_out.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar_one() == 10_000
    engine.dispose()


def test_advise_without_a_database_says_how_to_give_one(tmp_path: t.Any) -> None:
    result = CliRunner().invoke(cli, ["advise", "--store", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 2
    assert "Pass '--database-url URL'" in result.output


def test_advise_on_a_database_without_its_driver_says_what_to_install(tmp_path: t.Any) -> None:
    sql = tmp_path / "q.sql"
    sql.write_text("SELECT 1")
    url = "postgresql+pg8000://u:secret@127.0.0.1/test"
    result = CliRunner().invoke(cli, ["advise", "--database-url", url, "--sql", str(sql)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "needs the Python driver 'pg8000', which is not installed here" in out
    # The driver of this SQLAlchemy: psycopg 3, or psycopg2 on 1.4 (no psycopg 3 there).
    if PG_DRIVER == "psycopg":
        assert "use postgresql+psycopg:// after pip install 'querywatch[postgres]'" in out
    else:
        assert "use postgresql+psycopg2:// after pip install psycopg2-binary" in out
    assert "secret" not in result.output
    assert "Traceback" not in result.output


def _run_on_terminal(args: list[str], *, stderr_tty: bool, cwd: str) -> tuple[int, str, str]:
    """Run ``querywatch ARGS`` in a process of its own, its standard output piped and
    its standard error a pseudo-terminal (as in a shell) or a pipe (as in CI, or
    ``2> file``): (exit status, stdout, stderr)."""
    import os
    import pty
    import subprocess
    import sys
    import threading

    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    for var in ("CI", "GITHUB_ACTIONS", "NO_COLOR", "TTY_COMPATIBLE", "FORCE_COLOR"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "querywatch", *args]
    if not stderr_tty:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal's other end is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        p = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=slave, text=True, env=env, cwd=cwd, timeout=300
        )
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    return p.returncode, p.stdout, b"".join(chunks).decode("utf-8", "replace")


def test_advise_and_check_show_progress_on_a_terminal_only(tmp_path: t.Any) -> None:
    """On a terminal, ``advise`` draws a bar per query shape and ``check`` one per
    request, on standard error, gone when done; piped, neither writes a byte of it, and
    the output is the same."""
    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, scale=0.02)
    engine.dispose()
    sql = tmp_path / "queries.sql"
    sql.write_text(
        "SELECT id FROM orders WHERE customer_email = 'customer3@example.com';\n"
        "SELECT id FROM orders WHERE status = 'paid';\n"
        "SELECT id FROM customers WHERE id = 7;\n"
    )
    advise = ["advise", "--database-url", url, "--sql", str(sql), "--json"]
    code, out, err = _run_on_terminal(advise, stderr_tty=True, cwd=str(tmp_path))
    assert code == 0, err
    assert "Analysing query shapes" in err
    assert "/3" in err  # "N/3" shapes done
    code, piped_out, piped_err = _run_on_terminal(advise, stderr_tty=False, cwd=str(tmp_path))
    assert code == 0, piped_err
    assert "Analysing" not in piped_err
    assert "\x1b" not in piped_err
    # The answer on standard output is the same JSON either way.
    assert json.loads(out)["suggestions"] == json.loads(piped_out)["suggestions"]
    check = [
        "check",
        "--app",
        "querywatch.demo.shop:create_app(fixed=True)",
        "--seed",
        "querywatch.demo.shop:seed_for_check",
        "--requests",
        shop.CHECKS_FILE,
    ]
    code, out, err = _run_on_terminal(check, stderr_tty=True, cwd=str(tmp_path))
    assert code == 0, out + err
    assert "Checking requests" in err
    assert "/7" in err
    code, piped_out, piped_err = _run_on_terminal(check, stderr_tty=False, cwd=str(tmp_path))
    assert code == 0, piped_out + piped_err
    assert "Checking requests" not in piped_err
    assert piped_out.startswith("querywatch: 7 checked, 22 queries, no budget broken")
    assert out.startswith("querywatch: 7 checked, 22 queries, no budget broken")


def _alembic_env(folder: t.Any, url: str) -> tuple[t.Any, str]:
    """A real Alembic environment in ``folder/migrations`` (``alembic init``) on the
    database ``url``, with a first, empty revision to chain to: (its config, that
    revision's id)."""
    from alembic import command
    from alembic.config import Config

    command.init(Config(str(folder / "alembic.ini")), str(folder / "migrations"))
    # No ini file: env.py would hand it to logging.config.fileConfig, which disables
    # every logger already made in this process (querywatch's included) for the tests
    # that run after this one.
    config = Config()
    config.set_main_option("script_location", str(folder / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    first = command.revision(config, "the app's tables")
    assert first is not None
    assert not isinstance(first, list)
    return config, first.revision


def _indexes(url: str, table: str) -> set[str]:
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        return {i["name"] for i in inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_advise_writes_an_alembic_revision_that_upgrades_and_downgrades(
    dialect: str,
    tmp_path: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """``--alembic`` writes the verified index as a revision chained to the head (on
    PostgreSQL built CONCURRENTLY in ``autocommit_block()``); the real Alembic upgrades
    to it and downgrades from it. Without DIR it is ``migrations``, Flask-Migrate's."""
    from alembic import command
    from alembic.script import ScriptDirectory

    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/shop.db"
    else:
        url = request.getfixturevalue("postgres_url")
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS hypopg"))
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()
    engine = create_engine(url)
    shop.seed(engine, scale=0.02)
    engine.dispose()
    name = "ix_orders_customer_email"
    assert name not in _indexes(url, "orders")
    config, first = _alembic_env(tmp_path, url)
    command.upgrade(config, "head")
    sql = tmp_path / "queries.sql"
    sql.write_text("SELECT id FROM orders WHERE customer_email = 'customer3@example.com';\n")
    monkeypatch.chdir(tmp_path)
    args = ["advise", "--database-url", url, "--sql", str(sql), "--json", "--alembic"]
    if dialect == "postgresql":
        args.append(str(tmp_path / "migrations"))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)  # standard output stays JSON
    assert advice["suggestions"][0]["name"] == name
    assert f"after {first}" in result.stderr
    script = ScriptDirectory.from_config(config)
    head = script.get_revision("head")
    assert head is not None
    assert head.down_revision == first
    source = pathlib.Path(head.path).read_text()
    if dialect == "postgresql":
        assert "with op.get_context().autocommit_block():" in source
        assert "postgresql_concurrently=True" in source
    command.upgrade(config, "head")
    assert name in _indexes(url, "orders")
    if dialect == "postgresql":
        engine = create_engine(url)
        with engine.connect() as conn:
            valid = conn.execute(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
                {"n": name},
            ).scalar_one()
        engine.dispose()
        assert valid is True
    command.downgrade(config, first)
    assert name not in _indexes(url, "orders")
    if dialect == "postgresql":
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()


def test_advise_alembic_says_what_is_wrong_with_the_folder(tmp_path: t.Any) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, scale=0.02)
    engine.dispose()
    sql = tmp_path / "queries.sql"
    sql.write_text("SELECT id FROM orders WHERE customer_email = 'customer3@example.com';\n")
    base = ["advise", "--database-url", url, "--sql", str(sql)]
    result = CliRunner().invoke(cli, [*base, "--alembic", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "is not an Alembic migrations folder" in result.output
    assert "'flask db init' makes one" in result.output
    config, first = _alembic_env(tmp_path, url)
    command.revision(config, "branch a", head=first, splice=True)
    command.revision(config, "branch b", head=first, splice=True)
    result = CliRunner().invoke(cli, [*base, "--alembic", str(tmp_path / "migrations")])
    assert result.exit_code == 1
    assert "have several heads" in result.output
    assert "'flask db merge heads'" in result.output
