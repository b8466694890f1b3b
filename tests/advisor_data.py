"""A small schema for the advisor's tests, the same on every database.

``events`` (20,000 rows) has no index but its primary key and ``tagged_id``; ``accounts``
(2,000 rows) has a unique index on ``email``. Big enough that every planner prefers an
index where one helps, small enough to load in about a second.
"""

from __future__ import annotations

import random
import typing as t

from sqlalchemy import Column
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table

from querywatch._compat import create_engine

EVENTS = 20_000
ACCOUNTS = 2_000
KINDS = ("view", "click", "buy", "refund")

metadata = MetaData()
accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(120), nullable=False, unique=True),
    Column("name", String(80), nullable=False),
    Column("tier", String(10), nullable=False),
)
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("account_id", Integer, nullable=False),
    Column("kind", String(12), nullable=False),
    Column("email", String(120), nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("amount", Integer, nullable=False),
    Column("note", String(60), nullable=False),
    Column("tagged_id", Integer, nullable=False),
    Index("ix_events_tagged_id", "tagged_id"),
)


def load(url: str) -> None:
    """Create and fill the tables, then gather the planner's statistics."""
    rng = random.Random(7)
    engine = create_engine(url)
    try:
        metadata.drop_all(engine)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                accounts.insert(),
                [
                    {
                        "id": i,
                        "email": f"user{i}@example.com",
                        "name": f"User {i}",
                        "tier": ("free", "pro", "gold")[i % 3],
                    }
                    for i in range(1, ACCOUNTS + 1)
                ],
            )
            rows: list[dict[str, t.Any]] = []
            for i in range(1, EVENTS + 1):
                acc = rng.randint(1, ACCOUNTS // 10)
                rows.append(
                    {
                        "id": i,
                        "account_id": acc,
                        "kind": KINDS[i % 4],
                        "email": f"user{rng.randint(1, ACCOUNTS)}@example.com",
                        "created_at": 1_700_000_000 + i * 60,
                        "amount": rng.randint(1, 10_000),
                        "note": f"Note {rng.randint(1, 5_000)}",
                        "tagged_id": rng.randint(1, 5_000),
                    }
                )
            conn.execute(events.insert(), rows)
        name = engine.dialect.name
        if name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE accounts")
                conn.exec_driver_sql("ANALYZE events")
        elif name == "sqlite":
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
        else:
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE TABLE accounts, events").all()
    finally:
        engine.dispose()


def count_events(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
    finally:
        engine.dispose()
