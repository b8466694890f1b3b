"""The advisor inside a Flask-SQLAlchemy app, on SQLite, PostgreSQL (HypoPG) and MariaDB:
the library app of the tests (``tests/library_app.py``: models with relationships, Jinja
templates that walk them lazily, a ``User`` model, an ``audit`` bind) at 200,000 books
and 200,000 audit events.

For each database the app serves a few requests with querywatch on, then the background
advisor runs as it does in the app (``run_once``: the store's shapes, a slow read's own
parameters, no DDL on the live tables), and ``flask querywatch advise`` runs as a user
would. Every suggestion is checked for harm: its own DDL is run on the database, the
statement is timed with the request's real parameters without and with the index (best
of 5, twice each, alternating), and the index is dropped.

    python bench/library_fixture.py [--books 200000] [--postgres URL] [--mariadb URL]

Reported: planted indexes found (``book.isbn``, ``audit_event.actor``: of 2), suggestions
slower than the plan without them or faster by less than 1.25x, DDL that failed, and each
shape without a suggestion with its reason.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import typing as t

from sqlalchemy import create_engine
from sqlalchemy import event

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

import library_app  # noqa: E402
from advice_fixtures import _timed  # noqa: E402  (this folder, as a script's)

PLANTED = {"book": ("isbn",), "audit_event": ("actor",)}


def _drop_sql(dialect: str, name: str, table: str) -> str:
    if dialect == "mysql":
        return f"DROP INDEX `{name}` ON `{table}`"
    return f'DROP INDEX "{name}"'


def harm(url: str, dialect: str, ddl: str, name: str, table: str, sql: str, params: t.Any) -> dict:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    out: dict[str, t.Any] = {"ddl": ddl}
    try:
        without, with_ = [], []
        for _ in range(2):
            without.append(_timed(engine, sql, params))
            with engine.connect() as conn:
                conn.exec_driver_sql(ddl)
            try:
                with_.append(_timed(engine, sql, params))
            finally:
                with engine.connect() as conn:
                    conn.exec_driver_sql(_drop_sql(dialect, name, table))
        out["without_ms"], out["with_ms"] = round(min(without), 3), round(min(with_), 3)
        out["speedup"] = round(min(without) / max(min(with_), 1e-6), 1)
        out["harmful"] = out["speedup"] < 1.25
    except Exception as e:
        out["ddl_failed"] = str(e).splitlines()[0][:200]
        out["harmful"] = True
    finally:
        engine.dispose()
    return out


def run(url: str | None, books: int, workdir: pathlib.Path) -> dict[str, t.Any]:
    name = url.split(":")[0] if url else "sqlite (instance folder)"
    print(f"== {name}")
    instance = workdir / name.split("+")[0].split(" ")[0] / "instance"
    instance.mkdir(parents=True)
    config: dict[str, t.Any] = {
        "QUERYWATCH_STORE_URL": f"sqlite:///{instance.parent}/querywatch.db",
        "QUERYWATCH_SCAN_MIN_ROWS": 1000,
        "QUERYWATCH_SLOW_QUERY_MS": 1,
        "QUERYWATCH_FLUSH_INTERVAL": 3600,
        "QUERYWATCH_ADVISE_INTERVAL": 3600,
        "QUERYWATCH_ADVISE_TIMEOUT": 60,
    }
    if url:
        config["SQLALCHEMY_DATABASE_URI"] = url
        config["SQLALCHEMY_BINDS"] = {"audit": url}
    app = library_app.create_app(str(instance), config)
    with app.app_context():
        library_app.db.drop_all()
    t0 = time.perf_counter()
    library_app.seed(app, books=books)
    with app.app_context():
        for engine in library_app.db.engines.values():
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    {
                        "postgresql": "ANALYZE",
                        "sqlite": "ANALYZE",
                        "mysql": "ANALYZE TABLE author, book, audit_event",
                    }[engine.dialect.name]
                )
        engines = list(library_app.db.engines.values())
        dialect = engines[0].dialect.name
        urls = {
            e.url.render_as_string(hide_password=False) for e in library_app.db.engines.values()
        }
    print(f"  seeded {books:,} books and audit events in {time.perf_counter() - t0:.1f} s")

    seen: list[tuple[str, t.Any]] = []

    def grab(conn: t.Any, cursor: t.Any, statement: str, params: t.Any, *a: t.Any) -> None:
        seen.append((statement, params))

    for engine in engines:
        event.listen(engine, "before_cursor_execute", grab)
    client = app.test_client()
    for i in (5, 17, 230, 4_001, books // 2):
        assert client.get(f"/books/978-{i:09d}").status_code == 200
    for _ in range(3):
        assert client.get("/authors").status_code == 200
    for i in (3, 40, 999):
        assert client.get(f"/audit/user{i}@example.com").status_code == 200
    for engine in engines:
        event.remove(engine, "before_cursor_execute", grab)
    real = {
        table: next(
            (s, p) for s, p in reversed(seen) if f"{table}.{keys[0]} =" in s.replace('"', "")
        )
        for table, keys in PLANTED.items()
    }

    state = app.extensions["querywatch"]
    assert state.flusher.flush()
    t0 = time.perf_counter()
    while state.advice_worker.run_once():
        pass
    took = time.perf_counter() - t0
    result: dict[str, t.Any] = {"database": name, "books": books, "modes": {}}

    def check(mode: str, suggestions: list[dict[str, t.Any]], reasons: dict[str, str]) -> None:
        found = harmful = failed = 0
        entries = []
        for sg in suggestions:
            table, keys = sg["table"], tuple(k.lower() for k in sg["keys"])
            sql, params = real.get(table, (None, None))
            entry: dict[str, t.Any] = {"table": table, "keys": keys}
            if sql is None:
                entry["harm"] = "no request statement to time"
            else:
                url_ = next(iter(urls)) if len(urls) == 1 else None
                if url_ is None:  # SQLite: the bind's file for the bind's table
                    url_ = next(u for u in urls if ("audit" in u) == (table == "audit_event"))
                entry.update(harm(url_, dialect, sg["ddl"], sg["name"], table, sql, params))
                harmful += bool(entry["harmful"])
                failed += "ddl_failed" in entry
            found += PLANTED.get(table) == keys[: len(PLANTED.get(table, ()))] and bool(keys)
            entries.append(entry)
        result["modes"][mode] = {
            "planted_found": found,
            "harmful": harmful,
            "ddl_failed": failed,
            "suggestions": entries,
            "no_suggestion": reasons,
        }
        print(f"  {mode}: {found} of 2 planted found, {harmful} harmful, {failed} DDL failed")
        for e in entries:
            print(f"    {e['table']}({', '.join(e['keys'])}): {e.get('speedup')}x measured")
        for fp, why in reasons.items():
            print(f"    {fp}: no suggestion: {why[:150]}")

    stored = state.store.advice()
    check(
        f"in the app ({took:.1f} s)",
        [{"table": a.table, "keys": a.keys, "ddl": a.ddl, "name": a.index_name} for a in stored],
        dict(state.advice_worker.reasons),
    )
    out = app.test_cli_runner().invoke(args=["querywatch", "advise", "--json", "--no-record"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    answers = data["databases"] if "databases" in data else [data]
    check(
        "flask querywatch advise",
        [
            {"table": s["table"], "keys": s["keys"], "ddl": s["ddl"], "name": s["name"]}
            for d in answers
            for s in d["suggestions"]
        ],
        {
            q.get("label") or q["query"]: q["no_suggestion"]
            for d in answers
            for q in d["queries"]
            if q.get("no_suggestion")
        },
    )
    state.flusher._stop.set()
    state.advice_worker.stop()
    with app.app_context():
        library_app.db.drop_all()
        for engine in library_app.db.engines.values():
            engine.dispose()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=200_000)
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL with HypoPG")
    parser.add_argument("--mariadb", default=None, help="MariaDB URL")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for url in (None, args.postgres, args.mariadb):
            if url is None and results:
                continue
            results.append(run(url, args.books, pathlib.Path(tmp)))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
