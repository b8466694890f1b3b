"""The advisor on a fixture that looks like a real app, on SQLite, PostgreSQL (HypoPG) and
MariaDB: plain SQLAlchemy sessions, models named ``user`` and ``order`` (reserved words),
skewed data, bound parameters; four planted missing indexes and five cases where no
index is the right answer.

For each database the ORM's statements are captured as the driver got them (statement
and parameters), and the advisor runs on them twice, as the app's background advisor
does (no DDL, no timing; the store's shape, values drawn from the data) and as
``querywatch advise --allow-ddl`` does (the real parameters, built and timed). Then every
suggestion is checked for harm: its DDL is run on the database, the statement is timed
with its real parameters without and with the index (best of 5, alternating), and the
index is dropped again.

    python bench/advice_fixtures.py [--rows 200000] [--postgres URL] [--mariadb URL]

Reported: planted indexes found (of 4), suggestions slower than the plan without them or
faster by less than 1.25x, DDL that failed, and each "no suggestion" with its reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
import time
import typing as t

from sqlalchemy import ForeignKey
from sqlalchemy import String
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import Session
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(120))
    orders: Mapped[list[Order]] = relationship(back_populates="user")


class Order(Base):
    __tablename__ = "order"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    email: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int]
    due_date: Mapped[dt.date]
    user: Mapped[User] = relationship(back_populates="orders")


#: (name, the index it needs (None: no index is the answer), the ORM statement)
CASES: list[tuple[str, tuple[str, ...] | None, t.Callable[[], t.Any]]] = [
    ("plain: order by email", ("email",), lambda: select(Order).where(Order.email == "c77@x.io")),
    (
        "composite: a rare status by due date",
        ("status", "due_date"),
        lambda: (
            select(Order)
            .where(Order.status == "late", Order.due_date < dt.date(2021, 6, 1))
            .order_by(Order.due_date)
            .limit(20)
        ),
    ),
    (
        "partial: refunds over an amount",
        ("amount",),
        lambda: select(Order.id).where(Order.kind == "refund", Order.amount > 9_000),
    ),
    (
        "expression: a user by lower(email)",
        ("lower(email)",),
        lambda: select(User).where(func.lower(User.email) == func.lower("User77@X.io")),
    ),
    ("none: by primary key", None, lambda: select(Order).where(Order.id == 4242)),
    ("none: a filter every row passes", None, lambda: select(Order.id).where(Order.amount > 0)),
    (
        "none: an indexed foreign key",
        None,
        lambda: select(Order).where(Order.user_id == 12),
    ),
    ("none: count of all", None, lambda: select(func.count()).select_from(Order)),
    (
        "none: the status nine rows in ten have",
        None,
        lambda: select(Order.id).where(Order.status == "done"),
    ),
]


def seed(url: str, rows: int) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    rnd = random.Random(5)
    users = max(1, rows // 20)
    statuses = ["done"] * 90 + ["open"] * 9 + ["late"]
    with engine.begin() as conn:
        conn.execute(
            insert(User), [{"id": i, "email": f"User{i}@X.io"} for i in range(1, users + 1)]
        )
        for start in range(1, rows + 1, 50_000):
            conn.execute(
                insert(Order),
                [
                    {
                        "id": i,
                        "user_id": rnd.randint(1, users),
                        "email": f"c{rnd.randint(1, rows // 4)}@x.io",
                        "status": statuses[rnd.randrange(100)],
                        "kind": "refund" if rnd.random() < 0.02 else "sale",
                        "amount": rnd.randint(1, 10_000),
                        "due_date": dt.date(2020, 1, 1) + dt.timedelta(days=rnd.randrange(1500)),
                    }
                    for i in range(start, min(rows, start + 49_999) + 1)
                ],
            )
        name = engine.dialect.name
        conn.exec_driver_sql(
            {
                "postgresql": "ANALYZE",
                "sqlite": "ANALYZE",
                "mysql": "ANALYZE TABLE `user`, `order`",
            }[name]
        )
    engine.dispose()


def captured(url: str) -> list[tuple[str, t.Any, t.Any, int]]:
    """Each case's statement and parameters as the driver got them, from a Session, and
    the rows it returned (which the store counts, as it never keeps values)."""
    engine = create_engine(url)
    seen: list[tuple[str, t.Any]] = []

    def grab(conn: t.Any, cursor: t.Any, statement: str, params: t.Any, *a: t.Any) -> None:
        seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    out = []
    with Session(engine) as session:
        for name, _want, build in CASES:
            seen.clear()
            got = len(session.execute(build()).all())
            out.append((name, *seen[-1], got))
    engine.dispose()
    return out


def _timed(engine: t.Any, sql: str, params: t.Any, runs: int = 5) -> float:
    best = float("inf")
    with engine.connect() as conn:
        for _ in range(runs):
            t0 = time.perf_counter()
            conn.exec_driver_sql(sql, params).fetchall()
            best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def harm(url: str, sugg: t.Any, dialect: str, sql: str, params: t.Any) -> dict[str, t.Any]:
    """Build the suggestion with its own DDL, time the statement without and with it."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    c = sugg.candidate
    ddl = c.ddl(dialect, migration=True)
    out: dict[str, t.Any] = {"ddl": ddl}
    try:
        without = [_timed(engine, sql, params)]
        with engine.connect() as conn:
            conn.exec_driver_sql(ddl)
        try:
            with_ = [_timed(engine, sql, params)]
            without.append(0.0)
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(c.drop_ddl(dialect, c.name()))
        without[1] = _timed(engine, sql, params)
        with engine.connect() as conn:
            conn.exec_driver_sql(ddl)
        try:
            with_.append(_timed(engine, sql, params))
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(c.drop_ddl(dialect, c.name()))
        out["without_ms"], out["with_ms"] = min(without), min(with_)
        out["speedup"] = round(out["without_ms"] / max(out["with_ms"], 1e-6), 1)
        out["harmful"] = out["speedup"] < 1.25
    except Exception as e:
        out["ddl_failed"] = str(e).splitlines()[0][:200]
        out["harmful"] = True
    finally:
        engine.dispose()
    return out


def run(url: str, rows: int) -> dict[str, t.Any]:
    from querywatch.advisor import Advisor
    from querywatch.advisor import QueryInput
    from querywatch.advisor import no_suggestion_reason

    print(f"== {url.split(':')[0]}")
    t0 = time.perf_counter()
    seed(url, rows)
    print(f"  seeded {rows:,} orders in {time.perf_counter() - t0:.1f} s")
    stmts = captured(url)
    result: dict[str, t.Any] = {"url": url.split("@")[-1], "rows": rows, "modes": {}}
    mysql = url.startswith("mysql")
    modes = {
        # The app's background advisor with a slow read's real parameters (kept in memory).
        "in the app": {"measure": False, "allow_ddl": None},
        # The store's shape alone (querywatch advise from the store): values drawn.
        "store shape": {"measure": False, "allow_ddl": None},
        "advise --allow-ddl": {"measure": True, "allow_ddl": True},
    }
    for mode, kw in modes.items():
        with_params = mode != "store shape"
        queries = [
            QueryInput(sql, params=params if with_params else None, label=name)
            for name, sql, params, _ in stmts
        ]
        if not with_params:  # the store's shape: placeholders kept, no values, rows counted
            queries = [
                QueryInput(
                    q.sql if params is None else _shape(sql, params, url),
                    label=q.label,
                    rows=float(got),
                )
                for q, (_, sql, params, got) in zip(queries, stmts, strict=True)
            ]
        t0 = time.perf_counter()
        with Advisor(url, scan_min_rows=1000, timeout=60, **kw) as adv:  # type: ignore[arg-type]
            advice = adv.advise(queries, index_health=False)
        took = time.perf_counter() - t0
        rows_out = []
        found = harmful = failed = 0
        served = {id(qa): s for s in advice.suggestions for qa, _ in s.trials}
        for (name, want, _), (_, sql, params, _), qa in zip(
            CASES, stmts, advice.queries, strict=True
        ):
            sugg = served.get(id(qa))
            entry: dict[str, t.Any] = {"case": name}
            if sugg is not None:
                entry["index"] = sugg.candidate.key_sql() + (
                    f" WHERE {sugg.candidate.where}" if sugg.candidate.where else ""
                )
                entry["verified_by"] = sugg.verified_by
                entry.update(harm(url, sugg, advice.dialect, sql, params))
                harmful += bool(entry["harmful"])
                failed += "ddl_failed" in entry
            else:
                entry["no_suggestion"] = no_suggestion_reason(qa)
            hints = [h.kind for h in qa.hints]
            if hints:
                entry["hints"] = hints
            if want is not None:
                keys = tuple(
                    k.lower().replace(" ", "") for k in (sugg.candidate.keys if sugg else ())
                )
                ok = sugg is not None and keys[: len(want)] == tuple(want)
                if mysql and want == ("lower(email)",):
                    ok = "expression_needs_generated_column" in hints
                if want == ("amount",):  # partial, or the composite that does its work
                    ok = sugg is not None and (
                        (keys[:1] == ("amount",) and bool(sugg.candidate.where))
                        or keys[:2] == ("kind", "amount")
                    )
                entry["planted_found"] = ok
                found += ok
            rows_out.append(entry)
        result["modes"][mode] = {
            "seconds": round(took, 2),
            "planted_found": found,
            "harmful": harmful,
            "ddl_failed": failed,
            "cases": rows_out,
        }
        print(f"  {mode}: {found} of 4 planted found, {harmful} harmful, {failed} DDL failed,"
              f" {took:.2f} s")  # fmt: skip
        for e in rows_out:
            if "index" in e:
                print(f"    {e['case']}: {e['index']} ({e.get('speedup')}x measured)")
            else:
                print(f"    {e['case']}: no suggestion: {e['no_suggestion'][:150]}")
    return result


def _shape(sql: str, params: t.Any, url: str) -> str:
    """The statement as the store keeps it: placeholders kept (as ``?``)."""
    from querywatch.fingerprint import fingerprint

    return fingerprint(sql).sample or sql


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL with HypoPG")
    parser.add_argument("--mariadb", default=None, help="MariaDB URL")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="qw-fixtures-")
    urls = [f"sqlite:///{work}/fixture.db"]
    urls += [u for u in (args.postgres, args.mariadb) if u]
    results = [run(u, args.rows) for u in urls]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
