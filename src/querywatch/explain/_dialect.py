"""What one database's EXPLAIN module provides: :mod:`.sqlite`, :mod:`.postgresql` and
:mod:`.mysql` each implement :class:`Dialect` (mypy checks the modules against it), and
:class:`~querywatch.explain.Explainer` holds the one its database needs."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from . import Session
    from ._plan import Plan


class Dialect(t.Protocol):
    """EXPLAIN on one database, in the plan model of :mod:`._plan`."""

    def begin(self, session: Session, timeout: float) -> None:
        """Open the session's transaction: read-only unless the session is writable, with
        a statement timeout of ``timeout`` seconds."""

    def end(self, session: Session) -> None:
        """End the session's transaction, rolling back whatever it did."""

    def explain(
        self,
        session: Session,
        sql: str,
        params: t.Any,
        values: Sequence[t.Any] | None,
        analyze: bool,
    ) -> Plan:
        """The plan of one read-only statement (already checked)."""

    def table_rows(self, session: Session, table: str) -> float | None:
        """Rows in ``table`` by the database's statistics; None when it has none."""

    def is_table(self, session: Session, name: str) -> bool:
        """Whether ``name`` is a table of the session's database."""
