"""Leases, meta values, alert states and events, and deploy markers."""

from __future__ import annotations

import json
import logging
import typing as t

from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from . import schema
from ._base import Base
from ._rows import AlertChange
from ._rows import StoredAlert
from ._rows import StoredAlertEvent
from ._rows import _alert

_log = logging.getLogger("querywatch")

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection


class AlertTables(Base):
    """Leases, meta values, alert state and deploy markers."""

    # --- deploy markers -----------------------------------------------------------------

    def add_deploy(self, version: str, at: float, description: str = "") -> None:
        self.migrate()
        with self.engine.begin() as conn:
            conn.execute(
                schema.deploys.insert().values(
                    version=version[:255], at=at, description=description
                )
            )

    def deploys(self, since: float, until: float) -> list[tuple[str, float, str]]:
        """(version, time, description) of the deploys in ``[since, until]``, oldest
        first."""
        self.migrate()
        tbl = schema.deploys
        with self.engine.connect() as conn:
            return [
                (r.version, r.at, r.description)
                for r in conn.execute(
                    select(tbl).where(tbl.c.at >= since, tbl.c.at <= until).order_by(tbl.c.at)
                )
            ]

    # --- leases and alert state ---------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds: True for exactly one
        holder at a time, across processes and hosts (their clocks within ``ttl``).
        Taking it from another holder (whose lease expired or was released) records
        when (``acquired``) and logs who took it from whom."""
        self.migrate()
        tbl = schema.leases
        try:
            with self.engine.begin() as conn:
                renewed = conn.execute(
                    update(tbl)
                    .where(tbl.c.name == name, tbl.c.holder == holder)
                    .values(expires=now + ttl)
                ).rowcount
                if renewed == 1:
                    return True
                row = conn.execute(select(tbl).where(tbl.c.name == name)).first()
                if row is None:
                    conn.execute(
                        tbl.insert().values(
                            name=name, holder=holder, expires=now + ttl, acquired=now
                        )
                    )
                    return True
                if row.expires > now:
                    return False
                # Compare and set: of two processes taking it at once, one changes it.
                taken = conn.execute(
                    update(tbl)
                    .where(tbl.c.name == name, tbl.c.holder == row.holder)
                    .values(holder=holder, expires=now + ttl, acquired=now)
                ).rowcount
        except IntegrityError:
            return False  # another process inserted it first
        if taken != 1:
            return False
        released = row.expires <= 0
        how = "released" if released else f"expired {now - row.expires:.1f} s ago"
        # A lease that expired is a holder that died or stalled: worth a warning.
        _log.log(
            logging.INFO if released else logging.WARNING,
            "querywatch lease %r taken over by %s from %s (its lease %s).",
            name,
            holder,
            row.holder,
            how,
        )
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give up the lease ``name`` if ``holder`` has it: another process takes it at
        its next round, not when it would have expired (a clean shutdown, a rolling
        deploy)."""
        tbl = schema.leases
        with self.engine.begin() as conn:
            conn.execute(
                update(tbl).where(tbl.c.name == name, tbl.c.holder == holder).values(expires=0.0)
            )

    def lease_holder(self, name: str, now: float) -> str | None:
        self.migrate()
        tbl = schema.leases
        with self.engine.connect() as conn:
            row = conn.execute(select(tbl).where(tbl.c.name == name)).first()
        return row.holder if row is not None and row.expires > now else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of ``qw_meta``."""
        self.migrate()
        tbl = schema.meta
        with self.engine.begin() as conn:
            n = conn.execute(update(tbl).where(tbl.c.key == key).values(value=value)).rowcount
            if n == 0:
                conn.execute(tbl.insert().values(key=key, value=value))

    def meta_value(self, key: str, default: str | None = None) -> str | None:
        """A value of ``qw_meta``; with ``default``, set it first if absent (the first
        writer wins)."""
        self.migrate()
        tbl = schema.meta
        with self.engine.begin() as conn:
            row = conn.execute(self._lock_rows(select(tbl.c.value).where(tbl.c.key == key))).first()
            if row is not None:
                return str(row[0])
            if default is None:
                return None
            try:
                conn.execute(tbl.insert().values(key=key, value=default))
            except IntegrityError:
                pass
            else:
                return default
        return self.meta_value(key)

    def alert_states(self) -> dict[str, StoredAlert]:
        """Every alert's current state, by key."""
        self.migrate()
        tbl = schema.alerts
        with self.engine.connect() as conn:
            return {row.key: _alert(row) for row in conn.execute(select(tbl))}

    def set_alert_state(self, change: AlertChange) -> bool:
        """Move an alert to ``change.state`` and log the change, in one transaction.
        False (nothing written) when it already is in that state: a change is written
        once however many processes try."""
        return bool(self.set_alert_states([change]))

    def set_alert_states(self, changes: t.Sequence[AlertChange]) -> list[AlertChange]:
        """:meth:`set_alert_state` for several alerts in one transaction (one commit);
        returns the changes written. If another process wrote one of them at the same
        moment, each is tried again on its own."""
        if not changes:
            return []
        self.migrate()
        try:
            with self.engine.begin() as conn:
                return [c for c in changes if self._apply_change(conn, c)]
        except IntegrityError:
            pass
        out = []
        for c in changes:
            try:
                with self.engine.begin() as conn:
                    if self._apply_change(conn, c):
                        out.append(c)
            except IntegrityError:
                continue  # another process inserted the first firing at the same moment
        return out

    def _apply_change(self, conn: Connection, change: AlertChange) -> bool:
        tbl, events = schema.alerts, schema.alert_events
        old = conn.execute(self._lock_rows(select(tbl).where(tbl.c.key == change.key))).first()
        if old is not None and old.state == change.state:
            return False
        if old is None and change.state != "firing":
            return False
        evidence = json.dumps(change.evidence, sort_keys=True, default=str)
        values = {
            "kind": change.kind[:32],
            "severity": change.severity[:16],
            "state": change.state,
            "since": change.at,
            "updated": change.at,
            "summary": change.summary,
            "evidence": evidence,
        }
        if old is None:
            conn.execute(tbl.insert().values(key=change.key, fired=1, **values))
        else:
            fired = old.fired + (1 if change.state == "firing" else 0)
            conn.execute(tbl.update().where(tbl.c.key == change.key).values(fired=fired, **values))
        conn.execute(
            events.insert().values(
                key=change.key,
                kind=values["kind"],
                severity=values["severity"],
                state=change.state,
                at=change.at,
                summary=change.summary,
                evidence=evidence,
            )
        )
        return True

    def alert_events(
        self, after_id: int = 0, limit: int = 1000, *, newest: int | None = None
    ) -> list[StoredAlertEvent]:
        """Alert state changes after ``after_id``, oldest first; or, with ``newest``,
        the last ``newest`` changes, newest first."""
        self.migrate()
        tbl = schema.alert_events
        if newest is not None:
            stmt = select(tbl).order_by(tbl.c.id.desc()).limit(newest)
        else:
            stmt = select(tbl).where(tbl.c.id > after_id).order_by(tbl.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [
                StoredAlertEvent(
                    row.id,
                    row.key,
                    row.kind,
                    row.severity,
                    row.state,
                    row.at,
                    row.summary,
                    json.loads(row.evidence),
                )
                for row in conn.execute(stmt)
            ]
