"""The hot path: SQLAlchemy's dialect events record every statement of the current unit
of work (a request or a job) into a :class:`Record` held in a
:class:`contextvars.ContextVar`.

When no unit of work is open the listeners cost one ``ContextVar.get``. No I/O happens
here: records are handed to :mod:`querywatch.stats` when the unit of work ends, and the
store is written later by a background thread.

A statement's duration runs from just before the DBAPI ``execute`` until its result is
exhausted or closed, not only until ``execute()`` returns: SQLite does most of a scan
while rows are fetched, so execute-only timing would hide exactly the full scans we hunt.
Reads are timed by :class:`_TimedFetch`, the fetch strategy SQLAlchemy calls for every
fetch and for the close of the result; writes and streamed reads by :class:`_TimedCursor`,
a wrapper of the DBAPI cursor the result is built on.
"""

from __future__ import annotations

import contextvars
import dataclasses
import sys
import threading
import typing as t
from math import frexp
from time import perf_counter
from time import time as wall_time

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.engine import Engine
from sqlalchemy.engine.cursor import _DEFAULT_FETCH
from sqlalchemy.engine.cursor import _NO_CURSOR_DQL
from sqlalchemy.engine.cursor import CursorFetchStrategy

from ._failopen import swallow
from .fingerprint import Fingerprint
from .fingerprint import fingerprint
from .stats import _EXP_OFFSET
from .stats import _HIST_BASE
from .stats import MAX_BUCKET as _MAX_BUCKET
from .stats import bucket_index

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import ExceptionContext

    from .config import Settings

__all__ = ["CallSite", "QueryInfo", "Record", "current_record"]

#: An execution option that hides a connection's statements from capture.
IGNORE_OPTION = "querywatch_ignore"


class CallSite(t.NamedTuple):
    """Where application code issued a statement."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class QueryInfo:
    """One captured statement.

    A slotted class with a positional constructor rather than a dataclass: one is made
    per statement, and most fields start at the same value."""

    __slots__ = (
        "fingerprint",
        "start",
        "duration",
        "rows",
        "error",
        "site",
        "relationship",
        "batch_size",
        "params_hash",
        "done",
        "last_activity",
        "fetched",
        "kept",
    )

    def __init__(
        self,
        fingerprint: Fingerprint,
        site: CallSite | None,
        relationship: str | None,
        params_hash: int,
        batch_size: int = 1,
    ) -> None:
        self.fingerprint = fingerprint
        #: ``time.perf_counter()`` when the cursor was asked to execute.
        self.start = 0.0
        #: Seconds from execute until the result was exhausted or closed.
        self.duration = 0.0
        #: Rows fetched (reads) or affected (writes), as far as the driver tells.
        self.rows = 0
        #: The exception's class name when the statement failed.
        self.error: str | None = None
        self.site = site
        #: ``Model.attr`` when an ORM lazy load issued the statement.
        self.relationship = relationship
        #: Parameter sets of an ``executemany``; 1 otherwise.
        self.batch_size = batch_size
        #: Hash of the bound parameters (never the values themselves).
        self.params_hash = params_hash
        #: Set once the duration is final.
        self.done = False
        #: ``perf_counter()`` of the last fetch, used if the result is never closed.
        self.last_activity = 0.0
        self.fetched = False
        #: Kept in :attr:`Record.queries`, and so aggregated when the unit of work ends;
        #: statements past the cap are aggregated as soon as they end.
        self.kept = True

    def __repr__(self) -> str:
        return (
            f"<QueryInfo {self.fingerprint.id} {self.duration * 1000:.3f} ms"
            f" {self.rows} rows{' ' + self.error if self.error else ''}>"
        )


@dataclasses.dataclass(slots=True)
class LoopStats:
    """What one unit of work did with one (shape, call site): the input of the N+1 and
    repeated-query detectors, and of the per-shape aggregates built when it ends."""

    fingerprint: Fingerprint
    site: CallSite | None
    relationship: str | None = None
    count: int = 0
    total: float = 0.0
    errors: int = 0
    rows: int = 0
    min: float = float("inf")
    max: float = 0.0
    #: Latency histogram, bucket index (:func:`querywatch.stats.bucket_index`) to count.
    hist: dict[int, int] = dataclasses.field(default_factory=dict)
    #: Hash of each distinct parameter set -> executions with it, up to
    #: :data:`MAX_PARAM_HASHES` sets: the input of the N+1 detector (how many distinct)
    #: and of the repeated-query detector (how often the same).
    params: dict[int, int] = dataclasses.field(default_factory=dict)


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


class Record:
    """Everything captured during one request or job.

    A plain class with ``__slots__`` rather than a dataclass: one is made per request, and
    a dataclass's ``default_factory`` fields cost a call each.
    """

    __slots__ = (
        "name",
        "kind",
        "settings",
        "engines",
        "started",
        "started_wall",
        "duration",
        "status",
        "queries",
        "dropped",
        "query_count",
        "db_time",
        "errors",
        "shapes",
        "loops",
        "slow",
        "open_dropped",
        "closed",
    )

    def __init__(
        self,
        name: str,
        kind: str,
        settings: Settings,
        engines: frozenset[Engine] | None = None,
        started_wall: float | None = None,
    ) -> None:
        #: ``"GET /orders/<int:id>"`` for a request, ``"job:nightly-sync"`` for a job.
        self.name = name
        self.kind = kind
        self.settings = settings
        #: Restricts capture to these engines when not ``None``.
        self.engines = engines
        self.started = perf_counter()
        self.started_wall = wall_time() if started_wall is None else started_wall
        self.duration = 0.0
        self.status = 0
        #: The statements, capped at ``settings.max_queries_per_request``.
        self.queries: list[QueryInfo] = []
        #: Statements not kept in :attr:`queries` because of the cap (still aggregated).
        self.dropped = 0
        self.query_count = 0
        self.db_time = 0.0
        self.errors = 0
        self.shapes: dict[str, ShapeStats] = {}
        self.loops: dict[tuple[str, CallSite | None], LoopStats] = {}
        self.slow: list[QueryInfo] = []
        #: Statements past the cap whose result is still open.
        self.open_dropped: list[QueryInfo] = []
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"<Record {self.name!r} {self.query_count} queries"
            f" {self.db_time * 1000:.1f} ms in the database>"
        )

    def finish(self, status: int = 0) -> None:
        """Close the unit of work: end results left open, aggregate, fix the duration.

        Kept statements are aggregated here, in one pass, rather than one at a time while
        the request runs: the pass touches the aggregates while they are hot in the CPU's
        caches, which measured several microseconds a statement cheaper."""
        now = perf_counter()
        for q in self.queries:
            _end_left_open(q, now)
            _aggregate(self, q)
        for q in self.open_dropped:
            if not q.done:  # the others were aggregated when they ended
                _end_left_open(q, now)
                _aggregate(self, q)
        self.open_dropped.clear()
        _shapes_from_loops(self)
        self.status = status
        self.duration = now - self.started
        self.closed = True


_current_record: contextvars.ContextVar[Record | None] = contextvars.ContextVar(
    "querywatch_record", default=None
)

#: Caps on per-request bookkeeping so a request with 15,000 queries stays bounded.
_MAX_LOOP_KEYS = 1000
#: Distinct shapes per unit of work; past it, statements count under "other" (exactly).
_MAX_SHAPES_PER_RECORD = 2000
#: Stands for the shapes past the per-record cap; the stats fold it into their own "other".
_OTHER_FINGERPRINT = Fingerprint(id="other", shape="(other query shapes)", operation="")
MAX_PARAM_HASHES = 64
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

#: Per package prefixes: code object -> whether it is application code.
_app_code: dict[tuple[str, ...], dict[t.Any, bool]] = {}
#: Interned call sites, so the hot path builds none and hashes a cached tuple.
_sites: dict[tuple[t.Any, int], CallSite] = {}
#: Per package prefixes: fingerprint id -> (depth, code, line, site) where it was last found.
_site_memo: dict[tuple[str, ...], dict[str, tuple[int, t.Any, int, CallSite]]] = {}
_CACHE_SIZE = 20000


def find_call_site(
    packages: tuple[str, ...], memo_key: str | None = None, depth: int = 2
) -> CallSite | None:
    """The innermost frame of application code (modules under ``packages``).

    Walking the stack costs about as much as all the rest of capture, and one shape is
    nearly always issued from one place. So where ``memo_key`` (the fingerprint id) was
    found before, the frame at the same depth is checked first: same code object and same
    line means the same call site, for the price of one ``sys._getframe``. Otherwise, or
    when the stack differs, the stack is walked and the memo updated.
    """
    if not packages:
        return None
    memos = _site_memo.get(packages)
    if memos is None:
        memos = _site_memo[packages] = {}
    if memo_key is not None:
        memo = memos.get(memo_key)
        if memo is not None:
            try:
                f = sys._getframe(memo[0])
            except ValueError:
                f = None
            if f is not None and f.f_code is memo[1] and f.f_lineno == memo[2]:
                return memo[3]
    known = _app_code.get(packages)
    if known is None:
        known = _app_code[packages] = {}
    frame: t.Any = sys._getframe(depth)
    d = depth
    while frame is not None:
        code = frame.f_code
        is_app = known.get(code)
        if is_app is None:
            if len(known) >= _CACHE_SIZE:
                known.clear()
            name = frame.f_globals.get("__name__") or ""
            is_app = known[code] = (name + ".").startswith(packages)
        if is_app:
            lineno = frame.f_lineno
            key = (code, lineno)
            site = _sites.get(key)
            if site is None:
                if len(_sites) >= _CACHE_SIZE:
                    _sites.clear()
                site = _sites[key] = CallSite(code.co_filename, lineno, code.co_name)
            if memo_key is not None:
                if len(memos) >= _CACHE_SIZE:
                    memos.clear()
                memos[memo_key] = (d, code, lineno, site)
            return site
        frame = frame.f_back
        d += 1
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


#: Loader path -> "Model.attr"; kept with the path so an id is never reused while cached.
_relationship_names: dict[int, tuple[t.Any, str | None]] = {}


def _relationship(context: t.Any) -> str | None:
    """``Model.attr`` when the statement is an ORM lazy load, else None.

    The lazy loader executes with load options naming the instance it loads from, and its
    statement carries the loader path whose last element is the relationship."""
    options = context.execution_options.get("_sa_orm_load_options")
    if options is None or getattr(options, "_lazy_loaded_from", None) is None:
        return None
    compile_options = getattr(context.invoked_statement, "_compile_options", None)
    path = getattr(compile_options, "_current_path", None)
    if path is None:
        return None
    cached = _relationship_names.get(id(path))
    if cached is not None and cached[0] is path:
        return cached[1]
    name = None
    if path:
        prop = path[-1]
        parent = getattr(getattr(prop, "parent", None), "class_", None)
        key = getattr(prop, "key", None)
        if parent is not None and key is not None:
            name = f"{parent.__name__}.{key}"
    if len(_relationship_names) >= _CACHE_SIZE:
        _relationship_names.clear()
    _relationship_names[id(path)] = (path, name)
    return name


# --- the cursor wrapper ------------------------------------------------------------------


class _TimedCursor:
    """A DBAPI cursor that tells capture when its result is exhausted or closed.

    It is put on ``context.cursor`` before the statement runs; SQLAlchemy executes on the
    raw cursor it already holds, then builds the result on this one, and closes it when
    the rows are exhausted (at once for statements that return none)."""

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
            try:
                if not q.fetched:
                    rowcount = getattr(self._qw_cursor, "rowcount", -1)
                    if isinstance(rowcount, int) and rowcount > 0:
                        q.rows = rowcount
                _end_query(self._qw_record, q, end, None)
            except Exception as e:
                swallow("capture.cursor_close", e)
        self._qw_cursor.close()


def _end_left_open(q: QueryInfo, now: float) -> None:
    """A result never exhausted nor closed ends at its last fetch (or now)."""
    if not q.done:
        q.done = True
        end = q.last_activity or now
        q.duration = end - q.start if end > q.start else 0.0


def _end_query(record: Record, q: QueryInfo, end: float, error: str | None) -> None:
    """Fix ``q``'s duration; statements past the cap are aggregated at once."""
    if q.done:
        return
    q.done = True
    q.duration = end - q.start if end > q.start else 0.0
    if error is not None:
        q.error = error
    if not q.kept and not record.closed:
        _aggregate(record, q)


class _TimedFetch(CursorFetchStrategy):
    """SQLAlchemy's own fetch strategy for reads, telling capture the rows and the end.

    SQLAlchemy calls its strategy for every fetch and for the close of a result anyway,
    so timing a read this way adds no call, where a cursor wrapper adds several. One
    stateless instance serves every statement; the statement is found on the
    execution context."""

    __slots__ = ()

    def soft_close(self, result: t.Any, dbapi_cursor: t.Any) -> None:
        result.cursor_strategy = _NO_CURSOR_DQL
        context = result.context
        q = context._querywatch_query
        if not q.done:
            _end_query(context._querywatch_record, q, perf_counter(), None)

    hard_close = soft_close

    def fetchone(self, result: t.Any, dbapi_cursor: t.Any, hard_close: bool = False) -> t.Any:
        try:
            row = dbapi_cursor.fetchone()
            q = result.context._querywatch_query
            q.last_activity = perf_counter()
            if row is None:
                result._soft_close(hard=hard_close)
            else:
                q.rows += 1
            return row
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)

    def fetchmany(self, result: t.Any, dbapi_cursor: t.Any, size: int | None = None) -> t.Any:
        try:
            rows = dbapi_cursor.fetchmany() if size is None else dbapi_cursor.fetchmany(size)
            q = result.context._querywatch_query
            q.last_activity = perf_counter()
            q.rows += len(rows)
            if not rows:
                result._soft_close()
            return rows
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)

    def fetchall(self, result: t.Any, dbapi_cursor: t.Any) -> t.Any:
        try:
            rows = dbapi_cursor.fetchall()
            result.context._querywatch_query.rows += len(rows)
            result._soft_close()
            return rows
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)


_TIMED_FETCH = _TimedFetch()


def _aggregate(record: Record, q: QueryInfo) -> None:
    """Fold one ended statement into the record's per-(shape, call site) aggregates."""
    d = q.duration
    record.db_time += d
    if q.error is not None:
        record.errors += 1
    key = (q.fingerprint.id, q.site)
    loop = record.loops.get(key)
    if loop is None:
        if len(record.loops) >= _MAX_LOOP_KEYS:
            _add_to_shape(record, q)  # exact per shape, without loop detail
            return
        loop = record.loops[key] = LoopStats(q.fingerprint, q.site, q.relationship)
    loop.count += 1
    loop.total += d
    loop.rows += q.rows
    if d < loop.min:
        loop.min = d
    if d > loop.max:
        loop.max = d
    if q.error is not None:
        loop.errors += 1
    # bucket_index(d), inlined: this runs for every statement.
    m, e = frexp(d)
    idx = (e + _EXP_OFFSET) * 4 + int((m - 0.5) * 8.0) if d > _HIST_BASE else 0
    if idx > _MAX_BUCKET:
        idx = _MAX_BUCKET
    hist = loop.hist
    hist[idx] = hist.get(idx, 0) + 1
    params = loop.params
    n = params.get(q.params_hash)
    if n is not None:
        params[q.params_hash] = n + 1
    elif len(params) < MAX_PARAM_HASHES:
        params[q.params_hash] = 1
    if loop.relationship is None:
        loop.relationship = q.relationship
    if d >= record.settings.slow_query_seconds and len(record.slow) < _MAX_SLOW_PER_RECORD:
        record.slow.append(q)


def _add_to_shape(record: Record, q: QueryInfo) -> None:
    """The overflow path of :func:`_aggregate`, past the cap on loop entries."""
    shape = _shape_for(record, q.fingerprint, q.site)
    d = q.duration
    shape.calls += 1
    shape.total += d
    shape.rows += q.rows
    shape.min = min(shape.min, d)
    shape.max = max(shape.max, d)
    if q.error is not None:
        shape.errors += 1
    idx = bucket_index(d)
    shape.hist[idx] = shape.hist.get(idx, 0) + 1
    if d >= record.settings.slow_query_seconds and len(record.slow) < _MAX_SLOW_PER_RECORD:
        record.slow.append(q)


def _shape_for(record: Record, fp: Fingerprint, site: CallSite | None) -> ShapeStats:
    """The record's aggregate for ``fp``; past the cap, the shared "other" one."""
    shape = record.shapes.get(fp.id)
    if shape is None:
        if len(record.shapes) >= _MAX_SHAPES_PER_RECORD:
            fp, site = _OTHER_FINGERPRINT, None
            shape = record.shapes.get(fp.id)
        if shape is None:
            shape = record.shapes[fp.id] = ShapeStats(fp, site=site)
    return shape


def _shapes_from_loops(record: Record) -> None:
    """Per-shape aggregates: the loop entries of each shape added together."""
    for loop in record.loops.values():
        shape = _shape_for(record, loop.fingerprint, loop.site)
        shape.calls += loop.count
        shape.total += loop.total
        shape.rows += loop.rows
        shape.errors += loop.errors
        if loop.min < shape.min:
            shape.min = loop.min
        if loop.max > shape.max:
            shape.max = loop.max
        hist = shape.hist
        for k, v in loop.hist.items():
            hist[k] = hist.get(k, 0) + v


# --- SQLAlchemy listeners ----------------------------------------------------------------


def _begin(statement: str, parameters: t.Any, context: t.Any, executemany: bool) -> None:
    """Record a statement about to be sent to the DBAPI cursor."""
    record = _current_record.get()
    if record is None or context is None or record.closed:
        return
    try:
        current = context.cursor
        if isinstance(current, _TimedCursor):
            # insertmanyvalues: the next batch on the same context; the last one is done.
            _end_query(current._qw_record, current._qw_query, perf_counter(), None)
            if current._qw_record is not record:
                return
            query = _new_query(record, statement, parameters, context, executemany)
            object.__setattr__(current, "_qw_query", query)
            if not query.kept:
                record.open_dropped.append(query)
            query.start = perf_counter()
            return
        options = context.execution_options
        if options.get(IGNORE_OPTION) or (
            record.engines is not None and context.root_connection.engine not in record.engines
        ):
            return
        query = _new_query(record, statement, parameters, context, executemany)
        if (
            query.fingerprint.operation == "SELECT"
            and context.cursor_fetch_strategy is _DEFAULT_FETCH
            and not context._is_server_side
            and not options.get("stream_results")
        ):
            context.cursor_fetch_strategy = _TIMED_FETCH
            context._querywatch_record = record
        else:
            # Writes (whose results SQLAlchemy closes through other strategies) and
            # streamed reads: wrap the cursor.
            context.cursor = _TimedCursor(current, query, record)
        if not query.kept:
            record.open_dropped.append(query)
        query.start = perf_counter()
    except Exception as e:
        swallow("capture.do_execute", e)


def _do_execute(cursor: t.Any, statement: str, parameters: t.Any, context: t.Any) -> None:
    _begin(statement, parameters, context, False)


def _do_executemany(cursor: t.Any, statement: str, parameters: t.Any, context: t.Any) -> None:
    _begin(statement, parameters, context, True)


def _do_execute_no_params(cursor: t.Any, statement: str, context: t.Any) -> None:
    _begin(statement, (), context, False)


def _new_query(
    record: Record,
    statement: str,
    parameters: t.Any,
    context: t.Any,
    executemany: bool,
) -> QueryInfo:
    settings = record.settings
    batch = 1
    if executemany and isinstance(parameters, (list, tuple)) and parameters:
        first = parameters[0]
        if isinstance(first, (list, tuple, dict)):
            batch = len(parameters)
    # SQLAlchemy reuses one compiled object per statement from its compiled cache; the
    # shape is kept on it, which spares hashing the SQL text for every execution. (An
    # expanded IN list or a rendered literal changes the text, never the shape.)
    compiled = context.compiled
    if compiled is not None:
        fp = compiled.__dict__.get("_querywatch_fingerprint")
        if fp is None:
            fp = compiled._querywatch_fingerprint = fingerprint(statement)
    else:
        fp = fingerprint(statement)
    query = QueryInfo(
        fp,
        find_call_site(settings.app_packages, fp.id, depth=3),
        _relationship(context),
        _params_hash(parameters),
        batch,
    )
    context._querywatch_query = query
    record.query_count += 1
    if len(record.queries) < settings.max_queries_per_request:
        record.queries.append(query)
    else:
        query.kept = False
        record.dropped += 1
    return query


def _handle_error(exception_context: ExceptionContext) -> None:
    record = _current_record.get()
    if record is None or record.closed:
        return
    try:
        context = exception_context.execution_context
        if context is None:
            return
        query: QueryInfo | None = getattr(context, "_querywatch_query", None)
        if query is None:
            return
        error = type(exception_context.original_exception).__name__
        if query.done:
            # The statement ran; its fetch failed. It counts once, as an error.
            if query.error is None:
                query.error = error
                if not query.kept:  # already aggregated
                    record.errors += 1
                    loop = record.loops.get((query.fingerprint.id, query.site))
                    if loop is not None:
                        loop.errors += 1
            return
        _end_query(record, query, perf_counter(), error)
    except Exception as e:
        swallow("capture.handle_error", e)


_installed = False
_install_lock = threading.Lock()
_LISTENERS: tuple[tuple[str, t.Callable[..., t.Any]], ...] = (
    ("do_execute", _do_execute),
    ("do_executemany", _do_executemany),
    ("do_execute_no_params", _do_execute_no_params),
    ("handle_error", _handle_error),
)


def install() -> None:
    """Listen on every SQLAlchemy dialect, once per process.

    Class-level listeners reach engines made before and after this call, Flask-SQLAlchemy's
    binds and plain engines alike; a unit of work decides what is recorded.

    These are :class:`~sqlalchemy.events.DialectEvents`, not ``before_cursor_execute``:
    any connection-level listener switches every statement of the process onto
    SQLAlchemy's event-dispatch path (``Connection._has_events``), which by itself costs
    more per statement than all of capture, and stays on even after the listener is
    removed. Dialect events are dispatched only where the DBAPI is called. SQLAlchemy
    calls them semi-public; the tests run them on SQLite, PostgreSQL and MariaDB.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        for name, fn in _LISTENERS:
            event.listen(Dialect, name, fn)
        _installed = True


def uninstall() -> None:
    """Remove the listeners."""
    global _installed
    with _install_lock:
        if not _installed:
            return
        for name, fn in _LISTENERS:
            event.remove(Dialect, name, fn)
        _installed = False
