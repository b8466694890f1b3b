"""The ``querywatch`` command, also available as ``flask querywatch``."""

from __future__ import annotations

import json
import os
import sys
import typing as t

import click

from .exceptions import QueryWatchError

if t.TYPE_CHECKING:
    from .store import Store

__all__ = ["cli", "main"]


def _app_store_url() -> str | None:
    """The store URL of the Flask app, when run as ``flask querywatch``."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    try:
        from flask.cli import ScriptInfo
    except ImportError:  # pragma: no cover - flask is a dependency
        return None
    info = ctx.find_object(ScriptInfo)
    if info is None:
        return None
    try:
        app = info.load_app()
    except Exception:
        return None
    state = app.extensions.get("querywatch")
    return state.settings.store_url if state is not None else None


def _open_store(url: str | None) -> Store:
    from .store import Store

    url = url or os.environ.get("QUERYWATCH_STORE_URL") or _app_store_url()
    if not url:
        msg = (
            "No store to read. Pass '--store URL' (for example"
            " 'sqlite:///instance/querywatch.db'), set QUERYWATCH_STORE_URL, or run"
            " 'flask querywatch report' inside your app."
        )
        raise click.UsageError(msg)
    try:
        store = Store(url)
        store.migrate()
    except QueryWatchError as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:
        msg = f"Could not read the store at {url!r}: {type(e).__name__}: {e}"
        raise click.ClickException(msg) from None
    return store


@click.group(help="querywatch: which query in which endpoint costs the database its time.")
def cli() -> None:
    pass


@cli.command()
@click.option("--store", "store_url", metavar="URL", help="Store database URL.")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="Window start: a duration (30m, 1h, 2d) before now, or an ISO time.",
)
@click.option("--endpoint", default=None, help="Only this endpoint, e.g. 'GET /orders'.")
@click.option(
    "--limit", default=10, show_default=True, type=click.IntRange(1, 1000), help="Rows per section."
)
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON schema instead.")
def report(
    store_url: str | None, since: str, endpoint: str | None, limit: int, as_json: bool
) -> None:
    """Top query shapes and endpoints by total time, and the findings."""
    from .report import build_report
    from .report import parse_since
    from .report import render_report

    try:
        start = parse_since(since)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--since'") from None
    store = _open_store(store_url)
    try:
        data = build_report(store, since=start, endpoint=endpoint, limit=limit)
    finally:
        store.dispose()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        render_report(data)


@cli.command()
@click.option(
    "--scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.001, 100),
    help="Data size; 1.0 is about 200,000 orders.",
)
@click.option(
    "--duration",
    default=40.0,
    show_default=True,
    type=click.FloatRange(5, 3600),
    help="Seconds of traffic to replay.",
)
@click.option(
    "--rate",
    default=40.0,
    show_default=True,
    type=click.FloatRange(1, 2000),
    help="Requests per second, held flat the whole run.",
)
@click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="Shop database (default: SQLite in ./querywatch-demo/).",
)
@click.option(
    "--workdir",
    default="querywatch-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the demo's files.",
)
@click.option("--keep-serving", is_flag=True, help="Keep the shop app running afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON at the end.")
def demo(
    scale: float,
    duration: float,
    rate: float,
    database_url: str | None,
    workdir: str,
    keep_serving: bool,
    as_json: bool,
) -> None:
    """Replay the outage on the reference shop app and show the culprit."""
    from .demo.runner import run_demo

    try:
        code = run_demo(
            scale=scale,
            duration=duration,
            rate=rate,
            database_url=database_url,
            workdir=workdir,
            keep_serving=keep_serving,
            as_json=as_json,
        )
    except QueryWatchError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


def main() -> None:
    """Entry point of the ``querywatch`` script."""
    cli(prog_name="querywatch")
