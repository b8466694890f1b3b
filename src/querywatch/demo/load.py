"""The demo's traffic: a separate process sending requests to the shop over HTTP.

The load is open loop: requests leave at a flat rate whether or not the server keeps up,
as real users do not wait for each other. ``calm`` is the shop's everyday mix; after
``incident`` on standard input, the support team's order lookup takes
:data:`LOOKUP_SHARE` of the requests and the total rate stays the same. Each answer is a
JSON line on standard output: ``[unix time sent, phase, route, status, seconds, user]``
(status 0 when the request timed out or could not connect).

Each request is one of the shop's customers' (the ``X-User`` header, which the shop names
its users by): a random one of :data:`ACTIVE_USERS` for the everyday requests, and for a
lookup the customer whose ticket it serves. ``stop`` or the end of
standard input ends it; Ctrl-C is the parent's to handle (the parent stops this process).

With ``--retries N`` the clients retry as the recipe most Python services copy does
(requests with urllib3's ``Retry(total=3, backoff_factor=0.3, status_forcelist=(500, 502,
503, 504))``, N=3): a GET that failed or timed out is sent again at once, then after
0.6 s, 1.2 s..., and after a 503's ``Retry-After`` when it has one; a POST is never
retried. A request's line is its last answer and the time from its first try.

Run by :mod:`querywatch.demo.runner` as ``python -m querywatch.demo.load PORT ...``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import sys
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

__all__ = ["CALM_MIX", "LOOKUP_ROUTE", "LOOKUP_SHARE", "main"]

#: (weight, method, path template, route) before the onset: the shop's everyday traffic.
CALM_MIX: tuple[tuple[float, str, str, str], ...] = (
    (0.35, "GET", "/api/products?category={category}", "GET /api/products"),
    (0.25, "GET", "/api/products/{product}", "GET /api/products/<int:product_id>"),
    (
        0.20,
        "GET",
        "/api/customers/{customer}/orders",
        "GET /api/customers/<int:customer_id>/orders",
    ),
    (0.10, "GET", "/api/orders/recent", "GET /api/orders/recent"),
    (0.05, "GET", "/api/admin/overview", "GET /api/admin/overview"),
    (0.05, "POST", "/api/orders", "POST /api/orders"),
)
LOOKUP_ROUTE = "GET /api/orders/lookup"
#: Share of requests the support team's order lookup takes from the onset on.
LOOKUP_SHARE = 0.30
#: The customers with open support tickets: the lookup's emails.
TICKETS = 60
#: The customers using the shop this hour (the ticket holders among them).
ACTIVE_USERS = 500
#: Requests in flight at most; past it a request counts as failed (the client's pool is
#: full), so a stalled server cannot make this process grow without bound.
MAX_IN_FLIGHT = 64
#: The clients' retries of a failed GET by default (``--retries`` sets how many; the
#: recipe's are 3), the statuses retried (0: timed out or refused) and the backoff factor
#: (urllib3's: the first retry at once, then 0.6 s, 1.2 s...).
RETRIES = 0
RETRY_STATUSES = frozenset((0, 500, 502, 503, 504))
BACKOFF = 0.3
#: The longest ``Retry-After`` a client waits.
MAX_RETRY_AFTER = 5.0
CATEGORIES = ("books", "garden", "kitchen", "toys", "tools", "sports", "music", "games")


def incident_mix(
    calm: t.Sequence[tuple[float, str, str, str]] = CALM_MIX,
) -> tuple[tuple[float, str, str, str], ...]:
    """The calm mix scaled down to make room for the lookup's share."""
    lookup = (LOOKUP_SHARE, "GET", "/api/orders/lookup?email={email}", LOOKUP_ROUTE)
    return tuple((w * (1 - LOOKUP_SHARE), m, p, r) for w, m, p, r in calm) + (lookup,)


def _pick(rng: random.Random, mix: t.Sequence[tuple[float, str, str, str]]) -> tuple[str, str, str]:
    r = rng.random() * sum(row[0] for row in mix)
    for w, method, path, route in mix:
        r -= w
        if r <= 0:
            return method, path, route
    return mix[-1][1], mix[-1][2], mix[-1][3]


def _request(
    port: int,
    method: str,
    path: str,
    body: dict[str, t.Any] | None,
    timeout: float,
    user: str,
) -> tuple[int, float]:
    """One try: (status, the seconds its ``Retry-After`` asks to wait, 0 without one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"X-User": user}
        if payload:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        resp.read()
        try:
            wait = float(resp.getheader("Retry-After") or 0)
        except ValueError:
            wait = 0.0  # an HTTP date: the shop never sends one
        return resp.status, wait
    except (TimeoutError, OSError, http.client.HTTPException):
        return 0, 0.0  # timed out, refused or cut off: what a user sees as an error
    finally:
        conn.close()


class Load:
    def __init__(
        self,
        port: int,
        *,
        rate: float,
        customers: int,
        products: int,
        timeout: float,
        retries: int = RETRIES,
        seed: int = 7,
        out: t.TextIO = sys.stdout,
    ) -> None:
        self.port = port
        self.rate = rate
        self.customers = customers
        self.products = products
        self.timeout = timeout
        self.retries = retries
        self.rng = random.Random(seed)
        self.tickets = [self.rng.randint(1, customers) for _ in range(TICKETS)]
        others = [self.rng.randint(1, customers) for _ in range(ACTIVE_USERS - TICKETS)]
        self.users = [*self.tickets, *others]
        self.phase = "calm"
        self.stopped = threading.Event()
        self.out = out
        self.out_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def _emit(self, row: list[t.Any]) -> None:
        with self.out_lock:
            try:
                self.out.write(json.dumps(row) + "\n")
                self.out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.stopped.set()  # the parent is gone

    def commands(self, stream: t.TextIO) -> None:
        for line in stream:
            word = line.strip()
            if word in ("calm", "incident"):
                self.phase = word
            elif word == "stop":
                break
        self.stopped.set()

    def run(self) -> None:
        start = time.perf_counter()
        interval = 1.0 / self.rate
        mixes = {"calm": CALM_MIX, "incident": incident_mix()}
        with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="load") as pool:
            n = 0
            while not self.stopped.is_set():
                due = start + n * interval
                now = time.perf_counter()
                if due > now:
                    self.stopped.wait(due - now)
                    continue
                n += 1
                phase = self.phase
                method, template, route = _pick(self.rng, mixes[phase])
                ticket = self.rng.choice(self.tickets)
                path = template.format(
                    category=self.rng.choice(CATEGORIES),
                    product=self.rng.randint(1, self.products),
                    customer=self.rng.randint(1, self.customers),
                    email=f"customer{ticket}@example.com",
                )
                # The lookup serves the ticket's customer; the rest, whoever browses.
                who = ticket if route == LOOKUP_ROUTE else self.rng.choice(self.users)
                user = f"customer{who}"
                body = None
                if method == "POST":
                    body = {
                        "customer_id": self.rng.randint(1, self.customers),
                        "items": [{"product_id": self.rng.randint(1, self.products)}],
                    }
                if not self.slots.acquire(blocking=False):
                    self._emit([round(time.time(), 4), phase, route, 0, 0.0, user])
                    continue
                pool.submit(self._one, phase, method, path, route, body, user)

    def _one(
        self,
        phase: str,
        method: str,
        path: str,
        route: str,
        body: dict[str, t.Any] | None,
        user: str,
    ) -> None:
        try:
            sent = time.time()
            t0 = time.perf_counter()
            status = self._tries(method, path, body, user)
            took = time.perf_counter() - t0
            self._emit([round(sent, 4), phase, route, status, round(took, 6), user])
        finally:
            self.slots.release()

    def _tries(self, method: str, path: str, body: dict[str, t.Any] | None, user: str) -> int:
        """A request and its retries; the last answer's status."""
        tries = 0
        while True:
            status, wait = _request(self.port, method, path, body, self.timeout, user)
            if (
                method != "GET"
                or status not in RETRY_STATUSES
                or tries >= self.retries
                or self.stopped.is_set()
            ):
                return status
            tries += 1
            # Retry-After when the answer has one, else urllib3's backoff (none before the
            # first retry).
            pause = min(wait, MAX_RETRY_AFTER) if wait else BACKOFF * 2 ** (tries - 1)
            if tries > 1 or wait:
                self.stopped.wait(pause)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m querywatch.demo.load")
    parser.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--products", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--retries", type=int, default=RETRIES)
    args = parser.parse_args(argv)
    # The parent stops this process (stdin closed or "stop"); Ctrl-C reaches the whole
    # process group, and the parent decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    load = Load(
        args.port,
        rate=args.rate,
        customers=args.customers,
        products=args.products,
        timeout=args.timeout,
        retries=args.retries,
    )
    threading.Thread(target=load.commands, args=(sys.stdin,), daemon=True).start()
    load.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
