"""The rich console of querywatch's commands."""

from __future__ import annotations

import typing as t

from rich.console import Console

__all__ = ["make_console"]


def make_console(**options: t.Any) -> Console:
    """A :class:`rich.console.Console` that wraps lines to the width of a terminal only:
    piped into a file, a pager or CI's log, a line is written whole, so a figure or a
    URL is never cut in two at 80 columns."""
    console = Console(**options)
    if not console.is_terminal and "soft_wrap" not in options:
        console.soft_wrap = True
    return console
