"""``querywatch demo``: the seed outage replayed on the shop app, from the first slow
request to the postmortem.

The shop is served on 127.0.0.1 by a real threaded WSGI server with querywatch on; a
separate process (:mod:`querywatch.demo.load`) sends it requests over HTTP at a flat
rate. The replay's clock runs ``speed`` times faster than the real one for everything
that reads time in hours (alert windows, escalation delays): at the default 120, an hour
passes in 30 s. The conductor below plays the people: at "14:00" the order lookup takes
its share of the traffic; querywatch's alert fires and opens an incident; the backend
team's webhook hears it, nobody acknowledges, devops hears it; the demo acknowledges,
reads the evidence, has the advisor verify the index, runs the CI gate, applies the fix
(an index, or the cache), and waits for querywatch to see the recovery, resolve the
alert and the incident. The postmortem is drafted from the incident's timeline.

Every figure printed is measured during the run: by the load process (what users saw)
or by querywatch (the store).
"""

from __future__ import annotations

import json
import time
import typing as t

from rich.console import Console

from .._console import make_console
from ..exceptions import CalmPaged
from ..exceptions import DemoError
from .options import CALM_RESTART_SLOWDOWN
from .options import CALM_RESTARTS
from .options import FIXES
from .options import DemoOptions
from .replay import Replay
from .summary import print_summary

if t.TYPE_CHECKING:
    pass

__all__ = ["FIXES", "DemoOptions", "run_demo"]


def run_demo(
    options: DemoOptions | None = None,
    *,
    keep_serving: bool = False,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Replay the outage; the exit code: 0 when the loop closed (alert fired, root cause
    named, fix verified, recovery measured), 1 when it did not, 130 on Ctrl-C."""
    options = options or DemoOptions()
    # Progress goes to the console (stderr with --json, nothing with --quiet); the
    # summary, the reason a replay stopped and Ctrl-C's message always reach ``out``.
    out = console or make_console(stderr=as_json)
    console = console or make_console(stderr=as_json, quiet=options.quiet)
    replay = Replay(options, console=console)
    summary: dict[str, t.Any] | None = None
    try:
        replay.setup()
        try:
            for restart in range(CALM_RESTARTS + 1):
                try:
                    summary = replay.run()
                    break
                except CalmPaged as e:
                    if restart == CALM_RESTARTS:
                        raise
                    # Compressed, a second's stall of a busy machine (another program
                    # starting) is minutes of a slow shop, and the windows are short in
                    # the calm's first seconds: up to twice, the replay starts over on the
                    # seeded database, with the machine measured again and taken to be
                    # slower than the run that paged took it to be.
                    console.print(
                        f"[yellow]The calm paged: {e.args[0].split(': the shop')[0]}."
                        " Starting the replay over.[/yellow]",
                        highlight=False,
                    )
                    replay.close()
                    replay = Replay(
                        options,
                        console=console,
                        slowdown_floor=replay.slowdown * CALM_RESTART_SLOWDOWN,
                    )
                    replay.restarts = restart + 1
                    replay.setup()
        except DemoError as e:
            out.print(f"[bold red]The replay stopped:[/bold red] {e}")
        except Exception as e:  # the replay stops, and says why; the rest is closed below
            out.print(
                f"[bold red]The replay stopped:[/bold red] {type(e).__name__}: {e}"
                f" (querywatch's log: {replay.log_path})",
                highlight=False,
            )
        if summary is not None:
            if as_json:
                print(json.dumps(summary, indent=2, default=str))
            else:
                print_summary(summary, out)
        if keep_serving and replay.server is not None:
            console.print(
                f"Still serving on http://127.0.0.1:{replay.port}, dashboard"
                f" {replay.dashboard}; press Ctrl+C to stop.",
                highlight=False,
                soft_wrap=True,
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    except KeyboardInterrupt:
        out.print("\nInterrupted: stopping the load, the server and querywatch.")
        replay.close()
        return 130
    finally:
        replay.close()
    return 0 if summary is not None and summary["loop_closed"] else 1
