"""The replay's summary: every figure measured during the run, the sentence that names
the root cause, and its rendering."""

from __future__ import annotations

import math
import os
import typing as t

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from .._console import print_whole
from .._stats import percentile
from .._text import compact_shape
from .._text import duration_text
from .._text import stored_site_text as _site_text
from ..incidents.manager import Incidents
from ..incidents.postmortem import render as render_postmortem
from . import containment
from .load import LOOKUP_ROUTE
from .options import CULPRIT_ENDPOINT
from .traffic import Sample
from .traffic import missed
from .traffic import p95_ms

if t.TYPE_CHECKING:
    from .replay import Replay


def _server_p95(replay: Replay, since: float, until: float) -> float | None:
    """The p95 of the culprit's query as querywatch recorded it (the lookups that ran it:
    a request the guard shed answers at once and runs no query), or of the endpoint's
    requests when the culprit's shape is not known."""
    win = replay.state.store.window(since, until, endpoint=CULPRIT_ENDPOINT, width=1)
    fp = (replay.findings.get("culprit") or {}).get("fingerprint")
    shape = win.endpoint_shapes.get((CULPRIT_ENDPOINT, fp)) if fp else None
    if shape is not None and shape.calls:
        return round(percentile(shape.hist, 0.95, 0.0, shape.max) * 1000, 2)
    ep = win.endpoints.get(CULPRIT_ENDPOINT)
    if ep is None or not ep.requests:
        return None
    return round(percentile(ep.hist, 0.95, 0.0, ep.max) * 1000, 2)


def summarize(replay: Replay, incidents: Incidents) -> dict[str, t.Any]:
    m = replay.moments
    assert replay.traffic is not None
    assert m.onset is not None
    assert m.ended is not None
    tr = replay.traffic
    fix_at = m.fix or m.ended
    # A second for the requests in flight at the fix to drain.
    after_from = (m.recovered or fix_at + 1.0) if m.fix else m.ended
    calm = tr.between(m.started + 1.0, m.onset)
    during = tr.between(m.onset, fix_at)
    after = tr.between(after_from, m.ended) if m.fix else []

    def stats(samples: list[Sample], seconds: float) -> dict[str, t.Any]:
        failed = sum(1 for s in samples if s.failed)
        # As the users timed them: the requests of endpoints with a latency objective
        # that came back within its threshold (the calm's figure is the bar the
        # outage's is read against: the load's own time, connection and queueing
        # included, is over the shop's).
        timed = [s for s in samples if replay.threshold_for(s.route) is not None]
        bad = sum(1 for s in timed if s.failed) + missed(timed, replay.threshold_for)
        return {
            "requests": len(samples),
            "rate_per_s": round(len(samples) / seconds, 2) if seconds > 0 else None,
            "p95_ms": p95_ms(samples),
            "errors": failed,
            "error_ratio": round(failed / len(samples), 4) if samples else None,
            "latency_ok_ratio": round(1 - bad / len(timed), 4) if timed else None,
        }

    phases: dict[str, t.Any] = {
        "before": stats(calm, m.onset - m.started - 1.0),
        "during": stats(during, fix_at - m.onset),
        "after": stats(after, m.ended - after_from) if after else None,
    }
    lk_during = [s for s in during if s.route == LOOKUP_ROUTE]
    lk_after = [s for s in after if s.route == LOOKUP_ROUTE]
    p_during, p_after = p95_ms(lk_during), p95_ms(lk_after)
    server_during = _server_p95(replay, m.onset, fix_at)
    # Whole buckets after the fix: the one it fell in also holds the slow lookups.
    server_after = _server_p95(replay, math.ceil(after_from), m.ended + 1) if m.fix else None
    culprit = replay.findings.get("culprit") or {}
    advice = replay.findings.get("advice")
    inc = incidents.get(replay.incident_id) if replay.incident_id else None
    timeline = incidents.timeline(inc.id) if inc else []
    first = next(
        (r.message for r in replay.inbox.received(action="trigger")), None
    ) if replay.inbox else None  # fmt: skip
    postmortem_path = None
    if inc is not None:
        postmortem_path = os.path.join(replay.workdir, "postmortem.md")
        with open(postmortem_path, "w", encoding="utf-8") as f:
            f.write(render_postmortem(inc, timeline, replay.state.store))
    ratio = (
        phases["during"]["rate_per_s"] / phases["before"]["rate_per_s"]
        if phases["before"]["rate_per_s"] and phases["during"]["rate_per_s"]
        else None
    )
    named = culprit.get("endpoint") == CULPRIT_ENDPOINT and "orders.customer_email" in (
        culprit.get("shape") or ""
    )
    improvement = round(p_during / p_after, 1) if p_during and p_after else None
    server_improvement = (
        round(server_during / server_after, 1) if server_during and server_after else None
    )
    mean_during = _mean_ms(lk_during)
    mean_after = _mean_ms(lk_after)
    gates = (replay.findings.get("gate_before"), replay.findings.get("gate_after"))
    if replay.fix_kind == "index":
        fix_verified = bool(gates[0] and not gates[0]["passed"] and gates[1] and gates[1]["passed"])
    else:
        fix_verified = bool(m.fix and p_after is not None and p_after < replay.threshold_ms)
    checks = {
        "alert_fired": m.alert is not None and m.alert >= m.onset,
        "root_cause_named": named,
        "fix_verified": fix_verified,
        "recovery_measured": bool(
            m.recovered
            and m.alert_resolved
            and m.incident_resolved
            and p_after
            and not replay.findings.get("reopened")
        ),
    }

    def since_onset(at: float | None) -> float | None:
        return round(at - m.onset, 2) if at is not None and m.onset is not None else None

    why: dict[str, str] = {}
    if not checks["alert_fired"]:
        why["alert_fired"] = "no paging alert fired after the onset"
    if not checks["root_cause_named"]:
        why["root_cause_named"] = (
            f"the evidence blamed {culprit.get('endpoint')}: {culprit.get('shape')}"
        )
    if not checks["fix_verified"]:
        if replay.fix_kind == "none":
            why["fix_verified"] = "no fix was applied (--fix=none)"
        elif replay.fix_kind == "cache":
            why["fix_verified"] = (
                f"the lookups' p95 after the fix is {p_after} ms, over the"
                f" {replay.threshold_ms:g} ms objective: cache misses still scan orders, and the"
                " gate still fails on the full scan (--fix=index removes it)"
            )
        else:
            why["fix_verified"] = "the gate did not fail before the index and pass after"
    if replay.findings.get("reopened"):
        # The shop paged again after the fix: the loop did not stay closed, and the
        # incident's evidence (and its postmortem) now tell of that page instead.
        why["recovery_measured"] = (
            f"the incident reopened after it resolved: {replay.findings['reopened']}"
        )
    elif not checks["recovery_measured"]:
        why["recovery_measured"] = "latency did not recover, or the alert or the incident"
        why["recovery_measured"] += " did not resolve"
    summary: dict[str, t.Any] = {
        "loop_closed": all(checks.values()),
        "checks": checks,
        "not_closed_because": why,
        "fix": replay.fix_kind,
        "speed": replay.speed,
        "scale": replay.scale,
        "database": make_url(replay.url).get_backend_name(),
        # The latency objective's threshold, scaled by how much slower than a quiet
        # machine this one answered the shop's quick requests before the replay.
        "objective_ms": replay.threshold_ms,
        "slowdown": round(replay.slowdown, 2),
        # Starts over after a page in the calm (a moment's stall of a busy machine).
        "calm_restarts": replay.restarts,
        "rate": replay.rate,
        "retries": replay.options.retries,
        # The bad requests a page needs in its short window at that rate.
        "min_bad_events": replay.min_bad_events,
        "times_s": {
            "onset_to_alert": since_onset(m.alert),
            "alert_to_level2": round(m.level2 - m.alert, 2) if m.level2 and m.alert else None,
            "alert_to_ack": round(m.ack - m.alert, 2) if m.ack and m.alert else None,
            "onset_to_fix": since_onset(m.fix),
            "onset_to_recovery": since_onset(m.recovered),
            "onset_to_alert_resolved": since_onset(m.alert_resolved),
            "onset_to_incident_resolved": since_onset(m.incident_resolved),
            "whole_replay": round(m.ended - m.started, 2),
        },
        "traffic": {
            "rate_before": phases["before"]["rate_per_s"],
            "rate_during": phases["during"]["rate_per_s"],
            "ratio": round(ratio, 3) if ratio else None,
        },
        "phases": phases,
        "culprit": {
            "endpoint": culprit.get("endpoint"),
            "shape": culprit.get("shape"),
            "call_site": culprit.get("call_site"),
            "share_of_db_time": culprit.get("share_of_db_time"),
            "p95_ms_during": p_during,
            "p95_ms_after": p_after,
            "improvement": improvement,
            "server_p95_ms_during": server_during,
            "server_p95_ms_after": server_after,
            "server_improvement": server_improvement,
            "mean_ms_during": mean_during,
            "mean_ms_after": mean_after,
        },
        "index": (
            {
                "ddl": advice.ddl,
                "verified_by": advice.verified_by,
                "estimated_gain": round(advice.cost_before / advice.cost_after, 1)
                if advice.cost_before and advice.cost_after
                else None,
                "measured_gain": round(mean_during / mean_after, 1)
                if mean_during and mean_after and replay.fix_kind == "index"
                else None,
            }
            if advice is not None
            else None
        ),
        "gate": {"before": gates[0], "after": gates[1]},
        "incident": (
            {
                "id": inc.id,
                "status": inc.status,
                "severity": inc.severity,
                "first_notification": first,
                "notifications": [
                    {"team": r.team, "action": r.action, "after_onset_s": since_onset(r.at)}
                    for r in (replay.inbox.received() if replay.inbox else [])
                ],
            }
            if inc is not None
            else None
        ),
        "postmortem": postmortem_path,
        "dashboard_url": replay.dashboard,
        "store": replay.store_path,
    }
    # The outage before the fix: until the responder starts applying it.
    until = m.fixing or m.ended
    summary["guard"] = containment.figures(
        replay,
        tr.between(m.onset, until),
        timeline,
        since=m.onset,
        until=until,
        alert_at=m.alert,
        fix_at=m.fix,
    )
    containment.remember(replay, summary["guard"], summary["database"])
    summary["guard_other_run"] = containment.the_other_run(replay, summary["database"])
    summary["root_cause"] = _sentence(replay, summary)
    return summary


def _sentence(replay: Replay, s: dict[str, t.Any]) -> str:
    """The evidence in one sentence, with the estimated and the measured gain."""
    c, ix = s["culprit"], s["index"]
    ratio = s["traffic"]["ratio"]
    parts = [
        f"Traffic was flat (x{ratio:.2f})" if ratio and 0.67 < ratio < 1.5 else
        f"Traffic changed (x{ratio or 0:.2f})",
    ]  # fmt: skip
    what = f"{compact_shape(c['shape'], 120)} in {c['endpoint']}"
    if c.get("call_site"):
        what += f" at {_site_text(c['call_site'])}"
    share = c.get("share_of_db_time")
    parts.append(
        f"{share:.0%} of database time went to {what}" if share else f"the culprit is {what}"
    )
    if ix:
        gain = f"estimated x{ix['estimated_gain']:,.0f}" if ix["estimated_gain"] else ""
        if ix.get("measured_gain"):
            gain += (
                f", measured x{ix['measured_gain']:,.0f} (mean {c['mean_ms_during']:.1f}"
                f" -> {c['mean_ms_after']:.2f} ms)"
            )
        parts.append(f"the verified index {ix['ddl']} ({ix['verified_by']}; {gain})")
    return "; ".join(parts) + "."


def _migration(advice: t.Any) -> str:
    """The advisor's index as the shop's migration, for the gate's database (SQLite in
    CI, whatever the dialect the advice was verified on)."""
    keys = ", ".join(advice.keys)
    return f"CREATE INDEX IF NOT EXISTS {advice.index_name} ON {advice.table} ({keys})"


def _mean_ms(samples: t.Sequence[Sample]) -> float | None:
    if not samples:
        return None
    return round(sum(s.seconds for s in samples) / len(samples) * 1000, 3)


def print_summary(summary: dict[str, t.Any], console: Console) -> None:
    s = summary
    times, c = s["times_s"], s["culprit"]

    def sec(x: float | None) -> str:
        return f"{x:.1f} s ({duration_text(x * s['speed'])} replayed)" if x is not None else "-"

    def ms(x: float | None) -> str:
        return f"{x:,.1f} ms" if x is not None else "-"

    console.rule("The replay, measured")
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("onset -> alert", sec(times["onset_to_alert"]))
    table.add_row("alert -> devops told", sec(times["alert_to_level2"]))
    table.add_row("alert -> acknowledged", sec(times["alert_to_ack"]))
    table.add_row("onset -> fix", sec(times["onset_to_fix"]))
    table.add_row("onset -> recovery", sec(times["onset_to_recovery"]))
    table.add_row("onset -> alert resolved", sec(times["onset_to_alert_resolved"]))
    table.add_row("onset -> incident resolved", sec(times["onset_to_incident_resolved"]))
    ph = s["phases"]
    table.add_row(
        "p95, all requests",
        f"before {ms(ph['before']['p95_ms'])}, during {ms(ph['during']['p95_ms'])},"
        f" after {ms(ph['after']['p95_ms']) if ph['after'] else '-'}",
    )
    table.add_row(
        "errors",
        f"before {ph['before']['errors']}, during {ph['during']['errors']},"
        f" after {ph['after']['errors'] if ph['after'] else '-'}",
    )
    table.add_row(
        f"p95 of {c['endpoint'] or CULPRIT_ENDPOINT}",
        f"during {ms(c['p95_ms_during'])}, after {ms(c['p95_ms_after'])}"
        + (f": x{c['improvement']:,.1f} better" if c["improvement"] else "")
        + (
            f" (its query, as querywatch recorded it: {ms(c['server_p95_ms_during'])} -> "
            f"{ms(c['server_p95_ms_after'])})"
            if c["server_p95_ms_during"]
            else ""
        ),
    )
    table.add_row(
        "traffic",
        f"{s['traffic']['rate_before'] or 0:.1f} req/s before 14:00,"
        f" {s['traffic']['rate_during'] or 0:.1f} during (x{s['traffic']['ratio'] or 0:.2f})",
    )
    g = s["gate"]
    if g["before"]:
        table.add_row(
            "CI gate",
            "failed before the fix"
            if not g["before"]["passed"]
            else "passed before the fix (it should have failed)",
        )
    if g["after"]:
        table.add_row("", "passed after it" if g["after"]["passed"] else "failed after it")
    print_whole(console, table)
    containment.print_figures(s["guard"], s.get("guard_other_run"), console)
    console.print(f"Root cause: {s['root_cause']}", highlight=False, soft_wrap=True)
    if s["postmortem"]:
        console.print(f"Postmortem: {s['postmortem']}", highlight=False)
    console.print(
        f"Store: {s['store']} (querywatch report --store sqlite:///{s['store']} --since 1h)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"Dashboard: {s['dashboard_url']}", highlight=False, soft_wrap=True)
    if s["loop_closed"]:
        console.print(
            "[bold green]Loop closed:[/bold green] alert fired, root cause named, fix"
            " verified, recovery measured."
        )
    else:
        console.print("[bold red]Loop not closed:[/bold red]")
        for check, reason in s["not_closed_because"].items():
            console.print(f"  {check.replace('_', ' ')}: {reason}.", highlight=False)
