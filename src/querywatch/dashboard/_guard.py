"""The guard on the dashboard: the containments in force (the alerts page), and lifting
or pinning one (``POST api/guard/lift|pin``, token and CSRF as every action)."""

from __future__ import annotations

import time
import typing as t

if t.TYPE_CHECKING:
    from ..extension._state import AppState
    from ..store import Store

#: What a person can do to a containment from the dashboard.
ACTIONS = ("lift", "pin")


def rows(store: Store) -> list[dict[str, t.Any]]:
    from ..guard._state import read

    return [c.to_json() for c in sorted(read(store).values(), key=lambda c: c.endpoint)]


def act(state: AppState, action: str, body: t.Any) -> tuple[int, dict[str, t.Any]]:
    """Lift or pin the containment ``body["endpoint"]`` names (``body["limit"]`` to pin
    at a limit). Returns the status and the JSON answer."""
    from ..guard._state import lift
    from ..guard._state import pin
    from ..guard._state import read

    if state.guard is None:
        return 404, {"error": "No guard is configured (QUERYWATCH_GUARD)."}
    if action not in ACTIONS:
        return 404, {"error": f"No action {action!r}; the actions are {', '.join(ACTIONS)}."}
    if not isinstance(body, dict) or not isinstance(body.get("endpoint"), str):
        return 400, {
            "error": 'Send a JSON object naming the endpoint: {"endpoint": "GET /api/orders"}'
            ' (and "limit" to pin at one).'
        }
    endpoint = body["endpoint"]
    limit = body.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        return 400, {
            "error": f"'limit' is a whole number of requests of at least 1, got {limit!r}."
        }
    store = state.store
    try:
        if action == "lift":
            c = read(store).get(endpoint)
            if c is None:
                return 409, {"error": f"{endpoint} is not contained."}
            alert = store.alert_states().get(c.alert)
            lift(
                store,
                endpoint,
                alert.since if alert is not None and alert.state == "firing" else None,
            )
        else:
            try:
                pin(store, endpoint, limit, time.time())
            except KeyError:
                return 409, {"error": f"{endpoint} is not contained; give a 'limit' to pin one."}
    except Exception as e:
        from .._failopen import record_internal_error

        record_internal_error("dashboard.guard", e)
        return 503, {"error": f"The guard could not be changed: {type(e).__name__}."}
    return 200, {"guard": rows(store)}
