"""The store's tables (SQLAlchemy Core), with a schema version and forward migrations.

Every table is prefixed ``qw_`` so the store may share a database with the application.
Durations are stored in seconds; ``minute`` is the Unix time of the minute's start.
Histograms are JSON objects of bucket index to count (see :mod:`querywatch._stats`).
"""

from __future__ import annotations

import typing as t

from sqlalchemy import BigInteger
from sqlalchemy import Column
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Text
from sqlalchemy import UniqueConstraint

from .._compat import Double

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection

#: The version this code writes. A store with a higher version is refused.
#: 2: ``qw_shapes.sample_sql`` and ``advised_at``, ``qw_advice`` (the advisor's verified
#: suggestions) and ``qw_cache_stats`` (the result cache, per function and minute).
#: 3: ``qw_slo_stats`` and ``qw_slo_totals`` (events and bad events per objective),
#: ``qw_pool_stats`` (checkout
#: waits), ``qw_leases``, ``qw_alerts`` and ``qw_alert_events`` (alert state and changes).
#: 4: ``qw_incidents``, ``qw_incident_events`` (the timeline), ``qw_outbox`` (notifications
#: to deliver), ``qw_deploys`` (deploy markers) and ``qw_slo_users`` (users affected).
#: 5: times and durations in double precision on MariaDB/MySQL too (their ``FLOAT`` is
#: single precision: a Unix time to within about two minutes, which let a lease expire
#: at once); nothing changes on PostgreSQL and SQLite, whose float is already double.
#: 6: ``qw_arrivals`` (requests counted as they start, the ones still running too).
#: 7: trace ids (OpenTelemetry): ``qw_query_stats.max_trace`` (the slowest call's trace)
#: and ``qw_findings.trace_id`` (the last occurrence's).
SCHEMA_VERSION = 7

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
    Column("first_seen", Double, nullable=False),
    # A runnable statement of the shape: placeholders kept, string literals masked.
    Column("sample_sql", Text),
    # When a process last claimed the shape for the background advisor.
    Column("advised_at", Double),
)

query_stats = Table(
    "qw_query_stats",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("endpoint", String(255), primary_key=True),
    Column("fingerprint", String(32), primary_key=True),
    Column("calls", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("total_s", Double, nullable=False),
    Column("min_s", Double, nullable=False),
    Column("max_s", Double, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("hist", Text, nullable=False),
    # The trace of the slowest call of the bucket (32 hex digits), when the app traces.
    Column("max_trace", String(32)),
)

endpoint_stats = Table(
    "qw_endpoint_stats",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("endpoint", String(255), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("statuses", Text, nullable=False),
    Column("total_s", Double, nullable=False),
    Column("max_s", Double, nullable=False),
    Column("hist", Text, nullable=False),
    Column("queries", BigInteger, nullable=False),
    Column("max_queries", BigInteger, nullable=False),
    Column("db_s", Double, nullable=False),
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
    Column("first_seen", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("occurrences", BigInteger, nullable=False),
    Column("queries", BigInteger, nullable=False),
    Column("total_s", Double, nullable=False),
    Column("site_file", String(512)),
    Column("site_line", Integer),
    Column("site_function", String(255)),
    Column("relationship", String(255)),
    Column("fix", Text, nullable=False),
    # The trace of the last occurrence that was traced.
    Column("trace_id", String(32)),
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
    Column("cost_before", Double),
    Column("cost_after", Double),
    Column("measured_before_ms", Double),
    Column("measured_after_ms", Double),
    Column("first_seen", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
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


#: Per bucket, objective and endpoint: the requests an objective counted and the bad ones
#: (failed, or slower than its threshold), decided when each request is folded in.
slo_stats = Table(
    "qw_slo_stats",
    metadata,
    Column("objective", String(64), primary_key=True),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("endpoint", String(255), primary_key=True),
    Column("total", BigInteger, nullable=False),
    Column("bad", BigInteger, nullable=False),
)

#: Per objective and bucket: the sums of ``qw_slo_stats`` over every endpoint, so a
#: burn rate over three days reads one row a bucket, not one per endpoint.
slo_totals = Table(
    "qw_slo_totals",
    metadata,
    Column("objective", String(64), primary_key=True),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("total", BigInteger, nullable=False),
    Column("bad", BigInteger, nullable=False),
)

#: Per objective and bucket, the users seen (a digest of what ``QUERYWATCH_USER`` named)
#: and whether one of their requests was bad: the share of users an incident affects.
slo_users = Table(
    "qw_slo_users",
    metadata,
    Column("objective", String(64), primary_key=True),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("user_digest", String(16), primary_key=True),
    Column("bad", Integer, nullable=False),
)

#: Per bucket, the requests that started in it, counted as each starts: the traffic an
#: alert's evidence compares, which must not seem to fall while requests are slow and
#: still running (``qw_endpoint_stats`` counts a request once it has ended).
arrivals = Table(
    "qw_arrivals",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("requests", BigInteger, nullable=False),
)

#: Per bucket and pool: checkouts, the time they waited, and the ones that timed out.
pool_stats = Table(
    "qw_pool_stats",
    metadata,
    Column("minute", BigInteger, primary_key=True, autoincrement=False),
    Column("pool", String(255), primary_key=True),
    Column("checkouts", BigInteger, nullable=False),
    Column("wait_s", Double, nullable=False),
    Column("timeouts", BigInteger, nullable=False),
    # The highest share of the pool in use seen at a flush (0..1), or null.
    Column("saturation", Double),
)

#: A lease: held by one process (``holder``) until ``expires``, so one process evaluates.
leases = Table(
    "qw_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires", Double, nullable=False),
    Column("acquired", Double, nullable=False),
)

#: Each alert's current state, one row per alert key.
alerts = Table(
    "qw_alerts",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("since", Double, nullable=False),
    Column("updated", Double, nullable=False),
    Column("summary", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("fired", BigInteger, nullable=False),
)

#: Every change of an alert's state (firing, resolved), in order: what incidents follow.
alert_events = Table(
    "qw_alert_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(255), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("at", Double, nullable=False),
    Column("summary", Text, nullable=False),
    Column("evidence", Text, nullable=False),
)


#: Incidents: one open (not resolved) incident per dedup key, enforced by ``open_key``
#: (the dedup key while open, NULL once resolved: a unique column allows many NULLs).
incidents = Table(
    "qw_incidents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedup_key", String(255), nullable=False, index=True),
    Column("open_key", String(255), unique=True),
    Column("status", String(16), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("title", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("owner", String(255)),
    Column("source", String(32), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("acknowledged_at", Double),
    Column("resolved_at", Double),
    Column("updated_at", Double, nullable=False),
    # The last status update sent to the people notified (reminders count from it).
    Column("last_update_at", Double, nullable=False),
    # Escalation: the level notified last, rounds of the policy done, when the next is due.
    Column("level", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("next_escalation_at", Double),
    Column("impact", Text, nullable=False),
    Column("evidence", Text, nullable=False),
)

#: Each incident's timeline: typed events in order.
incident_events = Table(
    "qw_incident_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", Integer, nullable=False, index=True),
    Column("at", Double, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("text", Text, nullable=False),
    Column("data", Text, nullable=False),
)

#: Notifications to deliver, written in the transaction of the event that causes them.
outbox = Table(
    "qw_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("incident_id", Integer, nullable=False, index=True),
    Column("event_id", Integer),
    Column("target", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("status", String(8), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Double, nullable=False, index=True),
    Column("claimed_by", String(255)),
    Column("claimed_until", Double),
    Column("last_error", Text),
    Column("created_at", Double, nullable=False),
    Column("sent_at", Double),
)

#: Deploy markers (``querywatch mark-deploy``): evidence for incidents.
deploys = Table(
    "qw_deploys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(255), nullable=False),
    Column("at", Double, nullable=False),
    Column("description", Text, nullable=False),
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


def _migrate_to_3(conn: Connection) -> None:
    from sqlalchemy import inspect

    for tbl in (slo_stats, slo_totals, pool_stats, leases, alerts, alert_events):
        if not inspect(conn).has_table(tbl.name):
            tbl.create(conn)


def _migrate_to_4(conn: Connection) -> None:
    from sqlalchemy import inspect

    for tbl in (incidents, incident_events, outbox, deploys, slo_users):
        if not inspect(conn).has_table(tbl.name):
            tbl.create(conn)


def _migrate_to_5(conn: Connection) -> None:
    if conn.dialect.name not in ("mysql", "mariadb"):
        return
    from sqlalchemy import inspect

    existing = set(inspect(conn).get_table_names())
    for tbl in metadata.sorted_tables:
        if tbl.name not in existing:
            continue
        for col in tbl.columns:
            if isinstance(col.type, Double):
                null = "NULL" if col.nullable else "NOT NULL"
                conn.exec_driver_sql(f"ALTER TABLE {tbl.name} MODIFY {col.name} DOUBLE {null}")


def _migrate_to_6(conn: Connection) -> None:
    from sqlalchemy import inspect

    if not inspect(conn).has_table(arrivals.name):
        arrivals.create(conn)


def _migrate_to_7(conn: Connection) -> None:
    from sqlalchemy import inspect

    for tbl, name in ((query_stats, "max_trace"), (findings, "trace_id")):
        if name not in {c["name"] for c in inspect(conn).get_columns(tbl.name)}:
            conn.exec_driver_sql(f"ALTER TABLE {tbl.name} ADD COLUMN {name} VARCHAR(32)")


#: ``MIGRATIONS[n]`` takes a store from version ``n - 1`` to ``n``.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
    5: _migrate_to_5,
    6: _migrate_to_6,
    7: _migrate_to_7,
}
