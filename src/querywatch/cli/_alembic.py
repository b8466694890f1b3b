"""``querywatch advise --alembic DIR``: the verified indexes as an Alembic revision,
chained to the head of the app's migrations (Flask-Migrate's ``migrations/`` too)."""

from __future__ import annotations

import argparse
import typing as t
import uuid

from ..exceptions import QueryWatchError

if t.TYPE_CHECKING:
    from ..advisor import Advice

#: The revision's message (its docstring and, in Alembic's default file name, its slug).
MESSAGE = "querywatch: verified indexes"


def write_revision(directory: str, advice: Advice) -> tuple[str, str | None]:
    """Write a revision whose ``upgrade`` creates each suggested index (``CONCURRENTLY``
    inside ``autocommit_block()`` on PostgreSQL) and whose ``downgrade`` drops them;
    returns (its path, the revision it follows, None for the first). Raises
    :class:`QueryWatchError` when ``directory`` is no migrations folder or has several
    heads."""
    try:
        from alembic.config import Config
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError
    except ImportError:
        msg = "--alembic needs Alembic: pip install alembic (Flask-Migrate brings it)."
        raise QueryWatchError(msg) from None
    # Quiet: Alembic says "Generating ..." on standard output, where --json's answer goes.
    config = Config(cmd_opts=argparse.Namespace(quiet=True))
    config.set_main_option("script_location", directory)
    try:
        script = ScriptDirectory.from_config(config)
        heads = script.get_heads()
    except CommandError as e:
        msg = (
            f"{directory} is not an Alembic migrations folder ({e}). Pass the folder that"
            " holds env.py and versions/ (Flask-Migrate's is 'migrations'; 'alembic init'"
            " or 'flask db init' makes one)."
        )
        raise QueryWatchError(msg) from None
    if len(heads) > 1:
        msg = (
            f"The migrations in {directory} have several heads ({', '.join(sorted(heads))}):"
            " merge them first ('alembic merge heads' or 'flask db merge heads'), then run"
            " this again."
        )
        raise QueryWatchError(msg)
    dialect = advice.dialect
    ups = [s.candidate.alembic(dialect) for s in advice.suggestions]
    downs = [s.candidate.alembic_drop(dialect) for s in reversed(advice.suggestions)]
    head = heads[0] if heads else None
    revision = script.generate_revision(
        uuid.uuid4().hex[:12],
        MESSAGE,
        head=head or "base",
        upgrades=_body(ups),
        downgrades=_body(downs),
    )
    if revision is None or not revision.path:  # pragma: no cover - Alembic always writes
        msg = f"Alembic wrote no revision in {directory}."
        raise QueryWatchError(msg)
    return revision.path, head


def _body(operations: list[str]) -> str:
    """Operations as the template's function body: its first line is indented by the
    template, the rest here."""
    return "\n".join(operations).replace("\n", "\n    ")
