"""``querywatch demo``: the demo's command, which the ``querywatch`` group finds through
the ``querywatch.commands`` entry point (the library never imports the demo)."""

from __future__ import annotations

import sys
import typing as t

import click

from .._config import missing_driver
from .._config import normalize_url
from ..exceptions import QueryWatchError
from .options import FIXES
from .options import GUARD_MODES
from .options import DemoOptions

__all__ = ["demo"]


@click.command()
@click.option(
    "--scale",
    default=DemoOptions.scale,
    show_default=True,
    type=click.FloatRange(0.001, 100),
    help="Data size; 1.0 is 200,000 orders.",
)
@click.option(
    "--speed",
    default=DemoOptions.speed,
    show_default=True,
    type=click.FloatRange(1, 100_000),
    help="Time compression of the replay's clock: 120 plays an hour in 30 s.",
)
@click.option(
    "--rate",
    default=None,
    type=click.FloatRange(1, 2000),
    help="Requests per second, held flat the whole run  [default: 40, lighter on a busy machine]",
)
@click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="Shop database, such as postgresql+psycopg://127.0.0.1/test"
    " (default: SQLite in the work folder's instance/).",
)
@click.option(
    "--fix",
    type=click.Choice(FIXES),
    default=DemoOptions.fix,
    show_default=True,
    help="What the responder applies: the verified index, the cache, or nothing.",
)
@click.option(
    "--guard",
    type=click.Choice(GUARD_MODES),
    default=DemoOptions.guard,
    show_default=True,
    help="The shop's guard when the page fires: limit the culprit endpoint (enforce), only"
    " count what it would shed (shadow), or run without a guard (off, the outage as it was).",
)
@click.option(
    "--retries",
    default=DemoOptions.retries,
    show_default=True,
    type=click.IntRange(0, 10),
    help="How many times the shop's clients retry a failed GET, as urllib3's Retry does"
    " (at once, then backing off; a 503's Retry-After waited). 3 is the common recipe's.",
)
@click.option(
    "--workdir",
    default=DemoOptions.workdir,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the demo's files (database, store, postmortem.md).",
)
@click.option(
    "--advise-timeout",
    default=DemoOptions.advise_timeout,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds any one statement of the responder's index check may take (the build of"
    " the candidate index on the big table among them).",
)
@click.option("--keep-serving", is_flag=True, help="Keep the shop and dashboard up afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress; only the summary.")
def demo(keep_serving: bool, as_json: bool, **options: t.Any) -> None:
    """Replay the outage on the reference shop app: alert, incident, escalation,
    evidence, fix, recovery and postmortem.

    Exit status: 0 when the loop closed (the alert fired, the root cause was named, the
    fix was verified and the recovery measured), 1 when it did not, 130 on Ctrl-C.
    """
    from .runner import run_demo

    database_url = options["database_url"]
    if database_url:
        options["database_url"] = normalize_url(database_url)
        missing = missing_driver(options["database_url"])
        if missing is not None:
            raise click.BadParameter(missing, param_hint="'--database-url'")
    try:
        code = run_demo(DemoOptions(**options), keep_serving=keep_serving, as_json=as_json)
    except QueryWatchError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)
