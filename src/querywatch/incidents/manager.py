"""Incidents in the store: triggered -> acknowledged -> resolved (and reopened), one open
incident per dedup key, a typed timeline, escalation on a policy, and every notification
written to the outbox in the same transaction as the event that causes it."""

from __future__ import annotations

import dataclasses
import json
import time
import typing as t

from sqlalchemy.exc import IntegrityError

from .._text import duration_text as _duration
from ..exceptions import IncidentError
from .policy import DEFAULT_POLICY
from .policy import Policy

if t.TYPE_CHECKING:
    from ..store import Store
    from ..store._incidents import IncidentTx

__all__ = ["EVENT_KINDS", "Incident", "IncidentError", "Incidents", "TimelineEvent"]

#: The kinds of timeline event.
EVENT_KINDS = (
    "alert_fired",
    "evidence",
    "notification_sent",
    "notification_failed",
    "escalated",
    "acknowledged",
    "assigned",
    "status_update",
    "reminder",
    "note",
    "fix_applied",
    "resolved",
    "reopened",
    "guard",
)
#: A resolved incident whose alert fires again within this long (scaled) is reopened.
REOPEN_SECONDS = 3600.0
#: How long after its incident resolved a guard event still goes on its timeline (a lift
#: decided as the alert resolved), in seconds of the incidents' clock.
GUARD_LATE_SECONDS = 600.0
#: Deploys this long (scaled) before an incident opens are part of its evidence.
DEPLOY_LOOKBACK = 6 * 3600.0


class _Raced(Exception):
    """Another process changed the incident between this one's read and its write."""


@dataclasses.dataclass(frozen=True)
class TimelineEvent:
    id: int
    incident_id: int
    at: float
    kind: str
    actor: str
    text: str
    data: dict[str, t.Any]


@dataclasses.dataclass(frozen=True)
class Incident:
    id: int
    dedup_key: str
    status: str
    severity: str
    title: str
    summary: str
    owner: str | None
    source: str
    created_at: float
    acknowledged_at: float | None
    resolved_at: float | None
    updated_at: float
    last_update_at: float
    level: int
    round: int
    next_escalation_at: float | None
    impact: dict[str, t.Any]
    evidence: dict[str, t.Any]


def _incident(row: t.Any) -> Incident:
    return Incident(
        row.id,
        row.dedup_key,
        row.status,
        row.severity,
        row.title,
        row.summary,
        row.owner,
        row.source,
        row.created_at,
        row.acknowledged_at,
        row.resolved_at,
        row.updated_at,
        row.last_update_at,
        row.level,
        row.round,
        row.next_escalation_at,
        json.loads(row.impact),
        json.loads(row.evidence),
    )


def impact_of(evidence: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """An alert's impact from its evidence: the share of requests that missed its
    objective (or failed), and of users where the app names them."""
    impact: dict[str, t.Any] = {}
    objective = evidence.get("objective")
    if objective:
        impact["requests_share"] = objective.get("bad_ratio")
        if objective.get("bad_users_ratio") is not None:
            impact["users_share"] = objective["bad_users_ratio"]
            impact["users"] = objective.get("users")
            impact["bad_users"] = objective.get("bad_users")
    elif evidence.get("errors"):
        impact["requests_share"] = evidence["errors"].get("ratio_now")
    return impact


def severity_from_impact(impact: t.Mapping[str, t.Any], alert_severity: str | None) -> str:
    """SEV1 when half the requests (or users) are affected, SEV2 from a tenth or for a
    paging alert, SEV3 below."""
    share = max(float(impact.get("requests_share") or 0.0), float(impact.get("users_share") or 0.0))
    if share >= 0.5:
        return "SEV1"
    if share >= 0.1 or alert_severity in ("page", "critical"):
        return "SEV2"
    return "SEV3"


class Incidents:
    """Incident actions over a store.

    :param policy: the escalation policy (targets, levels, rotations).
    :param scale: multiplies the policy's delays and cadences (tests and the demo).
    """

    def __init__(
        self, store: Store, policy: Policy = DEFAULT_POLICY, *, scale: float = 1.0
    ) -> None:
        self.store = store
        self.policy = policy
        self.scale = scale

    # --- reading --------------------------------------------------------------------

    def get(self, incident_id: int) -> Incident:
        self.store.migrate()
        row = self.store.incident_row(incident_id)
        if row is None:
            msg = f"No incident #{incident_id}. 'querywatch incidents list' shows the incidents."
            raise IncidentError(msg)
        return _incident(row)

    def recent(self, *, open_only: bool = False, limit: int = 50) -> list[Incident]:
        self.store.migrate()
        return [_incident(r) for r in self.store.incident_rows(open_only=open_only, limit=limit)]

    def open_by_key(self, dedup_key: str) -> Incident | None:
        row = self.store.open_incident_row(dedup_key[:255])
        return _incident(row) if row is not None else None

    def timeline(self, incident_id: int) -> list[TimelineEvent]:
        self.store.migrate()
        return [
            TimelineEvent(r.id, r.incident_id, r.at, r.kind, r.actor, r.text, json.loads(r.data))
            for r in self.store.incident_event_rows(incident_id)
        ]

    # --- writing --------------------------------------------------------------------

    def _event(
        self,
        tx: IncidentTx,
        incident_id: int,
        kind: str,
        actor: str,
        text: str,
        now: float,
        data: dict[str, t.Any] | None = None,
    ) -> int:
        assert kind in EVENT_KINDS, kind
        return tx.add_event(incident_id, kind, actor, text, now, data)

    def _notify(
        self,
        tx: IncidentTx,
        incident: Incident,
        event_id: int,
        action: str,
        targets: t.Iterable[str],
        text: str,
        now: float,
        level: int | None = None,
    ) -> int:
        """Write one outbox message per target (idempotency key: incident, event,
        target). Delivery is the worker's."""
        n = 0
        for name in dict.fromkeys(targets):
            target = self.policy.targets.get(name)
            kind = target.kind if target is not None else tx.kind_sent(incident.id, name)
            if kind is None:
                continue  # neither this policy nor an earlier message knows the target
            key = f"querywatch-{incident.id}-{event_id}-{name}"
            message = {
                "idempotency_key": key,
                "action": action,
                "text": text,
                "level": level,
                "incident": {
                    "id": incident.id,
                    "dedup_key": incident.dedup_key,
                    "status": incident.status,
                    "severity": incident.severity,
                    "title": incident.title,
                    "summary": incident.summary,
                    "owner": incident.owner,
                    "created_at": incident.created_at,
                    "hypothesis": incident.evidence.get("hypothesis"),
                    "impact": incident.impact,
                    "trace_url": trace_url_of(incident.evidence),
                },
            }
            tx.queue_message(
                key=key,
                incident_id=incident.id,
                event_id=event_id,
                target=name,
                kind=kind,
                message=message,
                at=now,
            )
            n += 1
        return n

    def _load(self, tx: IncidentTx, incident_id: int) -> Incident:
        row = tx.incident(incident_id)
        if row is None:
            msg = f"No incident #{incident_id}. 'querywatch incidents list' shows the incidents."
            raise IncidentError(msg)
        return _incident(row)

    def trigger(
        self,
        dedup_key: str,
        title: str,
        *,
        summary: str = "",
        source: str = "querywatch",
        alert_severity: str | None = None,
        impact: dict[str, t.Any] | None = None,
        evidence: dict[str, t.Any] | None = None,
        actor: str = "querywatch",
        now: float | None = None,
    ) -> tuple[Incident, bool]:
        """Open an incident for ``dedup_key``, or add the alert to the one open (or
        reopen one resolved within the hour). Returns the incident and whether it was
        opened (or reopened) by this call: only then are people notified."""
        if not dedup_key or not title:
            raise IncidentError("An incident needs a dedup key and a title.")
        self.store.migrate()
        now = time.time() if now is None else now
        key = dedup_key[:255]
        impact = impact or {}
        evidence = dict(evidence or {})
        # Deploys of the last six hours (scaled): a release is the first suspect.
        recent = self.store.deploys(now - DEPLOY_LOOKBACK * self.scale, now)
        if recent:
            evidence["deploys"] = [
                {"version": v, "at": at, "description": d} for v, at, d in recent
            ]
        severity = severity_from_impact(impact, alert_severity)
        for _ in range(5):
            try:
                with self.store.incident_tx() as tx:
                    return self._trigger(
                        tx, key, title, summary, source, severity, impact, evidence, actor, now
                    )
            except (IntegrityError, _Raced):
                continue  # another process opened it at the same moment: look again
        msg = f"Could not open or find the incident for {dedup_key!r} (concurrent writers)."
        raise IncidentError(msg)

    def _trigger(
        self,
        tx: IncidentTx,
        key: str,
        title: str,
        summary: str,
        source: str,
        severity: str,
        impact: dict[str, t.Any],
        evidence: dict[str, t.Any],
        actor: str,
        now: float,
    ) -> tuple[Incident, bool]:
        open_id = tx.open_incident_id(key)
        if open_id is not None:
            incident = self._load(tx, open_id)
            again = "Fired again" if title == incident.title else "Also firing"
            self._event(tx, incident.id, "alert_fired", actor, f"{again}: {title}", now)
            tx.update_incident(incident.id, updated_at=now)
            return incident, False
        recent = tx.resolved_since(key, now - REOPEN_SECONDS * self.scale)
        delay = self.policy.levels[0].delay * self.scale
        fields = {
            "open_key": key,
            "status": "triggered",
            "updated_at": now,
            "last_update_at": now,
            "level": 0,
            "round": 0,
            "next_escalation_at": now + delay if self._has_next(0, 0) else None,
        }
        if recent is not None:
            # The new firing's figures replace the old: people must read what is
            # happening now, not what happened before the incident was resolved. Only
            # while it is still resolved: of several processes reopening it at once (an
            # HA Alertmanager pair posting to two workers), one changes the row, and the
            # others look again and find it open.
            reopened = tx.reopen(
                recent,
                acknowledged_at=None,
                resolved_at=None,
                severity=severity,
                title=title,
                summary=summary,
                impact=impact,
                evidence=evidence,
                **fields,
            )
            if not reopened:
                raise _Raced
            incident = self._load(tx, recent)
            event_id = self._event(tx, incident.id, "reopened", actor, f"Reopened: {title}", now)
            self._evidence_event(tx, incident.id, evidence, now)
            opened_text = f"Reopened {incident.severity} #{incident.id}: {title}"
        else:
            new_id = tx.insert_incident(
                dedup_key=key,
                severity=severity,
                title=title,
                summary=summary,
                owner=self.policy.owner(now),
                source=source[:32],
                created_at=now,
                impact=impact,
                evidence=evidence,
                **fields,
            )
            incident = self._load(tx, new_id)
            event_id = self._event(
                tx, incident.id, "alert_fired", actor, title, now, {"source": source}
            )
            self._evidence_event(tx, incident.id, evidence, now)
            opened_text = f"{incident.severity} #{incident.id}: {title}"
        if incident.owner:
            opened_text += f" (owner: {incident.owner})"
        if summary:
            opened_text += f"\n{summary}"
        self._notify(
            tx, incident, event_id, "trigger", self.policy.levels[0].targets, opened_text, now, 0
        )
        return incident, True

    def _evidence_event(
        self, tx: IncidentTx, incident_id: int, evidence: dict[str, t.Any], now: float
    ) -> None:
        if not evidence:
            return
        text = evidence.get("hypothesis") or "Evidence attached."
        for d in evidence.get("deploys", [])[-1:]:
            text += f" Last deploy: {d['version']}, {_duration(now - d['at'])} before."
        self._event(tx, incident_id, "evidence", "querywatch", text, now, evidence)

    def _has_next(self, level: int, rnd: int) -> bool:
        return level + 1 < len(self.policy.levels) or rnd + 1 < self.policy.repeat

    def _act(
        self,
        incident_id: int,
        fn: t.Callable[[IncidentTx, Incident], t.Any],
    ) -> t.Any:
        self.store.migrate()
        with self.store.incident_tx() as tx:
            incident = self._load(tx, incident_id)
            return fn(tx, incident)

    def acknowledge(self, incident_id: int, actor: str, now: float | None = None) -> Incident:
        """Stop the escalation; every target notified so far hears who took it."""
        now = time.time() if now is None else now

        def ack(tx: IncidentTx, inc: Incident) -> Incident:
            if inc.status != "triggered":
                msg = (
                    f"Incident #{inc.id} is {inc.status}; only a triggered incident is"
                    " acknowledged."
                )
                raise IncidentError(msg)
            tx.update_incident(
                inc.id,
                status="acknowledged",
                acknowledged_at=now,
                next_escalation_at=None,
                updated_at=now,
                owner=inc.owner or actor[:255],
            )
            inc = self._load(tx, inc.id)
            eid = self._event(tx, inc.id, "acknowledged", actor, f"Acknowledged by {actor}.", now)
            self._notify(
                tx, inc, eid, "acknowledge", tx.notified_targets(inc.id),
                f"#{inc.id} acknowledged by {actor}: {inc.title}", now,
            )  # fmt: skip
            return inc

        return t.cast("Incident", self._act(incident_id, ack))

    def resolve(
        self, incident_id: int, actor: str, text: str = "", now: float | None = None
    ) -> Incident:
        """Close the incident; every target notified hears it."""
        now = time.time() if now is None else now

        def res(tx: IncidentTx, inc: Incident) -> Incident:
            if inc.status == "resolved":
                msg = f"Incident #{inc.id} is already resolved."
                raise IncidentError(msg)
            tx.update_incident(
                inc.id,
                status="resolved",
                open_key=None,
                resolved_at=now,
                next_escalation_at=None,
                updated_at=now,
            )
            inc = self._load(tx, inc.id)
            lasted = now - inc.created_at
            body = f"Resolved by {actor} after {_duration(lasted)}." + (f" {text}" if text else "")
            eid = self._event(tx, inc.id, "resolved", actor, body, now)
            self._notify(
                tx, inc, eid, "resolve", tx.notified_targets(inc.id),
                f"#{inc.id} resolved: {inc.title}. {body}", now,
            )  # fmt: skip
            return inc

        return t.cast("Incident", self._act(incident_id, res))

    def note(
        self,
        incident_id: int,
        actor: str,
        text: str,
        *,
        kind: str = "note",
        now: float | None = None,
    ) -> int:
        """A note (or ``fix_applied``) on the timeline; nobody is notified."""
        now = time.time() if now is None else now
        if kind not in ("note", "fix_applied"):
            raise IncidentError(f"A note's kind is 'note' or 'fix_applied', got {kind!r}.")
        if not text.strip():
            raise IncidentError("A note needs text.")
        return int(
            self._act(incident_id, lambda tx, inc: self._event(tx, inc.id, kind, actor, text, now))
        )

    def resolved_since(self, alert_key: str, since: float) -> int | None:
        """The incident of ``alert_key`` resolved at ``since`` or later (by a person
        while the alert still fires, or as it resolved), when none of its key is open."""
        key = incident_key(alert_key)
        if self.open_by_key(key) is not None:
            return None
        with self.store.incident_tx() as tx:
            return tx.resolved_since(key, since)

    def guard_event(self, alert_key: str, text: str, now: float | None = None) -> int | None:
        """What the guard did about an alert (engaged, changed, lifted, or why not) on the
        timeline of the alert's open incident, sent to every target notified so far.
        A lift comes as the alert resolves, and may find its incident just resolved: it
        goes on that one's timeline. ``now`` is when the guard decided (it may be told
        later). Returns the event's id, or None when the alert has no incident (yet)."""
        now = time.time() if now is None else now
        key = incident_key(alert_key)
        inc = self.open_by_key(key)
        if inc is None:
            with self.store.incident_tx() as tx:
                found = tx.resolved_since(key, now - GUARD_LATE_SECONDS * self.scale)
            if found is None:
                return None
            inc = self.get(found)

        def add(tx: IncidentTx, inc: Incident) -> int:
            eid = self._event(tx, inc.id, "guard", "querywatch", text, now)
            self._notify(
                tx, inc, eid, "update", tx.notified_targets(inc.id), f"#{inc.id}: {text}", now,
            )  # fmt: skip
            return eid

        return int(self._act(inc.id, add))

    def assign(
        self, incident_id: int, actor: str, owner: str, now: float | None = None
    ) -> Incident:
        now = time.time() if now is None else now

        def assign(tx: IncidentTx, inc: Incident) -> Incident:
            tx.update_incident(inc.id, owner=owner[:255], updated_at=now)
            self._event(tx, inc.id, "assigned", actor, f"Assigned to {owner} by {actor}.", now)
            return self._load(tx, inc.id)

        return t.cast("Incident", self._act(incident_id, assign))

    def update(self, incident_id: int, actor: str, text: str, now: float | None = None) -> int:
        """A status update, sent to every target notified so far (development and
        operations alike). Returns how many messages were queued."""
        now = time.time() if now is None else now
        if not text.strip():
            raise IncidentError("A status update needs text.")

        def upd(tx: IncidentTx, inc: Incident) -> int:
            tx.update_incident(inc.id, last_update_at=now, updated_at=now)
            eid = self._event(tx, inc.id, "status_update", actor, text, now)
            return self._notify(
                tx, inc, eid, "update", tx.notified_targets(inc.id),
                f"Update on #{inc.id} ({inc.status}) from {actor}: {text}", now,
            )  # fmt: skip

        return int(self._act(incident_id, upd))

    def tick(self, now: float | None = None) -> list[tuple[int, str]]:
        """Escalate the triggered incidents whose level's delay has passed, and remind
        the owners of open incidents without a status update for the policy's cadence.
        Returns (incident id, what was done)."""
        self.store.migrate()
        now = time.time() if now is None else now
        done: list[tuple[int, str]] = []
        due = self.store.due_escalations(now)
        stale = self.store.quiet_incidents(now - self.policy.update_interval * self.scale)
        for incident_id in due:
            with self.store.incident_tx() as tx:
                inc = self._load(tx, incident_id)
                if (
                    inc.status != "triggered"
                    or inc.next_escalation_at is None
                    or inc.next_escalation_at > now
                ):
                    continue  # acknowledged or escalated by another process meanwhile
                level, rnd = inc.level + 1, inc.round
                if level >= len(self.policy.levels):
                    level, rnd = 0, rnd + 1
                if rnd >= self.policy.repeat:
                    tx.update_incident(inc.id, next_escalation_at=None)
                    continue
                delay = self.policy.levels[level].delay * self.scale
                tx.update_incident(
                    inc.id,
                    level=level,
                    round=rnd,
                    next_escalation_at=now + delay if self._has_next(level, rnd) else None,
                    updated_at=now,
                )
                inc = self._load(tx, inc.id)
                targets = self.policy.levels[level].targets
                team = self.policy.levels[level].team
                text = (
                    f"Escalated to level {level + 1}"
                    + (f" ({team})" if team else "")
                    + f": nobody acknowledged #{inc.id} in time."
                )
                eid = self._event(
                    tx,
                    inc.id,
                    "escalated",
                    "querywatch",
                    text,
                    now,
                    {"level": level, "round": rnd, "targets": list(targets)},
                )
                self._notify(
                    tx,
                    inc,
                    eid,
                    "escalate",
                    targets,
                    f"{text}\n{inc.severity} #{inc.id}: {inc.title}\n{inc.summary}",
                    now,
                    level,
                )
                done.append((inc.id, f"escalated to level {level + 1}"))
        for incident_id in stale:
            with self.store.incident_tx() as tx:
                inc = self._load(tx, incident_id)
                if (
                    inc.status == "resolved"
                    or inc.last_update_at > now - self.policy.update_interval * self.scale
                ):
                    continue
                tx.update_incident(inc.id, last_update_at=now)
                who = inc.owner or "the owner"
                text = (
                    f"No status update on #{inc.id} for {_duration(now - inc.last_update_at)}:"
                    f" {who}, please post one (querywatch incidents update {inc.id} '...')."
                )
                eid = self._event(tx, inc.id, "reminder", "querywatch", text, now)
                self._notify(tx, inc, eid, "reminder", self.policy.levels[0].targets, text, now)
                done.append((inc.id, "reminded"))
        return done


def incident_key(alert_key: str) -> str:
    """The dedup key of an alert's incident. The app's objectives burn together when
    one thing goes wrong (the seed's alert: "response time and error rate"), so every
    objective's page and ticket are one incident, ``slo``, as Alertmanager groups a
    service's alerts into one notification; other alerts are their own."""
    if alert_key.startswith("slo:"):
        return "slo"
    return alert_key


def trace_url_of(evidence: t.Mapping[str, t.Any]) -> str | None:
    """The link to the trace of the culprit's slowest call, when the evidence has one
    (``QUERYWATCH_TRACE_URL``)."""
    from ..alerts.evidence import culprit

    try:
        top = culprit(dict(evidence)) if evidence.get("shapes") else None
    except (KeyError, TypeError, ValueError):
        return None
    return str(top["trace_url"]) if top and top.get("trace_url") else None


def follow_alerts(
    incidents: Incidents,
    *,
    severities: t.Collection[str] = ("page",),
    now: float | None = None,
    limit: int = 500,
) -> list[tuple[str, int, str]]:
    """Turn the alert changes written since the last call into incident actions: a
    firing alert of ``severities`` opens (or adds to) the incident of its key, with its
    evidence; once every alert of ``severities`` of an incident's key is resolved
    (a ticket still burning slowly does not keep it open), the incident is resolved. A
    cursor in the store (``incidents_cursor``) makes each change count once whichever
    process follows. Returns (dedup key, incident id, what was done)."""
    store = incidents.store
    now = time.time() if now is None else now
    cursor = int(store.meta_value("incidents_cursor", "0") or 0)
    events = store.alert_events(after_id=cursor, limit=limit)
    done: list[tuple[str, int, str]] = []
    if not events:
        return done
    states = store.alert_states()
    for ev in events:
        key = incident_key(ev.key)
        # Not before the alert's own change: ``now`` was taken before the events were
        # read, and an evaluation that started after it may have written one of them.
        at = max(now, ev.at)
        if ev.state == "firing" and ev.severity in severities:
            impact = impact_of(ev.evidence)
            title, _, rest = ev.summary.partition(". ")
            incident, opened = incidents.trigger(
                key,
                title.rstrip(".")[:500],
                summary=ev.evidence.get("hypothesis") or rest,
                source="querywatch",
                alert_severity=ev.severity,
                impact=impact,
                evidence=ev.evidence,
                now=at,
            )
            done.append((key, incident.id, "opened" if opened else "added"))
        elif ev.state == "resolved":
            open_incident = incidents.open_by_key(key)
            still = [
                k
                for k, a in states.items()
                if incident_key(k) == key and a.state == "firing" and a.severity in severities
            ]
            if open_incident is not None and not still:
                incidents.resolve(
                    open_incident.id, "querywatch", "Every alert of it resolved.", now=at
                )
                done.append((key, open_incident.id, "resolved"))
        store.set_meta("incidents_cursor", str(ev.id))
    return done
