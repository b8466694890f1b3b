"""``querywatch report``: which query in which endpoint costs the database its time.

:func:`build_report` reads a window from the store into a plain dict (the ``--json``
schema, version ``querywatch.report/1``, documented in ``docs/report.md``);
:func:`render_report` prints it with rich, culprit first.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import typing as t

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._console import make_console
from ._console import print_whole
from ._stats import OTHER
from ._stats import OTHER_SHAPE
from ._stats import Aggregate
from ._stats import EndpointAggregate
from ._stats import percentile
from ._text import compact_shape
from ._text import site_dict as _site
from ._text import stored_site_text as _site_text

if t.TYPE_CHECKING:
    from .store import Store

__all__ = ["REPORT_SCHEMA", "build_report", "parse_since", "render_report"]

REPORT_SCHEMA = "querywatch.report/1"

#: Findings the advisor reads off a query plan (``querywatch advise``).
PLAN_FINDINGS = frozenset(
    {
        "full_scan",
        "sort_without_index",
        "temp_table",
        "function_on_column",
        "implicit_cast",
        "leading_wildcard_like",
    }
)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float | None = None) -> float:
    """``"1h"``, ``"30m"``, ``"2d"`` (before now) or an ISO 8601 time, as Unix time."""
    now = time.time() if now is None else now
    m = _DURATION_RE.match(value)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        msg = (
            f"'--since' must be a duration such as 30m, 1h or 2d, or an ISO time such as"
            f" 2026-11-26T14:00, got {value!r}."
        )
        raise ValueError(msg) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _query_entry(
    fp: str,
    agg: Aggregate,
    total_db: float,
    shape: t.Any,
    endpoints: list[tuple[str, Aggregate]],
) -> dict[str, t.Any]:
    return {
        "fingerprint": fp,
        "shape": OTHER_SHAPE if fp == OTHER else (shape.shape if shape else None),
        "operation": shape.operation if shape else None,
        "calls": agg.calls,
        "errors": agg.errors,
        "total_ms": _ms(agg.total),
        "mean_ms": _ms(agg.total / agg.calls) if agg.calls else 0.0,
        "min_ms": _ms(agg.min) if agg.calls else 0.0,
        "max_ms": _ms(agg.max),
        "p50_ms": _ms(agg.quantile(0.50)),
        "p95_ms": _ms(agg.quantile(0.95)),
        "p99_ms": _ms(agg.quantile(0.99)),
        "rows": agg.rows,
        "share": round(agg.total / total_db, 4) if total_db > 0 else 0.0,
        "endpoints": [
            {"endpoint": ep, "calls": a.calls, "total_ms": _ms(a.total)}
            for ep, a in sorted(endpoints, key=lambda x: -x[1].total)[:5]
        ],
        "call_site": _site(shape.site) if shape else None,
    }


def _endpoint_entry(name: str, ep: EndpointAggregate) -> dict[str, t.Any]:
    n = ep.requests or 1
    errors = ep.statuses.get("5xx", 0) + ep.statuses.get("error", 0)
    return {
        "endpoint": name,
        "requests": ep.requests,
        "statuses": dict(sorted(ep.statuses.items())),
        "error_rate": round(errors / n, 4),
        "total_ms": _ms(ep.total),
        "mean_ms": _ms(ep.total / n),
        "p95_ms": _ms(percentile(ep.hist, 0.95, 0.0, ep.max)),
        "max_ms": _ms(ep.max),
        "db_ms": _ms(ep.db_time),
        "db_share": round(ep.db_time / ep.total, 4) if ep.total > 0 else 0.0,
        "queries_per_request": round(ep.queries / n, 2),
        "max_queries": ep.max_queries,
        "dropped_queries": ep.dropped_queries,
    }


def build_report(
    store: Store,
    *,
    since: float,
    until: float | None = None,
    endpoint: str | None = None,
    limit: int = 10,
) -> dict[str, t.Any]:
    """The report of ``[since, until)`` as a JSON-ready dict."""
    now = time.time()
    until = now if until is None else until
    # The store keeps minute buckets: the window starts at the minute holding ``since``,
    # and the window before it has the same length and ends where this one starts, so no
    # minute counts in both.
    start = since // 60 * 60
    span = max(min(until, now) - start, 1.0)
    prev_span = max(60.0, -(-span // 60) * 60)
    win = store.window(start, until, endpoint)
    prev = store.window(start - prev_span, start, endpoint)
    total_db = sum(a.total for a in win.shapes.values())
    ranked = sorted(win.shapes.items(), key=lambda kv: (-kv[1].total, kv[0]))[:limit]
    stored_findings = store.findings(since=since, endpoint=endpoint, limit=limit)
    shapes = store.shapes({fp for fp, _ in ranked} | {f.fingerprint for f in stored_findings})
    by_fp: dict[str, list[tuple[str, Aggregate]]] = {}
    for (ep, fp), agg in win.endpoint_shapes.items():
        by_fp.setdefault(fp, []).append((ep, agg))
    queries = [
        _query_entry(fp, agg, total_db, shapes.get(fp), by_fp.get(fp, [])) for fp, agg in ranked
    ]
    endpoints = [
        _endpoint_entry(name, ep)
        for name, ep in sorted(win.endpoints.items(), key=lambda kv: (-kv[1].total, kv[0]))[:limit]
    ]
    requests = sum(e.requests for e in win.endpoints.values())
    prev_requests = sum(e.requests for e in prev.endpoints.values())
    findings = []
    for f in stored_findings:
        shape = shapes.get(f.fingerprint)
        findings.append(
            {
                "kind": f.kind,
                "endpoint": f.endpoint,
                "fingerprint": f.fingerprint,
                "shape": shape.shape if shape else None,
                "occurrences": f.occurrences,
                "queries": f.queries,
                "total_ms": _ms(f.total),
                "relationship": f.relationship,
                "call_site": _site(f.site),
                "fix": f.fix,
                "first_seen": _iso(f.first_seen),
                "last_seen": _iso(f.last_seen),
                "trace_id": f.trace_id,
            }
        )
    cache = []
    for fname, c in sorted(
        store.cache_window(start, until).items(), key=lambda kv: -(kv[1]["hits"] + kv[1]["misses"])
    )[:limit]:
        lookups = c["hits"] + c["misses"]
        cache.append(
            {
                "function": fname,
                **c,
                "hit_ratio": round(c["hits"] / lookups, 4) if lookups else None,
            }
        )
    return {
        "schema": REPORT_SCHEMA,
        "generated_at": _iso(time.time()),
        "since": _iso(start),
        "until": _iso(until),
        "endpoint": endpoint,
        "traffic": {
            "requests": requests,
            "rate_per_s": round(requests / span, 3),
            "previous_requests": prev_requests,
            "previous_rate_per_s": round(prev_requests / prev_span, 3),
            "change": (
                round((requests / span) / (prev_requests / prev_span) - 1.0, 4)
                if prev_requests
                else None
            ),
        },
        "db_time_ms": _ms(total_db),
        "queries": queries,
        "endpoints": endpoints,
        "findings": findings,
        "cache": cache,
    }


def headline(report: dict[str, t.Any]) -> str:
    """One sentence naming the costliest query shape and where it runs."""
    if not report["queries"]:
        return "No queries were recorded in this window."
    top = report["queries"][0]
    where = top["endpoints"][0]["endpoint"] if top["endpoints"] else "?"
    return (
        f"The costliest query shape takes {top['share']:.0%} of database time: "
        f"{compact_shape(top['shape'], 160)} — from {where}"
        + (f" at {_site_text(top['call_site'])}" if top["call_site"] else "")
        + f" ({top['calls']} calls, mean {top['mean_ms']:.1f} ms, p95 {top['p95_ms']:.1f} ms)."
    )


def traffic_sentence(report: dict[str, t.Any]) -> str:
    tr = report["traffic"]
    if tr["change"] is None:
        return f"Traffic: {tr['requests']} requests ({tr['rate_per_s']:.2f}/s); no earlier window."
    return (
        f"Traffic: {tr['requests']} requests ({tr['rate_per_s']:.2f}/s), "
        f"{tr['change']:+.0%} against the window before ({tr['previous_rate_per_s']:.2f}/s)."
    )


def render_report(
    report: dict[str, t.Any], console: Console | None = None, *, traffic: bool = True
) -> None:
    """Print the report for a person: the culprit in the first lines.

    :param traffic: print the request-rate comparison. Its windows are whole minutes, so
        a caller with finer measurements of its own (the demo) leaves it out.
    """
    console = console or make_console()
    scope = f" for {report['endpoint']}" if report["endpoint"] else ""
    console.print(
        f"[bold]querywatch report[/bold]{scope}: {report['since']} to {report['until']}",
        highlight=False,
    )
    console.print(Text(headline(report), style="bold red" if report["queries"] else ""))
    if traffic:
        console.print(Text(traffic_sentence(report)))

    console.print()
    console.print("[bold]Top query shapes by total time[/bold]")
    for i, q in enumerate(report["queries"], 1):
        line = Text(f"{i:>2}. ", style="bold")
        line.append(f"{q['share']:>4.0%} of DB time", style="bold red" if i == 1 else "bold")
        line.append(
            f"  {q['total_ms']:,.0f} ms total, {q['calls']:,} calls, mean {q['mean_ms']:.2f} ms,"
            f" p95 {q['p95_ms']:.2f} ms, {q['rows']:,} rows"
            + (f", {q['errors']:,} errors" if q["errors"] else "")
        )
        console.print(line)
        console.print(Text("    " + compact_shape(q["shape"], 300)), highlight=False)
        eps = ", ".join(f"{e['endpoint']} ({e['calls']:,})" for e in q["endpoints"][:3])
        console.print(Text(f"    {eps}", style="cyan"))
        if q["call_site"]:
            console.print(Text(f"    {_site_text(q['call_site'])}", style="dim"))
    console.print()

    et = Table(
        title="Top endpoints by total time",
        title_justify="left",
        box=None,
        title_style="bold",
        pad_edge=False,
    )
    et.add_column("endpoint", no_wrap=True, overflow="ellipsis", max_width=30)
    for col in ("reqs", "total ms", "mean ms", "p95 ms", "DB%", "q/req", "5xx"):
        et.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for e in report["endpoints"]:
        et.add_row(
            e["endpoint"],
            f"{e['requests']:,}",
            f"{e['total_ms']:,.0f}",
            f"{e['mean_ms']:.1f}",
            f"{e['p95_ms']:.1f}",
            f"{e['db_share']:.0%}",
            f"{e['queries_per_request']:.1f}",
            f"{e['error_rate']:.0%}",
        )
    print_whole(console, et)
    console.print()

    if report.get("cache"):
        ct = Table(
            title="Result cache", title_justify="left", box=None, title_style="bold", pad_edge=False
        )
        ct.add_column("function", no_wrap=True, overflow="ellipsis", max_width=40)
        for col in ("hits", "misses", "hit %", "invalidated", "races", "errors"):
            ct.add_column(col, justify="right", no_wrap=True, min_width=len(col))
        for c in report["cache"]:
            ratio = c["hit_ratio"]
            ct.add_row(
                c["function"],
                f"{c['hits']:,}",
                f"{c['misses']:,}",
                "-" if ratio is None else f"{ratio:.0%}",
                f"{c['invalidations']:,}",
                f"{c['races']:,}",
                f"{c['errors']:,}",
            )
        print_whole(console, ct)
        console.print()
    if not report["findings"]:
        console.print("No findings in this window.")
        return
    console.print("[bold]Findings[/bold]")
    for f in report["findings"]:
        line = Text(f"  {f['kind'].replace('_', ' ')}", style="bold yellow")
        line.append(f"  {f['endpoint']}", style="cyan")
        if f["kind"] in PLAN_FINDINGS:
            line.append(
                f"  in the plan of a shape run {f['queries']:,} times, {f['total_ms']:,.0f} ms"
            )
        else:
            line.append(
                f"  seen in {f['occurrences']:,} units of work, {f['queries']:,} queries,"
                f" {f['total_ms']:,.0f} ms"
            )
        console.print(line)
        where = Text("    ")
        if f["relationship"]:
            where.append(f"{f['relationship']}  ", style="bold")
        where.append(_site_text(f["call_site"]) or compact_shape(f["shape"], 100), style="dim")
        console.print(where)
        console.print(Text(f"    {f['fix']}"))


def _gain(before: float | None, after: float | None) -> str:
    if before is None or after is None or after <= 0:
        return ""
    return f" (x{before / after:,.1f})"


def render_advice(data: dict[str, t.Any], console: Console | None = None) -> None:
    """Print ``querywatch advise``'s result (:meth:`Advice.to_dict`) for a person."""
    console = console or make_console()
    queries = data["queries"]
    seconds = sum(q["seconds"] for q in queries)
    console.print(
        f"[bold]querywatch advise[/bold] on {data['dialect']}: {len(queries)} query"
        f" shape{'s' if len(queries) != 1 else ''} analysed in {seconds:.2f} s",
        highlight=False,
    )
    cost_word = "estimated rows read" if data["dialect"] == "sqlite" else "estimated cost"
    console.print()
    if data["suggestions"]:
        console.print("[bold]Suggested indexes[/bold] (each verified against the planner)")
    for i, s in enumerate(data["suggestions"], 1):
        console.print(Text(f"{i:>2}. {s['ddl']}", style="bold green"), highlight=False)
        console.print(Text(f"    {s['alembic']}", style="dim"), highlight=False)
        label = "estimated only (no DDL allowed to time it)" if s["estimated_only"] else ""
        if s["replaces"]:
            label += f" Makes {', '.join(s['replaces'])} redundant: drop it once this exists."
        console.print(
            Text(f"    {s['reason']}; verified by {s['verified_by']}. {label}".rstrip()),
            highlight=False,
        )
        for q in s["queries"]:
            where = ", ".join(q["endpoints"][:3]) or "(no endpoint)"
            console.print(Text(f"    serves {where}", style="cyan"), highlight=False)
            console.print(Text(f"      {compact_shape(q['shape'], 160)}"), highlight=False)
            figures = []
            if q["cost_before"] is not None and q["cost_after"] is not None:
                figures.append(
                    f"{cost_word} {q['cost_before']:,.1f} -> {q['cost_after']:,.1f}"
                    + _gain(q["cost_before"], q["cost_after"])
                )
            if q["measured_before_ms"] is not None and q["measured_after_ms"] is not None:
                figures.append(
                    f"measured {q['measured_before_ms']:,.2f} ms -> {q['measured_after_ms']:,.2f}"
                    " ms" + _gain(q["measured_before_ms"], q["measured_after_ms"])
                )
            if figures:
                console.print(Text("      " + "; ".join(figures), style="bold"), highlight=False)
            for label_, lines in (("before", q["plan_before"]), ("after", q["plan_after"])):
                if lines:
                    console.print(Text(f"      plan {label_}:", style="dim"))
                    for line in lines[:6]:
                        console.print(Text(f"        {line}", style="dim"), highlight=False)
    unserved = [q for q in queries if q.get("no_suggestion")]
    if unserved:
        console.print()
        console.print("[bold]No index suggested[/bold] (why, for each shape)")
        for q in unserved:
            console.print(
                Text(f"  {compact_shape(q['shape'], 100)}", style="cyan"), highlight=False
            )
            console.print(Text(f"    {q['no_suggestion']}"), highlight=False)
    for key, title in (
        ("findings", "[bold]Plan findings[/bold]"),
        ("hints", "[bold]Rewrite hints[/bold] (no index is the answer)"),
    ):
        items = [(q, item) for q in queries for item in q[key]]
        if not items:
            continue
        console.print()
        console.print(title)
        for q, item in items:
            line = Text(f"  {item['kind'].replace('_', ' ')}", style="bold yellow")
            line.append(f"  {', '.join(q['endpoints'][:2]) or compact_shape(q['shape'], 60)}")
            console.print(line, highlight=False)
            console.print(Text(f"    {item['evidence']}"), highlight=False)
            console.print(Text(f"    {item['fix']}", style="dim"), highlight=False)
    notes = data["index_notes"]
    if notes:
        console.print()
        console.print("[bold]Existing indexes[/bold]")
        for n in notes:
            console.print(Text(f"  {n['kind']}  {n['table']}.{n['index']}", style="bold"))
            console.print(Text(f"    {n['detail']}  ({n['ddl']})"), highlight=False)
    errors = [(q, e) for q in queries for e in q["errors"]]
    if errors or data["notes"]:
        console.print()
        console.print("[bold]Not analysed, or only in part[/bold]")
        for q, e in errors:
            console.print(
                Text(f"  {compact_shape(q['shape'], 100)}", style="cyan"), highlight=False
            )
            console.print(Text(f"    {e}"), highlight=False)
        for note in data["notes"]:
            console.print(Text(f"  {note}"), highlight=False)
