"""The rich console of querywatch's commands."""

from __future__ import annotations

import typing as t

from rich.console import Console

__all__ = ["make_console", "print_whole"]

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
