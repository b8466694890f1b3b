"""What every repository of the store stands on: its engine, and the schema it creates
and migrates."""

from __future__ import annotations

import collections
import time
import typing as t

from sqlalchemy import inspect
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError

from ..exceptions import SchemaVersionError
from . import schema

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class Base:
    """The store's engine and schema; each repository (a concern's statements) derives
    from it, and :class:`~querywatch.store.Store` joins them."""

    url: str
    engine: Engine
    is_sqlite: bool
    _known_shapes: collections.OrderedDict[str, None]
    _migrated: bool

    # --- schema ------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a querywatch store is there already (nothing is created: a SQLite file
        that is not there is not made)."""
        url = self.engine.url
        if self.is_sqlite and url.database not in (None, "", ":memory:"):
            import os

            assert url.database is not None
            if not os.path.exists(url.database):
                return False
        with self.engine.connect() as conn:
            return inspect(conn).has_table(schema.meta.name)

    def migrate(self) -> int:
        """Create or upgrade the tables; returns the schema version now in force."""
        if self._migrated:
            return schema.SCHEMA_VERSION
        for attempt in range(3):
            try:
                version = self._migrate_once()
                self._migrated = True
                return version
            except (IntegrityError, OperationalError):
                # Another process migrated at the same moment; look again.
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")  # pragma: no cover

    def _migrate_once(self) -> int:
        with self.engine.begin() as conn:
            if not inspect(conn).has_table(schema.meta.name):
                schema.metadata.create_all(conn, tables=[schema.meta])
            row = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).first()
            current = int(row[0]) if row else 0
            if current > schema.SCHEMA_VERSION:
                msg = (
                    f"The querywatch store at {self.engine.url!r} has schema version {current},"
                    f" newer than this querywatch knows ({schema.SCHEMA_VERSION}). Upgrade"
                    " querywatch, or point 'QUERYWATCH_STORE_URL' at another database."
                )
                raise SchemaVersionError(msg)
            for version in range(current + 1, schema.SCHEMA_VERSION + 1):
                schema.MIGRATIONS[version](conn)
            if current == 0:
                conn.execute(
                    schema.meta.insert().values(
                        key="schema_version", value=str(schema.SCHEMA_VERSION)
                    )
                )
            elif current < schema.SCHEMA_VERSION:
                conn.execute(
                    update(schema.meta)
                    .where(schema.meta.c.key == "schema_version")
                    .values(value=str(schema.SCHEMA_VERSION))
                )
            return schema.SCHEMA_VERSION

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).first()
            return int(row[0]) if row else 0

    def _lock_rows(self, stmt: t.Any) -> t.Any:
        return stmt if self.is_sqlite else stmt.with_for_update()

    def dispose(self) -> None:
        self.engine.dispose()
