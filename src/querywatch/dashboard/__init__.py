"""The dashboard: ``/_querywatch``, a Flask blueprint over the store.

Pages: overview (requests, errors, latency over time, traffic against the window before,
the share of database time by query shape, the alerts firing), endpoints, query shapes
(pg_stat_statements-like, with plan findings and the verified index to copy), findings,
alerts and the result cache; a JSON API (``/_querywatch/api/<page>``) behind each page.
Server-rendered HTML, SVG charts and one small script: nothing to build.

Safe by default: off unless the app runs in debug mode (then for loopback clients only)
or ``QUERYWATCH_DASHBOARD_TOKEN`` is set. Then every request needs it, never in the
address (access logs keep addresses): ``Authorization: Bearer <token>``, or the cookie
the login form sets (the token is posted, not put in the URL), or a short-lived login
code (``?code=``, from :func:`login_code`, which ``querywatch demo`` prints) exchanged
once for the cookie. The JSON API takes the header or the cookie. Actions also need a CSRF
token (``X-CSRF-Token``, from the page or ``/api/csrf``) and a same-origin request. Every
value is HTML-escaped (Jinja's autoescape), and a Content-Security-Policy allows only the
dashboard's own script and style. A store that cannot be read gives an error page and a
503; the app's own requests never notice.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
import typing as t
import urllib.parse

from flask import Blueprint
from flask import Response
from flask import abort
from flask import current_app
from flask import jsonify
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for

from .._failopen import log_limited
from .._failopen import record_internal_error
from ..exceptions import StoreSlowError

if t.TYPE_CHECKING:
    from flask import Flask

    from ..extension._state import AppState

__all__ = ["BLUEPRINT", "register"]

#: The blueprint's name; querywatch does not capture requests to it.
BLUEPRINT = "_querywatch_dashboard"
PAGES = (
    ("overview", "Overview"),
    ("endpoints", "Endpoints"),
    ("shapes", "Query shapes"),
    ("findings", "Findings"),
    ("alerts", "Alerts"),
    ("incidents", "Incidents"),
    ("cache", "Cache"),
)
#: Incident actions the dashboard and its API take (POST, token and CSRF).
INCIDENT_ACTIONS = ("ack", "resolve", "note", "fix", "update", "assign")
WINDOWS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800}
DEFAULT_WINDOW = "1h"
#: Points a chart draws at most; buckets are merged to fit.
CHART_POINTS = 90
_LOOPBACK = frozenset(("127.0.0.1", "::1", "localhost"))
_COOKIE = "querywatch_dashboard"
T = t.TypeVar("T")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


#: How long a login code opens the dashboard.
LOGIN_CODE_SECONDS = 600
#: Codes this process has exchanged (each opens the dashboard once), bounded.
_used_codes: dict[str, None] = {}
_USED_CODES_CAP = 1024


def _mac(secret: bytes, what: bytes) -> str:
    return hmac.new(secret, what, hashlib.sha256).hexdigest()


def login_code(token: str, now: float | None = None) -> str:
    """A code that opens the dashboard once (``?code=``), for
    :data:`LOGIN_CODE_SECONDS`: what to put in an address instead of the token, which
    access logs would keep. Signed with the token, so every process of the app accepts
    it without sharing state; each process accepts it once."""
    expires = int((time.time() if now is None else now) + LOGIN_CODE_SECONDS)
    return f"{expires}.{_mac(token.encode(), f'querywatch login {expires}'.encode())[:32]}"


def _code_ok(token: str, code: str, now: float) -> bool:
    expires, _, mac = code.partition(".")
    if not expires.isdigit() or not now <= int(expires) <= now + LOGIN_CODE_SECONDS + 60:
        return False
    expected = _mac(token.encode(), f"querywatch login {expires}".encode())[:32]
    if not hmac.compare_digest(mac.encode(), expected.encode()) or code in _used_codes:
        return False
    _used_codes[code] = None
    while len(_used_codes) > _USED_CODES_CAP:
        del _used_codes[next(iter(_used_codes))]
    return True


def register(app: Flask, state: AppState) -> None:
    """Add the dashboard to ``app`` at ``QUERYWATCH_DASHBOARD_PATH``."""
    settings = state.settings
    path = settings.dashboard_path
    assert path is not None
    token = settings.dashboard_token
    secret = token.encode() if token else os.urandom(32)
    csrf = _mac(secret, b"querywatch dashboard csrf")
    cookie = _mac(secret, b"querywatch dashboard cookie")
    bp = Blueprint(
        BLUEPRINT,
        __name__,
        url_prefix=path.rstrip("/"),
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    def is_api() -> bool:
        return request.path.startswith(f"{path.rstrip('/')}/api/")

    def logged_in(target: str) -> t.Any:
        resp = redirect(target, code=303)
        resp.set_cookie(
            _COOKIE,
            cookie,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path=path.rstrip("/") or "/",
        )
        return resp

    @bp.before_request
    def guard() -> t.Any:
        receiver = request.endpoint == f"{BLUEPRINT}.api_alertmanager"
        if token is None:
            # No token: a developer's own machine in debug mode only; elsewhere the
            # dashboard does not exist. The Alertmanager receiver always needs a token.
            if receiver or not current_app.debug or (request.remote_addr or "") not in _LOOPBACK:
                abort(404)
        elif request.endpoint == f"{BLUEPRINT}.login":
            return None  # the form's post: the view checks the token
        else:
            given = request.headers.get("Authorization", "")
            ok = hmac.compare_digest(
                given.encode(), f"Bearer {token}".encode()
            ) or hmac.compare_digest(request.cookies.get(_COOKIE, "").encode(), cookie.encode())
            code = request.args.get("code", "")
            # The page asked for, without what must not stay in an address.
            target = _address_without("code", "token")
            if not ok and code and request.method == "GET" and not is_api():
                if _code_ok(token, code, time.time()):
                    return logged_in(target)  # the code leaves the address; the cookie stays
            if not ok:
                return _unauthorized(
                    is_api(), target, path, bool(code), in_address="token" in request.args
                )
        if receiver:
            # A machine's webhook: the bearer token alone (no cookie, so no CSRF).
            if not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()
            ):
                return _unauthorized(True, "", path, False)
            return None
        if request.method == "POST":
            sent = request.headers.get("X-CSRF-Token", "")
            origin = request.headers.get("Origin")
            same = origin is None or urllib.parse.urlsplit(origin).netloc == request.host
            if not same or not hmac.compare_digest(sent.encode(), csrf.encode()):
                return _json_error(
                    403,
                    "This action needs the dashboard's CSRF token in an X-CSRF-Token header"
                    " (GET api/csrf gives it) and a request from the dashboard's own origin.",
                )
        return None

    @bp.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def page(name: str) -> t.Callable[[], t.Any]:
        def view() -> t.Any:
            window = _window()
            try:
                data = _within(_gather, state, name, window)
            except Exception as e:
                return _store_down(e, name, window, csrf)
            return render_template(
                f"querywatch/{name}.html",
                data=data,
                page=name,
                pages=PAGES,
                windows=list(WINDOWS),
                window=window,
                csrf=csrf,
            )

        view.__name__ = name
        return view

    def api(name: str) -> t.Callable[[], t.Any]:
        def view() -> t.Any:
            window = _window()
            try:
                data = _within(_gather, state, name, window)
            except Exception as e:
                _record(e)
                return _json_error(503, _unreadable(e))
            return jsonify({"page": name, "window": window, **data})

        view.__name__ = f"api_{name}"
        return view

    for name, _ in PAGES:
        rule = "/" if name == "overview" else f"/{name}"
        bp.add_url_rule(rule, name, page(name), methods=["GET"])
        bp.add_url_rule(f"/api/{name}", f"api_{name}", api(name), methods=["GET"])

    @bp.post("/login")
    def login() -> t.Any:
        """The login form's post: the token in the body, where no access log keeps it."""
        # No origin check: a browser sends "Origin: null" under the no-referrer policy,
        # and a post that carries the right token is the person who knows it.
        given = request.form.get("token", "")
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return _unauthorized(False, request.form.get("next", ""), path, False, wrong=True)
        target = request.form.get("next", "")
        home = path.rstrip("/") + "/"
        return logged_in(target if target.startswith(home) else home)

    @bp.get("/api/csrf")
    def api_csrf() -> t.Any:
        return jsonify({"csrf": csrf})

    @bp.get("/incidents/<int:incident_id>")
    def incident(incident_id: int) -> t.Any:
        from ..exceptions import IncidentError

        window = _window()
        try:
            data = _within(_incident_detail, state, incident_id)
        except IncidentError as e:
            abort(404, str(e))
        except Exception as e:
            return _store_down(e, "incidents", window, csrf)
        return render_template(
            "querywatch/incident.html",
            data=data,
            page="incidents",
            pages=PAGES,
            windows=list(WINDOWS),
            window=window,
            csrf=csrf,
            actions=INCIDENT_ACTIONS,
        )

    @bp.get("/api/incidents/<int:incident_id>")
    def api_incident(incident_id: int) -> t.Any:
        from ..exceptions import IncidentError

        try:
            return jsonify(_within(_incident_detail, state, incident_id))
        except IncidentError as e:
            return _json_error(404, str(e))
        except Exception as e:
            _record(e)
            return _json_error(503, _unreadable(e))

    @bp.post("/api/incidents/<int:incident_id>/<action>")
    def api_incident_action(incident_id: int, action: str) -> t.Any:
        from ..exceptions import IncidentError

        if action not in INCIDENT_ACTIONS:
            return _json_error(
                404, f"No action {action!r}; the actions are {', '.join(INCIDENT_ACTIONS)}."
            )
        body = request.get_json(silent=True) or {}
        if not isinstance(body, dict):
            return _json_error(400, 'Send a JSON object: {"text": ..., "actor": ...}.')
        actor = str(body.get("actor") or "dashboard")[:255]
        text = str(body.get("text") or "")
        manager = _manager(state)
        try:
            if action == "ack":
                manager.acknowledge(incident_id, actor)
            elif action == "resolve":
                manager.resolve(incident_id, actor, text)
            elif action in ("note", "fix"):
                manager.note(
                    incident_id, actor, text, kind="fix_applied" if action == "fix" else "note"
                )
            elif action == "update":
                manager.update(incident_id, actor, text)
            else:
                owner = str(body.get("owner") or "").strip()
                if not owner:
                    return _json_error(400, "Assigning needs an 'owner'.")
                manager.assign(incident_id, actor, owner)
        except IncidentError as e:
            status = 404 if str(e).startswith("No incident") else 409
            return _json_error(status, str(e))
        except Exception as e:
            _record(e)
            return _json_error(503, f"The incident could not be changed: {_brief(e)}")
        return jsonify(_incident_detail(state, incident_id))

    @bp.post("/api/guard/<action>")
    def api_guard_action(action: str) -> t.Any:
        from ._guard import act

        status, payload = act(state, action, request.get_json(silent=True))
        return jsonify(payload), status

    @bp.post("/api/shapes/<fingerprint>/analyse")
    def api_analyse(fingerprint: str) -> t.Any:
        from ..exceptions import ExplainError

        if not fingerprint.isalnum() or len(fingerprint) > 32:
            return _json_error(400, f"{fingerprint!r} is not a query shape id.")
        try:
            found = state.advice_worker.analyse_now(fingerprint)
        except ExplainError as e:
            return _json_error(422, str(e))
        except Exception as e:
            _record(e)
            return _json_error(503, f"The advisor could not run: {_brief(e)}")
        advice = [
            {"index": a.index_name, "ddl": a.ddl, "verified_by": a.verified_by}
            for a in state.store.advice([fingerprint])
        ]
        # Without a suggestion, why: the same sentence the report's finding starts with.
        reason = None if found else state.advice_worker.reasons.get(fingerprint)
        return jsonify(
            {"fingerprint": fingerprint, "suggestions": found, "advice": advice, "reason": reason}
        )

    @bp.post("/api/alertmanager")
    def api_alertmanager() -> t.Any:
        from ..incidents.receiver import receive_alertmanager

        payload = request.get_json(silent=True)
        try:
            result = receive_alertmanager(state, payload)
        except ValueError as e:
            return _json_error(400, str(e))
        except Exception as e:
            _record(e)
            return _json_error(503, f"The incident could not be recorded: {_brief(e)}")
        return jsonify(result)

    app.register_blueprint(bp)


def _window() -> str:
    w = request.args.get("window", DEFAULT_WINDOW)
    return w if w in WINDOWS else DEFAULT_WINDOW


def _address_without(*keys: str) -> str:
    """The request's path and query string, without the arguments ``keys``."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in keys]
    return request.path + ("?" + urllib.parse.urlencode(args) if args else "")


def _unreadable(e: BaseException) -> str:
    if isinstance(e, StoreSlowError):
        return f"The querywatch store is slow: {e}"
    return f"The querywatch store cannot be read: {_brief(e)}"


def _brief(e: BaseException) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _record(e: BaseException) -> None:
    record_internal_error("dashboard", e)
    log_limited(
        "dashboard.store",
        "querywatch's dashboard could not read the store (%s); the application is not affected.",
        _brief(e),
    )


def _json_error(status: int, message: str) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    return resp


def _unauthorized(
    api: bool, target: str, path: str, code: bool, *, wrong: bool = False, in_address: bool = False
) -> Response:
    if api:
        message = (
            "The querywatch dashboard's API needs its token: send 'Authorization: Bearer"
            " <QUERYWATCH_DASHBOARD_TOKEN>' (or the cookie the dashboard's login sets)."
        )
        resp = _json_error(401, message)
    else:
        message = (
            "The querywatch dashboard needs its token (QUERYWATCH_DASHBOARD_TOKEN): enter it"
            " below, or send 'Authorization: Bearer <token>'."
        )
        if wrong:
            message = "That is not the dashboard's token. " + message
        elif in_address:
            message = (
                "A token in the address is not accepted: access logs and browser history"
                " keep addresses. " + message
            )
        elif code:
            message = (
                "This login code has expired or was already used (a code opens the"
                " dashboard once, for 10 minutes). " + message
            )
        resp = Response(
            render_template(
                "querywatch/unauthorized.html",
                message=message,
                action=path.rstrip("/") + "/login",
                target=target,
            ),
            status=401,
            mimetype="text/html",
        )
    resp.headers["WWW-Authenticate"] = 'Bearer realm="querywatch"'
    return resp


def _store_down(e: BaseException, name: str, window: str, csrf: str) -> Response:
    _record(e)
    html = render_template(
        "querywatch/error.html",
        message=f"{_unreadable(e)}. The application is not"
        " affected; this page will work again once the store answers.",
        page=name,
        pages=PAGES,
        windows=list(WINDOWS),
        window=window,
        csrf=csrf,
    )
    return Response(html, status=503, mimetype="text/html")


# --- data -------------------------------------------------------------------------------

#: Seconds a page waits for the store before it says the store is slow.
READ_TIMEOUT = 5.0
#: Reads that outlived READ_TIMEOUT and still wait on the store: past this many, a page
#: says the store is slow at once instead of stacking threads behind a frozen store.
#: Reads of a store that answers are not limited.
MAX_STUCK_READS = 2
_stuck = [0]
_stuck_lock = threading.Lock()


def _within(fn: t.Callable[..., T], *args: t.Any) -> T:
    """``fn(*args)`` on a thread of its own, waited for at most :data:`READ_TIMEOUT`: a
    frozen store (a stopped server, a held lock) costs a page seconds and a worker
    thread nothing. The read goes on in the background and ends when the store does."""
    if _stuck[0] >= MAX_STUCK_READS:
        raise StoreSlowError("earlier reads are still waiting for the store; it is slow or frozen")
    out: dict[str, t.Any] = {}
    done = threading.Event()
    lock = threading.Lock()  # whether the read ends first or the page gives up first

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # handed to the page
            out["error"] = e
        with lock:
            done.set()
            if out.get("abandoned"):
                with _stuck_lock:
                    _stuck[0] -= 1

    threading.Thread(target=run, name="querywatch-dashboard-read", daemon=True).start()
    if not done.wait(READ_TIMEOUT):
        with lock:
            if not done.is_set():
                out["abandoned"] = True
                with _stuck_lock:
                    _stuck[0] += 1
        if out.get("abandoned"):
            raise StoreSlowError(
                f"it did not answer within {READ_TIMEOUT:g} s; it is slow or frozen"
            )
    if "error" in out:
        raise out["error"]
    return t.cast(T, out["value"])


def _gather(state: AppState, page: str, window: str) -> dict[str, t.Any]:
    """What a page shows (the API returns the same)."""
    from .._report import build_report

    # This process's pending aggregates first, so the page is current.
    state.flusher.flush()
    store = state.store
    now = time.time()
    since = now - WINDOWS[window]
    limit = 10 if page == "overview" else 100
    if page == "alerts":
        return _alerts(state)
    if page == "incidents":
        return {"incidents": [_incident_dict(i) for i in _manager(state).recent(limit=100)]}
    report = build_report(store, since=since, limit=limit)
    if page == "overview":
        return _overview(state, report, since, now)
    if page == "endpoints":
        return {"traffic": report["traffic"], "endpoints": report["endpoints"]}
    if page == "shapes":
        return {"db_time_ms": report["db_time_ms"], "shapes": _shapes(state, report["queries"])}
    if page == "findings":
        return {"findings": _traced(state, report["findings"])}
    if page == "cache":
        return {"cache": report["cache"]}
    raise KeyError(page)


def _traced(state: AppState, rows: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """Each row with a trace id gets the link to its trace (``QUERYWATCH_TRACE_URL``)."""
    url = state.settings.trace_url
    if url is None:
        return rows
    return [
        {**row, "trace_url": url.format(trace_id=row["trace_id"])} if row.get("trace_id") else row
        for row in rows
    ]


def _manager(state: AppState) -> t.Any:
    from ..incidents import Incidents

    s = state.settings
    return Incidents(state.store, s.escalation, scale=s.alert_time_scale)


def _incident_dict(i: t.Any) -> dict[str, t.Any]:
    import dataclasses

    return dataclasses.asdict(i)


def _incident_detail(state: AppState, incident_id: int) -> dict[str, t.Any]:
    import dataclasses

    manager = _manager(state)
    incident = manager.get(incident_id)
    from ..incidents.manager import trace_url_of

    return {
        "incident": _incident_dict(incident),
        "timeline": [dataclasses.asdict(e) for e in manager.timeline(incident_id)],
        # The culprit's slowest traced call (QUERYWATCH_TRACE_URL).
        "trace_url": trace_url_of(incident.evidence),
    }


def _shapes(state: AppState, queries: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    store = state.store
    fps = [q["fingerprint"] for q in queries]
    kinds = store.finding_kinds(fps)
    advice: dict[str, list[dict[str, t.Any]]] = {}
    for a in store.advice(fps):
        gain = round(a.cost_before / a.cost_after, 1) if a.cost_before and a.cost_after else None
        advice.setdefault(a.fingerprint, []).append(
            {
                "index": a.index_name,
                "table": a.table,
                "ddl": a.ddl,
                "verified_by": a.verified_by,
                "estimated_gain": gain,
                "reason": a.reason,
            }
        )
    return [
        {
            **q,
            "flags": sorted(kinds.get(q["fingerprint"], ())),
            "advice": advice.get(q["fingerprint"], []),
        }
        for q in queries
    ]


def _overview(
    state: AppState, report: dict[str, t.Any], since: float, now: float
) -> dict[str, t.Any]:
    from .._report import headline
    from .._report import traffic_sentence
    from .._stats import EndpointAggregate
    from .._stats import percentile

    width = state.settings.bucket_seconds
    buckets = state.store.timeline(since, now + width)
    per = max(1, math.ceil(len(buckets) / CHART_POINTS))
    points = []
    total = EndpointAggregate()
    for i in range(0, len(buckets), per):
        group = buckets[i : i + per]
        agg = EndpointAggregate()
        for _, b in group:
            agg.merge(b)
        total.merge(agg)
        seconds = width * len(group)
        errors = agg.statuses.get("5xx", 0) + agg.statuses.get("error", 0)
        points.append(
            {
                "t": group[0][0],
                "requests": agg.requests,
                "rate": round(agg.requests / seconds, 3),
                "error_rate": round(errors / agg.requests, 4) if agg.requests else 0.0,
                "p50_ms": round(percentile(agg.hist, 0.50, 0.0, agg.max) * 1000, 2),
                "p95_ms": round(percentile(agg.hist, 0.95, 0.0, agg.max) * 1000, 2),
                "p99_ms": round(percentile(agg.hist, 0.99, 0.0, agg.max) * 1000, 2),
                "db_share": round(agg.db_time / agg.total, 4) if agg.total else 0.0,
            }
        )
    errors = total.statuses.get("5xx", 0) + total.statuses.get("error", 0)
    firing = [a for a in _alerts(state)["alerts"] if a["state"] == "firing"]
    return {
        "headline": headline(report),
        "traffic_sentence": traffic_sentence(report),
        "traffic": report["traffic"],
        "summary": {
            "requests": total.requests,
            "error_rate": round(errors / total.requests, 4) if total.requests else 0.0,
            "p95_ms": round(percentile(total.hist, 0.95, 0.0, total.max) * 1000, 2),
            "db_share": round(total.db_time / total.total, 4) if total.total else 0.0,
        },
        "timeline": points,
        "latency_chart": _chart(
            points, [("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")], "ms"
        ),
        "rate_chart": _chart(points, [("rate", "requests/s")], "/s"),
        "shapes": report["queries"],
        "endpoints": report["endpoints"][:5],
        "alerts": firing,
    }


def _alerts(state: AppState) -> dict[str, t.Any]:
    store = state.store
    rows = sorted(
        store.alert_states().values(),
        key=lambda a: (a.state != "firing", -a.updated, a.key),
    )
    events = store.alert_events(newest=50)
    return {
        "alerts": [
            {
                "key": a.key,
                "kind": a.kind,
                "severity": a.severity,
                "state": a.state,
                "since": a.since,
                "updated": a.updated,
                "summary": a.summary,
                "fired": a.fired,
                "hypothesis": a.evidence.get("hypothesis"),
                "traffic_ratio": (a.evidence.get("traffic") or {}).get("ratio"),
            }
            for a in rows[:200]
        ],
        "events": [
            {
                "id": e.id,
                "key": e.key,
                "state": e.state,
                "at": e.at,
                "severity": e.severity,
                "summary": e.summary,
            }
            for e in events
        ],  # fmt: skip
        "guard": _guard_rows(state),
    }


def _guard_rows(state: AppState) -> list[dict[str, t.Any]] | None:
    """The containments in force (None: no guard configured)."""
    if state.guard is None:
        return None
    from ._guard import rows

    return rows(state.store)


_COLORS = ("#2b6cb0", "#dd6b20", "#c53030", "#2f855a")


def _chart(
    points: list[dict[str, t.Any]], keys: list[tuple[str, str]], unit: str
) -> dict[str, t.Any]:
    """An SVG line chart's geometry: polylines in a 720 x 160 box with a 0-based y axis."""
    w, h, left, bottom = 720, 160, 48, 20
    if len(points) == 1:
        points = points * 2  # one bucket: a level line across
    values = [p[k] for p in points for k, _ in keys]
    top = max(values, default=0.0) or 1.0
    # A round top: 1, 2 or 5 times a power of ten.
    mag = 10 ** math.floor(math.log10(top))
    top = next(m * mag for m in (1, 2, 5, 10) if m * mag >= top)
    n = max(len(points) - 1, 1)

    def xy(i: int, v: float) -> str:
        x = left + (w - left - 8) * i / n
        y = (h - bottom) - (h - bottom - 8) * v / top
        return f"{x:.1f},{y:.1f}"

    lines = [
        {
            "label": label,
            "color": _COLORS[j % len(_COLORS)],
            "points": " ".join(xy(i, p[key]) for i, p in enumerate(points)),
        }
        for j, (key, label) in enumerate(keys)
    ]
    ticks = [
        {"y": (h - bottom) - (h - bottom - 8) * f, "label": f"{top * f:g} {unit}"}
        for f in (0.0, 0.5, 1.0)
    ]
    first = points[0]["t"] if points else None
    last = points[-1]["t"] if points else None
    return {
        "width": w,
        "height": h,
        "left": left,
        "bottom": h - bottom,
        "lines": lines,
        "ticks": ticks,
        "first": time.strftime("%H:%M", time.localtime(first)) if first else "",
        "last": time.strftime("%H:%M", time.localtime(last)) if last else "",
        "empty": not points,
    }


def dashboard_url(app: Flask, host: str, port: int, token: str | None) -> str:
    """The dashboard's address on ``host:port``, with a login code (never the token)
    that opens it once within :data:`LOGIN_CODE_SECONDS`."""
    with app.test_request_context():
        path = url_for(f"{BLUEPRINT}.overview")
    q = f"?code={login_code(token)}" if token else ""
    return f"http://{host}:{port}{path}{q}"
