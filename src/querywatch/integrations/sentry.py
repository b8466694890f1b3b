"""Sentry, when the app runs it: a request's findings (an N+1, a slow or repeated query)
on the request's Sentry scope. Their kinds, the first one's query shape and call site are
tags (``querywatch.finding``, ``querywatch.shape``, ``querywatch.call_site``): the
request's transaction says what querywatch found, and a search by tag finds every
request with the same N+1. The findings in full are breadcrumbs on any event the request
sends after its end (Sentry leaves breadcrumbs off transactions).

Nothing here runs unless the app imported ``sentry_sdk`` and initialised it with a DSN;
querywatch does not import it. The request's scope is Sentry's isolation scope, which its
Flask integration opens around the whole request: what is added at the request's end is
on its transaction, and never on another request's events.
"""

from __future__ import annotations

import sys
import typing as t

from .._text import compact_shape
from .._text import site_text

if t.TYPE_CHECKING:
    from .._detectors import Finding
    from ..capture import Record

__all__ = ["report_findings", "trace_id"]

#: Sentry keeps tag values to 200 characters.
_TAG_CHARS = 200


def report_findings(record: Record, findings: t.Sequence[Finding]) -> bool:
    """Put ``findings`` on the current Sentry scope; False when Sentry is not running in
    this process (not imported, or no client with a DSN)."""
    sentry = sys.modules.get("sentry_sdk")
    if sentry is None or not findings:
        return False
    client = sentry.get_client()
    if not client.is_active():
        return False
    scope = sentry.get_isolation_scope()
    kinds = sorted({f.kind for f in findings})
    first = findings[0]
    scope.set_tag("querywatch.finding", ",".join(kinds)[:_TAG_CHARS])
    scope.set_tag("querywatch.shape", first.fingerprint.id)
    if first.site is not None:
        scope.set_tag("querywatch.call_site", site_text(first.site)[-_TAG_CHARS:])
    # Tags only on the transaction: Sentry serializes a transaction's contexts on the
    # request's thread as it ends, and a context of one finding took 2,240 bytecodes of
    # it on an N+1 request (bench/README.md). The findings in full are breadcrumbs, for
    # any error event the request sends after its end.
    for f in findings:
        data: dict[str, t.Any] = {
            "shape": f.fingerprint.id,
            "endpoint": record.name,
            "count": f.count,
            "duration_ms": round(f.total * 1000, 3),
            "fix": f.fix,
        }
        if f.relationship:
            data["relationship"] = f.relationship
        if f.site is not None:
            data["call_site"] = site_text(f.site)
        scope.add_breadcrumb(
            category="querywatch",
            type="query",
            level="warning",
            message=f"{f.kind}: {f.count} x {compact_shape(f.fingerprint.shape, 200)}",
            data=data,
        )
    return True


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), when Sentry runs in this process: its
    Flask integration starts (or continues) one per request."""
    sentry = sys.modules.get("sentry_sdk")
    if sentry is None or not sentry.get_client().is_active():
        return None
    parent = sentry.get_traceparent()
    if not parent:
        return None
    trace = parent.split("-", 1)[0]
    return trace if len(trace) == 32 else None
