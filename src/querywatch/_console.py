"""The rich console of querywatch's commands."""

from __future__ import annotations

import contextlib
import typing as t

from rich.console import Console

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterator

__all__ = ["make_console", "print_whole", "progress"]

#: The width a table is measured at when no terminal limits it.
UNBOUNDED = 10_000


def make_console(**options: t.Any) -> Console:
    """A :class:`rich.console.Console` that wraps lines to the width of a terminal only:
    piped into a file, a pager or CI's log, a line is written whole, so a figure or a
    URL is never cut in two at 80 columns."""
    console = Console(**options)
    if not console.is_terminal and "soft_wrap" not in options:
        console.soft_wrap = True
    return console


def print_whole(console: Console, renderable: t.Any) -> None:
    """Print a table: on a terminal at its width; piped, as wide as the table needs, so
    no cell wraps in the middle of its figures at 80 columns."""
    if console.is_terminal:
        console.print(renderable)
        return
    from rich.measure import Measurement

    unbounded = console.options.update_width(UNBOUNDED)
    needed = Measurement.get(console, unbounded, renderable).maximum
    width = console.width  # print(width=...) is capped at it: widen it for this table
    console.width = max(width, needed)
    try:
        console.print(renderable)
    finally:
        console.width = width


@contextlib.contextmanager
def progress(
    total: int, what: str, *, console: Console | None = None
) -> Iterator[Callable[[str], None]]:
    """A progress bar on standard error while long work runs, ``total`` steps of
    ``what``; yields the function that marks a step done (with what it was). Only on a
    terminal, as pip and git do: piped or redirected, nothing is written, and a bar of
    one step is not worth drawing. It is gone once the work is done."""
    console = console or Console(stderr=True)
    if total < 2 or not console.is_terminal:
        yield lambda item: None
        return
    from rich.progress import BarColumn
    from rich.progress import MofNCompleteColumn
    from rich.progress import Progress
    from rich.progress import TextColumn
    from rich.progress import TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[item]}", style="dim"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total, item="")

        def step(item: str) -> None:
            bar.update(task, advance=1, item=item[:60])

        yield step
