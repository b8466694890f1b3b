"""What users are handed of a unit of work: read-only views, never querywatch's working
record (which a slow read's sample ties to a raw DBAPI connection)."""

from __future__ import annotations

import dataclasses
import typing as t

import pytest
from sqlalchemy import text

import querywatch
from conftest import on_finished
from querywatch import Finding
from querywatch import QueryView
from querywatch import QueryWatch
from querywatch import RecordView
from querywatch import ShapeView
from querywatch.capture import Record
from querywatch.capture import current_record
from querywatch.demo import shop


def test_a_receiver_is_handed_views_it_cannot_change(sqlite_shop_url: str, tmp_path: t.Any) -> None:
    """A ``record_finished`` receiver gets a RecordView of frozen statements, shapes and
    findings; setting anything raises and the aggregates stay as they were."""
    app = shop.create_app(
        sqlite_shop_url,
        instance_path=str(tmp_path / "instance"),
        # Every read is slow: each keeps a sample (statement, parameters, connection).
        config={"TESTING": True, "QUERYWATCH_SLOW_QUERY_MS": 0.001},
    )
    records: list[t.Any] = []
    on_finished(app, lambda r, f: records.append((r, f)))
    working: list[t.Any] = []
    on_finished(app, lambda r, f: working.append(r), live=True)
    assert app.test_client().get("/api/orders/recent?limit=10").status_code == 200
    assert all(hasattr(q, "sample") for q in working[-1].queries)
    record, findings = records[-1]
    assert type(record) is RecordView
    assert record.name == "GET /api/orders/recent"
    assert record.finished
    assert record.query_count == 11
    assert len(record.queries) == 11
    assert all(type(q) is QueryView for q in record.queries)
    q = record.queries[0]
    assert q.done
    assert q.statement == q.fingerprint.shape
    # No sample (statement, parameters, DBAPI connection) reaches a receiver.
    assert not hasattr(q, "sample")
    assert {f.name for f in dataclasses.fields(QueryView)}.isdisjoint({"sample", "bump"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.rows = 0  # type: ignore[misc]
    with pytest.raises(AttributeError, match="RecordView is read-only: 'query_count'"):
        record.query_count = 0
    with pytest.raises(AttributeError, match="read-only: '_record'"):
        record._record = None
    shapes = record.shapes
    assert all(type(s) is ShapeView for s in shapes.values())
    assert sum(s.calls for s in shapes.values()) == 11
    with pytest.raises(TypeError):
        shapes["x"] = next(iter(shapes.values()))  # type: ignore[index]
    assert type(findings) is tuple
    (n1,) = [f for f in findings if f.kind == "n_plus_one"]
    assert type(n1) is Finding
    assert n1.count == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        n1.count = 0  # type: ignore[misc]
    assert record.query_count == 11


def test_querywatchs_own_receivers_read_the_working_record(app: t.Any) -> None:
    """The metrics and the CI gate read the working record (no views built for them);
    a user's receiver of the same unit of work gets the view of that record."""
    handed: list[tuple[str, t.Any]] = []
    on_finished(app, lambda r, f: handed.append(("live", r)), live=True)
    on_finished(app, lambda r, f: handed.append(("user", r)))
    assert app.test_client().get("/api/orders/recent?limit=3").status_code == 200
    (_, live), (_, view) = sorted(handed, key=lambda kv: kv[0])
    assert type(live) is Record
    assert type(view) is RecordView
    assert live.view() is view
    assert view.query_count == live.query_count == 4
    assert [q.fingerprint for q in view.queries] == [q.fingerprint for q in live.queries]


def test_no_view_is_built_when_only_querywatch_listens(app: t.Any) -> None:
    """With only querywatch's own receivers listening, no view is built."""
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append(r), live=True)
    assert app.test_client().get("/api/orders/recent?limit=3").status_code == 200
    (live,) = seen
    assert live._view is None


def test_capture_yields_a_view_that_reads_through_until_the_work_ends(app: t.Any) -> None:
    """Inside ``qw.capture()`` the view shows the work so far; after it, the finished
    work, and it is the very view the receivers were handed."""
    handed: list[t.Any] = []
    on_finished(app, lambda r, f: handed.append(r))
    qw = QueryWatch()
    with app.app_context(), qw.capture("sync") as record:
        assert type(record) is RecordView
        assert (record.query_count, record.finished, record.duration) == (0, False, 0.0)
        shop.db.session.execute(text("SELECT count(*) FROM orders")).scalar()
        assert record.query_count == 1
        assert not record.finished
        assert current_record() is not None
    assert record.finished
    assert record.duration > 0
    assert record.kind == "job"
    assert handed == [record]
    assert handed[0] is record


def test_the_old_names_still_import_with_a_warning() -> None:
    """``querywatch.Record`` and ``querywatch.QueryInfo`` are the views now, and say so."""
    with pytest.warns(DeprecationWarning, match="querywatch.RecordView"):
        assert querywatch.Record is RecordView
    with pytest.warns(DeprecationWarning, match="querywatch.QueryView"):
        from querywatch import QueryInfo
    assert QueryInfo is QueryView
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        querywatch.Nope  # noqa: B018
    assert "Record" not in querywatch.__all__
