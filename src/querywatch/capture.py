"""The hot path: SQLAlchemy engine events record every statement of the current unit of
work (a request or a job) into a :class:`_Record` held in a :class:`contextvars.ContextVar`.

When no unit of work is open the listeners cost one ``ContextVar.get``. No I/O happens
here: records are handed to :mod:`querywatch.stats` when the unit of work ends, and the
store is written later by a background thread.

A statement's duration runs from ``before_cursor_execute`` until its result is exhausted
or closed, not only until ``execute()`` returns: SQLite does most of a scan while rows are
fetched, so execute-only timing would hide exactly the full scans we hunt. To see the
fetch, the DBAPI cursor that SQLAlchemy builds its ``CursorResult`` on is wrapped in
:class:`_TimedCursor` once the statement has run.
"""

from __future__ import annotations

import contextvars
import dataclasses
import sys
import threading
import typing as t
from time import perf_counter
from time import time as wall_time

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ._failopen import fail_open
from .fingerprint import Fingerprint
from .fingerprint import fingerprint
from .stats import bucket_index

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Connection
    from sqlalchemy.engine import ExceptionContext
    from sqlalchemy.engine.interfaces import ExecutionContext
    from sqlalchemy.orm import ORMExecuteState

    from .config import Settings

__all__ = ["CallSite", "QueryInfo", "Record", "current_record"]

#: The execution option that carries the ORM relationship of a lazy load to the cursor.
_RELATIONSHIP_OPTION = "_querywatch_relationship"
#: An execution option that hides a connection's statements from capture.
IGNORE_OPTION = "querywatch_ignore"


@dataclasses.dataclass(frozen=True, slots=True)
class CallSite:
    """Where application code issued a statement."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


@dataclasses.dataclass(slots=True)
class QueryInfo:
    """One captured statement."""

    fingerprint: Fingerprint
    #: ``time.perf_counter()`` when the cursor was asked to execute.
    start: float
    #: Seconds from execute until the result was exhausted or closed.
    duration: float = 0.0
    #: Rows fetched (reads) or affected (writes), as far as the driver tells.
    rows: int = 0
    #: The exception's class name when the statement failed.
    error: str | None = None
    site: CallSite | None = None
    #: ``Model.attr`` when an ORM lazy load issued the statement.
    relationship: str | None = None
    #: Parameter sets of an ``executemany``; 1 otherwise.
    batch_size: int = 1
    #: Hash of the bound parameters (never the values themselves).
    params_hash: int = 0
    #: Set once the duration is final.
    done: bool = False
    #: ``perf_counter()`` of the last fetch, used if the result is never closed.
    last_activity: float = 0.0
    fetched: bool = False


@dataclasses.dataclass(slots=True)
class LoopStats:
    """What one request did with one (shape, call site): the input of the N+1 detector."""

    fingerprint: Fingerprint
    site: CallSite | None
    relationship: str | None = None
    count: int = 0
    total: float = 0.0
    #: Hashes of distinct parameter sets, kept up to a small cap.
    param_hashes: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(slots=True)
class RepeatStats:
    """The same read with the same parameters, run more than once in one unit of work."""

    fingerprint: Fingerprint
    site: CallSite | None
    count: int = 0
    total: float = 0.0


@dataclasses.dataclass(slots=True)
class ShapeStats:
    """Per-shape aggregates of one unit of work; exact whatever the query count."""

    fingerprint: Fingerprint
    calls: int = 0
    errors: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = 0.0
    rows: int = 0
    #: Latency histogram, bucket index (:func:`querywatch.stats.bucket_index`) to count.
    hist: dict[int, int] = dataclasses.field(default_factory=dict)
    site: CallSite | None = None


@dataclasses.dataclass(slots=True, eq=False)
class Record:
    """Everything captured during one request or job."""

    #: ``"GET /orders/<int:id>"`` for a request, ``"job:nightly-sync"`` for a job.
    name: str
    kind: str
    settings: Settings
    #: Restricts capture to these engines when not ``None``.
    engines: frozenset[Engine] | None = None
    started: float = dataclasses.field(default_factory=perf_counter)
    started_wall: float = dataclasses.field(default_factory=wall_time)
    duration: float = 0.0
    status: int = 0
    #: The statements, capped at ``settings.max_queries_per_request``.
    queries: list[QueryInfo] = dataclasses.field(default_factory=list)
    #: Statements not kept in :attr:`queries` because of the cap (still aggregated).
    dropped: int = 0
    query_count: int = 0
    db_time: float = 0.0
    errors: int = 0
    shapes: dict[str, ShapeStats] = dataclasses.field(default_factory=dict)
    loops: dict[tuple[str, CallSite | None], LoopStats] = dataclasses.field(default_factory=dict)
    repeats: dict[tuple[str, int], RepeatStats] = dataclasses.field(default_factory=dict)
    slow: list[QueryInfo] = dataclasses.field(default_factory=list)
    #: Queries whose result is still open; finished when the unit of work ends.
    open_queries: list[QueryInfo] = dataclasses.field(default_factory=list)
    closed: bool = False

    def finish(self, status: int = 0) -> None:
        """Close the unit of work: finish open results, fix the duration."""
        for q in self.open_queries:
            if not q.done:
                _finish_query(self, q, q.last_activity or perf_counter(), None)
        self.open_queries.clear()
        self.status = status
        self.duration = perf_counter() - self.started
        self.closed = True


_current_record: contextvars.ContextVar[Record | None] = contextvars.ContextVar(
    "querywatch_record", default=None
)

#: Caps on per-request bookkeeping so a request with 15,000 queries stays bounded.
_MAX_LOOP_KEYS = 1000
_MAX_REPEAT_KEYS = 5000
_MAX_PARAM_HASHES = 64
_MAX_SLOW_PER_RECORD = 100


def current_record() -> Record | None:
    """The record of the unit of work running in this context, if any."""
    return _current_record.get()


def start_record(record: Record) -> contextvars.Token[Record | None]:
    return _current_record.set(record)


def end_record(token: contextvars.Token[Record | None]) -> None:
    try:
        _current_record.reset(token)
    except ValueError:
        # The token was made in another context (a request torn down elsewhere): clear ours.
        _current_record.set(None)


# --- call sites --------------------------------------------------------------------------

_app_code: dict[tuple[t.Any, tuple[str, ...]], bool] = {}
_APP_CODE_CACHE_SIZE = 20000


def _is_app_frame(frame: t.Any, packages: tuple[str, ...]) -> bool:
    key = (frame.f_code, packages)
    known = _app_code.get(key)
    if known is not None:
        return known
    name = frame.f_globals.get("__name__") or ""
    dotted = name + "."
    result = dotted.startswith(packages)
    if len(_app_code) >= _APP_CODE_CACHE_SIZE:
        _app_code.clear()
    _app_code[key] = result
    return result


def find_call_site(packages: tuple[str, ...], depth: int = 2) -> CallSite | None:
    """The innermost frame of application code (modules under ``packages``)."""
    if not packages:
        return None
    frame: t.Any = sys._getframe(depth)
    while frame is not None:
        if _is_app_frame(frame, packages):
            code = frame.f_code
            return CallSite(code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return None


# --- parameters --------------------------------------------------------------------------


def _params_hash(parameters: t.Any) -> int:
    """A hash of the bound values, to tell "same parameters" from "different" without
    keeping them. Unhashable values (lists, dicts, buffers) fall back to their repr."""
    try:
        if isinstance(parameters, dict):
            return hash(tuple(parameters.items()))
        if isinstance(parameters, list):
            return hash(tuple(parameters))
        return hash(parameters)
    except TypeError:
        try:
            return hash(repr(parameters))
        except Exception:
            return 0


# --- the cursor wrapper ------------------------------------------------------------------


class _TimedCursor:
    """A DBAPI cursor that tells capture when its result is exhausted or closed."""

    __slots__ = ("_qw_cursor", "_qw_query", "_qw_record")

    def __init__(self, cursor: t.Any, query: QueryInfo, record: Record) -> None:
        object.__setattr__(self, "_qw_cursor", cursor)
        object.__setattr__(self, "_qw_query", query)
        object.__setattr__(self, "_qw_record", record)

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._qw_cursor, name)

    def __setattr__(self, name: str, value: t.Any) -> None:
        setattr(self._qw_cursor, name, value)

    def __iter__(self) -> Iterator[t.Any]:
        return iter(self._qw_cursor)

    def _qw_rebind(self, query: QueryInfo, record: Record) -> None:
        object.__setattr__(self, "_qw_query", query)
        object.__setattr__(self, "_qw_record", record)

    def fetchone(self) -> t.Any:
        row = self._qw_cursor.fetchone()
        q = self._qw_query
        q.fetched = True
        if row is not None:
            q.rows += 1
        q.last_activity = perf_counter()
        return row

    def fetchmany(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        rows = self._qw_cursor.fetchmany(*args, **kwargs)
        q = self._qw_query
        q.fetched = True
        q.rows += len(rows)
        q.last_activity = perf_counter()
        return rows

    def fetchall(self) -> t.Any:
        rows = self._qw_cursor.fetchall()
        q = self._qw_query
        q.fetched = True
        q.rows += len(rows)
        q.last_activity = perf_counter()
        return rows

    def close(self) -> None:
        q = self._qw_query
        if not q.done:
            end = perf_counter()
            with fail_open("capture.cursor_close"):
                if not q.fetched:
                    rowcount = getattr(self._qw_cursor, "rowcount", -1)
                    if isinstance(rowcount, int) and rowcount > 0:
                        q.rows = rowcount
                _finish_query(self._qw_record, q, end, None)
        self._qw_cursor.close()


def _finish_query(record: Record, q: QueryInfo, end: float, error: str | None) -> None:
    """Give ``q`` its final duration and fold it into the record's aggregates."""
    if q.done or record.closed:
        q.done = True
        return
    q.done = True
    if error is not None:
        q.error = error
        record.errors += 1
    d = end - q.start
    if d < 0.0:
        d = 0.0
    q.duration = d
    record.db_time += d
    fp = q.fingerprint
    shape = record.shapes.get(fp.id)
    if shape is None:
        shape = record.shapes[fp.id] = ShapeStats(fp, site=q.site)
    shape.calls += 1
    shape.total += d
    shape.rows += q.rows
    if d < shape.min:
        shape.min = d
    if d > shape.max:
        shape.max = d
    if error is not None:
        shape.errors += 1
    idx = bucket_index(d)
    shape.hist[idx] = shape.hist.get(idx, 0) + 1
    key = (fp.id, q.site)
    loop = record.loops.get(key)
    if loop is None and len(record.loops) < _MAX_LOOP_KEYS:
        loop = record.loops[key] = LoopStats(fp, q.site, q.relationship)
    if loop is not None:
        loop.count += 1
        loop.total += d
        if len(loop.param_hashes) < _MAX_PARAM_HASHES:
            loop.param_hashes.add(q.params_hash)
        if loop.relationship is None:
            loop.relationship = q.relationship
    if fp.operation == "SELECT":
        rkey = (fp.id, q.params_hash)
        rep = record.repeats.get(rkey)
        if rep is None and len(record.repeats) < _MAX_REPEAT_KEYS:
            rep = record.repeats[rkey] = RepeatStats(fp, q.site)
        if rep is not None:
            rep.count += 1
            rep.total += d
    if d >= record.settings.slow_query_seconds and len(record.slow) < _MAX_SLOW_PER_RECORD:
        record.slow.append(q)


# --- SQLAlchemy listeners ----------------------------------------------------------------


def _before_cursor_execute(
    conn: Connection,
    cursor: t.Any,
    statement: str,
    parameters: t.Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    record = _current_record.get()
    if record is None or context is None:
        return
    context._querywatch_start = perf_counter()  # type: ignore[attr-defined]


def _after_cursor_execute(
    conn: Connection,
    cursor: t.Any,
    statement: str,
    parameters: t.Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    record = _current_record.get()
    if record is None or context is None or record.closed:
        return
    with fail_open("capture.after_cursor_execute"):
        start = getattr(context, "_querywatch_start", None)
        if start is None:
            return
        context._querywatch_start = None  # type: ignore[attr-defined]
        options = context.execution_options
        if options.get(IGNORE_OPTION) or (
            record.engines is not None and conn.engine not in record.engines
        ):
            return
        query = _new_query(record, statement, parameters, context, executemany, start)
        description = getattr(cursor, "description", None)
        if description is None:
            rowcount = getattr(cursor, "rowcount", -1)
            if isinstance(rowcount, int) and rowcount > 0:
                query.rows = rowcount
            _finish_query(record, query, perf_counter(), None)
            return
        current = context.cursor
        if isinstance(current, _TimedCursor):
            # insertmanyvalues runs several batches on one context and cursor.
            current._qw_rebind(query, record)
        else:
            context.cursor = _TimedCursor(current, query, record)
        record.open_queries.append(query)


def _new_query(
    record: Record,
    statement: str,
    parameters: t.Any,
    context: ExecutionContext,
    executemany: bool,
    start: float,
) -> QueryInfo:
    settings = record.settings
    fp = fingerprint(statement)
    batch = 1
    if executemany and isinstance(parameters, (list, tuple)) and parameters:
        first = parameters[0]
        if isinstance(first, (list, tuple, dict)):
            batch = len(parameters)
    query = QueryInfo(
        fingerprint=fp,
        start=start,
        site=find_call_site(settings.app_packages, depth=3),
        relationship=context.execution_options.get(_RELATIONSHIP_OPTION),
        batch_size=batch,
        params_hash=_params_hash(parameters),
    )
    context._querywatch_query = query  # type: ignore[attr-defined]
    record.query_count += 1
    if len(record.queries) < settings.max_queries_per_request:
        record.queries.append(query)
    else:
        record.dropped += 1
    return query


def _handle_error(exception_context: ExceptionContext) -> None:
    record = _current_record.get()
    if record is None or record.closed:
        return
    with fail_open("capture.handle_error"):
        context = exception_context.execution_context
        if context is None:
            return
        error = type(exception_context.original_exception).__name__
        query: QueryInfo | None = getattr(context, "_querywatch_query", None)
        if query is None or query.done:
            start = getattr(context, "_querywatch_start", None)
            statement = exception_context.statement
            if start is None or statement is None:
                return
            context._querywatch_start = None  # type: ignore[attr-defined]
            if context.execution_options.get(IGNORE_OPTION):
                return
            query = _new_query(
                record,
                statement,
                exception_context.parameters,
                context,
                bool(getattr(context, "executemany", False)),
                start,
            )
        _finish_query(record, query, perf_counter(), error)


def _do_orm_execute(orm_execute_state: ORMExecuteState) -> None:
    if _current_record.get() is None or not orm_execute_state.is_relationship_load:
        return
    with fail_open("capture.do_orm_execute"):
        path = orm_execute_state.loader_strategy_path
        if path is None or not path.path:
            return
        prop = path.path[-1]
        parent = getattr(getattr(prop, "parent", None), "class_", None)
        key = getattr(prop, "key", None)
        if parent is None or key is None:
            return
        orm_execute_state.update_execution_options(
            **{_RELATIONSHIP_OPTION: f"{parent.__name__}.{key}"}
        )


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Listen on every :class:`~sqlalchemy.engine.Engine` and ORM session, once per process.

    Class-level listeners reach engines made before and after this call, Flask-SQLAlchemy's
    binds and plain engines alike; a unit of work decides what is recorded.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
        event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
        event.listen(Engine, "handle_error", _handle_error)
        event.listen(Session, "do_orm_execute", _do_orm_execute)
        _installed = True


def uninstall() -> None:
    """Remove the listeners (used by benchmarks to compare with and without)."""
    global _installed
    with _install_lock:
        if not _installed:
            return
        event.remove(Engine, "before_cursor_execute", _before_cursor_execute)
        event.remove(Engine, "after_cursor_execute", _after_cursor_execute)
        event.remove(Engine, "handle_error", _handle_error)
        event.remove(Session, "do_orm_execute", _do_orm_execute)
        _installed = False
