"""SQLite: ``EXPLAIN QUERY PLAN``.

SQLite plans a statement when it is prepared, before values are bound, so a shape's
placeholders are bound to NULL (or the given values) and the plan is the one the app
gets. SQLite exposes no cost. A node reading a whole table carries the table's row count
(from ``sqlite_stat1`` after ``ANALYZE``, else its largest rowid) as its ``rows``; an index search
carries the rows ``sqlite_stat1`` says one key prefix holds, divided by 4 per range term
(the planner's own rule). The plan's ``cost`` is the rows read, summed, plus n log2 n
for each sort of n rows: an estimate for ranking, not SQLite's own figure.

The database file is opened read-only (``mode=ro``) unless indexes may be built, and
never created. Read-only sessions set ``PRAGMA query_only`` and hold no transaction open,
so a writer of the app waits for no more than one statement; the statement timeout is a
progress handler that interrupts the statement past its deadline.

Ctrl-C: with a Python progress handler installed, the ``KeyboardInterrupt`` of a SIGINT
that arrives while SQLite runs a statement is raised inside the callback, where the
sqlite3 module drops it (the statement goes on, the interrupt is lost). In the main
thread a session therefore takes SIGINT over: it only sets a flag, the handler interrupts
the statement, and the session's end raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading
import time
import typing as t

from .._sql import filter_terms
from .._sql import number_placeholders
from ..fingerprint import STANDARD
from ..fingerprint import mask_literals
from ._plan import Plan
from ._plan import PlanNode
from .names import alias_map
from .names import translate_error

if t.TYPE_CHECKING:
    from . import Session


def deadline_handler(timeout: float, stop: threading.Event | None = None) -> t.Callable[[], int]:
    """A SQLite progress handler that interrupts a statement after ``timeout`` seconds,
    or once ``stop`` is set."""
    end = time.monotonic() + timeout

    def handler() -> int:
        return 1 if time.monotonic() > end or (stop is not None and stop.is_set()) else 0

    return handler


_ACCESS_RE = re.compile(
    r"^(?P<op>SCAN|SEARCH) (?:TABLE )?(?P<name>\S+)(?: AS (?P<alias>\S+))?"
    r"(?: USING (?P<how>.*?))?(?: \((?P<cond>[^()]*)\))?$"
)
_INDEX_RE = re.compile(r"INDEX (?P<index>[^\s(]+)")


def connector(url: t.Any, timeout: float, *, writable: bool) -> t.Callable[[], t.Any] | None:
    """A DBAPI connect function for the database file of ``url`` that never creates it:
    read-only (``mode=ro``) unless ``writable``, read-write (``mode=rw``) otherwise. A
    file that does not exist is an :class:`ExplainError` that names it. None for a URL
    that is already a ``file:`` URI (its own mode stands)."""
    import os
    import sqlite3
    import urllib.parse

    from ..exceptions import ExplainError

    path = url.database or ""
    if path.startswith("file:") or url.query.get("uri"):
        return None
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        msg = (
            f"The SQLite database file {full!r} does not exist (querywatch never creates"
            " one). Point querywatch at the file your app uses: Flask-SQLAlchemy keeps a"
            " relative sqlite:///name.db in the app's instance folder"
            " (sqlite:////path/to/instance/name.db); pass --database-url or set"
            " QUERYWATCH_ADVISE_DATABASE_URL."
        )
        raise ExplainError(msg)
    uri = "file:" + urllib.parse.quote(full) + ("?mode=rw" if writable else "?mode=ro")

    def connect() -> t.Any:
        return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

    return connect


def memory_copy(session: Session, *, timeout: float) -> t.Any:
    """An explainer over an empty in-memory copy of the schema of ``session``'s database,
    with its ``sqlite_stat1``: SQLite plans from the schema and those statistics only,
    so the copy answers "would the planner use this index" without touching the live
    file. :func:`add_table_stats` gives it the row counts of tables never analyzed."""
    import sqlite3

    from sqlalchemy.pool import StaticPool

    from .._compat import create_engine

    mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    for (sql,) in session.run(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        " AND type IN ('table', 'index', 'view') ORDER BY rowid"
    ):
        # A virtual table's shadow tables fail here: the virtual table made them already.
        with contextlib.suppress(sqlite3.Error):
            mem.execute(str(sql))
    mem.execute("ANALYZE")  # creates sqlite_stat1
    try:
        rows = [tuple(r) for r in session.run("SELECT tbl, idx, stat FROM sqlite_stat1")]
    except Exception:  # the live database was never analyzed
        rows = []
    mem.executemany("INSERT INTO sqlite_stat1 VALUES (?, ?, ?)", rows)
    mem.execute("ANALYZE sqlite_master")
    engine = create_engine("sqlite://", creator=lambda: mem, poolclass=StaticPool)
    # The explainer's own class, from the session: this module is below it.
    copy = type(session.explainer).over(engine, timeout=timeout)
    copy.analysed = {str(r[0]).lower() for r in rows}  # type: ignore[attr-defined]
    copy.connection = mem  # type: ignore[attr-defined]
    return copy


def add_table_stats(copy: t.Any, rows: dict[str, float]) -> None:
    """Give the copy the row count of each table that has no statistics yet (the live
    database was never analyzed): SQLite plans a join by the tables' sizes."""
    mem = copy.connection
    new = [
        (name, None, str(int(n))) for name, n in rows.items() if name.lower() not in copy.analysed
    ]
    if not new:
        return
    mem.executemany("INSERT INTO sqlite_stat1 VALUES (?, ?, ?)", new)
    mem.execute("ANALYZE sqlite_master")
    copy.analysed.update(name.lower() for name, _, _ in new)


#: Rows read to estimate a candidate index's statistics.
SAMPLE_ROWS = 2000


def candidate_stat(
    session: Session, table: str, keys: t.Sequence[str], where: str | None, rows: float
) -> str | None:
    """``sqlite_stat1``'s line for an index on ``keys`` of ``table`` (optionally partial),
    as ``ANALYZE`` would write it, estimated from a sample of rows read by rowid (a few
    thousand lookups, never a scan of a big table): the rows, then the average rows per
    key prefix (distinct values estimated with Haas and Stokes' Duj1). None when the
    table cannot be sampled (``WITHOUT ROWID``) or is empty."""
    import random

    if rows < 1 or not keys:
        return None
    quoted = '"' + table.replace('"', '""') + '"'
    cols = ", ".join(keys)
    cond = f"CASE WHEN ({where}) THEN 1 ELSE 0 END" if where else "1"
    try:
        if rows <= SAMPLE_ROWS * 5:
            sample = [tuple(r) for r in session.run(f"SELECT {cond}, {cols} FROM {quoted}")]
        else:
            top = session.run(f"SELECT max(rowid) FROM {quoted}").first()
            high = int(top[0]) if top and top[0] is not None else 0
            if high < 1:
                return None
            picks = sorted(random.sample(range(1, high + 1), min(high, SAMPLE_ROWS)))
            ids = ", ".join(map(str, picks))
            sample = [
                tuple(r)
                for r in session.run(f"SELECT {cond}, {cols} FROM {quoted} WHERE rowid IN ({ids})")
            ]
    except Exception:
        return None
    if not sample:
        return None
    kept = [r[1:] for r in sample if r[0]]
    total = float(max(rows, len(sample)))
    n_index = max(1.0, round(total * len(kept) / len(sample)))
    if not kept:
        return f"{int(n_index)} " + " ".join("1" for _ in keys)
    figures = [str(int(n_index))]
    for i in range(1, len(keys) + 1):
        counts: dict[tuple[t.Any, ...], int] = {}
        for r in kept:
            counts[r[:i]] = counts.get(r[:i], 0) + 1
        n, d = len(kept), len(counts)
        f1 = sum(1 for c in counts.values() if c == 1)
        if n >= n_index:
            ndv = float(d)
        else:
            ndv = n * d / max(1e-9, n - f1 + f1 * n / n_index)
        figures.append(str(max(1, round(n_index / max(ndv, 1.0)))))
    return " ".join(figures)


def matching_share(
    session: Session,
    marked: str,
    values: t.Sequence[t.Any] | None,
    rows: float,
    columns: t.Collection[str] | None = None,
) -> tuple[float, int] | None:
    """The share of a one-table statement's rows that its ``WHERE`` matches (only its
    terms on ``columns``, an index's, when given: the rows the index reads), and the
    rows it was measured on: over the whole table when it is small, else over a sample
    read by rowid (never a scan of a big table). ``marked`` holds ``:qwpN`` placeholders
    for ``values``. None for a statement that joins, has no such terms, or cannot be
    counted.

    SQLite's planner takes any range for a quarter of the rows; ``amount > 0`` may match
    them all, and then reading them by an index is slower than the scan."""
    import random

    found = filter_terms(marked, "sqlite", columns)
    if found is None:
        return None
    quoted, cond, used = found
    params = {f"qwp{i + 1}": v for i, v in enumerate(values or ()) if f"qwp{i + 1}" in used}
    sql = f"SELECT count(*), sum(CASE WHEN ({cond}) THEN 1 ELSE 0 END) FROM {quoted}"
    try:
        if rows > SAMPLE_ROWS * 5:
            top = session.run(f"SELECT max(rowid) FROM {quoted}").first()
            high = int(top[0]) if top and top[0] is not None else 0
            if high < 1:
                return None
            picks = sorted(random.sample(range(1, high + 1), min(high, SAMPLE_ROWS)))
            sql += f" WHERE rowid IN ({', '.join(map(str, picks))})"
        row = session.run(sql, params or None).first()
    except Exception:
        return None
    if row is None or not row[0]:
        return None
    return float(row[1] or 0) / float(row[0]), int(row[0])


def _take_sigint() -> threading.Event | None:
    """In the main thread, while Python's own Ctrl-C handler is in place: a handler that
    sets the returned flag instead of raising."""
    if threading.current_thread() is not threading.main_thread():
        return None  # signals reach the main thread only
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None  # the program handles Ctrl-C itself
    pressed = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.set())
    return pressed


def _give_back_sigint(pressed: threading.Event | None) -> None:
    if pressed is None:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed.is_set():
        raise KeyboardInterrupt


def begin(session: Session, timeout: float) -> None:
    dbapi = session.conn.connection.dbapi_connection
    session.timeout = timeout  # type: ignore[attr-defined]
    if session.writable:
        session.run("BEGIN")
    else:
        # No transaction held open: each read takes and drops its own shared lock, so a
        # writer of a rollback-journal database waits at most for one statement.
        session.run("PRAGMA query_only = ON")
    assert dbapi is not None
    session.sigint = _take_sigint()  # type: ignore[attr-defined]
    dbapi.set_progress_handler(deadline_handler(timeout, session.sigint), 1000)  # type: ignore[attr-defined]
    # Each statement of the session gets its own deadline (Session.run arms it).
    session.armed = True  # type: ignore[attr-defined]


def end(session: Session) -> None:
    session.armed = False  # type: ignore[attr-defined]
    dbapi = session.conn.connection.dbapi_connection
    try:
        if dbapi is None or dbapi.in_transaction:
            session.run("ROLLBACK")
    finally:
        if dbapi is not None:
            dbapi.set_progress_handler(None, 0)
        try:
            session.run("PRAGMA query_only = OFF")
        finally:
            _give_back_sigint(getattr(session, "sigint", None))


def arm(session: Session) -> None:
    """A new deadline for the next statement (the timeout is a statement's, as
    PostgreSQL's ``statement_timeout``; one armed at the session's start would leave a
    statement run after a few others the rest of it)."""
    dbapi = session.conn.connection.dbapi_connection
    assert dbapi is not None
    dbapi.set_progress_handler(
        deadline_handler(session.explainer.timeout, getattr(session, "sigint", None)), 1000
    )


def explain(
    session: Session,
    sql: str,
    params: t.Any,
    values: t.Sequence[t.Any] | None,
    analyze: bool,
) -> Plan:
    if analyze:
        from ..exceptions import ExplainError

        msg = "SQLite has no EXPLAIN ANALYZE; time the statement instead."
        raise ExplainError(msg)
    generic = False
    if params is None:
        sql, n = number_placeholders(sql)
        if n:
            generic = values is None
            params = {f"qwp{i + 1}": (values[i] if values else None) for i in range(n)}
    try:
        result = session.run("EXPLAIN QUERY PLAN " + sql, params or None)
        rows = [tuple(r) for r in result]
    except Exception as e:
        raise translate_error(e, session) from None
    aliases = alias_map(sql, "sqlite")
    nodes: dict[int, list[t.Any]] = {}
    roots: list[int] = []
    built: dict[int, dict[str, t.Any]] = {}
    for node_id, parent, _unused, detail in rows:
        built[node_id] = _node_fields(session, str(detail), aliases)
        # SQLite prints ``?`` for values; a quoted word it might print is masked all the same.
        built[node_id]["detail"] = mask_literals(str(detail), STANDARD, numbers=False)
        nodes.setdefault(parent, []).append(node_id)
        if parent == 0 or parent not in built:
            roots.append(node_id)

    def make(node_id: int) -> PlanNode:
        children = tuple(make(c) for c in nodes.get(node_id, []))
        return PlanNode(children=children, **built[node_id])

    tree = tuple(make(r) for r in roots)
    reads = [n.rows for r in tree for n in r.walk() if n.table is not None]
    # A sort of n rows read costs about n log2 n more.
    n_read = sum(x for x in reads if x is not None)
    for root in tree:
        for node in root.walk():
            if "temp_sort" in node.flags and n_read > 1:
                reads.append(n_read * math.log2(n_read))
    return Plan(
        dialect="sqlite",
        nodes=tree,
        cost=_sum(reads),
        generic=generic,
        raw=rows,
    )


def _node_fields(session: Session, detail: str, aliases: dict[str, str]) -> dict[str, t.Any]:
    m = _ACCESS_RE.match(detail)
    if m is None:
        flags: set[str] = set()
        if detail.startswith("USE TEMP B-TREE"):
            flags.add("temp_sort")
        elif detail.startswith("MATERIALIZE"):
            flags.add("temp_table")
        return {"operation": detail.split(" ", 1)[0], "detail": detail, "flags": frozenset(flags)}
    name = m.group("alias") or m.group("name")
    table = aliases.get(name.lower(), name)
    how = m.group("how") or ""
    im = _INDEX_RE.search(how)
    index = im.group("index") if im else None
    if "PRIMARY KEY" in how and index is None:
        index = "PRIMARY KEY"
    flags = set()
    if "AUTOMATIC" in how:
        flags.add("temp_index")
        index = None
    if m.group("op") == "SEARCH":
        flags.add("index_search")
    elif index is None and "temp_index" not in flags:
        flags.add("full_scan")
    else:
        flags.add("full_index_scan")
    real = session.table_rows(table) if session.module.is_table(session, table) else None
    rows = real
    if m.group("op") == "SEARCH":
        rows = _search_rows(session, table, index, m.group("cond") or "", real)
    return {
        "operation": m.group("op"),
        "table": table,
        "index": index,
        "rows": rows,
        "table_rows": real,
        "detail": detail,
        "flags": frozenset(flags),
    }


_tables_cache_key = "_sqlite_tables"


def is_table(session: Session, name: str) -> bool:
    tables: set[str] | None = getattr(session, _tables_cache_key, None)
    if tables is None:
        tables = {
            str(r[0]).lower()
            for r in session.run("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        setattr(session, _tables_cache_key, tables)
    return name.lower() in tables


def table_rows(session: Session, table: str) -> float | None:
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        for (stat,) in session.run(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = ? ORDER BY idx IS NOT NULL",
            (table,),
        ):
            return float(str(stat).split()[0])
    except Exception:  # no sqlite_stat1: the database was never analyzed
        pass
    try:
        # The largest rowid: one step down the table's b-tree, where count(*) reads it
        # whole (and holds a writer of the file back as long).
        row = session.run(f"SELECT max(rowid) FROM {quoted}").first()
        return float(row[0] or 0) if row else None
    except Exception:  # WITHOUT ROWID
        row = session.run(f"SELECT count(*) FROM {quoted}").first()
        return float(row[0]) if row else None


_EQ_TERM_RE = re.compile(r"^\S+\s*(=|IN\b)", re.I)


def _search_rows(
    session: Session, table: str, index: str | None, cond: str, table_rows: float | None
) -> float | None:
    terms = [x.strip() for x in cond.split(" AND ") if x.strip()]
    eq = sum(1 for x in terms if _EQ_TERM_RE.match(x) and not re.match(r"^\S+\s*[<>]", x))
    rng = len(terms) - eq
    if index in ("PRIMARY KEY",) or (index is None and "rowid" in cond):
        base = 1.0 if eq else (table_rows or 0.0)
    else:
        stat = _index_stat(session, table, index) if index else None
        if stat is None or not stat:
            return None
        base = float(stat[min(eq, len(stat) - 1)]) if eq else float(stat[0])
    return max(1.0, base / (4.0**rng))


def _index_stat(session: Session, table: str, index: str) -> list[int] | None:
    """``sqlite_stat1``'s figures for ``index``: rows, then rows per key prefix."""
    try:
        row = session.run(
            "SELECT stat FROM sqlite_stat1 WHERE tbl = ? AND idx = ?", (table, index)
        ).first()
    except Exception:  # never analyzed
        return None
    if row is None:
        return None
    return [int(x) for x in str(row[0]).split() if x.isdigit()]


def _sum(values: list[float | None]) -> float | None:
    """The sum, or None when any part is unknown."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))
