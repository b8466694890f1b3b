"""The store: minute buckets, shapes and findings in SQL, shared by every process.

A SQLite file (WAL) in the app's instance folder by default; PostgreSQL or MariaDB via
``QUERYWATCH_STORE_URL`` when several hosts write. Writes merge: each process adds its
own minute buckets to what is there, inside one transaction, so gunicorn workers and
hosts sum up correctly. The store's engine carries the ``querywatch_ignore`` execution
option, so querywatch never captures its own statements.
"""

from __future__ import annotations

import collections
import logging
import typing as t

from sqlalchemy import event

from .._compat import create_engine
from .._config import missing_driver
from .._config import normalize_url
from .._sql import IGNORE_OPTION
from ..exceptions import StoreError

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import Engine

from ._advice import AdviceTables
from ._alerts import AlertTables
from ._incidents import IncidentTables
from ._reads import StatsReads
from ._rows import AlertChange
from ._rows import PlanFindingRow
from ._rows import StoredAdvice
from ._rows import StoredAlert
from ._rows import StoredAlertEvent
from ._rows import StoredFinding
from ._rows import StoredShape
from ._rows import Window
from ._stats import StatsWrites

_log = logging.getLogger("querywatch")

__all__ = [
    "AlertChange",
    "PlanFindingRow",
    "Store",
    "StoredAdvice",
    "StoredAlert",
    "StoredAlertEvent",
    "StoredFinding",
    "StoredShape",
    "Window",
]


def _sqlite_pragmas(dbapi_conn: t.Any, _record: t.Any) -> None:
    # Autocommit at the driver level; SQLAlchemy's "begin" below issues BEGIN IMMEDIATE, so
    # two writers queue on the lock instead of failing to upgrade a read lock.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store(StatsWrites, StatsReads, AdviceTables, AlertTables, IncidentTables):
    """Read and write querywatch's tables on one database: one engine, and one
    repository a concern (:mod:`._stats`, :mod:`._reads`, :mod:`._advice`,
    :mod:`._alerts`, :mod:`._incidents`) over the schema of :mod:`._base`."""

    def __init__(self, url: str, *, engine_options: dict[str, t.Any] | None = None) -> None:
        url = normalize_url(url)
        self.url = url
        options: dict[str, t.Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            options["connect_args"] = {"timeout": 5}
        options.update(engine_options or {})
        try:
            engine = create_engine(url, **options)
        except Exception as e:
            msg = f"Could not open the querywatch store at {url!r}: {e}"
            missing = missing_driver(url)
            if missing is not None:
                msg = f"Could not open the querywatch store: {missing}"
            raise StoreError(msg) from None
        self.engine: Engine = engine.execution_options(**{IGNORE_OPTION: True})
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._known_shapes: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._migrated = False
