"""The incident worker: in the process holding the store's ``incidents`` lease, a
background thread follows the alert changes (opening and resolving incidents), escalates,
reminds, and delivers the outbox, every ``QUERYWATCH_INCIDENT_INTERVAL`` seconds.
``querywatch worker`` runs the same loop outside the app."""

from __future__ import annotations

import os
import socket
import threading
import time
import typing as t
import uuid

from .._failopen import log_limited
from .._failopen import record_internal_error
from .manager import Incidents
from .manager import follow_alerts
from .outbox import Outbox

if t.TYPE_CHECKING:
    from ..store import Store
    from .policy import Policy

__all__ = ["LEASE", "IncidentWorker"]

LEASE = "incidents"


class IncidentWorker:
    """One round: lease, alerts to incidents, escalation and reminders, delivery."""

    def __init__(
        self,
        store: Store | t.Callable[[], Store],
        policy: Policy,
        *,
        scale: float = 1.0,
        severities: t.Collection[str] = ("page",),
        interval: float = 5.0,
    ) -> None:
        self._store = store
        self.policy = policy
        self.scale = scale
        self.severities = tuple(severities)
        self.interval = interval
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
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
        lease = max(3 * self.interval, 30.0)
        if not incidents.store.acquire_lease(LEASE, self.holder, now, lease):
            return None
        self.rounds += 1
        followed = follow_alerts(incidents, severities=self.severities, now=now)
        ticked = incidents.tick(now=now)
        sent = outbox.run_once(now=now)
        return {"followed": followed, "ticked": ticked, "sent": sent}

    def ensure_started(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            thread = self._thread
            if thread is not None and self._pid == os.getpid() and thread.is_alive():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="querywatch-incidents", daemon=True
            )
            self._thread.start()

    def after_fork(self) -> None:
        self._thread = None
        self._lock = threading.Lock()
        self._incidents = None
        self._outbox = None

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception as e:  # keep the thread alive whatever happens
                record_internal_error("incidents.worker", e)
                log_limited(
                    "incidents.worker",
                    "querywatch's incident worker failed (%s: %s); it retries, and the"
                    " application is not affected.",
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
