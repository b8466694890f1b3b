"""OpenTelemetry, when the app runs it: what querywatch knows of a statement on its span,
and what it found in a request on the request's span.

- A statement's span (``opentelemetry-instrumentation-sqlalchemy``'s, made just before
  the statement runs) gets querywatch's shape id (``querywatch.shape``), the semantic
  conventions' ``db.query.summary`` (``SELECT orders``) and the call site in the
  application as ``code.file.path``, ``code.line.number`` and ``code.function.name``.
  Without that instrumentation, the request's span gets the same of its costliest
  statement.
- Each finding is an event on the request's span: ``querywatch.n_plus_one`` (and
  ``querywatch.repeated_query``, ``querywatch.slow_query``...) with its shape, count,
  relationship, call site and fix.
- The request's trace id is kept on its record: findings, the slowest call of each
  shape, and so alerts' evidence and incidents, link to the trace
  (``QUERYWATCH_TRACE_URL``).

Nothing here runs unless the app imported OpenTelemetry: querywatch does not import it,
and a process without it pays for one lookup in ``sys.modules`` a request.
"""

from __future__ import annotations

import re
import sys
import typing as t

from .._failopen import log_limited
from .._text import compact_shape

if t.TYPE_CHECKING:
    from .._detectors import Finding
    from ..capture import Record
    from ..fingerprint import Fingerprint

__all__ = [
    "FLASK_SPAN_KEY",
    "annotate_request",
    "annotate_statement",
    "query_summary",
    "request_span",
    "running",
    "trace_id_of",
]

#: Where ``opentelemetry-instrumentation-flask`` keeps a request's span in its WSGI
#: environment.
FLASK_SPAN_KEY = "opentelemetry-flask.span_key"
#: Shapes whose ``db.query.summary`` is remembered.
_MAX_SUMMARIES = 10_000
_summaries: dict[str, str] = {}
#: The tables a statement names: after FROM, JOIN, INTO, UPDATE.
_TABLE_RE = re.compile(r'\b(?:FROM|JOIN|INTO|UPDATE)\s+((?:"[^"]+"|`[^`]+`|[\w.]+))', re.I)
#: An event's attributes are kept short (a fix is one sentence).
_TEXT = 500


def running() -> bool:
    """Whether the app imported OpenTelemetry's API."""
    return "opentelemetry.trace" in sys.modules


def statement_spans() -> bool:
    """Whether OpenTelemetry's SQLAlchemy instrumentation is on: statements have spans
    for capture's statement hook to annotate."""
    module = sys.modules.get("opentelemetry.instrumentation.sqlalchemy")
    if module is None:
        return False
    return bool(module.SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry)


def recording() -> bool:
    """Whether a span records in the current context (the request's, at its end). The
    API alone, which sentry-sdk imports, hands out only spans that do not: nothing to
    annotate, and nothing more to look up."""
    trace = sys.modules.get("opentelemetry.trace")
    return trace is not None and trace.get_current_span().is_recording()


def request_span(environ: t.Mapping[str, t.Any] | None) -> t.Any:
    """The request's span while it records: the Flask instrumentation's, else the
    current span; None when there is none, or it has ended."""
    span = environ.get(FLASK_SPAN_KEY) if environ is not None else None
    if span is None:
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None:
            return None
        span = trace.get_current_span()
    return span if span.is_recording() else None


def trace_id_of(span: t.Any) -> str | None:
    """The span's trace id, as 32 hex digits (None: not a valid context)."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def query_summary(fingerprint: Fingerprint) -> str:
    """The semantic conventions' ``db.query.summary``: the operation and the tables it
    names, in order (``SELECT orders customers``); remembered per shape."""
    summary = _summaries.get(fingerprint.id)
    if summary is None:
        tables = dict.fromkeys(
            m.group(1).strip('"`').lower() for m in _TABLE_RE.finditer(fingerprint.shape)
        )
        summary = " ".join([fingerprint.operation.upper(), *tables])[:255]
        if len(_summaries) >= _MAX_SUMMARIES:
            _summaries.clear()
        _summaries[fingerprint.id] = summary
    return summary


#: The attributes of a (shape, call site), made once: a statement's span gets the same
#: dict each time (bounded; cleared when full).
_MAX_ATTRIBUTES = 10_000
_attributes: dict[tuple[str, t.Any], dict[str, t.Any]] = {}


def _cached_attributes(fingerprint: Fingerprint, site: t.Any) -> dict[str, t.Any]:
    key = (fingerprint.id, site)
    attrs = _attributes.get(key)
    if attrs is None:
        if len(_attributes) >= _MAX_ATTRIBUTES:
            _attributes.clear()
        attrs = _attributes[key] = _statement_attributes(fingerprint, site)
    return attrs


def _set_attributes(span: t.Any, attrs: dict[str, t.Any]) -> None:
    """``span.set_attributes(attrs)``. On the SDK's span, whose ``set_attributes``
    checks and copies each value under two locks (8 us for these five, as long as all
    of querywatch's work on a statement), the values, already strings and integers
    within the span's limits, go straight into its attributes: the span is this
    thread's while its statement runs. Elsewhere, or past a limit, the public call."""
    try:
        bounded = span._attributes
        room = bounded.maxlen is None or len(bounded._dict) + len(attrs) <= bounded.maxlen
        short = bounded.max_value_len is None or all(
            not isinstance(v, str) or len(v) <= bounded.max_value_len for v in attrs.values()
        )
        if room and short and span._end_time is None and not bounded._immutable:
            bounded._dict.update(attrs)
            return
    except AttributeError:
        pass
    span.set_attributes(attrs)


def _statement_attributes(fingerprint: Fingerprint, site: t.Any) -> dict[str, t.Any]:
    attrs: dict[str, t.Any] = {
        "querywatch.shape": fingerprint.id,
        "db.query.summary": query_summary(fingerprint),
    }
    if site is not None:
        attrs["code.file.path"] = site.filename
        attrs["code.line.number"] = site.lineno
        attrs["code.function.name"] = site.function
    return attrs


def annotate_statement(
    record: Record, context: t.Any, fingerprint: Fingerprint, site: t.Any
) -> None:
    """Capture's statement hook: the statement's span (the SQLAlchemy instrumentation's,
    open while the statement runs) gets its shape, summary and call site, and the record
    the trace id."""
    span = context.__dict__.get("_otel_span")
    if span is None or not span.is_recording():
        return
    _set_attributes(span, _cached_attributes(fingerprint, site))
    if record.trace_id is None:
        record.trace_id = trace_id_of(span)
        record.spans = True


def annotate_request(
    record: Record, findings: t.Sequence[Finding], environ: t.Mapping[str, t.Any] | None
) -> str | None:
    """At the request's end: its findings as events on its span, and, when no statement
    had a span of its own, its costliest statement's shape, summary and call site.
    Returns the trace id (None: no span records)."""
    span = request_span(environ)
    if span is None:
        if environ is not None and environ.get(FLASK_SPAN_KEY) is not None:
            log_limited(
                "otel.ended",
                "OpenTelemetry's Flask instrumentation ended the request's span before"
                " querywatch's teardown ran, so querywatch's findings are not on it:"
                " instrument the app before its first request.",
            )
        return record.trace_id
    if not record.spans:
        costliest = max(record.loops.values(), key=lambda s: s.total, default=None)
        if costliest is not None:
            span.set_attributes(_statement_attributes(costliest.fingerprint, costliest.site))
    for f in findings:
        attrs: dict[str, t.Any] = {
            "querywatch.shape": f.fingerprint.id,
            "db.query.summary": query_summary(f.fingerprint),
            "querywatch.count": f.count,
            "querywatch.duration_ms": round(f.total * 1000, 3),
            "querywatch.query": compact_shape(f.fingerprint.shape, _TEXT),
            "querywatch.fix": f.fix[:_TEXT],
        }
        if f.relationship:
            attrs["querywatch.relationship"] = f.relationship
        if f.site is not None:
            attrs["code.file.path"] = f.site.filename
            attrs["code.line.number"] = f.site.lineno
            attrs["code.function.name"] = f.site.function
        span.add_event(f"querywatch.{f.kind}", attrs)
    return record.trace_id or trace_id_of(span)


def exports_http_duration(app: t.Any) -> bool:
    """Whether OpenTelemetry's Flask instrumentation exports ``http.server.request.duration``
    for ``app`` (as Prometheus names it, ``http_server_request_duration_seconds``): the
    app is instrumented, and the stable HTTP conventions are opted into
    (``OTEL_SEMCONV_STABILITY_OPT_IN`` holds ``http`` or ``http/dup``; without it the
    instrumentation exports the older ``http.server.duration``, in milliseconds)."""
    import os

    if app is None or not getattr(app, "_is_instrumented_by_opentelemetry", False):
        return False
    semconv = sys.modules.get("opentelemetry.instrumentation._semconv")
    if semconv is not None:
        # What the instrumentation itself decided (it reads the variable once).
        try:
            stability = semconv._OpenTelemetrySemanticConventionStability
            mode = stability._get_opentelemetry_stability_opt_in_mode(
                semconv._OpenTelemetryStabilitySignalType.HTTP
            )
            return bool(semconv._report_new(mode))
        except AttributeError:
            pass
    opted = {v.strip() for v in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    return bool(opted & {"http", "http/dup"})
