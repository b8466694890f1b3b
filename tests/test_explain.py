"""EXPLAIN on the three databases: one plan model, and the safety rules."""

from __future__ import annotations

import typing as t

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import advisor_data
from querywatch._compat import create_engine
from querywatch._sql import check_read_only
from querywatch._sql import number_placeholders
from querywatch.exceptions import ExplainError
from querywatch.exceptions import UnsafeStatementError
from querywatch.explain import Explainer


@pytest.fixture(scope="module")
def db_url(advisor_db_url: str) -> str:
    return advisor_db_url


def _values(url: str, n: int) -> list[t.Any] | None:
    return ["user5@example.com", 20][:n] if url.startswith("mysql") else None


def test_full_scan_with_the_tables_size(db_url: str) -> None:
    with Explainer(db_url) as ex:
        plan = ex.explain(
            "SELECT events.id FROM events WHERE events.email = ?", values=_values(db_url, 1)
        )
    (scan,) = [n for n in plan.walk() if n.table == "events"]
    assert "full_scan" in scan.flags
    assert scan.index is None
    assert scan.table_rows is not None
    assert 15_000 < scan.table_rows <= 25_000
    assert plan.full_scans() == [scan]
    assert plan.cost is not None
    assert plan.lines()


def test_index_search_names_the_index(db_url: str) -> None:
    with Explainer(db_url) as ex:
        plan = ex.explain(
            "SELECT events.id FROM events WHERE events.tagged_id = ?",
            values=[17] if db_url.startswith("mysql") else None,
        )
    assert plan.full_scans() == []
    assert "ix_events_tagged_id" in plan.indexes_used()
    assert "events" in plan.searched_tables()


def test_sort_without_index_is_flagged(db_url: str) -> None:
    with Explainer(db_url) as ex:
        plan = ex.explain(
            "SELECT events.id FROM events WHERE events.email = ? ORDER BY events.amount",
            values=_values(db_url, 1),
        )
    assert plan.sorts()
    assert "temp_sort" in plan.flags


def test_aliases_resolve_to_tables(db_url: str) -> None:
    with Explainer(db_url) as ex:
        plan = ex.explain(
            "SELECT e.id FROM events AS e JOIN accounts AS a ON a.id = e.account_id"
            " WHERE a.email = ?",
            values=_values(db_url, 1),
        )
    assert {n.table for n in plan.walk() if n.table} == {"events", "accounts"}


def test_session_is_read_only(db_url: str) -> None:
    before = advisor_data.count_events(db_url)
    # "read-only transaction" / "readonly database" / "in a READ ONLY transaction"
    with (
        Explainer(db_url) as ex,
        ex.session() as s,
        pytest.raises(DBAPIError, match=r"(?i)read.?only"),
    ):
        s.run("DELETE FROM events WHERE id < 100")
    assert advisor_data.count_events(db_url) == before


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM events",
        "UPDATE events SET amount = 1",
        "INSERT INTO events (id) VALUES (1)",
        "CREATE TABLE x (a INT)",
        "DROP TABLE events",
        "SELECT * FROM events FOR UPDATE",
        "SELECT 1; DELETE FROM events",
    ],
)
def test_only_selects_are_explained(db_url: str, sql: str) -> None:
    before = advisor_data.count_events(db_url)
    with Explainer(db_url) as ex, pytest.raises(UnsafeStatementError):
        ex.explain(sql)
    assert advisor_data.count_events(db_url) == before


@pytest.mark.postgres
def test_postgres_data_modifying_cte_is_refused(postgres_url: str) -> None:
    with pytest.raises(UnsafeStatementError, match="writes"):
        check_read_only(
            "WITH gone AS (DELETE FROM events RETURNING id) SELECT * FROM gone", "postgresql"
        )


@pytest.mark.postgres
def test_postgres_generic_plan_without_values(postgres_url: str) -> None:
    with Explainer(postgres_url) as ex:
        plan = ex.explain("SELECT events.id FROM events WHERE events.email = $1 LIMIT %s")
    assert plan.generic
    assert plan.full_scans()


@pytest.mark.postgres
def test_postgres_statement_timeout(postgres_url: str) -> None:
    with (
        Explainer(postgres_url, timeout=0.2, allow_analyze=True) as ex,
        pytest.raises(ExplainError, match="timeout"),
    ):
        ex.explain("SELECT pg_sleep(3)", analyze=True)


def test_a_sqlite_statement_timeout_is_each_statements(tmp_path: t.Any) -> None:
    """The timeout bounds each statement, as PostgreSQL's ``statement_timeout`` does: a
    session that runs many (the advisor times a statement and its rewrite three times
    each) is not cut short by the time the earlier ones took. A statement that runs
    past it is still stopped."""
    import sqlite3
    import time

    path = tmp_path / "t.db"
    sqlite3.connect(path).close()
    with Explainer(f"sqlite:///{path}", timeout=0.5) as ex, ex.session() as s:
        # Long enough for SQLite to consult the deadline (every 1,000 instructions),
        # short beside the timeout.
        count = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)"
            " SELECT count(*) FROM n"
        )
        assert s.run(count).scalar() == 5000
        time.sleep(0.6)  # the session's time, outside any statement
        assert s.run(count).scalar() == 5000
        with pytest.raises(Exception, match="interrupted"):
            s.run(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
                " SELECT count(*) FROM n"
            ).scalar()


def test_analyze_needs_permission(db_url: str) -> None:
    with Explainer(db_url) as ex, pytest.raises(UnsafeStatementError, match="allow_analyze"):
        ex.explain("SELECT 1", analyze=True)


@pytest.mark.mariadb
def test_mariadb_needs_values(mariadb_url: str) -> None:
    advisor_data.load(mariadb_url)
    with Explainer(mariadb_url) as ex, pytest.raises(ExplainError, match="values"):
        ex.explain("SELECT events.id FROM events WHERE events.email = ?")


def test_placeholders_of_every_style_are_numbered() -> None:
    sql = "SELECT ':x', a FROM t WHERE a = ? AND b = %s AND c = %(n)s AND d = :d AND e = $1"
    marked, n = number_placeholders(sql)
    assert n == 5
    assert marked == (
        "SELECT ':x', a FROM t WHERE a = :qwp1 AND b = :qwp2 AND c = :qwp3 AND d = :qwp4"
        " AND e = :qwp5"
    )
    assert number_placeholders("SELECT a::text FROM t") == ("SELECT a::text FROM t", 0)


def test_unparseable_and_missing_tables_say_what_is_wrong(tmp_path: t.Any) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (a INT)"))
    engine.dispose()
    with Explainer(url) as ex:
        with pytest.raises(ExplainError, match="could not be parsed"):
            ex.explain("SELEC a FRM t")
        with pytest.raises(ExplainError, match="does not exist"):
            ex.explain("SELECT a FROM gone")


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ExplainError, match="in-memory"):
        Explainer("sqlite://")


def test_ctrl_c_during_a_sqlite_statement_is_not_lost(tmp_path: t.Any) -> None:
    """With a progress handler installed, the sqlite3 module drops the KeyboardInterrupt
    of a Ctrl-C raised inside it, and the statement goes on. A session in the main thread
    stops the statement at once and raises KeyboardInterrupt at its end, then gives
    Ctrl-C back to Python."""
    import signal

    # Beside CPU burners this test was skipped twice: the worker's Ctrl-C handler was not
    # Python's default when it began (a probe after every test found none that changed
    # it). It now takes the default for its duration and gives the previous one back; a
    # querywatch session's handler, which lives only while the session is open, must
    # never be the one found here.
    previous = signal.getsignal(signal.SIGINT)
    assert getattr(previous, "__module__", None) != "querywatch.explain.sqlite", previous
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_a_long_statement(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_a_long_statement(tmp_path: t.Any) -> None:
    import os
    import signal
    import threading

    url = f"sqlite:///{tmp_path}/big.db"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.exec_driver_sql(
            "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
            " WHERE i < 20000) SELECT i FROM n"
        )
    engine.dispose()
    with Explainer(url, timeout=600) as ex, pytest.raises(KeyboardInterrupt) as info:  # noqa: PT012
        with ex.session() as s:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            # A nested loop of 20,000 x 20,000 rows: minutes, unless stopped.
            s.run("SELECT count(*) FROM t a, t b WHERE a.x + b.x = -1").fetchall()
    # The statement itself was interrupted (had the interrupt been lost, it would have
    # run to its end, and the KeyboardInterrupt come after it).
    chain, exc = [], info.value.__context__
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__context__
    assert any("interrupted" in c for c in chain), chain
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_parsing_the_apps_statements_leaves_its_stderr_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SQLAlchemy sends ``show standard_conforming_strings`` when it connects to
    PostgreSQL; sqlglot reads it as a Command and warns, and the warning reached the
    demo's (and any app's) stderr. querywatch's own parses are quiet; the app's own use
    of sqlglot still warns as before."""
    import logging

    import sqlglot

    from querywatch._sql import statement_tables

    statement = "show standard_conforming_strings"
    with caplog.at_level(logging.WARNING, logger="sqlglot"):
        with pytest.raises(UnsafeStatementError):
            check_read_only(statement, "postgresql")
        statement_tables.cache_clear()
        statement_tables(statement)
        assert [r for r in caplog.records if r.name == "sqlglot"] == []
        sqlglot.parse_one(statement, read="postgres")
    assert [r.name for r in caplog.records] == ["sqlglot"]
    assert "Falling back to parsing as a 'Command'" in caplog.records[0].getMessage()
