"""``querywatch incidents ...``, ``querywatch worker``, ``querywatch mark-deploy`` and
``querywatch postmortem`` (also under ``flask querywatch``)."""

from __future__ import annotations

import getpass
import json
import time
import typing as t

import click

if t.TYPE_CHECKING:
    from ..incidents.manager import Incidents
    from ..incidents.policy import Policy

__all__ = ["register"]

_STORE = click.option("--store", "store_url", metavar="URL", help="Store database URL.")
#: The longest wait of ``querywatch worker`` between two attempts on a failing store.
WORKER_MAX_BACKOFF = 60.0

_ESCALATION = click.option(
    "--escalation",
    metavar="FILE",
    help="The escalation policy (TOML). Default: the Flask app's QUERYWATCH_ESCALATION.",
)
_ACTOR = click.option(
    "--as", "actor", metavar="NAME", default=None, help="Who does it (default: your login)."
)


def _policy(path: str | None) -> Policy:
    from ..exceptions import PolicyError
    from ..incidents.policy import load_policy
    from ._common import _flask_app

    if path:
        try:
            return load_policy(path)
        except PolicyError as e:
            raise click.BadParameter(str(e), param_hint="'--escalation'") from None
    app = _flask_app()
    state = app.extensions.get("querywatch") if app is not None else None
    return state.settings.escalation if state is not None else load_policy(None)


def _incidents(
    store_url: str | None,
    escalation: str | None = None,
    *,
    create: bool = False,
    connect: bool = True,
) -> Incidents:
    from ..incidents.manager import Incidents
    from ._common import _app_config
    from ._common import _open_store

    scale = _app_config("QUERYWATCH_ALERT_TIME_SCALE") or 1.0
    store = _open_store(store_url, create=create, connect=connect)
    return Incidents(store, _policy(escalation), scale=float(scale))


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:
        return "someone"


def _run(fn: t.Callable[[], t.Any]) -> t.Any:
    from ..exceptions import IncidentError

    try:
        return fn()
    except IncidentError as e:
        raise click.ClickException(str(e)) from None


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@click.group("incidents")
def incidents_group() -> None:
    """Incidents: list, show, acknowledge, resolve, note, assign, update, trigger."""


@incidents_group.command("list")
@_STORE
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
@click.option("--json", "as_json", is_flag=True)
def list_command(store_url: str | None, show_all: bool, as_json: bool) -> None:
    """The open incidents, newest first."""
    found = _incidents(store_url).recent(open_only=not show_all, limit=200)
    if as_json:
        click.echo(json.dumps([_as_dict(i) for i in found], indent=2, default=str))
        return
    if not found:
        click.echo("No open incidents." if not show_all else "No incidents.")
        return
    for i in found:
        click.echo(
            f"#{i.id}  {i.severity}  {i.status:<12} {_when(i.created_at)}  "
            f"{i.owner or '-':<10} {i.title}"
        )


def _as_dict(i: t.Any) -> dict[str, t.Any]:
    import dataclasses

    return dataclasses.asdict(i)


@incidents_group.command("show")
@click.argument("incident_id", type=int)
@_STORE
@click.option("--json", "as_json", is_flag=True)
def show_command(incident_id: int, store_url: str | None, as_json: bool) -> None:
    """An incident, its evidence and its timeline."""
    manager = _incidents(store_url)
    inc = _run(lambda: manager.get(incident_id))
    timeline = manager.timeline(incident_id)
    if as_json:
        out = _as_dict(inc)
        out["timeline"] = [_as_dict(e) for e in timeline]
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"#{inc.id} {inc.severity} {inc.status}: {inc.title}")
    click.echo(f"owner {inc.owner or '-'}, opened {_when(inc.created_at)}, key {inc.dedup_key}")
    if inc.evidence.get("hypothesis"):
        click.echo(f"evidence: {inc.evidence['hypothesis']}")
    for e in timeline:
        click.echo(f"  {_when(e.at)}  {e.kind:<20} {e.actor:<12} {e.text}")


@incidents_group.command("ack")
@click.argument("incident_id", type=int)
@_STORE
@_ACTOR
def ack_command(incident_id: int, store_url: str | None, actor: str | None) -> None:
    """Acknowledge: stops the escalation."""
    manager = _incidents(store_url)
    who = _actor(actor)
    inc = _run(lambda: manager.acknowledge(incident_id, who))
    click.echo(f"#{inc.id} acknowledged by {who}.")


@incidents_group.command("resolve")
@click.argument("incident_id", type=int)
@_STORE
@_ACTOR
@click.option("-m", "--message", default="", help="What fixed it.")
def resolve_command(
    incident_id: int, store_url: str | None, actor: str | None, message: str
) -> None:
    """Resolve: everyone notified hears it."""
    manager = _incidents(store_url)
    who = _actor(actor)
    inc = _run(lambda: manager.resolve(incident_id, who, message))
    click.echo(f"#{inc.id} resolved by {who}.")


@incidents_group.command("note")
@click.argument("incident_id", type=int)
@click.argument("text")
@_STORE
@_ACTOR
@click.option("--fix", is_flag=True, help="The note records a fix applied.")
def note_command(
    incident_id: int, text: str, store_url: str | None, actor: str | None, fix: bool
) -> None:
    """A note on the timeline (nobody is notified)."""
    manager = _incidents(store_url)
    _run(
        lambda: manager.note(
            incident_id, _actor(actor), text, kind="fix_applied" if fix else "note"
        )
    )
    click.echo(f"Noted on #{incident_id}.")


@incidents_group.command("assign")
@click.argument("incident_id", type=int)
@click.argument("owner")
@_STORE
@_ACTOR
def assign_command(incident_id: int, owner: str, store_url: str | None, actor: str | None) -> None:
    """Give the incident an owner."""
    manager = _incidents(store_url)
    _run(lambda: manager.assign(incident_id, _actor(actor), owner))
    click.echo(f"#{incident_id} assigned to {owner}.")


@incidents_group.command("update")
@click.argument("incident_id", type=int)
@click.argument("text")
@_STORE
@_ACTOR
def update_command(incident_id: int, text: str, store_url: str | None, actor: str | None) -> None:
    """A status update, sent to every target notified so far."""
    manager = _incidents(store_url)
    n = _run(lambda: manager.update(incident_id, _actor(actor), text))
    click.echo(f"Update on #{incident_id} queued for {n} target(s).")


@incidents_group.command("trigger")
@click.option("--key", required=True, help="Dedup key: one open incident per key.")
@click.option("--title", required=True)
@click.option("--summary", default="")
@click.option(
    "--severity", type=click.Choice(["page", "ticket"]), default="page", show_default=True
)
@_STORE
@_ESCALATION
@_ACTOR
def trigger_command(
    key: str,
    title: str,
    summary: str,
    severity: str,
    store_url: str | None,
    escalation: str | None,
    actor: str | None,
) -> None:
    """Open an incident by hand (or add to the open one of that key)."""
    manager = _incidents(store_url, escalation, create=True)
    inc, opened = _run(
        lambda: manager.trigger(
            key, title, summary=summary, source="cli", alert_severity=severity, actor=_actor(actor)
        )
    )
    click.echo(f"#{inc.id} {'opened' if opened else 'already open; the alert was added'}.")


@click.command("worker")
@_STORE
@_ESCALATION
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.1, 3600))
@click.option("--once", is_flag=True, help="One round, then exit.")
def worker_command(
    store_url: str | None, escalation: str | None, interval: float, once: bool
) -> None:
    """Turn alerts into incidents, escalate, remind and deliver notifications (what the
    app's own worker does, for deployments that run it apart)."""
    from .._redact import error_line
    from ..incidents.worker import IncidentWorker

    # Connected in the loop: a store that is down at start is waited for like one that
    # goes down later.
    manager = _incidents(store_url, escalation, create=True, connect=False)
    worker = IncidentWorker(manager.store, manager.policy, scale=manager.scale, interval=interval)
    failures = 0
    while True:
        try:
            result = worker.run_once()
        except Exception as e:
            # The store is down or slow: say so once a failure run, wait longer each time
            # (up to a minute), and go on; nothing is lost, the outbox is in the store.
            why = error_line(e)
            if once:
                raise click.ClickException(f"The store failed: {why}") from None
            failures += 1
            wait = min(WORKER_MAX_BACKOFF, interval * 2**failures)
            click.echo(
                f"querywatch worker: the store failed ({type(e).__name__}: {why});"
                f" retrying in {wait:g} s (failure {failures}).",
                err=True,
            )
            time.sleep(wait)
            continue
        if failures:
            click.echo(f"querywatch worker: the store answers again after {failures} failure(s).",
                       err=True)  # fmt: skip
            failures = 0
        if result is None:
            click.echo("Another process holds the incidents lease; waiting.", err=True)
        elif result["followed"] or result["ticked"] or result["sent"]:
            click.echo(
                f"{len(result['followed'])} alert change(s), {len(result['ticked'])}"
                f" escalation(s) or reminder(s), {result['sent']} message(s) sent."
            )
        if once:
            return
        time.sleep(interval)


@click.command("mark-deploy")
@click.option("--version", "version", required=True, help="What was deployed.")
@click.option("--description", default="")
@_STORE
def mark_deploy_command(version: str, description: str, store_url: str | None) -> None:
    """Record a deploy: incidents opened in the next hours cite it."""
    from ._common import _open_store

    store = _open_store(store_url, create=True)
    store.add_deploy(version, time.time(), description)
    click.echo(f"Deploy {version} recorded.")


@click.command("postmortem")
@click.argument("incident_id", type=int)
@_STORE
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True))
def postmortem_command(incident_id: int, store_url: str | None, output: str | None) -> None:
    """Draft the incident's postmortem in Markdown (the seed report's sections)."""
    from ..incidents.postmortem import render

    manager = _incidents(store_url)
    inc = _run(lambda: manager.get(incident_id))
    text = render(inc, manager.timeline(incident_id), manager.store)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"Postmortem of #{incident_id} written to {output}.")
    else:
        click.echo(text)


def register(cli: click.Group) -> None:
    for command in (incidents_group, worker_command, mark_deploy_command, postmortem_command):
        cli.add_command(command)
