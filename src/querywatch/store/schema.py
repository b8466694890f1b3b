"""The store's tables (SQLAlchemy Core), with a schema version and forward migrations.

Every table is prefixed ``qw_`` so the store may share a database with the application.
Durations are stored in seconds; ``minute`` is the Unix time of the minute's start.
Histograms are JSON objects of bucket index to count (see :mod:`querywatch.stats`).
"""

from __future__ import annotations

import typing as t

from sqlalchemy import BigInteger
from sqlalchemy import Column
from sqlalchemy import Float
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Text
from sqlalchemy import UniqueConstraint

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection

#: The version this code writes. A store with a higher version is refused.
#: 2: ``qw_shapes.sample_sql`` and ``advised_at``, ``qw_advice`` (the advisor's verified
#: suggestions) and ``qw_cache_stats`` (the result cache, per function and minute).
SCHEMA_VERSION = 2

metadata = MetaData()

meta = Table(
    "qw_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

shapes = Table(
    "qw_shapes",
    metadata,
    Column("fingerprint", String(32), primary_key=True),
    Column("shape", Text, nullable=False),
    Column("operation", String(16), nullable=False),
    Column("site_file", String(512)),
    Column("site_line", Integer),
    Column("site_function", String(255)),
    Column("first_seen", Float, nullable=False),
    # A runnable statement of the shape: placeholders kept, string literals masked.
    Column("sample_sql", Text),
    # When a process last claimed the shape for the background advisor.
    Column("advised_at", Float),
)

query_stats = Table(
    "qw_query_stats",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("endpoint", String(255), primary_key=True),
    Column("fingerprint", String(32), primary_key=True),
    Column("calls", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("total_s", Float, nullable=False),
    Column("min_s", Float, nullable=False),
    Column("max_s", Float, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("hist", Text, nullable=False),
)

endpoint_stats = Table(
    "qw_endpoint_stats",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("endpoint", String(255), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("statuses", Text, nullable=False),
    Column("total_s", Float, nullable=False),
    Column("max_s", Float, nullable=False),
    Column("hist", Text, nullable=False),
    Column("queries", BigInteger, nullable=False),
    Column("max_queries", BigInteger, nullable=False),
    Column("db_s", Float, nullable=False),
    Column("db_errors", BigInteger, nullable=False),
    Column("dropped_queries", BigInteger, nullable=False),
)

findings = Table(
    "qw_findings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("endpoint", String(255), nullable=False),
    Column("fingerprint", String(32), nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("occurrences", BigInteger, nullable=False),
    Column("queries", BigInteger, nullable=False),
    Column("total_s", Float, nullable=False),
    Column("site_file", String(512)),
    Column("site_line", Integer),
    Column("site_function", String(255)),
    Column("relationship", String(255)),
    Column("fix", Text, nullable=False),
    UniqueConstraint("kind", "endpoint", "fingerprint", name="uq_qw_findings_key"),
)


advice = Table(
    "qw_advice",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(32), nullable=False),
    Column("dialect", String(16), nullable=False),
    Column("table_name", String(255), nullable=False),
    Column("index_name", String(255), nullable=False),
    Column("keys", Text, nullable=False),
    Column("ddl", Text, nullable=False),
    Column("alembic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("verified_by", String(32), nullable=False),
    Column("cost_before", Float),
    Column("cost_after", Float),
    Column("measured_before_ms", Float),
    Column("measured_after_ms", Float),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    UniqueConstraint("fingerprint", "index_name", name="uq_qw_advice_key"),
)


cache_stats = Table(
    "qw_cache_stats",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(255), primary_key=True),
    Column("hits", BigInteger, nullable=False),
    Column("misses", BigInteger, nullable=False),
    Column("invalidations", BigInteger, nullable=False),
    Column("races", BigInteger, nullable=False),
    Column("coalesced", BigInteger, nullable=False),
    Column("stale", BigInteger, nullable=False),
    Column("bypassed", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
)


def _migrate_to_1(conn: Connection) -> None:
    from sqlalchemy import inspect

    # Tables as version 1 made them; a column added since is added by its migration.
    existing = inspect(conn).get_table_names()
    for tbl in (shapes, query_stats, endpoint_stats, findings):
        if tbl.name not in existing:
            tbl.create(conn)


def _migrate_to_2(conn: Connection) -> None:
    from sqlalchemy import inspect

    cols = {c["name"] for c in inspect(conn).get_columns(shapes.name)}
    if "sample_sql" not in cols:
        conn.exec_driver_sql(f"ALTER TABLE {shapes.name} ADD COLUMN sample_sql TEXT")
    if "advised_at" not in cols:
        conn.exec_driver_sql(f"ALTER TABLE {shapes.name} ADD COLUMN advised_at FLOAT")
    for tbl in (advice, cache_stats):
        if not inspect(conn).has_table(tbl.name):
            tbl.create(conn)


#: ``MIGRATIONS[n]`` takes a store from version ``n - 1`` to ``n``.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2}
