"""The incident worker: in the process holding the store's ``incidents`` lease, a
background thread follows the alert changes (opening and resolving incidents), escalates,
reminds, and delivers the outbox, every ``QUERYWATCH_INCIDENT_INTERVAL`` seconds.
``querywatch worker`` runs the same loop outside the app."""

from __future__ import annotations

import os
import socket
import time
import typing as t
import uuid

from .._worker import Periodic
from .manager import Incidents
from .manager import follow_alerts
from .outbox import Outbox

if t.TYPE_CHECKING:
    from ..store import Store
    from .policy import Policy

__all__ = ["LEASE", "IncidentWorker"]

LEASE = "incidents"


class IncidentWorker(Periodic):
    """One round: lease, alerts to incidents, escalation and reminders, delivery."""

    thread_name = "querywatch-incidents"
    where = "incidents.worker"

    def __init__(
        self,
        store: Store | t.Callable[[], Store],
        policy: Policy,
        *,
        scale: float = 1.0,
        severities: t.Collection[str] = ("page",),
        interval: float = 5.0,
    ) -> None:
        super().__init__(interval)
        self._store = store
        self.policy = policy
        self.scale = scale
        self.severities = tuple(severities)
        self._incidents: Incidents | None = None
        self._outbox: Outbox | None = None
        self.rounds = 0

    @property
    def holder(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    def _parts(self) -> tuple[Incidents, Outbox]:
        if self._incidents is None or self._outbox is None:
            store = self._store() if callable(self._store) else self._store
            self._incidents = Incidents(store, self.policy, scale=self.scale)
            self._outbox = Outbox(self._incidents, worker=f"{self.holder}:{uuid.uuid4().hex[:6]}")
        return self._incidents, self._outbox

    def run_once(self, now: float | None = None) -> dict[str, t.Any] | None:
        """One round if this process holds (or takes) the lease; None otherwise."""
        incidents, outbox = self._parts()
        now = time.time() if now is None else now
        # Three rounds: a holder that dies is replaced within three intervals (the
        # floor of 30 s delayed escalations by as much after a host died).
        lease = 3 * self.interval
        if not incidents.store.acquire_lease(LEASE, self.holder, now, lease):
            return None
        self.rounds += 1
        followed = follow_alerts(incidents, severities=self.severities, now=now)
        ticked = incidents.tick(now=now)
        sent = outbox.run_once(now=now)
        return {"followed": followed, "ticked": ticked, "sent": sent}

    def after_fork(self) -> None:
        super().after_fork()
        self._incidents = None
        self._outbox = None

    def release(self) -> None:
        """Stop, and give up the lease if this process holds it (a clean exit): another
        process takes over at its next round."""
        self.stop()
        if self._incidents is not None:
            self._incidents.store.release_lease(LEASE, self.holder)
