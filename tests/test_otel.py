"""querywatch beside OpenTelemetry: the real SDK with its in-memory exporter, the real
Flask and SQLAlchemy instrumentations. Each test has its own tracer provider, handed to
the instrumentations (no global provider: tests stay independent)."""

from __future__ import annotations

import pathlib
import typing as t

import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gate_app


def _lines() -> dict[str, int]:
    """The lines of gate_app.py marked ``# gate: <name>``."""
    text = pathlib.Path(gate_app.__file__).read_text().splitlines()
    return {
        line.rsplit("# gate: ", 1)[1].strip(): i
        for i, line in enumerate(text, 1)
        if "# gate: " in line
    }


@pytest.fixture
def traced(tmp_path: t.Any) -> t.Iterator[tuple[t.Any, InMemorySpanExporter]]:
    """The library app, instrumented after ``QueryWatch(app)`` (as an app's
    ``create_app`` then its ``wsgi.py`` would), every span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = gate_app.create_app(
        f"sqlite:///{tmp_path}/lib.db",
        QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db",
        QUERYWATCH_TRACE_URL="https://tempo.example/trace/{trace_id}",
    )
    gate_app.seed(app)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    with app.app_context():
        engine = gate_app.db.engine
    # The instrumentation declares SQLAlchemy < 2.1 and refuses 2.1 unless told.
    SQLAlchemyInstrumentor().instrument(
        engine=engine, tracer_provider=provider, skip_dep_check=True
    )
    try:
        yield app, exporter
    finally:
        FlaskInstrumentor().uninstrument_app(app)
        SQLAlchemyInstrumentor().uninstrument()
        exporter.clear()


def _spans(exporter: InMemorySpanExporter) -> tuple[t.Any, list[t.Any]]:
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind.name == "SERVER"]
    # The statements' spans (the instrumentation also traces opening a connection).
    return server, [s for s in spans if s.kind.name == "CLIENT" and s.name != "connect"]


def test_statement_spans_carry_the_shape_summary_and_call_site(traced: t.Any) -> None:
    app, exporter = traced
    assert app.test_client().get("/authors").status_code == 200
    server, statements = _spans(exporter)
    assert len(statements) == 1 + 20  # the authors, then one lazy load each (seeded: 20)
    lines = _lines()
    for span in statements:
        attrs = dict(span.attributes)
        assert len(attrs["querywatch.shape"]) == 16
        assert attrs["db.query.summary"] in ("SELECT lib_authors", "SELECT lib_books")
        assert attrs["code.file.path"].endswith("gate_app.py")
        # The lazy loads run in the view's list comprehension (its own frame before
        # Python 3.12).
        assert attrs["code.function.name"] in ("authors", "<listcomp>")
        assert attrs["code.line.number"] in (lines["parents"], lines["n+1"])
        # The statement's span is the request's child, in the request's trace.
        assert span.context.trace_id == server.context.trace_id
    loads = [s for s in statements if s.attributes["db.query.summary"] == "SELECT lib_books"]
    assert {s.attributes["querywatch.shape"] for s in loads} == {
        loads[0].attributes["querywatch.shape"]
    }
    # The request's span heard the N+1, on the line that loops.
    (event,) = [e for e in server.events if e.name.startswith("querywatch.")]
    assert event.name == "querywatch.n_plus_one"
    assert event.attributes["querywatch.count"] == 20
    assert event.attributes["querywatch.relationship"] == "Author.books"
    assert event.attributes["querywatch.shape"] == loads[0].attributes["querywatch.shape"]
    assert event.attributes["code.line.number"] == lines["n+1"]
    assert "selectinload" in event.attributes["querywatch.fix"]
    # No statement span was left without them, and the healthy endpoint has no event.
    exporter.clear()
    assert app.test_client().get("/books/3").status_code == 200
    server, statements = _spans(exporter)
    assert [e.name for e in server.events] == []
    assert [s.attributes["db.query.summary"] for s in statements] == ["SELECT lib_books"]


def test_without_statement_spans_the_request_span_carries_its_costliest_query(
    tmp_path: t.Any,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = gate_app.create_app(
        f"sqlite:///{tmp_path}/lib.db", QUERYWATCH_STORE_URL=f"sqlite:///{tmp_path}/qw.db"
    )
    gate_app.seed(app)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    try:
        assert app.test_client().get("/books/by-isbn?isbn=x").status_code == 200
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    server, statements = _spans(exporter)
    assert statements == []
    attrs = dict(server.attributes)
    assert attrs["db.query.summary"] == "SELECT lib_books"
    assert attrs["code.line.number"] == _lines()["scan"]
    assert attrs["code.function.name"] == "by_isbn"


def test_the_record_keeps_the_trace_id(traced: t.Any) -> None:
    from querywatch.signals import record_finished

    app, exporter = traced
    seen: list[str | None] = []

    def listen(sender: t.Any, record: t.Any, findings: t.Any) -> None:
        seen.append(record.trace_id)

    record_finished.connect(listen, sender=app)
    try:
        app.test_client().get("/authors")
    finally:
        record_finished.disconnect(listen, sender=app)
    server, _ = _spans(exporter)
    assert seen == [format(server.context.trace_id, "032x")]


def test_querywatchs_teardown_is_moved_before_opentelemetrys_once(traced: t.Any) -> None:
    """Instrumented after ``QueryWatch(app)``: OpenTelemetry's teardown would end the
    span first. At the first request querywatch's runs before it, and stays so."""
    app, _ = traced
    state = app.extensions["querywatch"]
    funcs = app.teardown_request_funcs[None]
    assert funcs.index(state.teardown) < len(funcs) - 1  # OpenTelemetry's is last
    app.test_client().get("/books/3")
    after = app.teardown_request_funcs[None]
    assert after[-1] is state.teardown
    assert after[-2].__module__ == "opentelemetry.instrumentation.flask"
    app.test_client().get("/books/3")
    assert app.teardown_request_funcs[None] == after


def test_findings_evidence_and_notifications_link_to_the_trace(traced: t.Any) -> None:
    """The trace of the N+1's request is kept with the finding; the slowest call of each
    shape keeps its trace in the store, so an alert's evidence names it and, with
    ``QUERYWATCH_TRACE_URL``, links to it; the incident's notifications carry the link."""
    import json
    import time

    from querywatch.alerts import evidence
    from querywatch.incidents import Incidents

    app, exporter = traced
    state = app.extensions["querywatch"]
    client = app.test_client()
    assert client.get("/authors").status_code == 200
    n_plus_one, _ = _spans(exporter)
    exporter.clear()
    for isbn in ("x", "y", "z"):
        assert client.get(f"/books/by-isbn?isbn={isbn}").status_code == 200
    scans = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert state.flusher.flush()
    store = state.store
    (finding,) = [f for f in store.findings() if f.kind == "n_plus_one"]
    assert finding.trace_id == format(n_plus_one.context.trace_id, "032x")
    # The slowest of the three scans' traces, as the evidence reads it.
    ev = evidence.gather(
        store,
        time.time(),
        60,
        width=60,
        trace_url="https://tempo.example/trace/{trace_id}",
    )
    (scan,) = [s for s in ev["shapes"] if s["endpoint"] == "GET /books/by-isbn"]
    traces = {format(s.context.trace_id, "032x") for s in scans}
    assert scan["trace_id"] in traces
    assert scan["trace_url"] == f"https://tempo.example/trace/{scan['trace_id']}"
    # Without a template, the id only.
    plain = evidence.gather(store, time.time(), 60, width=60)
    (bare,) = [s for s in plain["shapes"] if s["endpoint"] == "GET /books/by-isbn"]
    assert bare["trace_id"] == scan["trace_id"]
    assert "trace_url" not in bare
    # An incident opened on that evidence: its notification carries the link.
    incidents = Incidents(store)
    one = {**ev, "shapes": [scan]}
    inc, _ = incidents.trigger("slo:latency", "latency", evidence=one)
    with store.engine.connect() as conn:
        messages = [
            json.loads(m)
            for m in conn.exec_driver_sql(
                f"SELECT message FROM qw_outbox WHERE incident_id = {inc.id}"
            ).scalars()
        ]
    assert messages
    assert {m["incident"]["trace_url"] for m in messages} == {scan["trace_url"]}
    # The dashboard (a developer's machine: debug mode, loopback) links both.
    app.debug = True
    page = client.get("/_querywatch/findings").get_data(as_text=True)
    assert f'href="https://tempo.example/trace/{finding.trace_id}"' in page
    page = client.get(f"/_querywatch/incidents/{inc.id}").get_data(as_text=True)
    assert f'href="{scan["trace_url"]}"' in page


def test_duration_histograms_carry_trace_ids_as_openmetrics_exemplars(traced: t.Any) -> None:
    """Asked for OpenMetrics (as Prometheus asks), ``/metrics`` gives each duration
    bucket's last traced observation as its exemplar; the classic text format, none."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    app, exporter = traced
    client = app.test_client()
    assert client.get("/books/3").status_code == 200
    server, _ = _spans(exporter)
    trace_id = format(server.context.trace_id, "032x")
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}
    http = [
        s
        for s in families["http_server_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["http_route"] == "/books/<int:book_id>"
    ]
    exemplars = [s.exemplar for s in http if s.exemplar is not None]
    assert [e.labels for e in exemplars] == [{"trace_id": trace_id}]
    # On the bucket the request's duration fell in (the first whose bound holds it).
    (bucket,) = [s for s in http if s.exemplar is not None]
    assert exemplars[0].value <= float(bucket.labels["le"])
    db = [
        s.exemplar
        for s in families["db_client_operation_duration_seconds"].samples
        if s.exemplar is not None
    ]
    assert {e.labels["trace_id"] for e in db} == {trace_id}
    plain = client.get("/metrics").get_data(as_text=True)
    assert "http_server_request_duration_seconds_bucket" in plain
    assert "trace_id" not in plain


COLLISION = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import gate_app

reader = InMemoryMetricReader()
app = gate_app.create_app(
    f"sqlite:///{sys.argv[2]}/lib.db", QUERYWATCH_STORE_URL=f"sqlite:///{sys.argv[2]}/qw.db"
)
gate_app.seed(app)
FlaskInstrumentor().instrument_app(app, meter_provider=MeterProvider(metric_readers=[reader]))
client = app.test_client()
client.get("/books/3")
data = reader.get_metrics_data()
theirs = sorted(
    m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
)
print(json.dumps({"theirs": theirs, "ours": client.get("/metrics").text}))
"""


@pytest.mark.parametrize("opt_in", ["", "http"])
def test_no_second_http_duration_series_beside_opentelemetrys(tmp_path: t.Any, opt_in: str) -> None:
    """OpenTelemetry's Flask instrumentation with the stable HTTP conventions
    (``OTEL_SEMCONV_STABILITY_OPT_IN=http``) exports ``http.server.request.duration``
    itself: querywatch leaves its series of that name out (its other metrics stay).
    Without them it exports the older ``http.server.duration``: querywatch's stays. In
    a process of its own: the instrumentation reads the variable once a process."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "collision.py"
    script.write_text(COLLISION)
    env = {**os.environ, "OTEL_SEMCONV_STABILITY_OPT_IN": opt_in}
    out = subprocess.run(
        [sys.executable, str(script), str(pathlib.Path(__file__).parent), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "db_client_operation_duration_seconds_bucket" in got["ours"]
    assert "querywatch_request_queries_bucket" in got["ours"]
    if opt_in:
        assert "http.server.request.duration" in got["theirs"]
        assert "http_server_request_duration_seconds" not in got["ours"]
        assert "leaves its http_server_request_duration_seconds out" in out.stderr
    else:
        assert "http.server.duration" in got["theirs"]
        assert "http.server.request.duration" not in got["theirs"]
        assert "http_server_request_duration_seconds_bucket" in got["ours"]


def test_a_span_with_attribute_limits_gets_them_through_the_sdk() -> None:
    """The statement's attributes go straight into the SDK span's own (the checks
    cost as much as all of querywatch's work on a statement); a span whose limits they
    would pass gets them through ``set_attributes``, which applies the limits."""
    from opentelemetry.sdk.trace import SpanLimits

    from querywatch.integrations import otel

    attrs = {"querywatch.shape": "abcdef0123456789", "code.line.number": 42}
    free = TracerProvider().get_tracer("t").start_span("s")
    otel._set_attributes(free, attrs)
    assert dict(free.attributes) == attrs
    short = TracerProvider(span_limits=SpanLimits(max_span_attribute_length=6))
    span = short.get_tracer("t").start_span("s")
    otel._set_attributes(span, attrs)
    assert dict(span.attributes) == {"querywatch.shape": "abcdef", "code.line.number": 42}
    few = TracerProvider(span_limits=SpanLimits(max_span_attributes=1))
    span = few.get_tracer("t").start_span("s")
    otel._set_attributes(span, attrs)
    assert len(span.attributes) == 1
    # An ended span keeps what it had.
    free.end()
    otel._set_attributes(free, {"querywatch.shape": "0" * 16})
    assert free.attributes["querywatch.shape"] == "abcdef0123456789"
