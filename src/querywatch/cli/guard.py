"""``querywatch guard status|lift|pin`` (also under ``flask querywatch``): see, lift or
pin the guard's containments, which every process of the app applies from the store."""

from __future__ import annotations

import json
import time
import typing as t

import click

__all__ = ["guard_group"]

_STORE = click.option("--store", "store_url", metavar="URL", help="Store database URL.")


def _store(store_url: str | None) -> t.Any:
    from ._common import _open_store

    return _open_store(store_url)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _describe(c: t.Any) -> str:
    how = "pinned" if c.pinned else f"alert {c.alert}"
    query = ""
    if c.latency_ms is not None and c.baseline_ms is not None:
        query = f"; its query {c.latency_ms:.0f} ms (calm: {c.baseline_ms:.0f} ms)"
    return (
        f"{c.endpoint}: {c.mode}, at most {c.limit} at once since {_when(c.since)} ({how}){query}"
    )


@click.group("guard")
def guard_group() -> None:
    """The guard's containments: status, lift, pin."""


@guard_group.command("status")
@_STORE
@click.option("--json", "as_json", is_flag=True)
def status_command(store_url: str | None, as_json: bool) -> None:
    """The endpoints under a containment limit, as every process applies them."""
    from ..guard._state import read

    state = read(_store(store_url))
    if as_json:
        click.echo(json.dumps({k: c.to_json() for k, c in sorted(state.items())}, indent=2))
        return
    if not state:
        click.echo("No endpoint is contained.")
        return
    for c in sorted(state.values(), key=lambda c: c.endpoint):
        click.echo(_describe(c))


@guard_group.command("lift")
@click.argument("endpoint")
@_STORE
def lift_command(endpoint: str, store_url: str | None) -> None:
    """Lift ENDPOINT's containment now ("GET /api/orders/lookup"); the alert that engaged
    it does not engage it again while it keeps firing."""
    from ..guard._state import lift
    from ..guard._state import read

    store = _store(store_url)
    c = read(store).get(endpoint)
    if c is None:
        raise click.ClickException(_not_contained(endpoint))
    alert = store.alert_states().get(c.alert)
    since = alert.since if alert is not None and alert.state == "firing" else None
    lift(store, endpoint, since)
    click.echo(
        f"Lifted the guard on {endpoint}: every process lets its requests in again within"
        " one alert interval."
    )


@guard_group.command("pin")
@click.argument("endpoint")
@click.option("--limit", type=click.IntRange(min=1), help="Requests at once (at least 1).")
@_STORE
def pin_command(endpoint: str, limit: int | None, store_url: str | None) -> None:
    """Keep ENDPOINT under its limit (or --limit) until lifted by hand, whatever its
    query's latency and its alert do. With --limit, an endpoint not contained is put
    under that limit, enforced."""
    from ..guard._state import pin

    try:
        c = pin(_store(store_url), endpoint, limit, time.time())
    except KeyError:
        raise click.ClickException(
            _not_contained(endpoint) + " Give --limit to put it under one."
        ) from None
    click.echo(f"Pinned: {_describe(c)}.")


def _not_contained(endpoint: str) -> str:
    return f"{endpoint} is not contained; 'querywatch guard status' lists what is."
