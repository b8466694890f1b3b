"""What an alert (and later an incident) carries: the figures that tell a slow query from
a traffic surge.

The seed's alert said "slow and failing", and the team scaled servers for a surge that
never came. Evidence answers the questions in the order people ask them: did traffic
rise (request rate now against the window before, as a ratio), are requests failing,
how much of request time is the database, is the connection pool running out, and which
query shape in which endpoint grew the most, with its call site, plan findings and the
verified index. :func:`hypothesis` puts that in one sentence.

Everything is read from the store, so the figures cover every worker and host.
"""

from __future__ import annotations

import math
import typing as t

from .._text import compact_shape
from .._text import site_dict as _site
from .._text import stored_site_text as _site_text

if t.TYPE_CHECKING:
    from ..store import Store

__all__ = ["culprit", "gather", "hypothesis", "windows"]

#: Traffic within these ratios of the window before is "flat".
FLAT = (0.67, 1.5)
#: Endpoints that spend at least this share of their time in the database are slow in
#: their own queries (not waiting for a connection held elsewhere).
IN_DATABASE = 0.5


def windows(
    now: float, span: float, width: int, gap: float = 0.0
) -> tuple[float, float, float, float]:
    """Bucket starts ``(before_start, before_end, start, end)``: the window now is
    ``[start, end)``, the last whole buckets of ``span`` seconds (the current, partly
    elapsed bucket left out); the window before has the same length and ends ``gap``
    seconds (whole buckets) before ``start``."""
    end = math.floor(now / width) * width
    n = max(1, math.ceil(span / width))
    start = end - n * width
    before_end = start - math.ceil(gap / width) * width
    return before_end - n * width, before_end, start, end


def _rate(requests: int, seconds: float) -> float:
    return requests / seconds if seconds > 0 else 0.0


def gather(
    store: Store,
    now: float,
    span: float,
    *,
    width: int = 60,
    gap: float = 0.0,
    objective: str | None = None,
    limit: int = 5,
    memo: dict[t.Any, dict[str, t.Any]] | None = None,
    trace_url: str | None = None,
) -> dict[str, t.Any]:
    """The evidence of the last ``span`` seconds against as long a window before them.

    :param width: the store's bucket width in seconds.
    :param gap: seconds between the two windows. An alert compares its short window
        with the one before its long window began (``gap`` = long - short), when the
        service was still within its objective.
    :param objective: also list the endpoints with most bad events of this objective.
    :param memo: a dict kept over one evaluation: alerts with the same windows share
        what they read.
    :param trace_url: ``QUERYWATCH_TRACE_URL``: each shape whose slowest call now was
        traced gets the link to its trace (``trace_url``) beside its ``trace_id``.
    """
    key = (now, span, width, gap, limit)
    base = memo.get(key) if memo is not None else None
    if base is None:
        base = _gather(store, now, span, width, gap, limit)
        if memo is not None:
            memo[key] = base
    out = dict(base)
    if trace_url is not None:
        out["shapes"] = [
            {**row, "trace_url": trace_url.format(trace_id=row["trace_id"])}
            if row.get("trace_id")
            else row
            for row in out["shapes"]
        ]
    if objective is not None:
        # Over the buckets the burn rate counted (the current one too).
        rows = store.slo_endpoints(objective, now - span - width, now, 1000)
        events = sum(n for _, n, _ in rows)
        bad_events = sum(b for _, _, b in rows)
        users, bad_users = store.users_affected(objective, now - span - width, now)
        # Where the app names its users, traffic is also counted in users: requests
        # that climb while users do not are clients retrying, not a surge.
        before, before_end, start, end = windows(now, span, width, gap)
        users_now = store.users_affected(objective, start - width, end - width)[0]
        users_before = store.users_affected(objective, before - width, before_end - width)[0]
        out["traffic"] = dict(out["traffic"])
        out["traffic"]["users_now"] = users_now
        out["traffic"]["users_before"] = users_before
        out["traffic"]["users_ratio"] = round(users_now / users_before, 3) if users_before else None
        out["objective"] = {
            "name": objective,
            "events": events,
            "bad": bad_events,
            "bad_ratio": round(bad_events / events, 4) if events else 0.0,
            # Where the app names its users (QUERYWATCH_USER).
            "users": users,
            "bad_users": bad_users,
            "bad_users_ratio": round(bad_users / users, 4) if users else None,
        }
        out["bad_endpoints"] = [
            {"endpoint": ep, "events": n, "bad": bad} for ep, n, bad in rows[:limit] if bad
        ]
    out["hypothesis"] = hypothesis(out)
    return out


def _gather(
    store: Store, now: float, span: float, width: int, gap: float, limit: int
) -> dict[str, t.Any]:
    before, before_end, start, end = windows(now, span, width, gap)
    seconds = end - start
    # Rates compare whole buckets; what the time went to also counts the current
    # bucket, so an alert that fires seconds after the onset already sees its cause.
    current = end + width
    eps_now = store.endpoint_totals(start, current)
    eps_rate = store.endpoint_totals(start, end)
    eps_before = store.endpoint_totals(before, before_end)

    def sums(eps: dict[str, t.Any]) -> tuple[int, int, float, float]:
        return (
            sum(e.requests for e in eps.values()),
            sum(e.statuses.get("5xx", 0) for e in eps.values()),
            sum(e.total for e in eps.values()),
            sum(e.db_time for e in eps.values()),
        )

    req_n, err_n, time_n, db_n = sums(eps_now)
    req_b, err_b, time_b, db_b = sums(eps_before)
    req_rate = sums(eps_rate)[0]
    # Traffic is what arrived: a request counts as it starts, so the window now does
    # not come up short by the slow requests still running in its last buckets (an
    # overload read as "traffic fell"). A store without arrivals in the window before
    # (written by an older querywatch) compares the requests that ended.
    counted = "ended"
    arrived_before = store.arrivals(before, before_end)
    if arrived_before is not None:
        counted = "arrived"
        req_rate, req_b = store.arrivals(start, end) or 0, arrived_before
    rate_n, rate_b = _rate(req_rate, seconds), _rate(req_b, seconds)
    deltas = store.shape_deltas((start, current), (before, before_end), limit=limit)
    fps = {d[1] for d in deltas}
    shapes = store.shapes(fps)
    kinds = store.finding_kinds(fps)
    advice: dict[str, t.Any] = {}
    for suggestion in store.advice(fps):
        advice.setdefault(suggestion.fingerprint, suggestion)  # newest first
    # The slowest call of each shape now, where it was traced: its trace to open.
    traces = store.slowest_traces(start, current, {(d[0], d[1]) for d in deltas})
    shape_rows = []
    for endpoint, fp, t_now, c_now, t_before, c_before in deltas:
        sh = shapes.get(fp)
        a = advice.get(fp)
        shape_rows.append(
            {
                "fingerprint": fp,
                "endpoint": endpoint,
                "shape": sh.shape if sh else None,
                "operation": sh.operation if sh else None,
                "call_site": _site(sh.site) if sh else None,
                "time_now_s": round(t_now, 6),
                "time_before_s": round(t_before, 6),
                "calls_now": c_now,
                "calls_before": c_before,
                "mean_ms_now": round(t_now / c_now * 1000, 3) if c_now else None,
                "mean_ms_before": round(t_before / c_before * 1000, 3) if c_before else None,
                "share_of_db_time": round(t_now / db_n, 4) if db_n else None,
                "flags": sorted(kinds.get(fp, ())),
                "index": a.ddl if a else None,
                "index_verified_by": a.verified_by if a else None,
                "index_gain": (
                    round(a.cost_before / a.cost_after, 1)
                    if a and a.cost_before and a.cost_after
                    else None
                ),
                "trace_id": traces.get((endpoint, fp)),
            }
        )
    pools = []
    for name, (checkouts, wait, timeouts, sat) in sorted(store.pool_window(start, end).items()):
        pools.append(
            {
                "pool": name,
                "checkouts": checkouts,
                "wait_s": round(wait, 6),
                "mean_wait_ms": round(wait / checkouts * 1000, 3) if checkouts else 0.0,
                "timeouts": timeouts,
                "saturation": sat,
            }
        )
    endpoints = sorted(eps_now.items(), key=lambda kv: (-kv[1].total, kv[0]))[:limit]
    out: dict[str, t.Any] = {
        "window": {
            "before": [before, before_end],
            "now": [start, current],
            "seconds": seconds,
            "at": now,
        },
        "traffic": {
            "requests_now": req_rate,
            "requests_before": req_b,
            "rate_now": round(rate_n, 4),
            "rate_before": round(rate_b, 4),
            "ratio": round(rate_n / rate_b, 3) if rate_b else None,
            "counted": counted,
        },
        "errors": {
            "ratio_now": round(err_n / req_n, 4) if req_n else 0.0,
            "ratio_before": round(err_b / req_b, 4) if req_b else 0.0,
        },
        "db_share": {
            "now": round(db_n / time_n, 4) if time_n else None,
            "before": round(db_b / time_b, 4) if time_b else None,
        },
        "endpoints": [
            {
                "endpoint": name,
                "requests": e.requests,
                "time_s": round(e.total, 6),
                "db_share": round(e.db_time / e.total, 4) if e.total else None,
                "errors": e.statuses.get("5xx", 0),
            }
            for name, e in endpoints
        ],
        "pools": pools,
        "shapes": shape_rows,
    }
    return out


def culprit(ev: dict[str, t.Any]) -> dict[str, t.Any] | None:
    """The shape the evidence blames: the one whose time grew the most against the
    window before (per second: the window now also holds the current bucket), the
    costliest now among equals. A shape that was always there and always cheap does not
    stand first because a new one has had only a few calls yet.

    Where the objective's bad requests are known, they say where to look: a shape's
    growth counts as much as its endpoint holds of them. A slow scan slows every
    endpoint sharing the database and the interpreter, and an N+1 that grew from 1 ms
    to 3 ms a call over 450 calls can outgrow the scan that failed the requests. When
    no shape of those endpoints grew (their requests waited for a connection, held by
    a query elsewhere), the costliest of their shapes is blamed if their time is
    database time (the window before was inside the outage already), and otherwise the
    shape that grew most anywhere."""
    shapes: list[dict[str, t.Any]] = [s for s in ev["shapes"] if s["time_now_s"] > 0]
    if not shapes:
        return None
    window = ev.get("window") or {}
    now, before = window.get("now"), window.get("before")
    stretch = 1.0
    if now and before and before[1] > before[0]:
        stretch = (now[1] - now[0]) / (before[1] - before[0])

    def growth(s: dict[str, t.Any]) -> float:
        return float(s["time_now_s"] - s["time_before_s"] * stretch)

    bad = {b["endpoint"]: b["bad"] for b in ev.get("bad_endpoints") or [] if b["bad"]}
    where_bad = [s for s in shapes if bad.get(s.get("endpoint"))]
    grew = [s for s in where_bad if growth(s) > 0]
    if grew:
        return max(grew, key=lambda s: (growth(s) * bad[s["endpoint"]], s["time_now_s"]))
    if where_bad and _database_share(ev, bad) >= IN_DATABASE:
        # Their time is spent in their own queries, which did not grow because the
        # window before was already slow (a page that fires late in the outage compares
        # two windows inside it): what costs them the most now is blamed.
        return max(where_bad, key=lambda s: (s["time_now_s"] * bad[s["endpoint"]], growth(s)))
    return max(shapes, key=lambda s: (growth(s), s["time_now_s"]))


def _database_share(ev: dict[str, t.Any], endpoints: t.Container[str]) -> float:
    """The share of the ``endpoints``' request time spent in the database now (0 when the
    evidence does not list them)."""
    rows = [e for e in ev.get("endpoints") or [] if e["endpoint"] in endpoints]
    total = sum(e["time_s"] for e in rows)
    db = sum(e["time_s"] * (e["db_share"] or 0.0) for e in rows)
    return db / total if total else 0.0


def hypothesis(ev: dict[str, t.Any]) -> str:
    """The leading hypothesis in one sentence, such as "Traffic is flat (x1.03); 91% of
    request time is database; one query shape in GET /api/orders/search takes 87% of it
    (...)"."""
    parts = []
    ratio = ev["traffic"]["ratio"]
    users = ev["traffic"].get("users_ratio")
    if ratio is None:
        parts.append("No traffic in the window before to compare with")
    elif ratio >= FLAT[1] and users is not None and users < FLAT[1]:
        parts.append(
            f"Requests rose (x{ratio:.2f}) but users did not (x{users:.2f}): clients"
            " retrying, not a surge"
        )
    elif ratio >= FLAT[1]:
        parts.append(f"Traffic rose (x{ratio:.2f})")
    elif ratio <= FLAT[0]:
        parts.append(f"Traffic fell (x{ratio:.2f})")
    else:
        parts.append(f"Traffic is flat (x{ratio:.2f})")
    if ev["errors"]["ratio_now"]:
        parts.append(f"{ev['errors']['ratio_now']:.0%} of requests fail")
    objective = ev.get("objective")
    bad = ev.get("bad_endpoints") or []
    if objective and objective["bad"] and bad:
        top_bad = bad[0]
        parts.append(
            f"{top_bad['bad'] / objective['bad']:.0%} of the objective's bad requests are"
            f" {top_bad['endpoint']}"
        )
    db = ev["db_share"]["now"]
    if db is not None:
        parts.append(f"{db:.0%} of request time is database")
    for p in ev["pools"]:
        if p["timeouts"]:
            parts.append(
                f"pool {p['pool']} timed out {p['timeouts']} checkouts"
                f" (mean wait {p['mean_wait_ms']:.0f} ms)"
            )
        elif p["saturation"] is not None and p["saturation"] >= 0.9:
            parts.append(f"pool {p['pool']} is {p['saturation']:.0%} in use")
    top = culprit(ev)
    if top is not None:
        share = top["share_of_db_time"]
        what = f"one query shape in {top['endpoint']}"
        what += f" takes {share:.0%} of it" if share is not None else " takes the most time"
        notes = []
        if "full_scan" in top["flags"]:
            notes.append("full scan")
        if "n_plus_one" in top["flags"]:
            notes.append("N+1")
        if top["mean_ms_now"] is not None:
            notes.append(f"{top['calls_now']} calls, mean {top['mean_ms_now']:.0f} ms")
        if top["mean_ms_before"]:
            notes.append(f"{top['mean_ms_before']:.0f} ms before")
        what += f" ({', '.join(notes)})" if notes else ""
        what += f": {compact_shape(top['shape'], 120)}"
        if top["call_site"]:
            what += f" at {_site_text(top['call_site'])}"
        if top["index"]:
            what += f"; suggested index: {top['index']}"
        parts.append(what)
    return "; ".join(parts) + "."
