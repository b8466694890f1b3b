"""What every part of the advisor stands on: its explainer, options and what it learns
of the database while it works."""

from __future__ import annotations

import typing as t

from ..explain import Explainer
from ._model import QueryAdvice

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_Self = t.TypeVar("_Self", bound="AdvisorBase")


class AdvisorBase:
    """The advisor's explainer, options and caches (see
    :class:`~querywatch.advisor.Advisor` for the parameters)."""

    def __init__(
        self,
        database: str | Engine,
        *,
        allow_ddl: bool | None = None,
        scan_min_rows: int = 10_000,
        timeout: float = 5.0,
        measure: bool = True,
        prefer_indexes: bool = False,
        unused_window_days: float = 7.0,
    ) -> None:
        self.unused_window_days = unused_window_days
        self.explainer = Explainer(
            database, timeout=timeout, prefer_indexes=prefer_indexes, writable=bool(allow_ddl)
        )
        self.dialect = self.explainer.dialect
        self.allow_ddl = bool(allow_ddl)
        self.scan_min_rows = scan_min_rows
        self.measure = measure
        self.notes: list[str] = []
        self._columns: dict[str, set[str]] = {}
        self._hypopg: bool | None = None
        self._existing: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {}
        self._generic_plans: bool | None = None
        #: The equality columns of each analysed query, by (id of its advice, table).
        self._equalities: dict[tuple[int, str], set[str]] = {}
        #: Their equality and range columns (filters an index can search by).
        self._filters: dict[tuple[int, str], set[str]] = {}
        #: SQLite: the in-memory schema copy candidates are planned in (made once).
        self._copy: t.Any = None
        self._stats: dict[t.Any, str | None] = {}
        #: MariaDB/MySQL: temporary copies of tables, on one connection (made once).
        self._temporary: t.Any = None

    def close(self) -> None:
        self.explainer.close()
        if self._copy is not None:
            self._copy.close()
            self._copy.connection.close()
        if self._temporary is not None:
            self._temporary.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tables(self, qa: QueryAdvice) -> set[str]:
        if qa.plan is None:
            return set()
        return {n.table for n in qa.plan.walk() if n.table}
