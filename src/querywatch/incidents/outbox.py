"""The outbox worker: delivers the notifications incidents wrote, with retries.

A message is claimed just before it is sent, one at a time, for a few seconds
(``claimed_until``, :data:`CLAIM_SECONDS`), and the claim is renewed while the delivery
runs, so two workers never send it at the same time; a worker killed while sending
holds that one message until its claim expires, seconds later, and it is sent again (at
least once: every message carries its idempotency key, so a receiver keeps one). A
failed delivery is retried with exponential backoff and jitter (15-30 s, 30-60 s, 1-2
min, ... capped at an hour, scaled), and after ``max_attempts`` it is dead-lettered with
a ``notification_failed`` event on the incident's timeline.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import typing as t
import uuid
from collections.abc import Iterator

from .._failopen import log_limited
from ..exceptions import DeliveryError
from .notifiers import send

if t.TYPE_CHECKING:
    from .manager import Incidents

__all__ = ["Outbox"]

BASE_DELAY = 30.0
MAX_DELAY = 3600.0
MAX_ATTEMPTS = 8
#: How long a claim lasts unless renewed; a delivery renews it every third of that while
#: it runs. A worker killed mid-delivery holds one message this long.
CLAIM_SECONDS = 10.0


class Outbox:
    """Delivers pending messages of :class:`~querywatch.incidents.Incidents`' store."""

    def __init__(
        self,
        incidents: Incidents,
        *,
        worker: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        claim_seconds: float = CLAIM_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.incidents = incidents
        self.store = incidents.store
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.max_attempts = max_attempts
        #: How long a claimed message is this worker's before another may send it.
        self.claim_seconds = claim_seconds
        self.rng = rng or random.Random()

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: full jitter over an exponential cap."""
        cap = min(MAX_DELAY, BASE_DELAY * 2 ** max(attempts - 1, 0)) * self.incidents.scale
        return self.rng.uniform(cap / 2, cap)

    def _claim(self, message_id: int, now: float) -> t.Any:
        """The message, claimed by this worker until ``now + claim_seconds``; None when
        another worker holds it or it is no longer pending."""
        return self.store.claim_message(message_id, self.worker, now, now + self.claim_seconds)

    @contextlib.contextmanager
    def _renewing(self, message_id: int, now: float) -> Iterator[None]:
        """Renew this worker's claim on the message every third of ``claim_seconds``
        while the block runs (a slow SMTP server), so no other worker sends it too."""
        done = threading.Event()
        started = time.monotonic()

        def renew() -> None:
            while not done.wait(self.claim_seconds / 3):
                until = now + (time.monotonic() - started) + self.claim_seconds
                try:
                    self.store.renew_claim(message_id, self.worker, until)
                except Exception as e:  # the store is down: the claim may lapse
                    log_limited(
                        "outbox.renew",
                        "querywatch could not renew its claim on a notification (%s): another"
                        " worker may send it again, with the same idempotency key.",
                        type(e).__name__,
                    )

        thread = threading.Thread(target=renew, name="querywatch-outbox-claim", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def run_once(self, now: float | None = None, *, limit: int = 50) -> int:
        """Deliver what is due, claiming each message just before it is sent; returns
        how many messages were sent."""
        self.store.migrate()
        start = time.time() if now is None else now
        sent = 0
        # One incident's messages to one target go in the order they were written: once
        # one of them is not sent in this run, the later ones wait for it.
        stuck: set[tuple[int, str]] = set()
        for message_id, incident_id, target_name in self.store.due_messages(start, limit):
            if (incident_id, target_name) in stuck:
                continue
            at = time.time() if now is None else now
            row = self._claim(message_id, at)
            if row is None:
                stuck.add((incident_id, target_name))
                continue
            target = self.incidents.policy.targets.get(row.target)
            message = json.loads(row.message)
            try:
                with self._renewing(row.id, at):
                    if target is None:
                        msg = f"target {row.target!r} is no longer in the escalation policy"
                        raise DeliveryError(msg)
                    send(target, message)
            except Exception as e:
                self._failed(row, e, time.time() if now is None else now)
                if row.attempts + 1 < self.max_attempts:
                    stuck.add((incident_id, target_name))
                continue
            self._sent(row, time.time())
            sent += 1
        return sent

    def _sent(self, row: t.Any, at: float) -> None:
        with self.store.incident_tx() as tx:
            if tx.mark_sent(row.id, self.worker, at, row.attempts + 1):
                self.incidents._event(
                    tx,
                    row.incident_id,
                    "notification_sent",
                    "querywatch",
                    f"Sent to {row.target} ({row.kind}).",
                    at,
                    {"target": row.target, "idempotency_key": row.idempotency_key},
                )

    def _failed(self, row: t.Any, error: BaseException, now: float) -> None:
        attempts = row.attempts + 1
        text = str(error) or type(error).__name__
        with self.store.incident_tx() as tx:
            if attempts >= self.max_attempts:
                tx.mark_dead(row.id, attempts, text)
                self.incidents._event(
                    tx,
                    row.incident_id,
                    "notification_failed",
                    "querywatch",
                    f"Gave up on {row.target} after {attempts} attempts: {text}",
                    now,
                    {"target": row.target, "idempotency_key": row.idempotency_key, "dead": True},
                )
            else:
                tx.retry_at(row.id, attempts, text, now + self.backoff(attempts))
                if attempts == 1:
                    self.incidents._event(
                        tx,
                        row.incident_id,
                        "notification_failed",
                        "querywatch",
                        f"{row.target} failed ({text}); retrying.",
                        now,
                        {"target": row.target, "idempotency_key": row.idempotency_key},
                    )

    def pending(self) -> int:
        return self.store.pending_messages()
