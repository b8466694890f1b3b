from __future__ import annotations

import typing as t
from time import perf_counter

import pytest
from flask import Flask
from sqlalchemy import text

from conftest import on_finished
from querywatch import QueryWatch
from querywatch import _compat
from querywatch._compat import create_engine
from querywatch.capture import current_record
from querywatch.capture._timing import _TimedCursor
from querywatch.demo import shop


def test_request_records_every_statement(client: t.Any, records: list[t.Any]) -> None:
    """Each request's statements are recorded with shape, rows, endpoint rule and call site."""
    resp = client.get("/api/customers/3/orders")
    assert resp.status_code == 200
    (record, findings) = records[-1]
    assert record.name == "GET /api/customers/<int:customer_id>/orders"
    assert record.kind == "request"
    assert record.status == 200
    assert record.query_count == 1
    q = record.queries[0]
    assert q.fingerprint.shape.startswith("SELECT")
    assert "orders.customer_id = ?" in q.fingerprint.shape
    assert q.rows == len(resp.json)
    assert q.error is None
    assert q.duration > 0
    assert q.site is not None
    assert q.site.filename.endswith("querywatch/demo/shop.py")
    assert q.site.function == "customer_orders"
    assert findings == ()


def test_duration_includes_fetching_rows(tmp_path: t.Any) -> None:
    """A query's time runs until its result is exhausted, not only until execute returns:
    with a scan whose matches come late, most of SQLite's work happens during the fetch."""
    engine = create_engine(f"sqlite:///{tmp_path}/scan.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)"
            " INSERT INTO big SELECT i, printf('v%d', i) FROM n"
        )
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app)
    with engine.connect() as conn, qw.capture("scan") as record:
        # id = 1 matches at once; the rest of the matches are at the end of the table.
        result = conn.execute(text("SELECT id FROM big WHERE id = 1 OR v LIKE '%99999%'"))
        after_execute = perf_counter()
        rows = result.all()
        after_fetch = perf_counter()
    q = record.queries[0]
    assert [r.id for r in rows] == [1, 99999, 199999]
    assert q.rows == 3
    end = q.start + q.duration
    # The recorded end lies after execute() returned, inside the fetch.
    assert after_execute < end <= after_fetch
    engine.dispose()


def test_result_left_open_is_finished_with_the_request(tmp_path: t.Any) -> None:
    """A result never exhausted nor closed is still counted, up to its last fetch."""
    engine = create_engine(f"sqlite:///{tmp_path}/open.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app)
    conn = engine.connect()
    with qw.capture("open") as record:
        result = conn.execute(text("SELECT 1 UNION ALL SELECT 2"))
        result.fetchone()
    assert record.query_count == 1
    assert record.queries[0].done
    assert record.queries[0].rows == 1
    assert record.shapes[record.queries[0].fingerprint.id].calls == 1
    result.close()
    conn.close()
    engine.dispose()


def test_cursor_wrapper_is_transparent(tmp_path: t.Any) -> None:
    """Timed results behave as without querywatch: attributes, lastrowid, rowcount, and
    every way of fetching."""
    engine = create_engine(f"sqlite:///{tmp_path}/w.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app)
    with engine.begin() as conn, qw.capture("w") as record:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v INT)")
        r = conn.exec_driver_sql("INSERT INTO t (v) VALUES (5)")
        assert r.lastrowid == 1
        r = conn.exec_driver_sql("UPDATE t SET v = 6")
        assert r.rowcount == 1
        r = conn.exec_driver_sql("SELECT v FROM t")
        # Reads are timed through SQLAlchemy's fetch strategy, the cursor left as it is:
        # the recorded statement is the strategy. On the fallback (SQLAlchemy 1.4), a
        # wrapper of the cursor.
        live = current_record()
        assert live is not None
        if _compat.FAST.reads:
            assert r.cursor_strategy is live.queries[-1]
            assert type(r.cursor).__module__ == "sqlite3"
        else:
            assert type(r.cursor) is _TimedCursor
            assert r.cursor._qw_query is live.queries[-1]
        assert record.queries[-1].fingerprint is live.queries[-1].fingerprint
        assert r.cursor.description[0][0] == "v"
        assert r.scalar() == 6
        r = conn.exec_driver_sql("SELECT v FROM t")
        assert r.fetchone() == (6,)
        assert r.fetchone() is None
        r = conn.exec_driver_sql("SELECT v FROM t UNION ALL SELECT 7")
        assert r.fetchmany(1) == [(6,)]
        assert r.fetchmany(5) == [(7,)]
        assert r.fetchmany(5) == []
    assert [q.rows for q in record.queries] == [0, 1, 1, 1, 1, 2]
    assert all(q.done for q in record.queries)
    engine.dispose()


def test_executemany_counts_once_with_its_size(tmp_path: t.Any) -> None:
    """An executemany is one statement carrying its batch size."""
    engine = create_engine(f"sqlite:///{tmp_path}/m.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INT)")
        with qw.capture("bulk") as record:
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": i} for i in range(250)])
    assert record.query_count == 1
    assert record.queries[0].batch_size == 250
    assert record.queries[0].rows == 250
    engine.dispose()


def test_errors_are_recorded_and_the_app_error_is_untouched(tmp_path: t.Any) -> None:
    """A failing statement is recorded with its error class; the app sees its own error."""
    engine = create_engine(f"sqlite:///{tmp_path}/e.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app)
    from sqlalchemy.exc import OperationalError

    with engine.connect() as conn, qw.capture("err") as record:
        with pytest.raises(OperationalError, match="no such table"):
            conn.execute(text("SELECT * FROM missing_table"))
    assert record.query_count == 1
    assert record.errors == 1
    assert record.queries[0].error == "OperationalError"
    assert record.shapes[record.queries[0].fingerprint.id].errors == 1
    engine.dispose()


def test_job_capture_outside_a_request(app: Flask, records: list[t.Any]) -> None:
    """``qw.capture(name)`` records work outside requests as the endpoint ``job:<name>``."""
    state = app.extensions["querywatch"]
    qw = QueryWatch()  # any instance serves the app of the current app context
    with app.app_context(), qw.capture("nightly") as record:
        shop.db.session.execute(text("SELECT count(*) FROM orders")).scalar()
    assert record.name == "job:nightly"
    assert record.kind == "job"
    assert record.query_count == 1
    assert records[-1][0] is record
    assert state.stats.drain().buckets  # folded into the aggregates


def test_big_request_keeps_bounded_memory_and_exact_aggregates(tmp_path: t.Any) -> None:
    """15,000 queries in one unit of work: the kept list is capped and counts what it
    dropped, while per-shape aggregates stay exact."""
    engine = create_engine(f"sqlite:///{tmp_path}/big.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["QUERYWATCH_MAX_QUERIES_PER_REQUEST"] = 500
    qw = QueryWatch(app)
    with engine.connect() as conn, qw.capture("big") as record:
        live = current_record()
        for i in range(15_000):
            conn.execute(text("SELECT :i"), {"i": i}).scalar()
    assert live is not None
    assert record.query_count == 15_000
    assert len(record.queries) == 500
    assert record.dropped == 14_500
    (shape,) = record.shapes.values()
    assert shape.calls == 15_000
    (live_shape,) = live.shapes.values()
    assert sum(live_shape.hist.values()) == 15_000
    assert len(live.loops) == 1
    (loop,) = live.loops.values()
    assert loop.calls == 15_000
    assert len(loop.params) <= 64
    engine.dispose()


def test_odd_statements_and_parameters_do_not_break_capture(tmp_path: t.Any) -> None:
    """A 1 MB statement, binary parameters and non-UTF-8 text are captured without error."""
    engine = create_engine(f"sqlite:///{tmp_path}/odd.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app)
    big = "SELECT 1 AS a" + " " * 1_000_000 + "-- " + "x" * 1000
    with engine.begin() as conn, qw.capture("odd") as record:
        conn.exec_driver_sql("CREATE TABLE b (data BLOB, t TEXT)")
        not_utf8 = "caf\udce9".encode("utf-8", "surrogateescape")  # b"caf\xe9"
        conn.execute(
            text("INSERT INTO b VALUES (:d, :t)"), {"d": b"\xff\x00\xfe" * 1000, "t": not_utf8}
        )
        conn.execute(text("SELECT * FROM b WHERE data = :d"), {"d": bytearray(b"\x00\xff")}).all()
        conn.execute(text("SELECT * FROM b WHERE t = :t"), {"t": not_utf8}).all()
        assert conn.exec_driver_sql(big).scalar() == 1
        conn.execute(text("SELECT '\u00e9\u4e2d' AS x")).all()
    assert record.query_count == 6
    assert all(q.done for q in record.queries)
    assert record.errors == 0
    # A lone surrogate the driver refuses to encode is the driver's error, recorded as such.
    with engine.connect() as conn, qw.capture("surrogate") as record:
        with pytest.raises(UnicodeEncodeError):
            conn.execute(text("SELECT * FROM b WHERE t = :t"), {"t": "caf\udce9"})
    assert record.query_count == 1
    assert record.queries[0].error == "UnicodeEncodeError"
    engine.dispose()


def test_unhashable_parameters_are_hashed_by_repr() -> None:
    """Lists and dicts as parameters (PostgreSQL arrays, JSON) still get a stable hash."""
    from querywatch.capture._sites import _params_hash

    assert _params_hash({"a": [1, 2]}) == _params_hash({"a": [1, 2]})
    assert _params_hash({"a": [1, 2]}) != _params_hash({"a": [1, 3]})
    assert _params_hash((1, "x")) == _params_hash((1, "x"))


def test_engines_argument_restricts_capture(tmp_path: t.Any) -> None:
    """With ``engines=``, statements on other engines are not recorded."""
    watched = create_engine(f"sqlite:///{tmp_path}/a.db")
    other = create_engine(f"sqlite:///{tmp_path}/b.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app, engines=[watched])
    with qw.capture("two") as record:
        with watched.connect() as c:
            c.exec_driver_sql("SELECT 1").all()
        with other.connect() as c:
            c.exec_driver_sql("SELECT 2").all()
    assert record.query_count == 1
    assert record.queries[0].fingerprint.shape == "SELECT ?"
    watched.dispose()
    other.dispose()


def test_no_unit_of_work_records_nothing(tmp_path: t.Any) -> None:
    """Outside requests and jobs nothing is recorded."""
    engine = create_engine(f"sqlite:///{tmp_path}/idle.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    QueryWatch(app)
    with engine.connect() as c:
        r = c.exec_driver_sql("SELECT 1")
        assert not isinstance(r.cursor, _TimedCursor)
        assert r.scalar() == 1
    assert app.extensions["querywatch"].stats.drain().is_empty()
    engine.dispose()


def test_histogram_buckets_hold_their_values() -> None:
    """Every duration falls inside its bucket's bounds, so percentiles are within 12.5%."""
    import random

    from querywatch._stats import MAX_BUCKET
    from querywatch._stats import bucket_bounds
    from querywatch._stats import bucket_index

    rng = random.Random(3)
    for _ in range(20_000):
        d = 10 ** rng.uniform(-6, 3)
        i = bucket_index(d)
        lo, hi = bucket_bounds(i)
        assert lo <= d < hi or i == MAX_BUCKET
        if i > 0:  # bucket 0 holds everything under a microsecond
            assert (hi - lo) / hi <= 0.25


def test_call_site_memo_tells_sites_apart(tmp_path: t.Any) -> None:
    """The per-shape call-site memo never merges two lines issuing the same shape."""
    engine = create_engine(f"sqlite:///{tmp_path}/memo.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["QUERYWATCH_APP_PACKAGES"] = [__name__.split(".")[0]]
    qw = QueryWatch(app)

    def run(conn: t.Any, i: int) -> None:
        conn.execute(text("SELECT :i"), {"i": i}).all()

    with engine.connect() as conn, qw.capture("memo") as record:
        for i in range(3):
            run(conn, i)
        conn.execute(text("SELECT :i"), {"i": 9}).all()
        for i in range(2):
            run(conn, i)
    lines = [q.site.lineno for q in record.queries]
    assert len(set(lines)) == 2
    assert lines[0] == lines[1] == lines[2] == lines[4] == lines[5] != lines[3]
    assert {q.site.function for q in record.queries} == {
        "run",
        "test_call_site_memo_tells_sites_apart",
    }
    engine.dispose()


def test_streamed_reads_and_statements_past_the_cap(tmp_path: t.Any) -> None:
    """Streamed reads (stream_results, yield_per) are timed through the cursor; statements
    past the per-request cap are aggregated when they end, or when the work ends if their
    result is left open."""
    engine = create_engine(f"sqlite:///{tmp_path}/s.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["QUERYWATCH_MAX_QUERIES_PER_REQUEST"] = 1
    qw = QueryWatch(app)
    with engine.connect() as conn, qw.capture("stream") as record:
        streamed = conn.execution_options(stream_results=True, yield_per=2)
        rows = streamed.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)"
            " SELECT i FROM n"
        ).all()
        assert len(rows) == 5
        conn.exec_driver_sql("SELECT 1").all()  # past the cap: aggregated at its end
        left_open = conn.exec_driver_sql("SELECT 2 UNION ALL SELECT 3")
        left_open.fetchone()
    assert record.query_count == 3
    assert len(record.queries) == 1
    assert record.dropped == 2
    assert record.queries[0].rows == 5
    assert sum(s.calls for s in record.shapes.values()) == 3
    assert sum(s.rows for s in record.shapes.values()) == 5 + 1 + 1
    left_open.close()
    engine.dispose()


def test_many_distinct_shapes_in_one_request_stay_bounded(tmp_path: t.Any) -> None:
    """3,000 distinct shapes in one unit of work: loop entries and per-shape aggregates are
    capped, the rest counted exactly under "other"."""
    engine = create_engine(f"sqlite:///{tmp_path}/shapes.db")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    qw = QueryWatch(app)
    with engine.connect() as conn, qw.capture("shapes") as record:
        live = current_record()
        for i in range(3000):
            conn.exec_driver_sql(f"SELECT {i} AS c{i}").all()
    assert live is not None
    assert len(live.loops) == 1000
    assert len(record.shapes) == 2001
    assert record.shapes["other"].calls == 1000
    assert sum(s.calls for s in record.shapes.values()) == 3000
    engine.dispose()


@pytest.mark.postgres
def test_sqlalchemys_first_connect_statements_are_connection_set_up(
    postgres_url: str, tmp_path: t.Any
) -> None:
    """The statements SQLAlchemy runs when an engine first connects (the server's
    version, its default schema, ...) are not the queries of the request that happened
    to connect: they count under "connection set-up"."""
    import time

    from querywatch.capture._listeners import SETUP_NAME

    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    app = Flask(__name__, instance_path=str(tmp_path))

    @app.get("/one")
    def one() -> str:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT 1")).scalar())

    QueryWatch(app)
    state = app.extensions["querywatch"]
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append(r), live=True)
    try:
        assert app.test_client().get("/one").status_code == 200
        assert app.test_client().get("/one").status_code == 200
    finally:
        engine.dispose()
    first, second = seen
    assert [q.fingerprint.shape for q in first.queries] == ["SELECT ?"]
    assert first.query_count == second.query_count == 1
    assert first.setup is not None
    assert second.setup is None
    setup_shapes = [q.fingerprint.shape.lower() for q in first.setup.queries]
    assert any("version()" in s for s in setup_shapes), setup_shapes
    state.flusher.flush()
    win = state.store.window(0, time.time() + 60)
    assert set(win.endpoints) == {"GET /one", SETUP_NAME}
    assert win.endpoints["GET /one"].queries == 2
    assert win.endpoints["GET /one"].requests == 2
