"""Bulkheads: at most so many of one endpoint's requests at once, so a slow endpoint
cannot take every worker thread and every pooled connection of the app.

A request past the limit waits for a permit up to the endpoint's ``max_wait_ms``, then is
shed: answered ``503 Service Unavailable`` with ``Retry-After``, in JSON or HTML as its
``Accept`` prefers, before the view runs. The permit is held from the start of the
request to its end (Flask's teardown), so it bounds the connections the endpoint holds
and the statements it runs at once.
"""

from __future__ import annotations

import collections
import threading
from time import monotonic

#: Seconds a shed request is told to wait before it retries (``Retry-After``).
RETRY_AFTER = 1
#: A request from a client shed on the same endpoint this many seconds before or less is
#: taken for that client's retry (urllib3's ``Retry`` tries three times more, each after
#: the ``Retry-After``).
RETRY_WINDOW = 4 * RETRY_AFTER + 1
#: Clients remembered per bulkhead for that (the most recently shed).
MAX_SHED_CLIENTS = 10_000
#: The limit of a bulkhead that only counts (containment in shadow mode).
UNLIMITED = 2**31


class Bulkhead:
    """One endpoint's limit, and what it counted. The limit may change while requests
    are in flight: one over a lowered limit finishes, and no other is admitted until the
    count is under it."""

    def __init__(self, route: str, limit: int, max_wait_ms: int) -> None:
        self.route = route
        self.limit = max(1, limit)
        self.wait = max_wait_ms / 1000.0
        self._cond = threading.Condition(threading.Lock())
        #: Requests holding a permit now.
        self.in_flight = 0
        #: Requests that asked for a permit.
        self.arrived = 0
        #: Requests that found the endpoint at its limit and waited for a permit.
        self.waited = 0
        #: Requests answered 503: no permit within the wait.
        self.shed = 0
        #: Containment in shadow mode: the limit it would set, and the requests it would
        #: have shed (admitted all the same).
        self.shadow_limit: int | None = None
        self.would_shed = 0
        #: Requests taken for a retry of a shed one (their client was shed here within
        #: :data:`RETRY_WINDOW`), and those of them shed again: the shed share of the
        #: endpoint's requests leaves them out, or clients that retry would count one
        #: request turned away as up to four.
        self.retried = 0
        self.shed_retried = 0
        self._shed_clients: collections.OrderedDict[str, float] = collections.OrderedDict()

    def enter(self, client: str | None = None) -> bool:
        """Take a permit, waiting for one up to the endpoint's wait; False: shed.
        ``client`` names who asks (the app's user), so that a retry of a shed request
        is told from a new one; None: not known."""
        with self._cond:
            self.arrived += 1
            retry = False
            if client is not None:
                last = self._shed_clients.get(client)
                if last is not None and monotonic() - last <= RETRY_WINDOW:
                    retry = True
                    self.retried += 1
            if self.shadow_limit is not None and self.in_flight >= self.shadow_limit:
                self.would_shed += 1
            if self.in_flight < self.limit:
                self.in_flight += 1
                return True
            self.waited += 1
            deadline = monotonic() + self.wait
            while self.in_flight >= self.limit:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    self.shed += 1
                    if retry:
                        self.shed_retried += 1
                    if client is not None:
                        self._remember(client)
                    return False
                self._cond.wait(remaining)
            self.in_flight += 1
            return True

    def _remember(self, client: str) -> None:
        shed = self._shed_clients
        shed[client] = monotonic()
        shed.move_to_end(client)
        while len(shed) > MAX_SHED_CLIENTS:
            shed.popitem(last=False)

    def leave(self) -> None:
        """Give the permit back (once per :meth:`enter` that returned True)."""
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()

    def set_limit(self, limit: int, *, shadow: int | None = None) -> None:
        """Change the limit (never below 1) and the shadow one; waiting requests see a
        raised limit at once."""
        with self._cond:
            self.limit = max(1, int(limit))
            self.shadow_limit = None if shadow is None else max(1, int(shadow))
            self._cond.notify_all()


def shed_response(bulkhead: Bulkhead) -> object:
    """The 503 a shed request gets, in the format its ``Accept`` prefers."""
    from flask import Response
    from flask import jsonify
    from flask import request
    from markupsafe import escape

    message = (
        f"{bulkhead.route} is at its limit of {bulkhead.limit} request"
        f"{'s' if bulkhead.limit != 1 else ''} at once; retry in {RETRY_AFTER} s."
    )
    best = request.accept_mimetypes.best_match(
        ["application/json", "text/html"], default="application/json"
    )
    if best == "text/html":
        response = Response(
            "<!doctype html>\n<title>503 Service Unavailable</title>\n"
            f"<h1>Service Unavailable</h1>\n<p>{escape(message)}</p>\n",
            status=503,
            mimetype="text/html",
        )
    else:
        response = jsonify(error="overloaded", message=message, retry_after=RETRY_AFTER)
        response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response
