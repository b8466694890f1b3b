"""The advisor asks the app's own database: the one each shape ran on, as the engine
resolved it, read-only, never created; and it leaves the live file alone."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import sqlite3
import threading
import time
import typing as t

import pytest
from click.testing import CliRunner
from sqlalchemy.exc import OperationalError

import library_app
from querywatch._advice_worker import queries_from_store
from querywatch.advisor import Advisor
from querywatch.advisor import QueryInput
from querywatch.cli import cli
from querywatch.exceptions import ExplainError


def _digest(path: t.Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def library(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> t.Any:
    """The library app, its databases seeded in the instance folder, run from a
    working directory of its own (where a wrongly resolved ``library.db`` would land)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    app = library_app.create_app(
        str(tmp_path / "instance"),
        {
            "QUERYWATCH_SCAN_MIN_ROWS": 1000,
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
            "QUERYWATCH_ADVISE_INTERVAL": 3600,
        },
    )
    library_app.seed(app)
    yield app
    state = app.extensions["querywatch"]
    state.flusher._stop.set()
    state.advice_worker.stop()
    with app.app_context():
        for engine in library_app.db.engines.values():
            engine.dispose()


def _shape(app: t.Any, needle: str) -> str:
    state = app.extensions["querywatch"]
    assert state.flusher.flush()
    now = time.time()
    (q,) = [
        q
        for q in queries_from_store(state.store, since=now - 600, until=now + 60)
        if needle in q.sql
    ]
    assert q.fingerprint is not None
    return q.fingerprint


def test_advice_on_the_instance_folder_database_leaves_it_untouched(library: t.Any) -> None:
    """``sqlite:///library.db`` is the instance folder's file (Flask-SQLAlchemy's rule):
    the advisor plans there, opens it read-only, and never makes ``./library.db``."""
    client = library.test_client()
    for i in (5, 17, 230):
        assert client.get(f"/books/978-{i:09d}").status_code == 200
    fp = _shape(library, "isbn")
    state = library.extensions["querywatch"]
    # The store counts the rows each call returned (one book), never the values.
    now = time.time()
    (q,) = [
        q
        for q in queries_from_store(state.store, since=now - 600, until=now + 60)
        if q.fingerprint == fp
    ]
    assert q.rows == 1.0
    live = pathlib.Path(library.instance_path) / "library.db"
    assert state.advise_database_url(fp) == f"sqlite:///{live}"
    before = _digest(live)

    assert state.advice_worker.analyse_now(fp) == 1
    (advice,) = state.store.advice([fp])
    assert (advice.table, advice.keys) == ("book", ("isbn",))
    assert advice.verified_by == "planned on a schema copy"
    assert not os.path.exists("library.db")
    assert _digest(live) == before

    # `flask querywatch advise` asks the same file.
    result = library.test_cli_runner().invoke(args=["querywatch", "advise", "--json"])
    assert result.exit_code == 0, result.output
    assert '"ix_book_isbn"' in result.output
    assert not os.path.exists("library.db")


def test_a_shape_of_a_bind_is_planned_on_the_bind(library: t.Any) -> None:
    client = library.test_client()
    assert client.get("/audit/user3@example.com").status_code == 200
    fp = _shape(library, "actor")
    state = library.extensions["querywatch"]
    assert state.advise_database_url(fp) == f"sqlite:///{library.instance_path}/audit.db"
    assert state.advice_worker.analyse_now(fp) == 1
    (advice,) = state.store.advice([fp])
    assert (advice.table, advice.keys) == ("audit_event", ("actor",))


def test_flask_querywatch_advise_plans_each_shape_on_its_bind(library: t.Any) -> None:
    """``flask querywatch advise`` runs in a process of its own, which ran none of the
    shapes: it planned them all on the app's default database, so the bind's shape
    failed with "no such table". Each shape now goes to the app's engine whose database
    holds its tables, and the answer names each database."""
    import json

    from querywatch import capture

    client = library.test_client()
    assert client.get("/books/978-000000005").status_code == 200
    assert client.get("/audit/user3@example.com").status_code == 200
    _shape(library, "actor")
    capture.shape_urls.clear()  # as in another process
    result = library.test_cli_runner().invoke(args=["querywatch", "advise", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_db = {pathlib.Path(d["database"]).name: d for d in data["databases"]}
    assert set(by_db) == {"library.db", "audit.db"}
    assert [s["name"] for s in by_db["audit.db"]["suggestions"]] == ["ix_audit_event_actor"]
    assert "ix_book_isbn" in [s["name"] for s in by_db["library.db"]["suggestions"]]
    for d in data["databases"]:
        for q in d["queries"]:
            assert not any("no such table" in e for e in q.get("errors", [])), q
    # Text names each database before its advice.
    text = library.test_cli_runner().invoke(args=["querywatch", "advise"])
    assert text.exit_code == 0, text.output
    assert text.output.count("== sqlite:///") == 2


def test_the_override_names_the_database(library: t.Any, tmp_path: t.Any) -> None:
    state = library.extensions["querywatch"]
    client = library.test_client()
    assert client.get("/books/978-000000005").status_code == 200
    fp = _shape(library, "isbn")
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    state.settings = dataclasses.replace(state.settings, advise_database_url=elsewhere)
    assert state.advise_database_url(fp) == f"sqlite:///{tmp_path}/elsewhere.db"
    # That file is not there: the shape's "no suggestion" says so, and nothing is made.
    state.advice_worker.analyse_now(fp)
    assert "does not exist" in state.advice_worker.reasons[fp]
    assert not (tmp_path / "elsewhere.db").exists()


def test_a_missing_sqlite_file_is_an_error_that_says_how_to_fix_it(tmp_path: t.Any) -> None:
    path = tmp_path / "library.db"
    with pytest.raises(ExplainError) as caught:
        Advisor(f"sqlite:///{path}")
    assert f"{str(path)!r} does not exist" in str(caught.value)
    assert "instance folder" in str(caught.value)
    assert "QUERYWATCH_ADVISE_DATABASE_URL" in str(caught.value)
    sql = tmp_path / "q.sql"
    sql.write_text("SELECT book.id FROM book WHERE book.isbn = '1'")
    result = CliRunner().invoke(
        cli, ["advise", "--database-url", f"sqlite:///{path}", "--sql", str(sql)]
    )
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert not path.exists()


def test_the_live_file_is_opened_read_only(tmp_path: t.Any) -> None:
    path = tmp_path / "live.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    adv = Advisor(f"sqlite:///{path}")
    with (
        adv,
        adv.explainer.session(writable=True) as s,
        pytest.raises(OperationalError, match="attempt to write a readonly database"),
    ):
        s.run("CREATE INDEX ix_t_v ON t (v)")


def test_no_writer_of_the_app_waits_while_the_advisor_runs(library: t.Any) -> None:
    """The background advisor used to build candidate indexes inside the app's file (in
    a transaction it rolled back): writers waited for each build. A writer that never
    waits (busy timeout 0) counts the commits a lock refused while the advisor runs."""
    live = library.instance_path + "/library.db"
    with sqlite3.connect(live) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    client = library.test_client()
    assert client.get("/books/978-000000005").status_code == 200
    fp = _shape(library, "isbn")
    state = library.extensions["querywatch"]

    stop = threading.Event()
    counts = {"commits": 0, "waited": 0}

    def writer() -> None:
        conn = sqlite3.connect(live, timeout=0, isolation_level=None)
        try:
            while not stop.is_set():
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("UPDATE user SET last_seen = CURRENT_TIMESTAMP WHERE id = 1")
                    conn.execute("COMMIT")
                    counts["commits"] += 1
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e):
                        raise
                    counts["waited"] += 1
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            assert state.advice_worker.analyse_now(fp) == 1
    finally:
        stop.set()
        thread.join()
    assert counts["commits"] > 0
    assert counts["waited"] == 0


def test_the_plan_copy_keeps_the_candidates_statistics(tmp_path: t.Any) -> None:
    """A column of three values (one of them nine rows in ten) gets an index only where
    the planner would take it; its statistics come from a sample of the live rows."""
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE job (id INTEGER PRIMARY KEY, state TEXT, owner TEXT)")
        conn.executemany(
            "INSERT INTO job VALUES (?, ?, ?)",
            [(i, "done" if i % 10 else "queued", f"u{i % 5000}") for i in range(1, 50_001)],
        )
    with Advisor(f"sqlite:///{path}", scan_min_rows=1000) as adv:
        advice = adv.advise([QueryInput("SELECT job.id FROM job WHERE job.owner = ?")])
    (qa,) = advice.queries
    (trial,) = qa.trials
    assert trial.improved
    assert trial.note.startswith("a full scan becomes an index search (estimated rows read")
    # 50,000 rows, 5,000 owners: about 10 rows a key, estimated from the sample.
    assert trial.cost_after is not None
    assert 5 <= trial.cost_after <= 20
