"""What ``init_app`` adds to a Flask app: the request hooks that open and finish a record,
and the ``/metrics`` and readiness views."""

from __future__ import annotations

import sys
import typing as t
import weakref

from flask import request

from .. import capture
from .._failopen import log_limited
from .._failopen import swallow
from ..integrations import otel
from ..signals import record_finished
from ._state import PROCESS

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask
    from flask import Response

    from ._state import AppState


def _request_hooks(
    state: AppState,
) -> tuple[
    Callable[[], None],
    Callable[[Response], Response],
    Callable[[BaseException | None], None],
]:
    """The three request hooks of one app; they close over its state, which spares a
    ``current_app`` lookup per hook."""

    settings = state.settings
    current = capture.current_record
    from ..metrics import OWN_PREFIX

    guard = state.guard
    first = [True]

    def _before_request() -> t.Any:
        try:
            if first[0]:
                first[0] = False
                _end_before_opentelemetry(state)
            req = request._get_current_object()  # type: ignore[attr-defined]
            rule = req.url_rule
            if rule is not None and rule.endpoint.startswith(OWN_PREFIX):
                return None  # querywatch's own endpoints are not the app's traffic
            name = f"{req.method} {rule.rule if rule is not None else '<unmatched>'}"
            record = state.new_record(name, "request")
            record.token = capture.start_record(record)
            if guard is not None:
                # A response here (the bulkhead's 503) is the request's: Flask runs
                # neither the app's other hooks nor the view.
                return guard.admit(record)
        except Exception as e:
            swallow("extension.before_request", e)
        return None

    # The record travels in capture's context variable, not in ``g``: a proxy lookup
    # costs more than all the rest of a hook. A record is this app's when it was made
    # with this app's settings.
    user_function = settings.user_function

    def _after_request(response: Response) -> Response:
        try:
            record = current()
            if record is not None and record.settings is settings and record.token is not None:
                record.status = response.status_code
                if user_function is not None:
                    user = user_function(request._get_current_object())  # type: ignore[attr-defined]
                    record.user = str(user)[:255] if user is not None else None
        except Exception as e:
            swallow("extension.after_request", e)
        return response

    def _teardown_request(exc: BaseException | None) -> None:
        try:
            record = current()
            if record is None or record.settings is not settings or record.token is None:
                return
            token, record.token = record.token, None
            if record.held is not None:
                guard.release(record)  # type: ignore[union-attr]
            capture.end_record(token)
            state.finish(record, 500 if exc is not None else (record.status or 200))
        except Exception as e:
            swallow("extension.teardown_request", e)

    return _before_request, _after_request, _teardown_request


def _end_before_opentelemetry(state: AppState) -> bool:
    """OpenTelemetry's Flask instrumentation ends the request's span in its
    ``teardown_request`` hook, and Flask runs those hooks last registered first: an app
    instrumented after ``QueryWatch(app)`` would end the span before querywatch could put
    its findings on it. At the first request, querywatch's hook is moved to run before
    OpenTelemetry's (the list is replaced whole: a request tearing down meanwhile keeps
    the one it had). Returns whether it moved."""
    app = state.app
    if app is None or "opentelemetry.instrumentation.flask" not in sys.modules:
        return False
    ours = state.teardown
    funcs = app.teardown_request_funcs.get(None) or []
    theirs = [
        i
        for i, f in enumerate(funcs)
        if getattr(f, "__module__", "") == "opentelemetry.instrumentation.flask"
    ]
    if ours is None or ours not in funcs or not theirs or funcs.index(ours) > theirs[-1]:
        return False
    moved = [f for f in funcs if f is not ours]
    moved.insert(theirs[-1], ours)  # just after OpenTelemetry's last: runs before it
    app.teardown_request_funcs[None] = moved
    return True


def _register_views(app: Flask, state: AppState) -> None:
    """``/metrics`` and ``/readyz`` (their paths as configured), unless the app already
    routes those paths."""
    import hmac

    from flask import Response as FlaskResponse
    from flask import jsonify

    from .. import metrics

    settings = state.settings
    app_ref = weakref.ref(app)
    explicit = state.engines

    def engines() -> dict[str, t.Any]:
        a = app_ref()
        return metrics.app_engines(a, explicit) if a is not None else {}

    taken = {r.rule for r in app.url_map.iter_rules()}
    if settings.metrics_path is not None:
        if settings.metrics_path in taken:
            log_limited(
                "metrics.path",
                "querywatch did not add %s: the app already routes it. Set"
                " QUERYWATCH_METRICS_PATH to another path (or None).",
                settings.metrics_path,
            )
        else:
            state.metrics = metrics.AppMetrics(
                state.name, engines, PROCESS.states, max_shapes=settings.metrics_max_shapes
            )
            # The app's finished records reach its metrics through the signal.
            record_finished.connect(state.metrics.record_finished, sender=app)
            if state.guard is not None:
                state.metrics.registry.register(state.guard)
            state.metrics.http_exported_elsewhere = lambda: otel.exports_http_duration(app_ref())
            token = settings.metrics_token

            def metrics_view() -> FlaskResponse:

                if token is not None:
                    given = request.headers.get("Authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                        return FlaskResponse(
                            "A bearer token is required (QUERYWATCH_METRICS_TOKEN).\n",
                            status=401,
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                            mimetype="text/plain",
                        )
                m = state.metrics
                assert m is not None
                body, content_type = m.exposition(request.headers.get("Accept"))
                return FlaskResponse(body, content_type=content_type)

            app.add_url_rule(
                settings.metrics_path, metrics.METRICS_ENDPOINT, metrics_view, methods=["GET"]
            )
    if settings.ready_path is not None and settings.ready_path not in taken:

        def ready_view() -> tuple[FlaskResponse, int]:
            report, ok = metrics.readiness(engines(), settings.ready_timeout)
            return jsonify(report), 200 if ok else 503

        app.add_url_rule(settings.ready_path, metrics.READY_ENDPOINT, ready_view, methods=["GET"])
