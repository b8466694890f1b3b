"""The index advisor on SQLite, PostgreSQL (HypoPG) and MariaDB (--allow-ddl), over real
data: which indexes it suggests, which it refuses to, and what it never does."""

from __future__ import annotations

import re
import sqlite3
import typing as t

import pytest
from sqlalchemy import event
from sqlalchemy import text

import advisor_data
from conftest import _unavailable
from querywatch._compat import create_engine
from querywatch.advisor import Advisor
from querywatch.advisor import QueryInput
from querywatch.advisor import no_suggestion_reason


@pytest.fixture(scope="module")
def adv_url(advisor_db_url: str) -> str:
    """The advisor's schema, with HypoPG installed where the database is PostgreSQL."""
    if advisor_db_url.startswith("postgresql"):
        engine = create_engine(advisor_db_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS hypopg"))
        except Exception as e:
            _unavailable(
                "HypoPG",
                f"{str(e).splitlines()[0][:100]}; install postgresql-<version>-hypopg",
            )
        finally:
            engine.dispose()
    return advisor_db_url


def advise(url: str, *sqls: str, **kw: t.Any) -> t.Any:
    kw.setdefault("measure", False)
    # MariaDB has no hypothetical indexes: its tests build and drop real ones.
    kw.setdefault("allow_ddl", True if url.startswith("mysql") else None)
    with Advisor(url, **kw) as adv:
        return adv.advise([QueryInput(s, label=f"q{i}") for i, s in enumerate(sqls)])


def suggested(advice: t.Any) -> list[tuple[str, tuple[str, ...]]]:
    return [
        (s.candidate.table, tuple(k.lower() for k in s.candidate.keys)) for s in advice.suggestions
    ]


def test_single_column(adv_url: str) -> None:
    advice = advise(adv_url, "SELECT events.id FROM events WHERE events.email = ?")
    assert suggested(advice) == [("events", ("email",))]
    qa = advice.queries[0]
    assert [f.kind for f in qa.findings] == ["full_scan"]
    # The table's size as the database's statistics give it (InnoDB's is an estimate).
    m = re.search(r"reads all ([\d,]+) rows of events", qa.findings[0].evidence)
    assert m is not None
    assert 15_000 < int(m.group(1).replace(",", "")) <= 25_000
    s = advice.suggestions[0].to_dict()
    if adv_url.startswith("postgresql"):
        assert s["ddl"] == (
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_events_email ON events (email);"
        )
        assert s["verified_by"] == "hypopg"
        assert "postgresql_concurrently=True" in s["alembic"]
        # PostgreSQL refuses CONCURRENTLY inside the migration's transaction.
        assert s["alembic"].startswith("with op.get_context().autocommit_block():\n    ")
    create = "op.create_index('ix_events_email', 'events', ['email']"
    assert (
        s["alembic"]
        .removeprefix("with op.get_context().autocommit_block():\n    ")
        .startswith(create)
    )
    q = s["queries"][0]
    assert q["plan_before"]
    assert q["plan_after"]
    assert q["cost_after"] <= q["cost_before"] / 2


def test_composite_equality_then_range(adv_url: str) -> None:
    advice = advise(
        adv_url,
        "SELECT events.id FROM events WHERE events.account_id = ? AND events.created_at >= ?",
    )
    assert suggested(advice) == [("events", ("account_id", "created_at"))]


def test_composite_equality_then_order_is_verified(adv_url: str) -> None:
    advice = advise(
        adv_url,
        "SELECT events.id, events.amount FROM events WHERE events.account_id = ?"
        " ORDER BY events.created_at DESC LIMIT 10",
    )
    trials = {tuple(tr.candidate.keys): tr for tr in advice.queries[0].trials}
    assert trials[("account_id", "created_at")].improved
    assert trials[("account_id", "created_at")].used


def test_join_key(adv_url: str) -> None:
    advice = advise(
        adv_url,
        "SELECT events.id FROM events JOIN accounts ON accounts.id = events.account_id"
        " WHERE accounts.email = ?",
    )
    assert suggested(advice) == [("events", ("account_id",))]


def test_one_composite_serves_several_queries(adv_url: str) -> None:
    advice = advise(
        adv_url,
        "SELECT events.id FROM events WHERE events.account_id = ? AND events.created_at >= ?",
        "SELECT events.id FROM events JOIN accounts ON accounts.id = events.account_id"
        " WHERE accounts.email = ?",
    )
    assert suggested(advice) == [("events", ("account_id", "created_at"))]
    assert {q["query"] for q in advice.suggestions[0].to_dict()["queries"]} == {"q0", "q1"}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT events.id FROM events WHERE lower(events.note) = ?",
        # A function on both sides: the side that reads no column is a value.
        "SELECT events.id FROM events WHERE lower(events.note) = lower(?)",
        "SELECT events.id FROM events WHERE lower(?) = lower(events.note)",
    ],
)
def test_expression(adv_url: str, sql: str) -> None:
    advice = advise(adv_url, sql)
    if adv_url.startswith("mysql"):
        # MariaDB cannot index an expression: it says so and names the remedy.
        assert suggested(advice) == []
        hints = {h.kind: h for h in advice.queries[0].hints}
        assert "generated column" in hints["expression_needs_generated_column"].fix
        # ... first, as the reason for no suggestion.
        assert no_suggestion_reason(advice.queries[0]).startswith(
            "No index is the answer here: LOWER(note) on events: MariaDB/MySQL before 8.0.13"
            " cannot index an expression."
        )
    else:
        assert suggested(advice) == [("events", ("lower(note)",))]
        ddl = advice.suggestions[0].to_dict()["ddl"]
        assert "(LOWER(note))" in ddl


def test_partial_index_for_a_constant_on_a_low_cardinality_column(adv_url: str) -> None:
    sql = "SELECT events.id FROM events WHERE events.kind = 'refund' AND events.amount > ?"
    advice = advise(adv_url, sql)
    if adv_url.startswith("sqlite"):
        # From the shape alone SQLite cannot tell: at the range's widest the partial
        # index would read all refunds, a quarter of the table (see the test below).
        assert advice.suggestions == []
        assert "the range's value is not known" in no_suggestion_reason(advice.queries[0])
        with Advisor(adv_url, measure=False) as adv:
            advice = adv.advise([QueryInput(sql, params=(9_000,))])
    (s,) = advice.suggestions
    if adv_url.startswith("mysql"):
        # No partial indexes on MariaDB: the composite does the same work.
        assert (s.candidate.keys, s.candidate.where) == (("kind", "amount"), None)
    else:
        assert (s.candidate.keys, s.candidate.where) == (("amount",), "kind = 'refund'")
        assert s.to_dict()["ddl"].endswith("ON events (amount) WHERE kind = 'refund';")


def test_no_partial_index_on_a_column_of_many_values(adv_url: str) -> None:
    advice = advise(
        adv_url,
        "SELECT events.id FROM events WHERE events.email = 'user7@example.com'"
        " AND events.amount > ?",
    )
    tried = [tr.candidate for tr in advice.queries[0].trials]
    assert tried
    assert all(c.where is None for c in tried)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT events.note FROM events WHERE events.id = ?",
        "SELECT events.id FROM events WHERE events.tagged_id = ?",
        "SELECT accounts.id FROM accounts WHERE accounts.email = ?",
    ],
    ids=["primary-key", "indexed", "unique"],
)
def test_no_suggestion_when_an_index_exists(adv_url: str, sql: str) -> None:
    advice = advise(adv_url, sql)
    assert suggested(advice) == []
    assert advice.queries[0].trials == []
    assert advice.queries[0].errors == []
    assert advice.queries[0].findings == []


def test_function_on_an_indexed_column(adv_url: str) -> None:
    advice = advise(adv_url, "SELECT events.id FROM events WHERE abs(events.tagged_id) = ?")
    kinds = {f.kind: f for f in advice.queries[0].findings}
    assert "full_scan" in kinds
    f = kinds["function_on_column"]
    assert "ix_events_tagged_id" in f.evidence
    assert "Compare the bare column (tagged_id = ...)" in f.fix


def test_implicit_cast_keeps_an_index_unused(adv_url: str) -> None:
    """A value of another type than the column's: MariaDB converts every email to a
    number, PostgreSQL every integer to numeric; SQLite converts the value instead and
    keeps its index, so there is nothing to report there."""
    sql = {
        "mysql": "SELECT accounts.id FROM accounts WHERE accounts.email = 5",
        "postgresql": "SELECT events.id FROM events WHERE events.tagged_id = 5.0",
        "sqlite": "SELECT events.id FROM events WHERE events.tagged_id = '5'",
    }[adv_url.split(":")[0].split("+")[0]]
    advice = advise(adv_url, sql, scan_min_rows=1000)
    kinds = {f.kind: f for f in advice.queries[0].findings}
    if adv_url.startswith("sqlite"):
        assert kinds == {}
    else:
        assert "full_scan" in kinds
        assert "converts the column on every row" in kinds["implicit_cast"].fix
    assert suggested(advice) == []


def test_sort_without_index(adv_url: str) -> None:
    advice = advise(
        adv_url, "SELECT events.id FROM events WHERE events.email = ? ORDER BY events.amount"
    )
    kinds = [f.kind for f in advice.queries[0].findings]
    assert kinds == ["full_scan", "sort_without_index"]


def test_unused_index_on_postgres(adv_url: str) -> None:
    if not adv_url.startswith("postgresql"):
        pytest.skip("usage statistics per index: PostgreSQL's pg_stat_user_indexes")
    advice = advise(
        adv_url, "SELECT events.id FROM events WHERE events.email = ?", unused_window_days=0
    )
    unused = {(n.table, n.index) for n in advice.index_notes if n.kind == "unused"}
    # EXPLAIN never counts as a scan, and nothing in these tests ran a query using it.
    assert ("events", "ix_events_tagged_id") in unused
    # A unique index is a constraint, never reported as unused.
    assert not any(n.index == "accounts_email_key" for n in advice.index_notes)


def test_no_unused_index_note_before_the_statistics_cover_the_window(adv_url: str) -> None:
    """On a freshly seeded database every idx_scan is 0: an index is called unused only
    once the statistics cover the window (7 days by default), and the notes say why."""
    if not adv_url.startswith("postgresql"):
        pytest.skip("usage statistics per index: PostgreSQL's pg_stat_user_indexes")
    engine = create_engine(adv_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_reset()")
    engine.dispose()
    advice = advise(adv_url, "SELECT events.id FROM events WHERE events.email = ?")
    assert [n for n in advice.index_notes if n.kind == "unused"] == []
    (note,) = [n for n in advice.notes if n.startswith("No index is called unused yet")]
    assert "since were last reset, 0.0 days ago, less than the 7-day window" in note


def test_never_drop_an_index_a_query_uses(adv_url: str) -> None:
    """Seen on a fresh database: "drop ix_b_a_c, unused" beside "ix_b_a is redundant
    because of ix_b_a_c"; following both left the lookup by a with no index. An index a
    captured shape's plan uses is never unused, and no two notes drop every index that a
    column leads."""
    if not adv_url.startswith("postgresql"):
        pytest.skip("usage statistics per index: PostgreSQL's pg_stat_user_indexes")
    engine = create_engine(adv_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS ledger")
        conn.exec_driver_sql(
            "CREATE TABLE ledger (id serial PRIMARY KEY, a int, b int, c int, d int)"
        )
        conn.exec_driver_sql(
            "INSERT INTO ledger (a, b, c, d) SELECT mod(i, 5000), mod(i, 7), mod(i, 11), mod(i, 13)"
            " FROM generate_series(1, 20000) AS i"
        )
        conn.exec_driver_sql("CREATE INDEX ix_ledger_a ON ledger (a)")
        conn.exec_driver_sql("CREATE INDEX ix_ledger_a_b ON ledger (a, b)")
        conn.exec_driver_sql("CREATE INDEX ix_ledger_d ON ledger (d)")
        conn.exec_driver_sql("ANALYZE ledger")
    engine.dispose()
    try:
        advice = advise(
            adv_url, "SELECT ledger.id FROM ledger WHERE ledger.a = ?", unused_window_days=0
        )
        plan_indexes = {n.index for n in advice.queries[0].plan.walk() if n.index}
        notes = {(n.kind, n.index) for n in advice.index_notes if n.table == "ledger"}
        # The lookup's plan uses one of the two indexes on a: never called unused.
        assert not any(kind == "unused" and name in plan_indexes for kind, name in notes)
        # ix_ledger_a is a prefix of ix_ledger_a_b; the two notes never drop both.
        assert ("redundant", "ix_ledger_a") in notes
        assert ("unused", "ix_ledger_a_b") not in notes
        # An index nothing uses, on a column no other index leads, is still noted.
        assert ("unused", "ix_ledger_d") in notes
    finally:
        engine = create_engine(adv_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS ledger")
        engine.dispose()


def test_leading_wildcard_like_gets_no_btree(adv_url: str) -> None:
    advice = advise(adv_url, "SELECT events.id FROM events WHERE events.note LIKE '%12%'")
    assert suggested(advice) == []
    kinds = {f.kind: f for f in advice.queries[0].findings}
    assert "No b-tree index helps" in kinds["leading_wildcard_like"].fix
    remedy = {"sqlite": "FTS5", "postgresql": "pg_trgm", "mysql": "FULLTEXT"}
    assert remedy[adv_url.split(":")[0].split("+")[0]] in kinds["leading_wildcard_like"].fix


def test_bad_input_is_reported_per_query_and_the_rest_goes_on(adv_url: str) -> None:
    advice = advise(
        adv_url,
        "SELEC id FRM",
        "SELECT * FROM no_such_table WHERE x = ?",
        "SELECT events.id FROM events WHERE events.email = ?",
    )
    bad_parse, missing, good = advice.queries
    assert len(bad_parse.errors) == 1
    assert bad_parse.errors[0].startswith("The statement could not be parsed")
    assert bad_parse.errors[0].endswith("it was not explained.")
    assert len(missing.errors) == 1
    assert "does not exist" in missing.errors[0]
    assert "no_such_table" in missing.errors[0]
    assert good.errors == []
    assert suggested(advice) == [("events", ("email",))]


WRITES = [
    "DELETE FROM events WHERE id < 100",
    "UPDATE events SET amount = 0 WHERE id < 100",
    "INSERT INTO events (id, account_id, kind, email, created_at, amount, note, tagged_id)"
    " VALUES (999999, 1, 'x', 'x', 1, 1, 'x', 1)",
    "SELECT * FROM events WHERE id < 100 FOR UPDATE",
    # MariaDB runs an executable comment as SQL: this wrote a file on the server.
    "SELECT events.id FROM events /*!INTO OUTFILE '/tmp/qw_outfile' */",
    "SELECT events.id FROM events /*M!100000 INTO OUTFILE '/tmp/qw_outfile_m' */",
    "SELECT id; DELETE FROM events",
]


def test_a_write_is_never_explained_nor_run(adv_url: str) -> None:
    before = advisor_data.count_events(adv_url)
    ran: list[str] = []
    with Advisor(adv_url, allow_ddl=True, measure=True) as adv:
        event.listen(adv.explainer.engine, "before_cursor_execute", lambda *a: ran.append(a[2]))
        advice = adv.advise([QueryInput(s) for s in WRITES])
    assert advisor_data.count_events(adv_url) == before
    for qa in advice.queries:
        assert len(qa.errors) == 1, qa.errors
        assert "never explained" in qa.errors[0] or "one statement" in qa.errors[0]
    # Refused before a connection was made: not one statement ran.
    assert ran == []


def test_a_select_is_only_explained_without_ddl(adv_url: str) -> None:
    """Without DDL allowed nothing runs the query itself: every statement that carries it
    is an EXPLAIN (or, on PostgreSQL before 16, the PREPARE that the generic plan needs),
    or on SQLite the count of the rows its filter matches among at most 2,000 rows read
    by rowid (SQLite's planner guesses a range's share; the rows overrule it)."""
    if adv_url.startswith("mysql"):
        pytest.skip("MariaDB verifies only with DDL allowed; covered by the write test")
    ran: list[str] = []
    with Advisor(adv_url, allow_ddl=False) as adv:
        event.listen(adv.explainer.engine, "before_cursor_execute", lambda *a: ran.append(a[2]))
        advice = adv.advise([QueryInput("SELECT events.id FROM events WHERE events.email = ?")])
    assert advice.queries[0].plan is not None
    carrying = [s for s in ran if "events.email" in s]
    assert carrying
    from querywatch.explain.sqlite import SAMPLE_ROWS

    def bounded(sql: str) -> bool:
        m = re.fullmatch(
            r"SELECT count\(\*\), sum\(CASE WHEN \(\(events\.email = :qwp1\)\) THEN 1 ELSE 0"
            r" END\) FROM events WHERE rowid IN \(([\d, ]+)\)",
            sql,
        )
        return m is not None and len(m.group(1).split(",")) <= SAMPLE_ROWS

    assert all(s.startswith(("EXPLAIN", "PREPARE")) or bounded(s) for s in carrying), carrying


# The clock judges this index (2 ms scan, 0.2 ms lookup): beside a replay that saturates
# the same PostgreSQL server with parallel scans, every statement waits for the server's
# processors: the clock measured 2.24 -> 1.94 ms and the advisor withheld the index as
# "not faster enough" (silence, never harm). It runs on the replays' worker, before or
# after them, never beside them.
@pytest.mark.xdist_group("replays")
def test_measured_where_ddl_is_allowed(adv_url: str) -> None:
    advice = advise(
        adv_url, "SELECT events.id FROM events WHERE events.email = ?", allow_ddl=True, measure=True
    )
    assert len(advice.suggestions) == 1, no_suggestion_reason(advice.queries[0])
    (s,) = advice.suggestions
    q = s.to_dict()["queries"][0]
    assert q["measured_before_ms"] > 0
    assert q["measured_after_ms"] > 0
    assert not s.estimated_only


def test_estimated_only_is_labelled(adv_url: str) -> None:
    if not adv_url.startswith("postgresql"):
        pytest.skip("only PostgreSQL verifies without DDL (HypoPG)")
    advice = advise(adv_url, "SELECT events.id FROM events WHERE events.email = ?")
    (s,) = advice.suggestions
    assert s.estimated_only
    assert s.to_dict()["estimated_only"] is True


def test_redundant_index_is_reported(adv_url: str) -> None:
    engine = create_engine(adv_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE INDEX ix_events_tagged_kind ON events (tagged_id, kind)"))
        advice = advise(adv_url, "SELECT events.id FROM events WHERE events.tagged_id = ?")
        notes = [(n.kind, n.index) for n in advice.index_notes if n.kind == "redundant"]
        assert notes == [("redundant", "ix_events_tagged_id")]
    finally:
        with engine.begin() as conn:
            if adv_url.startswith("mysql"):
                conn.execute(text("DROP INDEX ix_events_tagged_kind ON events"))
            else:
                conn.execute(text("DROP INDEX ix_events_tagged_kind"))
        engine.dispose()


@pytest.mark.postgres
def test_postgres_without_hypopg_says_so(postgres_url: str) -> None:
    from conftest import POSTGRES_URL
    from conftest import _fresh_database

    gen = _fresh_database(POSTGRES_URL, "PostgreSQL")
    url = next(gen)
    try:
        advisor_data.load(url)
        advice = advise(
            url,
            "SELECT events.id FROM events WHERE events.email = ?",
            "SELECT events.id FROM events WHERE events.account_id = ?",
        )
        assert suggested(advice) == []
        for qa in advice.queries:
            assert qa.plan is not None
            assert len(qa.errors) == 1
            assert "HypoPG is not installed" in qa.errors[0]
            assert "--allow-ddl" in qa.errors[0]
            # The reason comes first, in the shape's verdict and in its findings.
            why = no_suggestion_reason(qa)
            assert why.startswith("HypoPG is not installed in this database (CREATE EXTENSION")
            for f in qa.findings:
                if f.kind == "full_scan":
                    assert f.fix.startswith(f"No verified index: {why} Unverified: ")
        # With DDL allowed, the same database gets verified advice.
        advice = advise(url, "SELECT events.id FROM events WHERE events.email = ?", allow_ddl=True)
        assert suggested(advice) == [("events", ("email",))]
        assert advice.suggestions[0].verified_by == "built and rolled back"
    finally:
        with pytest.raises(StopIteration):
            next(gen)


def test_without_privileges_says_so(adv_url: str) -> None:
    if adv_url.startswith("sqlite"):
        pytest.skip("SQLite has no privileges")
    admin = create_engine(adv_url, isolation_level="AUTOCOMMIT")
    pg = adv_url.startswith("postgresql")
    try:
        with admin.connect() as conn:
            if pg:
                conn.execute(text("DROP ROLE IF EXISTS qw_noperm"))
                conn.execute(text("CREATE ROLE qw_noperm LOGIN"))
                conn.execute(text("GRANT SELECT ON accounts TO qw_noperm"))
            else:
                conn.execute(text("DROP USER IF EXISTS 'qw_noperm'@'%'"))
                conn.execute(text("CREATE USER 'qw_noperm'@'%'"))
                db = adv_url.rsplit("/", 1)[1]
                conn.execute(text(f"GRANT SELECT ON {db}.accounts TO 'qw_noperm'@'%'"))
        scheme, rest = adv_url.split("://", 1)
        url = f"{scheme}://qw_noperm@{rest.split('@', 1)[1]}"
        advice = advise(
            url,
            "SELECT events.id FROM events WHERE events.email = ?",
            "SELECT accounts.id FROM accounts WHERE accounts.name = ?",
            allow_ddl=False,
        )
        denied, allowed = advice.queries
        assert len(denied.errors) == 1
        assert "lack of privileges" in denied.errors[0]
        assert allowed.plan is not None
    finally:
        with admin.connect() as conn:
            if pg:
                conn.execute(text("DROP OWNED BY qw_noperm"))
                conn.execute(text("DROP ROLE IF EXISTS qw_noperm"))
            else:
                conn.execute(text("DROP USER IF EXISTS 'qw_noperm'@'%'"))
        admin.dispose()


def test_rewrite_hints(adv_url: str) -> None:
    advice = advise(
        adv_url,
        "SELECT events.id FROM events ORDER BY events.id LIMIT 20 OFFSET 5000",
        "SELECT events.id FROM events WHERE events.email = ? OR events.note = ?",
        "SELECT accounts.id FROM accounts WHERE accounts.id NOT IN"
        " (SELECT events.account_id FROM events)",
        "SELECT count(*) FROM events",
        "SELECT events.id, events.note FROM events",
        "SELECT accounts.id, (SELECT count(*) FROM events WHERE events.account_id ="
        " accounts.id) FROM accounts",
        scan_min_rows=1000,
    )
    kinds = [{h.kind for h in qa.hints} for qa in advice.queries]
    assert "deep_offset" in kinds[0]
    assert "or_across_columns" in kinds[1]
    assert "not_in_subquery" in kinds[2]
    assert "count_large_table" in kinds[3]
    assert "unbounded_select" in kinds[4]
    assert "correlated_subquery" in kinds[5]


def test_the_clock_does_not_judge_within_a_busy_machines_round_trip() -> None:
    """Beside CPU burners a scan of 20,000 rows on PostgreSQL was "measured" 3.10 ms and
    its index lookup 3.93 ms: both were the wait for a processor. Within NOISE_TIMES a
    bare round trip timed beside them, the plan's estimate decides and the note says so;
    past it, or where no round trip was timed, the clock still vetoes."""
    from querywatch.advisor._verify import NOISE_TIMES
    from querywatch.advisor._verify import _confirm

    improved, note = _confirm(True, "cost 474.0 -> 37.9", 3.10, 3.93, round_trip_ms=1.0)
    assert improved is True
    assert "too close to a bare round trip on this machine now (1.00 ms)" in note
    assert note.endswith("judged by the plan")
    quiet = 3.10 / NOISE_TIMES / 2  # a quiet machine's round trip: the clock judges
    assert _confirm(True, "cost 474.0 -> 37.9", 3.10, 3.93, round_trip_ms=quiet)[0] is False
    assert _confirm(True, "cost 474.0 -> 37.9", 3.10, 3.93)[0] is False
    improved, note = _confirm(True, "cost 474.0 -> 37.9", 30.0, 0.5, round_trip_ms=1.0)
    assert improved is True
    assert note.endswith("measured 30.00 -> 0.50 ms")


def test_a_search_that_reads_as_many_rows_is_not_verified(tmp_path: t.Any) -> None:
    """An index was offered as verified at "estimated rows read 1.0 -> 1.0 (x1.0)": on
    SQLite a scan that became a search reading as many rows is no gain, and says so."""
    from querywatch.advisor import Candidate
    from querywatch.advisor import QueryAdvice
    from querywatch.explain import Plan
    from querywatch.explain import PlanNode

    def plan(node: PlanNode) -> Plan:
        return Plan("sqlite", (node,), cost=node.rows, generic=False)

    qa = QueryAdvice(QueryInput("SELECT one.id FROM one WHERE one.email = ?"))
    qa.plan = plan(PlanNode("SCAN", "one", rows=1.0, flags=frozenset({"full_scan"})))
    after = plan(
        PlanNode("SEARCH", "one", "qw_candidate_one_email", rows=1.0,
                 flags=frozenset({"index_search"}))
    )  # fmt: skip
    sqlite3.connect(tmp_path / "a.db").close()
    with Advisor(f"sqlite:///{tmp_path}/a.db") as adv:
        used, improved, note = adv._judge(
            qa, Candidate("one", ("email",)), after, lambda name: name.startswith("qw_")
        )
    assert (used, improved) == (True, False)
    assert note == (
        "the index reads as many rows as the plan without it (estimated rows read 1 -> 1)"
    )


def test_a_skip_scan_of_another_index_becomes_a_search(tmp_path: t.Any) -> None:
    """A followers table indexed on (follower_id, followed_id): SQLite answers a lookup by
    followed_id with a skip-scan of that index (SEARCH ... ANY(follower_id)), reading
    every entry. The index on followed_id reads 40 instead of 20,000: that is a gain, and
    it is suggested (it was rejected as "the plan is no better")."""
    import random
    import sqlite3

    path = tmp_path / "followers.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE followers (follower_id INTEGER, followed_id INTEGER)")
        conn.execute("CREATE INDEX ix_pair ON followers (follower_id, followed_id)")
        rnd = random.Random(1)
        pairs = [(rnd.randrange(500), rnd.randrange(500)) for _ in range(20_000)]
        conn.executemany("INSERT INTO followers VALUES (?, ?)", pairs)
        conn.execute("ANALYZE")
    sql = "SELECT followers.follower_id FROM followers WHERE followers.followed_id = ?"
    advice = advise(f"sqlite:///{path}", sql)
    assert "ANY(follower_id)" in advice.queries[0].plan.nodes[0].detail
    assert suggested(advice) == [("followers", ("followed_id",))]
    (trial,) = [tr for tr in advice.queries[0].trials if tr.improved]
    assert trial.note.startswith("an index search reads fewer rows (estimated rows read 20,000")


@pytest.fixture
def tickets(adv_url: str) -> t.Iterator[str]:
    """A ``tickets`` table whose indexed ``status`` is 'open' on every one of 20,000 rows:
    the planner reads the whole table because the index narrows nothing."""
    from sqlalchemy import Column
    from sqlalchemy import Index
    from sqlalchemy import Integer
    from sqlalchemy import MetaData
    from sqlalchemy import String
    from sqlalchemy import Table

    md = MetaData()
    table = Table(
        "tickets", md, Column("id", Integer, primary_key=True, autoincrement=False),
        Column("status", String(12), nullable=False), Index("ix_tickets_status", "status"),
    )  # fmt: skip
    engine = create_engine(adv_url)
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "status": "open"} for i in range(20_000)])
    with engine.connect() as conn:
        analyze = {"postgresql": "ANALYZE tickets", "sqlite": "ANALYZE"}
        conn.exec_driver_sql(analyze.get(engine.dialect.name, "ANALYZE TABLE tickets")).close()
        conn.commit()
    try:
        yield adv_url
    finally:
        md.drop_all(engine)
        engine.dispose()


def test_an_implicit_cast_is_claimed_only_where_the_types_differ(tickets: str) -> None:
    """A text column compared with text that every row holds: the plan reads the whole
    table, and "implicit cast" was claimed; the value is of the column's own type, so
    nothing is. On MariaDB a number given for the same column through the app's own
    parameter does convert the column on every row, and is named."""
    sql = "SELECT tickets.id FROM tickets WHERE tickets.status = 'open'"
    advice = advise(tickets, sql, scan_min_rows=1000)
    assert "implicit_cast" not in {f.kind for f in advice.queries[0].findings}
    if tickets.startswith("mysql"):
        query = QueryInput("SELECT tickets.id FROM tickets WHERE tickets.status = %s",
                           params=(5,), label="q0")  # fmt: skip
        with Advisor(tickets, measure=False, allow_ddl=True, scan_min_rows=1000) as adv:
            advice = adv.advise([query])
        kinds = {f.kind: f for f in advice.queries[0].findings}
        assert "converts the column on every row" in kinds["implicit_cast"].fix


def test_a_count_hint_only_where_the_count_reads_the_table(adv_url: str) -> None:
    """Flask-SQLAlchemy's ``query.filter(...).count()`` counts a filtered subquery, which
    an index search answers: no "cache the count" hint (it got one). A count of the whole
    table gets it, naming the estimate of the database in use (SQLite was told of
    PostgreSQL's pg_class.reltuples)."""
    advice = advise(
        adv_url,
        "SELECT count(*) AS count_1 FROM (SELECT events.id AS events_id FROM events"
        " WHERE events.tagged_id = ?) AS anon_1",
        "SELECT count(*) FROM events",
        scan_min_rows=1000,
    )
    assert "count_large_table" not in {h.kind for h in advice.queries[0].hints}
    (hint,) = [h for h in advice.queries[1].hints if h.kind == "count_large_table"]
    estimates = {
        "postgresql": "pg_class.reltuples",
        "mysql": "information_schema.tables.table_rows",
        "sqlite": "sqlite_stat1",
    }
    dialect = adv_url.split(":")[0].split("+")[0]
    assert estimates.pop(dialect) in hint.fix
    assert not any(other in hint.fix for other in estimates.values())


def test_one_verdict_a_query_in_its_findings(adv_url: str) -> None:
    """A filter every row passes: where the advisor tried an index and the planner would
    not use it, the full-scan finding says that no index helps, with the figures (it
    said "an index on the filtered columns (see the suggestion)" with none to see); where
    an index was verified, the finding names that index."""
    advice = advise(
        adv_url,
        "SELECT events.id, events.note FROM events WHERE events.amount > 0",
        scan_min_rows=1000,
    )
    qa = advice.queries[0]
    (scan,) = [f for f in qa.findings if f.kind == "full_scan"]
    assert qa.trials
    # Every row passes: no index helps, on SQLite too, whose planner takes any range for
    # a quarter of the rows (an estimate the rows themselves overrule).
    assert advice.suggestions == []
    assert scan.fix.startswith("No index helps. No candidate index improved the plan")
    if adv_url.startswith("sqlite"):
        assert re.search(
            r"the filter matches about 100% of the rows \(of [\d,]+ counted\)", scan.fix
        )
    else:
        assert "(the planner did not use it)" in scan.fix
    assert "see the suggestion" not in scan.fix


def test_a_range_whose_value_the_shape_does_not_keep_gets_no_sqlite_index(
    tmp_path: t.Any,
) -> None:
    """From the store's shape alone, ``amount > ?`` was planned with a value that keeps a
    tenth of the rows, and (amount) was offered; the app's value was 0 (every row), and
    SQLite reads a range by its index whatever it matches: 0.9x. A range whose value is
    not known gets no SQLite index where its widest value matches most rows, with that
    reason first; the same shape with the app's own value still gets the index."""
    url = f"sqlite:///{tmp_path}/adv.db"
    advisor_data.load(url)
    sql = "SELECT events.id FROM events WHERE events.amount > ?"
    advice = advise(url, sql, scan_min_rows=1000)
    assert advice.suggestions == []
    reason = no_suggestion_reason(advice.queries[0])
    assert reason.startswith("No candidate index improved the plan enough"), reason
    assert "the range's value is not known" in reason
    assert re.search(r"about \d+% of the rows .* a tenth, 100% at the range's widest", reason)
    (scan,) = [f for f in advice.queries[0].findings if f.kind == "full_scan"]
    assert scan.fix.startswith("No index helps."), scan.fix
    with Advisor(url, measure=False, scan_min_rows=1000) as adv:
        real = adv.advise([QueryInput(sql, params=(9_000,))])
    assert suggested(real) == [("events", ("amount",))]
    # A range beside an equality that narrows it is still offered from the shape.
    both = advise(
        url,
        "SELECT events.id FROM events WHERE events.account_id = ? AND events.created_at >= ?",
    )
    assert suggested(both) == [("events", ("account_id", "created_at"))]


@pytest.mark.parametrize("stalls", [1, 99])
def test_a_stalled_timing_is_taken_again_before_the_clock_vetoes(
    tmp_path: t.Any, stalls: int
) -> None:
    """Beside CPU burners MariaDB "measured" a 20,000-row scan at 2.25 ms and its index
    lookup at 3.71 ms, for a plan x1,750 cheaper: one busy moment slowed the timing with
    the index, and the clock vetoed it. The timing with the index is taken again before a
    veto stands (the best run counts); an index slower every time stays vetoed. The
    timings here are the machine's as seen by ``_time``: a stall is a slow run."""

    class Busy(Advisor):
        calls = 0

        def _time(self, s: t.Any, qa: t.Any, values: t.Any) -> float | None:
            Busy.calls += 1
            if Busy.calls == 1:
                return 30.0  # the scan, before the index
            return 60.0 if Busy.calls - 1 <= stalls else 0.5

        def _round_trip(self, s: t.Any) -> float | None:
            return 0.05  # the machine's own figure is not what this test is about

    url = f"sqlite:///{tmp_path}/adv.db"
    advisor_data.load(url)
    with Busy(url, measure=True, allow_ddl=True) as adv:
        advice = adv.advise([QueryInput("SELECT events.id FROM events WHERE events.email = ?")])
    (trial,) = [tr for tr in advice.queries[0].trials if tr.candidate.keys == ("email",)]
    if stalls == 1:
        assert suggested(advice) == [("events", ("email",))]
        assert trial.note.endswith("measured 30.00 -> 0.50 ms")
    else:
        assert suggested(advice) == []
        assert trial.note.endswith("but measured 30.00 -> 60.00 ms, not faster enough")


@pytest.mark.parametrize("again", [31.0, 45.0])
def test_a_marginal_gain_is_timed_again_without_the_index(tmp_path: t.Any, again: float) -> None:
    """``status = 'done'`` (nine rows in ten) passed as 1.3x faster with (status): its
    one timing without the index had met a busy moment, while the timing with it is
    taken again before a veto. Built, the index was 1.0x. A gain under 2x is timed
    again without the index (dropped by then) before it stands: one slow moment does not
    pass it, a real gain still does."""

    class Busy(Advisor):
        calls = 0

        def _time(self, s: t.Any, qa: t.Any, values: t.Any) -> float | None:
            Busy.calls += 1
            return {1: 45.0, 2: 30.0}.get(Busy.calls, again)

        def _round_trip(self, s: t.Any) -> float | None:
            return 0.05

    url = f"sqlite:///{tmp_path}/adv.db"
    advisor_data.load(url)
    with Busy(url, measure=True, allow_ddl=True) as adv:
        advice = adv.advise([QueryInput("SELECT events.id FROM events WHERE events.email = ?")])
    (trial,) = [tr for tr in advice.queries[0].trials if tr.candidate.keys == ("email",)]
    if again == 31.0:  # the first timing was the slow moment: 31 -> 30 is no gain
        assert suggested(advice) == []
        assert trial.note.endswith("but measured 31.00 -> 30.00 ms, not faster enough")
        assert trial.measured_before_ms == 31.0
    else:  # 45 again: the gain is real
        assert suggested(advice) == [("events", ("email",))]
        assert trial.note.endswith("measured 45.00 -> 30.00 ms")


def test_no_index_is_tried_where_the_plan_already_serves_every_filter(adv_url: str) -> None:
    """A second went into building (invoice_id, id) on 900,000 rows for primary-key
    lookups. Where the plan finds every table's rows by an index that covers all its
    filters (or by a key, one row), nothing is built or tried, and the reason says so."""
    advice = advise(
        adv_url,
        "SELECT events.id, events.amount FROM events WHERE events.tagged_id = ? AND events.id = ?",
        "SELECT events.id FROM events WHERE events.tagged_id = ?",
    )
    assert suggested(advice) == []
    for qa in advice.queries:
        assert qa.trials == []
        assert no_suggestion_reason(qa).startswith(
            "No index to add: the plan already finds its rows by an index"
        )


def test_a_build_past_the_timeout_says_so_first(tmp_path: t.Any) -> None:
    """Seen: "No index to suggest: none that was tried improved a plan enough." for a
    candidate build stopped by the statement timeout. The reason now comes first, with
    the figure and the flag to raise it; in the findings too. (The build of an index on
    200,000 rows takes some hundred times the 0.02 s allowed here.)"""
    path = tmp_path / "big.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE ticket (id INTEGER PRIMARY KEY, email TEXT, body TEXT)")
        conn.executemany(
            "INSERT INTO ticket VALUES (?, ?, ?)",
            ((i, f"user{i * 7919 % 200_000}@example.com", "x" * 40) for i in range(200_000)),
        )
    sql = "SELECT ticket.id FROM ticket WHERE ticket.email = :email"
    with Advisor(f"sqlite:///{path}", allow_ddl=True, measure=False, timeout=0.02) as adv:
        advice = adv.advise([QueryInput(sql, params={"email": "user5@example.com"})])
    assert advice.suggestions == []
    (qa,) = advice.queries
    why = no_suggestion_reason(qa)
    assert re.match(r"^(Timed out: |The statement )", why), why
    assert "0.02 s statement timeout" in why
    assert "--timeout" in why
    for f in qa.findings:
        assert f.fix.startswith(f"No verified index: {why}")
        assert "see the suggestion" not in f.fix


def test_a_missing_table_is_the_reason(tmp_path: t.Any) -> None:
    path = tmp_path / "gone.db"
    sqlite3.connect(path).close()
    advice = advise(f"sqlite:///{path}", "SELECT parcel.id FROM parcel WHERE parcel.code = ?")
    why = no_suggestion_reason(advice.queries[0])
    assert why.startswith("A table or column the statement reads does not exist")
    assert "parcel" in why


def test_mariadb_without_ddl_verifies_on_a_temporary_copy(
    adv_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB has no hypothetical indexes, and without DDL allowed it verified nothing:
    every planted index was missed at the default settings. The candidate is now built
    on a temporary copy of its table (one connection's own), the live table keeps its
    indexes, and the copy reads the live rows without locks: a writer holding a row
    lock does not stop it. A table past the copy limit gets that reason first."""
    if not adv_url.startswith("mysql"):
        pytest.skip("only MariaDB/MySQL verify on temporary copies")
    from querywatch.explain import mysql as my

    engine = create_engine(adv_url)

    def indexes() -> set[str]:
        with engine.connect() as conn:
            return {r[2] for r in conn.exec_driver_sql("SHOW INDEX FROM events")}

    live = indexes()
    writer = engine.connect()
    try:
        writer.exec_driver_sql("UPDATE events SET note = note WHERE id = 7")  # holds row 7
        advice = advise(
            adv_url,
            "SELECT events.id FROM events WHERE events.email = ?",
            allow_ddl=False,
            measure=True,
        )
        writer.commit()
    finally:
        writer.close()
    assert suggested(advice) == [("events", ("email",))], no_suggestion_reason(advice.queries[0])
    (s,) = advice.suggestions
    assert s.verified_by == "built on a temporary copy"
    assert not s.estimated_only  # timed on the copy, with and without the index
    assert indexes() == live
    engine.dispose()

    # As on SQLite: a range whose value the shape does not keep may be the widest (0.9x
    # measured for amount > 0 with (amount) offered from the shape alone).
    range_sql = "SELECT events.id FROM events WHERE events.amount > ?"
    advice = advise(adv_url, range_sql, allow_ddl=False)
    assert advice.suggestions == []
    assert "the range's value is not known" in no_suggestion_reason(advice.queries[0])

    monkeypatch.setattr(my, "COPY_MAX_ROWS", 1_000)
    advice = advise(adv_url, "SELECT events.id FROM events WHERE events.email = ?", allow_ddl=False)
    (qa,) = advice.queries
    why = no_suggestion_reason(qa)
    assert re.search(r"events has about [\d,]+ rows, more than querywatch copies \(1,000\)", why)
    (scan,) = [f for f in qa.findings if f.kind == "full_scan"]
    assert scan.fix.startswith("No verified index: "), scan.fix


def test_an_equality_left_to_a_filter_loses_to_the_composite(adv_url: str) -> None:
    """Seen on PostgreSQL: ``status = :s AND due_date < :d ORDER BY due_date LIMIT 20``
    got (due_date) alone, fast for the status nine rows in ten have and slower than no
    index for a rare one (33.9 ms without, 44.0 ms with it, 0.23 ms with (status,
    due_date)). An index that holds every equality column first serves any value."""
    from sqlalchemy import Column
    from sqlalchemy import Integer
    from sqlalchemy import MetaData
    from sqlalchemy import String
    from sqlalchemy import Table

    md = MetaData()
    task = Table(
        "task",
        md,
        Column("id", Integer, primary_key=True),
        Column("status", String(20), nullable=False),
        Column("due_date", Integer, nullable=False),
        Column("title", String(60), nullable=False),
    )
    engine = create_engine(adv_url)
    md.drop_all(engine)
    md.create_all(engine)
    statuses = ["done"] * 90 + ["open"] * 9 + ["late"]
    with engine.begin() as conn:
        conn.execute(
            task.insert(),
            [
                {"id": i, "status": statuses[i % 100], "due_date": i % 2000, "title": f"t{i}"}
                for i in range(1, 20_001)
            ],
        )
        conn.exec_driver_sql(
            {"postgresql": "ANALYZE task", "sqlite": "ANALYZE", "mysql": "ANALYZE TABLE task"}[
                engine.dialect.name
            ]
        )
    engine.dispose()
    try:
        advice = advise(
            adv_url,
            "SELECT task.id, task.title FROM task WHERE task.status = ? AND task.due_date < ?"
            " ORDER BY task.due_date LIMIT 20",
        )
        assert suggested(advice) == [("task", ("status", "due_date"))], no_suggestion_reason(
            advice.queries[0]
        )
    finally:
        engine = create_engine(adv_url)
        md.drop_all(engine)
        engine.dispose()


def test_a_shape_is_planned_with_the_value_most_rows_have(tmp_path: t.Any) -> None:
    """Values drawn from the middle of the table planned and timed a status nine rows in
    ten do not have. A shape's equality takes the value most rows have; several
    equalities on one table take their values from one row (so that they match)."""
    path = tmp_path / "skew.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE job (id INTEGER PRIMARY KEY, state TEXT, owner INTEGER)")
        conn.executemany(
            "INSERT INTO job VALUES (?, ?, ?)",
            # The middle tenth is 'failed'; nine rows in ten are 'done'.
            ((i, "failed" if 4500 <= i < 5500 else "done", i % 97) for i in range(10_000)),
        )
    advice = advise(
        f"sqlite:///{path}",
        "SELECT job.id FROM job WHERE job.state = ?",
        "SELECT job.id FROM job WHERE job.state = ? AND job.owner = ? AND job.id = ?",
    )
    one, three = advice.queries
    assert one.values == ["done"]
    state, owner, id_ = three.values
    assert state == "done"
    assert owner == id_ % 97  # from one row


def _followers_db(path: t.Any) -> str:
    """A microblog: 200 users following 20 others each, 500 posts a user."""
    import random

    rnd = random.Random(3)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE user (id INTEGER PRIMARY KEY, username TEXT);
            CREATE TABLE followers (follower_id INTEGER, followed_id INTEGER);
            CREATE INDEX ix_followers_pair ON followers (follower_id, followed_id);
            CREATE TABLE post (id INTEGER PRIMARY KEY, body TEXT, timestamp INTEGER,
                               user_id INTEGER);
            CREATE INDEX ix_post_user_id ON post (user_id);
            CREATE INDEX ix_post_timestamp ON post (timestamp);
            """
        )
        conn.executemany("INSERT INTO user VALUES (?, ?)", [(i, f"u{i}") for i in range(1, 201)])
        conn.executemany(
            "INSERT INTO followers VALUES (?, ?)",
            [(u, f) for u in range(1, 201) for f in rnd.sample(range(1, 201), 20)],
        )
        conn.executemany(
            "INSERT INTO post VALUES (?, ?, ?, ?)",
            [(i, "x" * 300 + str(i), i, rnd.randint(1, 200)) for i in range(1, 100_001)],
        )
    return f"sqlite:///{path}"


def test_a_join_that_only_filters_gets_its_semi_join_measured(tmp_path: t.Any) -> None:
    """The posts of the users someone follows, as a join plus GROUP BY over every
    selected column: no index helps; the IN (subquery) rewrite is given, run beside the
    statement with the same values, and kept because it returns the same rows faster
    (sorting the followed users' 10,000 posts against reading the newest few)."""
    url = _followers_db(tmp_path / "blog.db")
    sql = (
        "SELECT post.id, post.body, post.timestamp, post.user_id FROM post"
        " JOIN followers ON followers.followed_id = post.user_id"
        " WHERE followers.follower_id = ?"
        " GROUP BY post.id, post.body, post.timestamp, post.user_id"
        " ORDER BY post.timestamp DESC LIMIT 20"
    )

    class Clocked(Advisor):
        """The rows are the database's; the clock is this test's (2.2x quietly, and
        beside CPU burners once under 1.25x): the decision is what is tested."""

        def _run_timed(self, s: t.Any, text: str, params: t.Any) -> tuple[list[t.Any], float]:
            rows, _ = super()._run_timed(s, text, params)
            return rows, 1.0 if " IN (SELECT " in text else 30.0

    with Clocked(url, measure=True) as adv:
        advice = adv.advise([QueryInput(sql)])
    (hint,) = [h for h in advice.queries[0].hints if h.kind == "join_to_filter"]
    assert hint.rewrite == (
        "SELECT post.id, post.body, post.timestamp, post.user_id FROM post WHERE post.user_id"
        " IN (SELECT followers.followed_id FROM followers WHERE followers.follower_id = ?)"
        " ORDER BY post.timestamp DESC LIMIT 20"
    )
    assert hint.fix.endswith("Measured 30.00 ms -> 1.00 ms, the same rows."), hint.fix

    # A rewrite that is not faster is not offered.
    class Level(Advisor):
        def _run_timed(self, s: t.Any, text: str, params: t.Any) -> tuple[list[t.Any], float]:
            rows, _ = super()._run_timed(s, text, params)
            return rows, 30.0

    with Level(url, measure=True) as adv:
        level = adv.advise([QueryInput(sql)])
    assert [h.kind for h in level.queries[0].hints] == []
    # Not measured (the app's background advisor never runs a query): still given.
    unmeasured = advise(url, sql, measure=False)
    assert [h.kind for h in unmeasured.queries[0].hints] == ["join_to_filter"]


def test_the_followed_posts_plus_ones_own_get_their_semi_join_measured(tmp_path: t.Any) -> None:
    """The posts of the users someone follows plus their own, as the ORM writes it: an
    inner join to the author, outer joins through followers to the follower, ``WHERE
    follower.id = ? OR author.id = ?`` and ``GROUP BY`` every post column (26.7 ms on a
    real app; 0.12 ms rewritten). The joins' equalities carry each filter to a column of
    ``post``; the rewrite is run beside the statement, returns the same rows, and is
    kept with its figures. Not run, the hint gives its advice without the statement."""
    url = _followers_db(tmp_path / "blog.db")
    sql = (
        "SELECT post.id, post.body, post.timestamp, post.user_id FROM post"
        " JOIN user AS user_1 ON user_1.id = post.user_id"
        " LEFT OUTER JOIN followers AS followers_1 ON user_1.id = followers_1.followed_id"
        " LEFT OUTER JOIN user AS user_2 ON user_2.id = followers_1.follower_id"
        " WHERE user_2.id = ? OR user_1.id = ?"
        " GROUP BY post.id, post.body, post.timestamp, post.user_id"
        " ORDER BY post.timestamp DESC LIMIT 20"
    )
    with Advisor(url, measure=True) as adv:
        advice = adv.advise([QueryInput(sql, params=(7, 7))])
    # ``user`` joined twice is two tables, each joined: no cartesian product (it was one).
    assert [h.kind for h in advice.queries[0].hints] == ["join_to_filter"]
    (hint,) = advice.queries[0].hints
    assert hint.rewrite == (
        "SELECT post.id, post.body, post.timestamp, post.user_id FROM post WHERE post.user_id"
        " IN (SELECT followers_1.followed_id FROM followers AS followers_1 WHERE"
        " followers_1.follower_id = ?) OR post.user_id = ? ORDER BY post.timestamp DESC LIMIT 20"
    )
    assert hint.fix.endswith("ms, the same rows."), hint.fix
    with sqlite3.connect(tmp_path / "blog.db") as conn:
        assert conn.execute(hint.rewrite, (7, 7)).fetchall() == conn.execute(sql, (7, 7)).fetchall()

    with Advisor(url, measure=False) as adv:
        unmeasured = adv.advise([QueryInput(sql, params=(7, 7))])
    (hint,) = [h for h in unmeasured.queries[0].hints if h.kind == "join_to_filter"]
    assert hint.rewrite is None
    assert "Rewritten:" not in hint.fix
    assert hint.fix.startswith("Filter with a semi-join instead")


def test_a_cartesian_product_is_named(tmp_path: t.Any) -> None:
    url = _followers_db(tmp_path / "blog.db")
    advice = advise(
        url,
        "SELECT post.id, user.username FROM post, user WHERE post.id = ?",
        "SELECT post.id, user.username FROM post JOIN user ON user.id = post.user_id"
        " WHERE post.id = ?",
        "SELECT post.id FROM post CROSS JOIN user WHERE user.id = ?",
    )
    product, joined, meant = advice.queries
    (hint,) = [h for h in product.hints if h.kind == "cartesian_product"]
    assert hint.evidence.startswith("No condition joins user to post")
    assert [h for h in joined.hints if h.kind == "cartesian_product"] == []
    assert [h for h in meant.hints if h.kind == "cartesian_product"] == []


def test_a_cartesian_product_gets_the_join_its_foreign_key_names(adv_url: str) -> None:
    """A cartesian product got "add the missing join condition" and nothing to run.
    Where one foreign key links the table left apart to the others, the hint names the
    condition and writes the statement with it (``JOIN … ON``), quoted as the statement
    was (a table named ``order``), and that statement runs and returns only the linked
    pairs. Two foreign keys would be a guess: then the hint stays general."""
    from sqlalchemy import Column
    from sqlalchemy import ForeignKey
    from sqlalchemy import Integer
    from sqlalchemy import MetaData
    from sqlalchemy import String
    from sqlalchemy import Table

    md = MetaData()
    Table(
        "member",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(40), nullable=False),
    )
    Table(
        "order",
        md,
        Column("id", Integer, primary_key=True),
        Column("member_id", Integer, ForeignKey("member.id"), nullable=False),
    )
    Table(
        "transfer",
        md,
        Column("id", Integer, primary_key=True),
        Column("sender_id", Integer, ForeignKey("member.id"), nullable=False),
        Column("receiver_id", Integer, ForeignKey("member.id"), nullable=False),
    )
    engine = create_engine(adv_url)
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(md.tables["member"].insert(), [{"id": i, "name": f"m{i}"} for i in (1, 2, 3)])
        conn.execute(md.tables["order"].insert(), [{"id": 7, "member_id": 2}])
        conn.execute(md.tables["transfer"].insert(), [{"id": 9, "sender_id": 1, "receiver_id": 3}])
    q = "`" if adv_url.startswith("mysql") else '"'
    order = f"{q}order{q}"
    try:
        advice = advise(
            adv_url,
            f"SELECT {order}.id, member.name FROM {order}, member WHERE {order}.id = 7",
            "SELECT transfer.id, member.name FROM transfer, member WHERE transfer.id = 9",
        )
        linked, ambiguous = advice.queries
        (hint,) = [h for h in linked.hints if h.kind == "cartesian_product"]
        assert hint.fix.startswith(f"Add the missing join condition, {order}.member_id = member.id")
        assert hint.rewrite == (
            f"SELECT {order}.id, member.name FROM {order} JOIN member ON"
            f" {order}.member_id = member.id WHERE {order}.id = 7"
        )
        with engine.connect() as conn:
            assert conn.exec_driver_sql(hint.rewrite).all() == [(7, "m2")]
        # With timing on, both are counted (never fetched): three pairs against one.
        timed = advise(
            adv_url,
            f"SELECT {order}.id, member.name FROM {order}, member WHERE {order}.id = 7",
            measure=True,
        )
        (hint,) = [h for h in timed.queries[0].hints if h.kind == "cartesian_product"]
        assert re.search(
            r"Measured [\d,.]+ ms for 3 rows -> [\d,.]+ ms for 1 row with the join\.$", hint.fix
        ), hint.fix
        (general,) = [h for h in ambiguous.hints if h.kind == "cartesian_product"]
        assert general.rewrite is None
        assert general.fix.startswith("Add the missing join condition (JOIN ... ON")
    finally:
        md.drop_all(engine)
        engine.dispose()


def test_no_semi_join_where_the_group_by_merges_rows(tmp_path: t.Any) -> None:
    """Grouped by a column that is not a key, the join's GROUP BY merges rows that the
    IN (subquery) would return apart: no rewrite is offered, measured or not."""
    url = _followers_db(tmp_path / "blog.db")
    sql = (
        "SELECT post.user_id FROM post JOIN followers ON followers.followed_id = post.user_id"
        " WHERE followers.follower_id = ? GROUP BY post.user_id"
    )
    for measure in (False, True):
        advice = advise(url, sql, measure=measure)
        assert [h for h in advice.queries[0].hints if h.kind == "join_to_filter"] == []


def test_a_limit_placeholder_gets_a_number(adv_url: str) -> None:
    """MariaDB refused the store's shape of a paginated query: its LIMIT placeholder was
    given the string '1' (LIMIT '1' is a syntax error there)."""
    advice = advise(adv_url, "SELECT events.id FROM events WHERE events.email = ? LIMIT ?")
    (qa,) = advice.queries
    assert qa.errors == []
    assert qa.values is not None
    assert qa.values[1] == 20


def test_an_index_serving_more_shapes_does_not_leave_an_equality_to_a_filter(
    adv_url: str,
) -> None:
    """(amount) served both "kind = ? AND amount > ?" and "amount > ?", so it won over
    (kind, amount) by serving more shapes, and read a rare kind's rows by a filter:
    slower than no index for it. Where an index holds every equality of a shape, one
    that leaves an equality to a filter does not serve that shape."""
    advice = advise(
        adv_url,
        "SELECT events.id FROM events WHERE events.kind = ? AND events.amount > ?",
        "SELECT events.id FROM events WHERE events.amount > ?",
    )
    both, _ = advice.queries
    serving = [s for s in advice.suggestions if any(qa is both for qa, _ in s.trials)]
    for s in serving:
        keys = [k.lower() for k in s.candidate.keys]
        assert keys[0] == "kind" or "kind" in (s.candidate.where or ""), s.candidate


@pytest.fixture
def sale_url(adv_url: str) -> t.Any:
    """``sale`` (40,000 rows): one refund in fifty, amounts 1 to 10,000."""
    import random

    from sqlalchemy import Column
    from sqlalchemy import Integer
    from sqlalchemy import MetaData
    from sqlalchemy import String
    from sqlalchemy import Table

    md = MetaData()
    sale = Table(
        "sale",
        md,
        Column("id", Integer, primary_key=True),
        Column("kind", String(20), nullable=False),
        Column("amount", Integer, nullable=False),
    )
    engine = create_engine(adv_url)
    md.drop_all(engine)
    md.create_all(engine)
    rnd = random.Random(5)
    with engine.begin() as conn:
        conn.execute(
            sale.insert(),
            [
                {
                    "id": i,
                    "kind": "refund" if rnd.random() < 0.02 else "sale",
                    "amount": rnd.randint(1, 10_000),
                }
                for i in range(1, 40_001)
            ],
        )
        conn.exec_driver_sql(
            {"postgresql": "ANALYZE sale", "sqlite": "ANALYZE", "mysql": "ANALYZE TABLE sale"}[
                engine.dialect.name
            ]
        )
    engine.dispose()
    yield adv_url
    engine = create_engine(adv_url)
    md.drop_all(engine)
    engine.dispose()


def test_a_shape_is_planned_with_values_that_match_the_rows_its_calls_returned(
    sale_url: str,
) -> None:
    """From the store's shape alone, ``kind = ? AND amount > ?`` was planned with the
    kind most rows hold and a range that keeps a tenth: the refunds index the app needed
    was never found, and the same shape with ``amount > 0`` would have been offered one.
    The store counts the rows a call returned (never the values): the shape is planned
    with the common values and range edges whose share of the table is nearest, a rare
    kind and a narrow range for 80 rows a call, the common kind and the whole range for
    every row (no index: MariaDB too would read most rows by a covering index)."""
    shape = "SELECT sale.id FROM sale WHERE sale.kind = ? AND sale.amount > ?"
    with Advisor(sale_url, measure=False, scan_min_rows=1000) as adv:
        advice = adv.advise(
            [QueryInput(shape, rows=80.0), QueryInput(shape, rows=40_000.0)],
            index_health=False,
        )
    narrow, every = advice.queries
    assert narrow.values is not None
    assert narrow.values[0] == "refund"
    assert 8_000 <= narrow.values[1] <= 9_500, narrow.values
    assert every.values is not None
    assert every.values[0] == "sale"
    assert every.values[1] <= 10, every.values
    served = {id(qa) for sg in advice.suggestions for qa, _ in sg.trials}
    assert id(narrow) in served, no_suggestion_reason(narrow)
    assert id(every) not in served
    assert no_suggestion_reason(every)


def test_equality_then_range_when_the_estimate_cannot_tell(sale_url: str) -> None:
    """PostgreSQL's estimate put (kind) and (kind, amount) level for "kind = :k AND
    amount > :a" with a rare kind (739 and 753), and the shorter won; the longer also
    searches by the range and reads only the rows it returns. Where an index is its
    shorter twin plus columns the query filters by, and no worse, it is suggested."""
    if sale_url.startswith("sqlite"):
        sql, params = (
            "SELECT sale.id FROM sale WHERE sale.kind = ? AND sale.amount > ?",
            ("refund", 9000),
        )
    else:
        sql = "SELECT sale.id FROM sale WHERE sale.kind = %(k)s AND sale.amount > %(a)s"
        params = {"k": "refund", "a": 9000}  # type: ignore[assignment]
    kw: dict[str, t.Any] = {"allow_ddl": True} if sale_url.startswith("mysql") else {}
    with Advisor(sale_url, measure=False, scan_min_rows=1000, **kw) as adv:
        advice = adv.advise([QueryInput(sql, params=params)], index_health=False)
    assert suggested(advice) == [("sale", ("kind", "amount"))], [
        (tr.candidate.keys, tr.improved, tr.note) for tr in advice.queries[0].trials
    ]


def test_a_statement_whose_functions_may_write_is_planned_never_run(adv_url: str) -> None:
    """Under --allow-ddl the timing runs executed ``SELECT touch_victim(id) …`` (a
    function that inserts) and ``nextval``: a sequence moved by 240. A statement that
    calls a function that may write (PostgreSQL: volatile in ``pg_proc``; MariaDB: a
    stored function, or NEXTVAL and its kind) is planned, never run nor timed, and
    says so; its index is still offered, from the plan."""
    if adv_url.startswith("sqlite"):
        pytest.skip("SQLite keeps no functions of its own")
    pg = adv_url.startswith("postgresql")
    engine = create_engine(adv_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS victim")
        conn.exec_driver_sql("CREATE TABLE victim (x INTEGER)")
        conn.exec_driver_sql("DROP FUNCTION IF EXISTS touch_victim" + ("(integer)" if pg else ""))
        if pg:
            conn.exec_driver_sql("DROP SEQUENCE IF EXISTS side_seq")
            conn.exec_driver_sql("CREATE SEQUENCE side_seq")
            conn.exec_driver_sql(
                "CREATE FUNCTION touch_victim(v integer) RETURNS integer LANGUAGE sql AS"
                " 'INSERT INTO victim VALUES (v); SELECT v'"
            )
        else:
            conn.exec_driver_sql("DROP SEQUENCE IF EXISTS side_seq")
            conn.exec_driver_sql("CREATE SEQUENCE side_seq")
            conn.exec_driver_sql(
                "CREATE FUNCTION touch_victim(v INT) RETURNS INT MODIFIES SQL DATA"
                " BEGIN INSERT INTO victim VALUES (v); RETURN v; END"
            )
    nextval = "nextval('side_seq')" if pg else "NEXTVAL(side_seq)"
    sqls = [
        "SELECT events.id, touch_victim(events.id) FROM events WHERE events.email ="
        " 'user7@example.com'",
        f"SELECT {nextval}, events.id FROM events WHERE events.email = 'user9@example.com'",
    ]
    try:
        advice = advise(adv_url, *sqls, allow_ddl=True, measure=True)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM victim").scalar() == 0
            if pg:
                assert conn.exec_driver_sql("SELECT last_value FROM side_seq").scalar() == 1
                assert conn.exec_driver_sql("SELECT is_called FROM side_seq").scalar() is False
            else:
                assert conn.exec_driver_sql("SELECT NEXTVAL(side_seq)").scalar() == 1
        touch, seq = advice.queries
        if not pg:
            # MariaDB refuses to plan them at all inside the read-only transaction
            # ("Cannot execute statement in a READ ONLY transaction"), which says why.
            for qa in advice.queries:
                assert qa.measured_ms is None
                assert qa.not_run or "READ ONLY" in no_suggestion_reason(qa), qa
            return
        assert touch.not_run is not None
        assert "touch_victim" in touch.not_run
        assert "nextval" in (seq.not_run or "")
        for qa in advice.queries:
            assert qa.measured_ms is None
        (s,) = advice.suggestions
        assert s.candidate.keys == ("email",)
        assert s.estimated_only
        assert all("not timed: it calls" in tr.note for _, tr in s.trials), [
            tr.note for _, tr in s.trials
        ]
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                "DROP FUNCTION IF EXISTS touch_victim" + ("(integer)" if pg else "")
            )
            conn.exec_driver_sql("DROP SEQUENCE IF EXISTS side_seq")
            conn.exec_driver_sql("DROP TABLE IF EXISTS victim")
        engine.dispose()
