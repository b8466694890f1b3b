"""Incidents, their timelines and the outbox of notifications: every statement against
their tables. The incidents package decides (open, escalate, notify); this module reads
and writes, in one transaction where a change and the messages it causes must land
together (:meth:`IncidentTables.incident_tx`)."""

from __future__ import annotations

import contextlib
import json
import typing as t

from sqlalchemy import func
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update

from . import schema
from ._base import Base

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Row


def _json(value: t.Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class IncidentTx:
    """One transaction on the incident tables and the outbox; committed when the
    ``with`` block ends, rolled back if it raises."""

    def __init__(self, conn: Connection, *, lock_rows: bool) -> None:
        self.conn = conn
        self._lock_rows = lock_rows

    # --- incidents ---

    def incident(self, incident_id: int, *, lock: bool = True) -> Row[t.Any] | None:
        """The incident's row, locked for this transaction (where the database locks
        rows) unless ``lock`` is false."""
        tbl = schema.incidents
        stmt = select(tbl).where(tbl.c.id == incident_id)
        if lock and self._lock_rows:
            stmt = stmt.with_for_update()
        return self.conn.execute(stmt).first()

    def open_incident_id(self, key: str) -> int | None:
        tbl = schema.incidents
        row = self.conn.execute(select(tbl.c.id).where(tbl.c.open_key == key)).first()
        return int(row.id) if row is not None else None

    def resolved_since(self, key: str, since: float) -> int | None:
        """The last incident of ``key`` resolved at ``since`` or later."""
        tbl = schema.incidents
        row = self.conn.execute(
            select(tbl.c.id)
            .where(tbl.c.dedup_key == key, tbl.c.status == "resolved", tbl.c.resolved_at >= since)
            .order_by(tbl.c.id.desc())
            .limit(1)
        ).first()
        return int(row.id) if row is not None else None

    def insert_incident(
        self, *, impact: dict[str, t.Any], evidence: dict[str, t.Any], **values: t.Any
    ) -> int:
        result = self.conn.execute(
            schema.incidents.insert().values(
                impact=_json(impact), evidence=_json(evidence), **values
            )
        )
        pk = result.inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def reopen(
        self,
        incident_id: int,
        *,
        impact: dict[str, t.Any],
        evidence: dict[str, t.Any],
        **values: t.Any,
    ) -> bool:
        """Reopen a resolved incident with ``values``; False when it is no longer
        resolved (another process reopened it first)."""
        tbl = schema.incidents
        result = self.conn.execute(
            update(tbl)
            .where(tbl.c.id == incident_id, tbl.c.status == "resolved")
            .values(impact=_json(impact), evidence=_json(evidence), **values)
        )
        return bool(result.rowcount == 1)

    def update_incident(self, incident_id: int, **values: t.Any) -> None:
        tbl = schema.incidents
        self.conn.execute(update(tbl).where(tbl.c.id == incident_id).values(**values))

    def add_event(
        self,
        incident_id: int,
        kind: str,
        actor: str,
        text: str,
        at: float,
        data: dict[str, t.Any] | None = None,
    ) -> int:
        """A timeline event; returns its id."""
        result = self.conn.execute(
            schema.incident_events.insert().values(
                incident_id=incident_id,
                at=at,
                kind=kind,
                actor=actor[:255],
                text=text,
                data=_json(data or {}),
            )
        )
        pk = result.inserted_primary_key
        assert pk is not None
        return int(pk[0])

    # --- the outbox ---

    def queue_message(
        self,
        *,
        key: str,
        incident_id: int,
        event_id: int,
        target: str,
        kind: str,
        message: dict[str, t.Any],
        at: float,
    ) -> None:
        """A message for one target, pending, due at ``at``."""
        self.conn.execute(
            schema.outbox.insert().values(
                idempotency_key=key,
                incident_id=incident_id,
                event_id=event_id,
                target=target[:64],
                kind=kind,
                message=_json(message),
                status="pending",
                attempts=0,
                next_attempt_at=at,
                created_at=at,
            )
        )

    def kind_sent(self, incident_id: int, target: str) -> str | None:
        """The kind of ``target`` that this incident's messages went to."""
        tbl = schema.outbox
        row = self.conn.execute(
            select(tbl.c.kind)
            .where(tbl.c.incident_id == incident_id, tbl.c.target == target)
            .limit(1)
        ).first()
        return str(row[0]) if row is not None else None

    def notified_targets(self, incident_id: int) -> list[str]:
        """The targets an incident's messages went (or go) to, first notified first."""
        tbl = schema.outbox
        rows = self.conn.execute(
            select(tbl.c.target).where(tbl.c.incident_id == incident_id).order_by(tbl.c.id)
        )
        return list(dict.fromkeys(r[0] for r in rows))

    def mark_sent(self, message_id: int, worker: str, at: float, attempts: int) -> bool:
        """Mark a message sent, if ``worker`` still holds it."""
        tbl = schema.outbox
        n = self.conn.execute(
            update(tbl)
            .where(tbl.c.id == message_id, tbl.c.claimed_by == worker)
            .values(status="sent", sent_at=at, attempts=attempts, claimed_until=None)
        ).rowcount
        return bool(n == 1)

    def mark_dead(self, message_id: int, attempts: int, error: str) -> None:
        tbl = schema.outbox
        self.conn.execute(
            update(tbl)
            .where(tbl.c.id == message_id)
            .values(status="dead", attempts=attempts, last_error=error, claimed_until=None)
        )

    def retry_at(self, message_id: int, attempts: int, error: str, at: float) -> None:
        tbl = schema.outbox
        self.conn.execute(
            update(tbl)
            .where(tbl.c.id == message_id)
            .values(attempts=attempts, last_error=error, next_attempt_at=at, claimed_until=None)
        )


class IncidentTables(Base):
    """Incidents, their events and the outbox."""

    @contextlib.contextmanager
    def incident_tx(self) -> Iterator[IncidentTx]:
        """One transaction on the incident tables (committed at the end of the block)."""
        with self.engine.begin() as conn:
            yield IncidentTx(conn, lock_rows=not self.is_sqlite)

    def incident_row(self, incident_id: int) -> Row[t.Any] | None:
        tbl = schema.incidents
        with self.engine.connect() as conn:
            return conn.execute(select(tbl).where(tbl.c.id == incident_id)).first()

    def incident_rows(self, *, open_only: bool = False, limit: int = 50) -> list[Row[t.Any]]:
        """The last ``limit`` incidents, newest first."""
        tbl = schema.incidents
        stmt = select(tbl).order_by(tbl.c.id.desc()).limit(limit)
        if open_only:
            stmt = stmt.where(tbl.c.status != "resolved")
        with self.engine.connect() as conn:
            return list(conn.execute(stmt))

    def open_incident_row(self, key: str) -> Row[t.Any] | None:
        tbl = schema.incidents
        with self.engine.connect() as conn:
            return conn.execute(select(tbl).where(tbl.c.open_key == key)).first()

    def incident_event_rows(self, incident_id: int) -> list[Row[t.Any]]:
        """An incident's timeline, oldest first."""
        tbl = schema.incident_events
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(tbl).where(tbl.c.incident_id == incident_id).order_by(tbl.c.id))
            )

    def _incident_ids(self, *where: t.Any) -> list[int]:
        tbl = schema.incidents
        with self.engine.connect() as conn:
            return [int(r.id) for r in conn.execute(select(tbl.c.id).where(*where))]

    def due_escalations(self, now: float) -> list[int]:
        """Triggered incidents whose next escalation is due."""
        tbl = schema.incidents
        return self._incident_ids(tbl.c.status == "triggered", tbl.c.next_escalation_at <= now)

    def quiet_incidents(self, since: float) -> list[int]:
        """Open incidents without a status update since ``since``."""
        tbl = schema.incidents
        return self._incident_ids(tbl.c.status != "resolved", tbl.c.last_update_at <= since)

    # --- the outbox ---

    def due_messages(self, now: float, limit: int) -> list[tuple[int, int, str]]:
        """Pending messages due by ``now`` that no worker holds, as (id, incident, target),
        in the order they were written. One incident's messages to one target go in that
        order: a message waits while an earlier one of the same incident and target is
        pending and not due, or held by a worker (a trigger retried after a failed
        delivery is heard before the update written after it)."""
        tbl = schema.outbox
        before = tbl.alias("before")
        free = or_(tbl.c.claimed_until.is_(None), tbl.c.claimed_until < now)
        waiting = (
            select(before.c.id)
            .where(
                before.c.incident_id == tbl.c.incident_id,
                before.c.target == tbl.c.target,
                before.c.id < tbl.c.id,
                before.c.status == "pending",
                or_(before.c.next_attempt_at > now, before.c.claimed_until >= now),
            )
            .exists()
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(tbl.c.id, tbl.c.incident_id, tbl.c.target)
                .where(tbl.c.status == "pending", tbl.c.next_attempt_at <= now, free, ~waiting)
                .order_by(tbl.c.id)
                .limit(limit)
            )
            return [(int(r.id), int(r.incident_id), str(r.target)) for r in rows]

    def claim_message(
        self, message_id: int, worker: str, now: float, until: float
    ) -> Row[t.Any] | None:
        """The message, claimed by ``worker`` until ``until``; None when another worker
        holds it or it is no longer pending."""
        tbl = schema.outbox
        free = or_(tbl.c.claimed_until.is_(None), tbl.c.claimed_until < now)
        with self.engine.begin() as conn:
            n = conn.execute(
                update(tbl)
                .where(tbl.c.id == message_id, tbl.c.status == "pending", free)
                .values(claimed_by=worker, claimed_until=until)
            ).rowcount
            if n != 1:
                return None
            return conn.execute(select(tbl).where(tbl.c.id == message_id)).one()

    def renew_claim(self, message_id: int, worker: str, until: float) -> None:
        tbl = schema.outbox
        with self.engine.begin() as conn:
            conn.execute(
                update(tbl)
                .where(
                    tbl.c.id == message_id, tbl.c.claimed_by == worker, tbl.c.status == "pending"
                )
                .values(claimed_until=until)
            )

    def pending_messages(self) -> int:
        tbl = schema.outbox
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(tbl).where(tbl.c.status == "pending")
                ).scalar()
                or 0
            )
