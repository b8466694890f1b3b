"""querywatch beside the tools an app already runs: Sentry (the real SDK, its Flask
integration, a transport that records envelopes). Each scenario runs in a process of its
own: Sentry's Flask integration patches Flask for the whole process."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import typing as t

import pytest

HERE = pathlib.Path(__file__).parent

SCENARIO = r"""
import json, sys
import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration
from sentry_sdk.transport import Transport

sys.path.insert(0, sys.argv[1])
import gate_app
from querywatch import _failopen

class Recording(Transport):
    envelopes = []
    def capture_envelope(self, envelope):
        Recording.envelopes.append(envelope)

if sys.argv[2] == "on":
    # As sentry-sdk's default integrations do: OpenTelemetry's API imported, no
    # tracer provider set up.
    import opentelemetry.trace
    sentry_sdk.init(
        dsn="https://public@127.0.0.1/1",
        transport=Recording,
        traces_sample_rate=1.0,
        integrations=[FlaskIntegration()],
        default_integrations=False,
    )
app = gate_app.create_app(
    f"sqlite:///{sys.argv[3]}/lib.db", QUERYWATCH_STORE_URL=f"sqlite:///{sys.argv[3]}/qw.db"
)

@app.get("/boom")
def boom():
    raise RuntimeError("boom")

from flask import g, request

@app.before_request
def remember_path():
    g.path = request.path

@app.teardown_appcontext
def audit(exc):  # after querywatch's end of the request, as an app's own audit log
    if g.get("path") == "/authors":
        sentry_sdk.capture_message("audit: /authors served")

gate_app.seed(app)
client = app.test_client()
statuses = [client.get(p).status_code for p in ("/authors", "/books/3", "/boom")]
sentry_sdk.flush()
events = []
for env in Recording.envelopes:
    for item in env.items:
        if item.type not in ("event", "transaction"):
            continue
        payload = item.payload.json
        events.append({
            "type": payload.get("type", "error"),
            "transaction": payload.get("transaction"),
            "tags": payload.get("tags", {}),
            "message": payload.get("message") or (payload.get("logentry") or {}).get("message"),
            "context": (payload.get("contexts") or {}).get("querywatch"),
            "breadcrumbs": [b for b in (payload.get("breadcrumbs") or {}).get("values", [])
                            if b.get("category") == "querywatch"],
            "trace_id": ((payload.get("contexts") or {}).get("trace") or {}).get("trace_id"),
        })
state = app.extensions["querywatch"]
state.flusher.flush()
finding_traces = {f.kind: f.trace_id for f in state.store.findings()}
from sqlalchemy import text
from querywatch.capture import _listeners
with state.store.engine.connect() as conn:
    rows = conn.execute(text("SELECT endpoint, max_trace FROM qw_query_stats")).all()
shape_traces = {}
for endpoint, trace in rows:
    shape_traces.setdefault(endpoint, set()).add(trace)
print(json.dumps({"statuses": statuses, "events": events, "finding_traces": finding_traces,
                  "shape_traces": {k: sorted(v, key=str) for k, v in shape_traces.items()},
                  "otel_api": "opentelemetry.trace" in sys.modules,
                  "statement_hooks": len(_listeners.statement_hooks),
                  "internal_errors": _failopen.internal_error_counts()}))
"""


def _run(tmp_path: t.Any, sentry: str) -> dict[str, t.Any]:
    pytest.importorskip("sentry_sdk")
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    out = subprocess.run(
        [sys.executable, str(script), str(HERE), sentry, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return t.cast("dict[str, t.Any]", json.loads(out.stdout.strip().splitlines()[-1]))


def test_findings_are_breadcrumbs_and_tags_on_the_requests_sentry_transaction(
    tmp_path: t.Any,
) -> None:
    """The N+1 of GET /authors is on that request's transaction: a tag with the finding's
    kind, one with its query shape, and the finding in its ``querywatch`` context; an
    event the request sends after its end (the app's audit) carries it as a breadcrumb
    with the relationship, the count and the call site. The healthy request and the
    failing one carry none of it (each request has its own scope)."""
    got = _run(tmp_path, "on")
    assert got["statuses"] == [200, 200, 500]
    assert got["internal_errors"] == {}
    by_name = {e["transaction"]: e for e in got["events"] if e["type"] == "transaction"}
    authors = by_name["authors"]
    assert authors["tags"]["querywatch.finding"] == "n_plus_one"
    shape = authors["tags"]["querywatch.shape"]
    assert authors["context"] is None  # what Sentry would serialize on the request's thread
    (audit,) = [e for e in got["events"] if e["message"] == "audit: /authors served"]
    assert audit["tags"]["querywatch.finding"] == "n_plus_one"
    (crumb,) = audit["breadcrumbs"]
    assert crumb["level"] == "warning"
    assert crumb["message"].startswith("n_plus_one: 20 x SELECT")
    assert crumb["data"]["shape"] == shape
    assert crumb["data"]["relationship"] == "Author.books"
    assert crumb["data"]["count"] == 20
    assert crumb["data"]["endpoint"] == "GET /authors"
    assert "gate_app.py" in crumb["data"]["call_site"]
    assert authors["tags"]["querywatch.call_site"] == crumb["data"]["call_site"]
    assert "selectinload(Author.books)" in crumb["data"]["fix"]
    # The finding keeps the trace of the request's transaction, and so does the
    # slowest call of each of that request's shapes; a request with neither a finding
    # nor a slow read does not look Sentry's trace up (its scope lookups were most of
    # what querywatch added beside it).
    assert len(authors["trace_id"]) == 32
    assert got["finding_traces"] == {"n_plus_one": authors["trace_id"]}
    assert got["shape_traces"]["GET /authors"] == [authors["trace_id"]]
    assert got["shape_traces"]["GET /books/<int:book_id>"] == [None]
    # OpenTelemetry's API imported (sentry-sdk's default integrations do), with no
    # tracer provider: its spans record nothing, and no statement hook runs.
    assert got["otel_api"] is True
    assert got["statement_hooks"] == 0
    # No literal value of the app's data goes to Sentry: shapes only.
    assert "Author 1" not in json.dumps(got["events"])
    for name in ("book", "boom"):
        assert "querywatch.finding" not in by_name[name]["tags"]
        assert by_name[name]["context"] is None
    errors = [e for e in got["events"] if e["type"] == "error" and e["message"] is None]
    assert len(errors) == 1, errors
    (error,) = errors
    assert error["breadcrumbs"] == []
    assert "querywatch.finding" not in error["tags"]


def test_sentry_imported_but_not_initialised_costs_nothing(tmp_path: t.Any) -> None:
    got = _run(tmp_path, "off")
    assert got["statuses"] == [200, 200, 500]
    assert got["events"] == []
    assert got["internal_errors"] == {}
    assert got["finding_traces"] == {"n_plus_one": None}
