"""The postmortem, drafted from an incident's timeline and evidence in the seed report's
structure: Issue Summary (Duration, Impact), Timeline (detection, detection method,
actions, escalations), Root Cause and Resolution, Corrective and Preventative Measures.
What only people know is marked *(to fill)*."""

from __future__ import annotations

import datetime as dt
import typing as t

from .._text import compact_shape
from .._text import duration_text as _duration
from .._text import stored_site_text as _site_text
from ..alerts.evidence import culprit as blamed
from .manager import impact_of

if t.TYPE_CHECKING:
    from ..store import Store
    from .manager import Incident
    from .manager import TimelineEvent

__all__ = ["render"]

TO_FILL = "*(to fill)*"


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%B %d, %Y, %H:%M:%S")


def _evidence(
    incident: Incident, timeline: t.Sequence[TimelineEvent]
) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """The evidence at detection (the timeline's first), and the evidence the root cause
    is drawn from: what the responders acted on, the last recorded before a person first
    acknowledged it or applied a fix. The incident itself keeps its latest firing's
    evidence, and a page that reopens it while people work (a flap, a stalled moment
    whose few requests blame another page, a request slowed by the index build) must
    not rewrite its root cause. Without such an action, the evidence at detection."""
    recorded = [e for e in timeline if e.kind == "evidence" and e.data]
    detected = recorded[0].data if recorded else incident.evidence
    acted = next((e.at for e in timeline if e.kind in _ACTED), None)
    acted_on = [e for e in recorded if acted is not None and e.at <= acted]
    return detected, acted_on[-1].data if acted_on else detected


#: The timeline events of people acting on an incident.
_ACTED = ("acknowledged", "fix_applied")


def render(
    incident: Incident, timeline: t.Sequence[TimelineEvent], store: Store | None = None
) -> str:
    """Markdown of the postmortem of ``incident``. With ``store``, the culprit's index is
    the advisor's latest verified suggestion (it often comes after the incident opened)."""
    detected, ev = _evidence(incident, timeline)
    first = timeline[0].at if timeline else incident.created_at
    end = incident.resolved_at
    lines: list[str] = [
        f"# Incident report: {incident.title}",
        "",
        f"> Drafted by querywatch from incident #{incident.id} (`{incident.dedup_key}`),"
        f" its timeline and its evidence. Places marked {TO_FILL} need what only the"
        " people involved know.",
        "",
        "## Issue Summary",
        "",
        f"- **Duration:** {_when(incident.created_at)} - "
        + (f"{_when(end)} (UTC), {_duration(end - incident.created_at)}" if end else "ongoing"),
    ]
    # As it was when the incident opened: a reopen replaces the incident's own figures.
    impact = impact_of(detected) if detected is not incident.evidence else incident.impact
    impact = impact or incident.impact
    share = impact.get("requests_share")
    objective = detected.get("objective") or {}
    impact_text = (
        f"{share:.0%} of requests"
        + (f" ({objective.get('bad')} of {objective.get('events')})" if objective else "")
        + " failed or missed the objective"
        + (f" `{objective['name']}`" if objective.get("name") else "")
        + " when the incident opened"
        if share is not None
        else f"{TO_FILL} (no request share was measured)"
    )
    if impact.get("users_share") is not None:
        impact_text += f"; {impact['users_share']:.0%} of users were affected" + (
            f" ({impact['bad_users']} of {impact['users']})" if impact.get("users") else ""
        )
    bad = detected.get("bad_endpoints") or []
    if bad:
        impact_text += ". Most affected: " + ", ".join(
            f"`{b['endpoint']}` ({b['bad']} of {b['events']})" for b in bad[:3]
        )
    lines += [
        f"- **Impact:** {impact_text}. {TO_FILL}: what users saw.",
        f"- **Severity:** {incident.severity}; **owner:** {incident.owner or TO_FILL};"
        f" **status:** {incident.status}.",
        "",
        "## Timeline",
        "",
        f"- **Issue detected:** {_when(first)} (UTC)",
        f"- **Detection method:** {_detection(incident, timeline)}",
    ]
    acks = [e for e in timeline if e.kind == "acknowledged"]
    if acks:
        lines.append(
            f"- **Acknowledged:** {_when(acks[0].at)} by {acks[0].actor},"
            f" {_duration(acks[0].at - first)} after detection"
        )
    escalations = [e for e in timeline if e.kind == "escalated"]
    lines.append(
        "- **Escalation:** "
        + (
            "; ".join(
                f"{_when(e.at)}: {e.text} ({', '.join(e.data.get('targets', []))})"
                for e in escalations
            )
            if escalations
            else "none needed: level 1 was told at detection"
        )
    )
    actions = [
        e for e in timeline if e.kind in ("note", "status_update", "fix_applied", "assigned")
    ]
    lines.append(
        "- **Actions taken:** "
        + ("; ".join(f"{_when(e.at)} {e.actor}: {e.text}" for e in actions) if actions else TO_FILL)
    )
    lines.append(f"- **Misleading paths:** {TO_FILL}")
    if end:
        lines.append(f"- **Resolved:** {_when(end)} (UTC)")
    lines += ["", "| time (UTC) | event | by | what |", "|---|---|---|---|"]
    for e in timeline:
        if e.kind == "notification_sent":
            continue
        text = e.text.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {_when(e.at)} | {e.kind} | {e.actor} | {text} |")
    sent = sum(1 for e in timeline if e.kind == "notification_sent")
    failed = sum(1 for e in timeline if e.kind == "notification_failed")
    lines.append("")
    lines.append(
        f"{sent} notifications were delivered" + (f", {failed} failed" if failed else "") + "."
    )
    guard = [e for e in timeline if e.kind == "guard"]
    if guard:
        lines += ["", "## Containment", "", *_containment(guard, first, end)]
    lines += ["", "## Root Cause and Resolution", ""]
    # The shape the hypothesis blamed.
    culprit = blamed(ev) if ev.get("shapes") else None
    if culprit is not None and store is not None:
        latest = store.advice([culprit["fingerprint"]])
        if latest:
            a = latest[0]
            culprit = {
                **culprit,
                "index": a.ddl,
                "index_verified_by": a.verified_by,
                "index_gain": (
                    round(a.cost_before / a.cost_after, 1)
                    if a.cost_before and a.cost_after
                    else culprit.get("index_gain")
                ),
            }
    traffic = ev.get("traffic") or {}
    if traffic.get("ratio") is not None:
        lines.append(
            f"- **Traffic:** {traffic['rate_now']:.2f} requests/s against"
            f" {traffic['rate_before']:.2f} before (x{traffic['ratio']:.2f})"
            + (": not a traffic surge." if traffic["ratio"] < 1.5 else ": traffic rose.")
        )
    db = (ev.get("db_share") or {}).get("now")
    if db is not None:
        lines.append(f"- **Database share of request time:** {db:.0%}.")
    for p in ev.get("pools") or []:
        lines.append(
            f"- **Pool `{p['pool']}`:** {p['checkouts']} checkouts, mean wait"
            f" {p['mean_wait_ms']:.1f} ms, {p['timeouts']} timeouts, highest use"
            + (f" {p['saturation']:.0%}." if p.get("saturation") is not None else " unknown.")
        )
    for d in ev.get("deploys") or []:
        lines.append(f"- **Deploy before it:** {d['version']} at {_when(d['at'])} (UTC).")
    if culprit is not None:
        share_db = culprit.get("share_of_db_time")
        lines += [
            f"- **Root cause (from the evidence):** one query shape in `{culprit['endpoint']}`"
            + (f" took {share_db:.0%} of database time" if share_db is not None else "")
            + (
                f", {culprit['calls_now']} calls at {culprit['mean_ms_now']:.0f} ms mean"
                if culprit.get("mean_ms_now") is not None
                else ""
            )
            + (f" (plan: {', '.join(culprit['flags'])})" if culprit.get("flags") else "")
            + (
                f", issued at {_site_text(culprit['call_site'])}"
                if culprit.get("call_site")
                else ""
            )
            + ":",
            "",
            "```sql",
            compact_shape(culprit.get("shape"), 2000),
            "```",
            "",
        ]
        if culprit.get("index"):
            lines += [
                "- **Fix** (verified by querywatch's advisor"
                + (f", {culprit['index_verified_by']}" if culprit.get("index_verified_by") else "")
                + (
                    f", estimated x{culprit['index_gain']:,.0f} cheaper"
                    if culprit.get("index_gain")
                    else ""
                )
                + "):",
                "",
                "```sql",
                culprit["index"],
                "```",
                "",
            ]
    else:
        lines.append(f"- **Root cause:** {TO_FILL} (the evidence named no query shape).")
    fixes = [e for e in timeline if e.kind == "fix_applied"]
    lines.append(
        "- **Fix applied:** "
        + ("; ".join(f"{_when(e.at)} {e.actor}: {e.text}" for e in fixes) if fixes else TO_FILL)
    )
    if detected.get("hypothesis"):
        lines.append(f"- **querywatch's hypothesis at detection:** {detected['hypothesis']}")
    lines += ["", "## Corrective and Preventative Measures", ""]
    n = 1
    if culprit is not None and culprit.get("index"):
        lines.append(f"{n}. Keep the index in a migration: `{culprit['index']}`")
        n += 1
    if culprit is not None:
        lines.append(
            f"{n}. Gate it in CI: a test of `{culprit['endpoint']}` with"
            ' `@pytest.mark.query_budget(full_scans="forbid", n_plus_one="forbid")`'
            " (or an entry in `querywatch check`'s requests file), so this shape cannot"
            " ship without an index again."
        )
        n += 1
        p95 = culprit.get("mean_ms_before") or 0
        threshold = max(100, int(round(p95 * 5, -1))) if p95 else 500
        lines.append(
            f"{n}. Alert on the shape itself: `QUERYWATCH_ALERT_SHAPE_P95_MS = {threshold}`"
            f" fires a ticket when a shape's p95 in `{culprit['endpoint']}` crosses it,"
            " before the objective burns."
        )
        n += 1
    lines.append(
        f"{n}. Escalation: "
        + (
            f"acknowledged {_duration(acks[0].at - first)} after detection"
            if acks
            else "never acknowledged"
        )
        + f" after {len(escalations)} escalation(s). {TO_FILL}: was that fast enough?"
    )
    n += 1
    if not guard:
        lines.append(
            f"{n}. Contain the next one while people fix it: `QUERYWATCH_GUARD ="
            ' {"containment": "enforce"}` limits the endpoint a page\'s evidence blames, so'
            " the rest of the app keeps its objectives (docs/guard.md)."
        )
        n += 1
    lines.append(f"{n}. {TO_FILL}: what else would have prevented or shortened it.")
    lines.append("")
    return "\n".join(lines)


def _containment(
    events: t.Sequence[TimelineEvent], detected: float, resolved: float | None
) -> list[str]:
    """What the guard did, in order: engaged (or why not), each new limit, lifted."""
    engaged = next((e for e in events if e.text.startswith("guard engaged")), None)
    lifted = next((e for e in events if e.text.startswith("guard lifted")), None)
    lines = []
    if engaged is None:
        lines.append(f"- **Not contained:** {events[0].text}")
    else:
        lines.append(
            f"- **Engaged:** {_when(engaged.at)} (UTC),"
            f" {_duration(max(0.0, engaged.at - detected))} after detection: {engaged.text}"
        )
        limits = [e for e in events if e.text.startswith("guard on ")]
        if limits:
            lines.append(
                f"- **Adjusted:** {len(limits)} time(s); last at {_when(limits[-1].at)}:"
                f" {limits[-1].text}"
            )
        if lifted is not None:
            lines.append(f"- **Lifted:** {_when(lifted.at)} (UTC): {lifted.text}")
        elif resolved is None:
            lines.append("- **Lifted:** not yet: the endpoint is still limited.")
    lines.append(f"- **What it cost and spared:** {TO_FILL}: the users of the limited endpoint.")
    return lines


def _detection(incident: Incident, timeline: t.Sequence[TimelineEvent]) -> str:
    fired = next((e for e in timeline if e.kind == "alert_fired"), None)
    source = {
        "querywatch": "querywatch alert",
        "alertmanager": "Prometheus Alertmanager alert",
        "cli": "raised by hand",
    }.get(incident.source, incident.source)
    what = fired.text if fired is not None else incident.title
    return f"{source}: {what}"
