"""What the entry points load: ``flask querywatch`` (``flask.commands``) and the pytest
plugin (``pytest11``). Both load the real thing lazily and, where it cannot load here (a
Flask or SQLAlchemy older than querywatch supports), say so in one line instead of
breaking the app's own ``flask`` and ``pytest`` runs, which load every installed entry
point whether or not the project uses querywatch.

This module imports click only (Flask's own dependency): nothing of querywatch's that
imports Flask or SQLAlchemy.
"""

from __future__ import annotations

import typing as t

import click

#: What querywatch needs, for the one line.
NEEDS = "Flask 2.2+, Flask-SQLAlchemy 3.0+ and SQLAlchemy 1.4+"


def unavailable(e: BaseException) -> str:
    """The one line: what failed, and what querywatch needs."""
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return f"querywatch is off here ({type(e).__name__}: {first}); it needs {NEEDS}."


class LazyCli(click.Group):
    """``flask querywatch``: :mod:`querywatch.cli`'s group, imported when the command
    runs (its context is the real group's), not when Flask lists its commands. Where it
    cannot be imported, running it prints the one line and exits 1."""

    def _real(self) -> click.Group | None:
        try:
            from .cli import cli
        except Exception as e:
            self.error = unavailable(e)
            return None
        return cli

    error = ""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: t.Any,
    ) -> click.Context:
        real = self._real()
        if real is not None:
            return real.make_context(info_name, args, parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> t.Any:
        raise click.ClickException(self.error)


cli = LazyCli(
    "querywatch",
    help="querywatch: which query in which endpoint costs the database its time.",
    # Run without a subcommand, it says why it is off rather than print its usage.
    invoke_without_command=True,
    no_args_is_help=False,
)
