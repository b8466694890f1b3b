"""Prometheus Alertmanager's webhook (payload version 4) as incidents: teams that alert
in Prometheus get the same protocol (owner, escalation, timeline, postmortem).

One incident per Alertmanager group (``groupKey``): a ``firing`` notification opens it (or
adds to it), with querywatch's own evidence of the moment; ``resolved`` resolves it.
"""

from __future__ import annotations

import hashlib
import time
import typing as t

if t.TYPE_CHECKING:
    from ..extension._state import AppState

__all__ = ["parse_alertmanager", "receive_alertmanager"]


def parse_alertmanager(payload: t.Any) -> dict[str, t.Any]:
    """Check a webhook payload; raises ValueError saying what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError(
            "Expected Alertmanager's webhook JSON (an object), got none or another type."
        )
    if str(payload.get("version", "")) != "4":
        raise ValueError(
            f"Expected an Alertmanager webhook payload of version 4, got version"
            f" {payload.get('version')!r}."
        )
    status = payload.get("status")
    if status not in ("firing", "resolved"):
        raise ValueError(f"'status' must be 'firing' or 'resolved', got {status!r}.")
    group = payload.get("groupKey")
    if not isinstance(group, str) or not group:
        raise ValueError("'groupKey' is missing: it names the incident.")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise ValueError("'alerts' must be a list of alerts.")
    for key in ("commonLabels", "commonAnnotations", "groupLabels"):
        if not isinstance(payload.get(key, {}), dict):
            raise ValueError(f"'{key}' must be an object of strings.")
    return payload


def _dedup_key(group: str) -> str:
    key = f"alertmanager:{group}"
    if len(key) <= 255:
        return key
    return "alertmanager:" + hashlib.sha256(group.encode()).hexdigest()


def receive_alertmanager(
    state: AppState, payload: t.Any, now: float | None = None
) -> dict[str, t.Any]:
    """Apply one webhook notification; returns what was done."""
    from ..alerts import evidence as evidence_mod
    from .manager import Incidents

    p = parse_alertmanager(payload)
    now = time.time() if now is None else now
    settings = state.settings
    incidents = Incidents(state.store, settings.escalation, scale=settings.alert_time_scale)
    key = _dedup_key(p["groupKey"])
    labels = p.get("commonLabels", {})
    annotations = p.get("commonAnnotations", {})
    if p["status"] == "resolved":
        open_incident = incidents.open_by_key(key)
        if open_incident is None:
            return {"incident": None, "action": "nothing open"}
        incidents.resolve(open_incident.id, "alertmanager", "Alertmanager: resolved.", now=now)
        return {"incident": open_incident.id, "action": "resolved"}
    name = labels.get("alertname") or p.get("groupLabels", {}).get("alertname") or "Alert"
    title = annotations.get("summary") or f"{name} {labels.get('slo', '')}".strip()
    firing = [a for a in p["alerts"] if a.get("status", "firing") == "firing"]
    scale = settings.alert_time_scale
    ev = evidence_mod.gather(
        state.store, now, max(300.0 * scale, settings.bucket_seconds),
        width=settings.bucket_seconds, gap=3300.0 * scale,
    )  # fmt: skip
    ev["alertmanager"] = {
        "group_key": p["groupKey"],
        "labels": labels,
        "annotations": annotations,
        "external_url": p.get("externalURL"),
        "alerts": len(firing),
    }
    impact = {"requests_share": ev["errors"]["ratio_now"]} if ev["errors"]["ratio_now"] else {}
    incident, opened = incidents.trigger(
        key,
        str(title)[:500],
        summary=str(annotations.get("description", ""))[:2000] or ev["hypothesis"],
        source="alertmanager",
        alert_severity=str(labels.get("severity", "")) or None,
        impact=impact,
        evidence=ev,
        actor="alertmanager",
        now=now,
    )
    return {"incident": incident.id, "action": "opened" if opened else "added"}
