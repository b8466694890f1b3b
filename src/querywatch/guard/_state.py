"""The containments in force, as the store holds them: what the lease holder writes,
every process reads, and a person lifts or pins (``querywatch guard``)."""

from __future__ import annotations

import dataclasses
import json
import typing as t

from ._containment import Containment
from ._containment import dumps
from ._containment import loads

if t.TYPE_CHECKING:
    from ..store import Store

#: ``qw_meta`` keys: the containments in force, and the alerts whose containment was
#: lifted, by a person or by itself (not engaged again while they keep firing).
STATE_KEY = "guard.containment"
LIFTED_KEY = "guard.lifted"
#: When each endpoint's containment last lifted itself (the round's time): evidence
#: gathered over a window that began before then says nothing of the endpoint since, and
#: engages nothing.
LIFTED_AT_KEY = "guard.lifted_at"
#: Lifted alerts remembered (the oldest are forgotten first).
MAX_LIFTED = 1_000


def read(store: Store) -> dict[str, Containment]:
    return loads(store.meta_value(STATE_KEY))


def write(store: Store, state: t.Mapping[str, Containment]) -> None:
    store.set_meta(STATE_KEY, dumps(state))


def lifted(store: Store) -> dict[str, float]:
    """The alerts whose containment was lifted, with when each began firing."""
    text = store.meta_value(LIFTED_KEY)
    return {k: float(v) for k, v in json.loads(text).items()} if text else {}


def remember_lifted(store: Store, alert: str, alert_since: float) -> None:
    """``alert``, firing since ``alert_since``, had its containment lifted: it does not
    engage it again while it keeps firing (its evidence still holds the bad requests of
    before the fix)."""
    done = lifted(store)
    done[alert] = alert_since
    while len(done) > MAX_LIFTED:
        del done[next(iter(done))]
    store.set_meta(LIFTED_KEY, json.dumps(done, sort_keys=True))


def lifted_at(store: Store) -> dict[str, float]:
    """When each endpoint's containment last lifted itself."""
    text = store.meta_value(LIFTED_AT_KEY)
    return {k: float(v) for k, v in json.loads(text).items()} if text else {}


def remember_lift(store: Store, endpoint: str, at: float) -> None:
    done = lifted_at(store)
    done.pop(endpoint, None)
    done[endpoint] = at
    while len(done) > MAX_LIFTED:
        del done[next(iter(done))]
    store.set_meta(LIFTED_AT_KEY, json.dumps(done))


def lift(store: Store, endpoint: str, alert_since: float | None) -> Containment:
    """Lift the containment of ``endpoint`` by hand; its alert does not engage it again
    while it keeps firing. Raises KeyError when the endpoint is not contained."""
    state = read(store)
    c = state.pop(endpoint)
    write(store, state)
    if alert_since is not None:
        remember_lifted(store, c.alert, alert_since)
    return c


def pin(store: Store, endpoint: str, limit: int | None, now: float) -> Containment:
    """Keep ``endpoint`` under its limit (``limit`` to set it, at least 1), whatever the
    query's latency and the alert do, until lifted by hand. Without ``limit`` the
    endpoint must be contained already (KeyError)."""
    state = read(store)
    c = state.get(endpoint)
    if c is None:
        if limit is None:
            raise KeyError(endpoint)
        c = Containment(endpoint, "enforce", max(1, limit), "", None, None, None, now, now)
    c = dataclasses.replace(
        c,
        pinned=True,
        limit=max(1, limit) if limit is not None else c.limit,
        mode="enforce" if limit is not None else c.mode,
        updated=now,
    )
    state[endpoint] = c
    write(store, state)
    return c
