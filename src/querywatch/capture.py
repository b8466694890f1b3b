"""The hot path: SQLAlchemy's dialect events record every statement of the current unit
of work (a request or a job) into a :class:`Record` held in a
:class:`contextvars.ContextVar`.

When no unit of work is open the listeners cost one ``ContextVar.get``. No I/O happens
here: records are handed to :mod:`querywatch.stats` when the unit of work ends, and the
store is written later by a background thread.

A statement's duration runs from just before the DBAPI ``execute`` until its result is
exhausted or closed, not only until ``execute()`` returns: SQLite does most of a scan
while rows are fetched, so execute-only timing would hide exactly the full scans we hunt.
Reads are timed by :class:`_TimedRead`, the fetch strategy SQLAlchemy calls for every
fetch and for the close of the result; writes and streamed reads by :class:`_TimedCursor`,
a wrapper of the DBAPI cursor the result is built on.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import sys
import threading
import typing as t
import weakref
from math import frexp
from time import perf_counter
from time import time as wall_time

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.engine import Engine
from sqlalchemy.engine.cursor import _DEFAULT_FETCH
from sqlalchemy.engine.cursor import _NO_CURSOR_DQL
from sqlalchemy.engine.cursor import CursorFetchStrategy
from sqlalchemy.orm import Session

from ._failopen import record_internal_error
from ._failopen import swallow
from .fingerprint import Fingerprint
from .fingerprint import fingerprint
from .sql import IGNORE_OPTION
from .stats import _EXP_OFFSET
from .stats import _HIST_BASE
from .stats import MAX_BUCKET as _MAX_BUCKET
from .stats import bucket_index

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import ExceptionContext

    from .config import Settings

__all__ = ["CallSite", "QueryInfo", "Record", "current_record"]


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
        "sample",
        "bump",
        "sample_min",
    )

    #: (statement, parameters, engine URL, the DBAPI connection of an in-memory SQLite
    #: database or None) of a slow read; set only then.
    sample: tuple[str, t.Any, t.Any, t.Any]
    #: The tables of an autocommit write, bumped in the cache once it has run; set only
    #: then.
    bump: frozenset[str]
    #: A timed read this slow keeps its :attr:`sample` (its record's threshold); set on
    #: timed reads only.
    sample_min: float

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
        # ``sample``: (statement, parameters, engine URL, ...) of a slow read, set only then
        # (read it with ``getattr(q, "sample", None)``): no cost for the others.

    def __repr__(self) -> str:
        return (
            f"<QueryInfo {self.fingerprint.id} {self.duration * 1000:.3f} ms"
            f" {self.rows} rows{' ' + self.error if self.error else ''}>"
        )


class LoopStats:
    """What one unit of work did with one (shape, call site): the input of the N+1 and
    repeated-query detectors and of the per-shape aggregates.

    A slotted class with a positional constructor: one is made per (shape, call site) of
    every request."""

    __slots__ = (
        "fingerprint",
        "site",
        "relationship",
        "calls",
        "total",
        "errors",
        "rows",
        "min",
        "max",
        "hist",
        "params",
    )

    def __init__(
        self,
        fingerprint: Fingerprint,
        site: CallSite | None,
        relationship: str | None = None,
        calls: int = 0,
        total: float = 0.0,
        errors: int = 0,
        rows: int = 0,
        min: float = math.inf,
        max: float = 0.0,
        hist: dict[int, int] | None = None,
        params: dict[int, int] | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.site = site
        self.relationship = relationship
        self.calls = calls
        self.total = total
        self.errors = errors
        self.rows = rows
        self.min = min
        self.max = max
        #: Latency histogram, bucket index (:func:`querywatch.stats.bucket_index`) to count.
        self.hist: dict[int, int] = {} if hist is None else hist
        #: Hash of each distinct parameter set -> executions with it, up to
        #: :data:`MAX_PARAM_HASHES` sets: the input of the N+1 detector (how many distinct)
        #: and of the repeated-query detector (how often the same).
        self.params: dict[int, int] = {} if params is None else params

    def __repr__(self) -> str:
        return f"<LoopStats {self.fingerprint.id} at {self.site} x{self.calls}>"


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
        "overflow",
        "loops",
        "token",
        "slow",
        "open_dropped",
        "closed",
        "max_queries",
        "slow_seconds",
        "sample_min",
        "packages",
        "user",
        "setup",
        "commit_site",
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
        #: Per (shape, call site): exact counts, for the first 1,000 of them.
        #: Keyed by shape, call site and relationship (or refresh): a lazy load and the
        #: same statement run by hand at one line are two things.
        self.loops: dict[tuple[str, CallSite | None, str | None], LoopStats] = {}
        #: Per shape, the statements past the cap on :attr:`loops` (exact, without the
        #: per-site detail), up to 2,000 shapes and then under "other".
        self.overflow: dict[str, ShapeStats] = {}
        #: The context variable's token while the record is the current one.
        self.token: contextvars.Token[Record | None] | None = None
        self.slow: list[QueryInfo] = []
        #: Statements past the cap whose result is still open.
        self.open_dropped: list[QueryInfo] = []
        self.closed = False
        self.max_queries = settings.max_queries_per_request
        self.slow_seconds = settings.slow_query_seconds
        #: A read at least this slow keeps a sample of its statement and parameters for
        #: the advisor: this app's slow-query threshold when it advises, every read while
        #: a CI gate collector is open (:func:`sample_every_read`).
        self.sample_min = (
            0.0
            if _collectors_open
            else (settings.slow_query_seconds if settings.advise else math.inf)
        )
        self.packages = settings.app_packages
        #: Who made the request, when the app names its users (``QUERYWATCH_USER``).
        self.user: str | None = None
        #: SQLAlchemy's own statements of a first connection made during this unit
        #: of work (the server's version, its default schema...), apart from its own.
        self.setup: Record | None = None
        #: Where the app last committed an ORM session in this unit of work (a commit
        #: expires the session's objects, and reading them again reloads each one).
        self.commit_site: CallSite | None = None

    def __repr__(self) -> str:
        return (
            f"<Record {self.name!r} {self.query_count} queries"
            f" {self.db_time * 1000:.1f} ms in the database>"
        )

    @property
    def shapes(self) -> dict[str, ShapeStats]:
        """Per-shape aggregates of the unit of work (built on each access): the loop
        entries of each shape added together, with the statements past the cap."""
        shapes = {fp: dataclasses.replace(s, hist=dict(s.hist)) for fp, s in self.overflow.items()}
        for loop in self.loops.values():
            fp = loop.fingerprint
            shape = shapes.get(fp.id)
            if shape is None:
                if len(shapes) >= _MAX_SHAPES_PER_RECORD:
                    fp = _OTHER_FINGERPRINT
                    shape = shapes.get(fp.id)
                if shape is None:
                    shape = shapes[fp.id] = ShapeStats(fp, site=loop.site)
            shape.calls += loop.calls
            shape.total += loop.total
            shape.rows += loop.rows
            shape.errors += loop.errors
            shape.min = min(shape.min, loop.min)
            shape.max = max(shape.max, loop.max)
            for k, v in loop.hist.items():
                shape.hist[k] = shape.hist.get(k, 0) + v
        return shapes

    def finish(self, status: int = 0) -> None:
        """Close the unit of work: end results left open, aggregate, fix the duration.

        Kept statements are aggregated here, in one pass, rather than one at a time while
        the request runs: the pass touches the aggregates while they are hot in the CPU's
        caches, which measured several microseconds a statement cheaper."""
        now = perf_counter()
        for q in self.queries:
            if not q.done:
                _end_left_open(q, now)
            _aggregate(self, q)
        for q in self.open_dropped:
            if not q.done:  # the others were aggregated when they ended
                _end_left_open(q, now)
                _aggregate(self, q)
        self.open_dropped.clear()
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


#: CI gate collectors open in the process (:mod:`querywatch.ci.gate`): while one is, every
#: read of every record keeps its sample, so that its plan can be asked for.
_collectors_open = 0
_collectors_lock = threading.Lock()


def sample_every_read(on: bool) -> None:
    """Open (``True``) or close (``False``) one CI gate collector: records made while any
    is open keep a sample of every read."""
    global _collectors_open
    with _collectors_lock:
        _collectors_open = max(0, _collectors_open + (1 if on else -1))


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


# --- statements and call sites ----------------------------------------------------------

# Code objects compare equal without their file name: the same function loaded from two
# files (two checkouts, two copies of a module) is one key unless the file is part of it.

#: Per package prefixes: (code object, file) -> whether it is application code.
_app_code: dict[tuple[str, ...], dict[t.Any, bool]] = {}
#: Interned call sites, so the hot path builds none and hashes a cached tuple.
_sites: dict[tuple[t.Any, str, int], CallSite] = {}
_CACHE_SIZE = 20000


class _Statement:
    """What capture keeps about one statement between executions.

    SQLAlchemy reuses one compiled object per statement from its compiled cache; this sits
    on it, so an execution reads the shape, the relationship and the last call site from
    one object instead of hashing the SQL text and walking the stack. (An expanded ``IN``
    list or a rendered literal changes the text, never the shape; the ORM's loader path is
    part of SQLAlchemy's cache key, so a compiled object has one path.)"""

    __slots__ = ("fingerprint", "select", "relationship", "site_memo")

    def __init__(self, fp: Fingerprint, relationship: str | None) -> None:
        self.fingerprint = fp
        #: A read whose rows SQLAlchemy fetches through its default strategy.
        self.select = fp.operation == "SELECT"
        #: ``Model.attr`` when an ORM loader path issued it; used for lazy loads only.
        self.relationship = relationship
        #: ``(packages, depth, code, f_lasti, site)`` where application code last issued
        #: it, ``depth`` counted from :func:`_begin`'s frame.
        self.site_memo: tuple[tuple[str, ...], int, t.Any, int, CallSite | None] | None = None


#: Statements without a compiled object (``exec_driver_sql``), by SQL text.
_uncompiled: dict[str, _Statement] = {}

#: The URL of the engine that ran each read shape, by fingerprint, as the engine resolved
#: it (Flask-SQLAlchemy's instance-folder SQLite path, a bind's own database): the
#: advisor explains a shape on the database that ran it. Bounded, oldest dropped.
shape_urls: dict[str, t.Any] = {}
_SHAPE_URLS_CAP = 4096


def _note_url(info: _Statement, context: t.Any) -> None:
    """Remember the engine URL of a read shape (once per compiled statement)."""
    if not info.select:
        return
    try:
        shape_urls[info.fingerprint.id] = context.root_connection.engine.url
        if len(shape_urls) > _SHAPE_URLS_CAP:
            del shape_urls[next(iter(shape_urls))]
    except Exception as e:
        swallow("capture.shape_url", e)


def _statement(context: t.Any, statement: str) -> _Statement:
    compiled = context.compiled
    if compiled is None:
        info = _uncompiled.get(statement)
        if info is None:
            if len(_uncompiled) >= 2048:
                _uncompiled.clear()
            info = _Statement(fingerprint(statement, context.dialect), None)
            _note_url(info, context)
            if len(statement) <= 4096:
                _uncompiled[statement] = info
        return info
    info = compiled.__dict__.get("_querywatch")
    if info is None:
        # SQLAlchemy's compiled cache is the engine's own: one compiled object per engine.
        info = compiled._querywatch = _Statement(
            fingerprint(statement, context.dialect), _loader_relationship(context)
        )
        _note_url(info, context)
    return info


def find_call_site(packages: tuple[str, ...], depth: int = 1) -> tuple[CallSite | None, t.Any, int]:
    """The innermost frame of application code (modules under ``packages``): its call
    site, the frame, and its depth counted from the caller's frame (0), starting the walk
    at ``depth``. ``(None, None, -1)`` when no frame is application code.

    Walking the stack costs about as much as all the rest of capture, so :func:`_begin`
    remembers the result per statement and checks it with one ``sys._getframe``."""
    known = _app_code.get(packages)
    if known is None:
        known = _app_code[packages] = {}
    frame: t.Any = sys._getframe(depth + 1)
    d = depth
    while frame is not None:
        code = frame.f_code
        code_key = (code, code.co_filename)
        is_app = known.get(code_key)
        if is_app is None:
            if len(known) >= _CACHE_SIZE:
                known.clear()
            name = frame.f_globals.get("__name__") or ""
            is_app = known[code_key] = (name + ".").startswith(packages)
        if is_app:
            lineno = frame.f_lineno
            key = (code, code.co_filename, lineno)
            site = _sites.get(key)
            if site is None:
                if len(_sites) >= _CACHE_SIZE:
                    _sites.clear()
                site = _sites[key] = CallSite(code.co_filename, lineno, code.co_name)
            return site, frame, d
        frame = frame.f_back
        d += 1
    return None, None, -1


def _walk_for_site(info: _Statement, packages: tuple[str, ...]) -> CallSite | None:
    """The slow path of :func:`_begin`: walk the stack, and remember where the site was
    (as a depth from ``_begin``'s frame, one above this one) and at which instruction."""
    site, frame, depth = find_call_site(packages, 2)
    if frame is None:
        info.site_memo = None
        return None
    info.site_memo = (packages, depth - 1, frame.f_code, frame.f_lasti, site)
    return site


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


#: The relationship of a reload after a commit ends with this: ``"User" + REFRESHED``.
REFRESHED = " (refreshed after a commit)"

#: The table of each relationship's parent mapper (``"Author.books"``: ``"author"``), so
#: an N+1 finding can name the query that loaded the parents. Bounded.
relationship_tables: dict[str, str] = {}


def _refreshed(state: t.Any) -> str:
    try:
        return f"{state.class_.__name__}{REFRESHED}"
    except Exception:
        return f"object{REFRESHED}"


def _after_commit(session: t.Any) -> None:
    """An ORM session committed: remember where the app did it (see
    :attr:`Record.commit_site`)."""
    record = _current_record.get()
    if record is None or record.closed or not record.packages:
        return
    try:
        record.commit_site = find_call_site(record.packages)[0]
    except Exception as e:
        swallow("capture.commit", e)


def _loader_relationship(context: t.Any) -> str | None:
    """``Model.attr`` when an ORM loader path issued the statement, else None: the loader
    path's last element is the relationship."""
    compile_options = getattr(context.invoked_statement, "_compile_options", None)
    path = getattr(compile_options, "_current_path", None)
    if not path:
        return None
    prop = path[-1]
    mapper = getattr(prop, "parent", None)
    parent = getattr(mapper, "class_", None)
    key = getattr(prop, "key", None)
    if parent is not None and key is not None:
        name = f"{parent.__name__}.{key}"
        table = getattr(getattr(mapper, "local_table", None), "name", None)
        if table and len(relationship_tables) < 4096:
            relationship_tables[name] = str(table)
        return name
    return None


# --- the cursor wrapper ------------------------------------------------------------------


class _CursorProxy:
    """A DBAPI cursor that passes everything to the one it wraps (``_qw_cursor``)."""

    __slots__ = ("_qw_cursor",)

    def __init__(self, cursor: t.Any) -> None:
        object.__setattr__(self, "_qw_cursor", cursor)

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._qw_cursor, name)

    def __setattr__(self, name: str, value: t.Any) -> None:
        setattr(self._qw_cursor, name, value)

    def __iter__(self) -> Iterator[t.Any]:
        return iter(self._qw_cursor)


class _TimedCursor(_CursorProxy):
    """A DBAPI cursor that tells capture when its result is exhausted or closed.

    It is put on ``context.cursor`` before the statement runs; SQLAlchemy executes on the
    raw cursor it already holds, then builds the result on this one, and closes it when
    the rows are exhausted (at once for statements that return none)."""

    __slots__ = ("_qw_query", "_qw_record")

    def __init__(self, cursor: t.Any, query: QueryInfo, record: Record) -> None:
        object.__setattr__(self, "_qw_cursor", cursor)
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
    if _bump is not None:
        tables = getattr(q, "bump", None)
        if tables is not None:  # an autocommit write has landed
            _bump(tables)
    if not q.kept and not record.closed:
        _aggregate(record, q)


class _TimedRead(QueryInfo, CursorFetchStrategy):
    """A read, and SQLAlchemy's fetch strategy for its result: it tells capture the
    rows and the end.

    SQLAlchemy calls its strategy for every fetch and for the close of a result anyway,
    so timing a read this way adds no call, where a cursor wrapper adds several; and
    being the statement itself, it needs nothing stored on SQLAlchemy's objects."""

    __slots__ = ()

    def soft_close(self, result: t.Any, dbapi_cursor: t.Any) -> None:
        result.cursor_strategy = _NO_CURSOR_DQL
        if not self.done:
            end = perf_counter()
            self.done = True
            self.duration = end - self.start
            if self.duration >= self.sample_min:
                self._keep_sample(result.context)
            if not self.kept:  # past the cap: aggregated now
                try:
                    record = result.context._querywatch_record
                    if not record.closed:
                        _aggregate(record, self)
                except Exception as e:
                    swallow("capture.soft_close", e)

    hard_close = soft_close

    def _keep_sample(self, context: t.Any) -> None:
        """A slow read keeps its statement, parameters and engine URL, so the background
        advisor can explain it with real values (in memory only, dropped once used)."""
        try:
            params = context.parameters
            conn = context.root_connection
            url = conn.engine.url
            # An in-memory SQLite database exists on its connection only: keep it, so
            # the CI gate can copy the database to explain the read.
            memory = (
                conn.connection.dbapi_connection
                if url.database in (None, "", ":memory:") and url.get_backend_name() == "sqlite"
                else None
            )
            self.sample = (context.statement, params[0] if params else None, url, memory)
        except Exception as e:
            swallow("capture.sample", e)

    def fetchone(self, result: t.Any, dbapi_cursor: t.Any, hard_close: bool = False) -> t.Any:
        try:
            row = dbapi_cursor.fetchone()
            self.last_activity = perf_counter()
            if row is None:
                result._soft_close(hard=hard_close)
            else:
                self.rows += 1
            return row
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)

    def fetchmany(self, result: t.Any, dbapi_cursor: t.Any, size: int | None = None) -> t.Any:
        try:
            rows = dbapi_cursor.fetchmany() if size is None else dbapi_cursor.fetchmany(size)
            self.last_activity = perf_counter()
            self.rows += len(rows)
            if not rows:
                result._soft_close()
            return rows
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)

    def fetchall(self, result: t.Any, dbapi_cursor: t.Any) -> t.Any:
        try:
            rows = dbapi_cursor.fetchall()
            self.rows += len(rows)
            result._soft_close()
            return rows
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)


def _aggregate(record: Record, q: QueryInfo) -> None:
    """Fold one ended statement into the record's per-(shape, call site) aggregates."""
    d = q.duration
    record.db_time += d
    error = q.error is not None
    if error:
        record.errors += 1
    # bucket_index(d), inlined: this runs for every statement.
    m, e = frexp(d)
    idx = (e + _EXP_OFFSET) * 4 + int((m - 0.5) * 8.0) if d > _HIST_BASE else 0
    if idx > _MAX_BUCKET:
        idx = _MAX_BUCKET
    key = (q.fingerprint.id, q.site, q.relationship)
    loop = record.loops.get(key)
    if loop is None:
        if len(record.loops) >= _MAX_LOOP_KEYS:
            _add_to_shape(record, q)  # exact per shape, without loop detail
            return
        # Most (shape, site) pairs run once a request: built whole, in one call.
        record.loops[key] = LoopStats(
            q.fingerprint, q.site, q.relationship, 1, d, int(error), q.rows, d, d,
            {idx: 1}, {q.params_hash: 1},
        )  # fmt: skip
    else:
        loop.calls += 1
        loop.total += d
        loop.rows += q.rows
        if d < loop.min:
            loop.min = d
        if d > loop.max:
            loop.max = d
        if error:
            loop.errors += 1
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
    if d >= record.slow_seconds and len(record.slow) < _MAX_SLOW_PER_RECORD:
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
    if d >= record.slow_seconds and len(record.slow) < _MAX_SLOW_PER_RECORD:
        record.slow.append(q)


def _shape_for(record: Record, fp: Fingerprint, site: CallSite | None) -> ShapeStats:
    """The record's overflow aggregate for ``fp``; past the cap, the shared "other" one."""
    shape = record.overflow.get(fp.id)
    if shape is None:
        if len(record.overflow) >= _MAX_SHAPES_PER_RECORD:
            fp, site = _OTHER_FINGERPRINT, None
            shape = record.overflow.get(fp.id)
        if shape is None:
            shape = record.overflow[fp.id] = ShapeStats(fp, site=site)
    return shape


# --- SQLAlchemy listeners ----------------------------------------------------------------


def _begin(
    cursor: t.Any, statement: str, parameters: t.Any, context: t.Any, executemany: bool = False
) -> None:
    """Record a statement about to be sent to the DBAPI cursor (the ``do_execute``
    listener; the other two call it).

    This runs for every statement, so it is one function: the shape, relationship and
    call site come from the statement's :class:`_Statement`, checked, not recomputed."""
    record = _current_record.get()
    if record is None or context is None or record.closed:
        if _bump is not None and context is not None:
            _write_outside_record(context, statement)
        return
    try:
        if type(context.cursor) is _TimedCursor:
            _next_batch(record, statement, parameters, context, executemany)
            return
        options = context.execution_options
        if options.get(IGNORE_OPTION):
            return
        if not getattr(context.root_connection, "_allow_autobegin", True):
            # SQLAlchemy's dialect set-up on an engine's first connection (it runs them
            # on a Connection that never begins a transaction): not the app's queries.
            record = record.setup or _setup_record(record)
        compiled = context.compiled
        info = compiled.__dict__.get("_querywatch") if compiled is not None else None
        if info is None:
            info = _statement(context, statement)
        after_write = None
        if _bump is not None and not info.select:
            after_write = _note_write(context, statement, info)
        if record.engines is not None and context.root_connection.engine not in record.engines:
            if after_write is not None:
                context.cursor = _BumpCursor(context.cursor, after_write)
            return

        packages = record.packages
        memo = info.site_memo
        if memo is not None and (memo[0] is packages or memo[0] == packages):
            try:
                frame = sys._getframe(memo[1])
            except ValueError:
                frame = None
            if frame is not None and frame.f_code is memo[2] and frame.f_lasti == memo[3]:
                site = memo[4]
            else:
                site = _walk_for_site(info, packages)
        elif packages:
            site = _walk_for_site(info, packages)
        else:
            site = None

        relationship = info.relationship
        load = options.get("_sa_orm_load_options")
        if relationship is not None:  # a loader's statement: named when it loads lazily
            if load is None or getattr(load, "_lazy_loaded_from", None) is None:
                relationship = None
        elif load is not None and getattr(load, "_refresh_state", None) is not None:
            # The ORM reloading an object a commit expired (expire_on_commit).
            relationship = _refreshed(load._refresh_state)

        if type(parameters) is tuple:
            try:
                params_hash = hash(parameters)
            except TypeError:
                params_hash = _params_hash(parameters)
        else:
            params_hash = _params_hash(parameters)

        # A read SQLAlchemy fetches through its default strategy is timed by being that
        # strategy; writes (whose results SQLAlchemy closes through other strategies)
        # and streamed reads through a wrapper of the cursor.
        timed_read = (
            info.select
            and context.cursor_fetch_strategy is _DEFAULT_FETCH
            and not context._is_server_side
            and not options.get("stream_results")
        )
        query = (_TimedRead if timed_read else QueryInfo)(
            info.fingerprint,
            site,
            relationship,
            params_hash,
            _batch_size(parameters) if executemany else 1,
        )
        record.query_count += 1
        if len(record.queries) < record.max_queries:
            record.queries.append(query)
        else:
            query.kept = False
            record.dropped += 1
            record.open_dropped.append(query)
            context._querywatch_record = record
        if timed_read:
            query.sample_min = record.sample_min
            context.cursor_fetch_strategy = query
        else:
            context.cursor = _TimedCursor(context.cursor, query, record)
            if after_write is not None:
                query.bump = after_write
        query.start = perf_counter()
    except Exception as e:
        swallow("capture.do_execute", e)


#: The unit of work SQLAlchemy's connection set-up statements are counted under.
SETUP_NAME = "connection set-up"


def _setup_record(record: Record) -> Record:
    record.setup = Record(SETUP_NAME, "setup", record.settings, record.engines)
    record.setup.started_wall = record.started_wall
    return record.setup


def _next_batch(
    record: Record, statement: str, parameters: t.Any, context: t.Any, executemany: bool
) -> None:
    """insertmanyvalues: the next batch on the same context; the last one is done."""
    current = context.cursor
    _end_query(current._qw_record, current._qw_query, perf_counter(), None)
    if current._qw_record is not record:
        return
    info = _statement(context, statement)
    query = QueryInfo(
        info.fingerprint,
        current._qw_query.site,  # the same call issues every batch
        None,
        _params_hash(parameters),
        _batch_size(parameters) if executemany else 1,
    )
    record.query_count += 1
    if len(record.queries) < record.max_queries:
        record.queries.append(query)
    else:
        query.kept = False
        record.dropped += 1
        record.open_dropped.append(query)
    object.__setattr__(current, "_qw_query", query)
    query.start = perf_counter()


def _batch_size(parameters: t.Any) -> int:
    """Parameter sets of an ``executemany``."""
    if isinstance(parameters, (list, tuple)) and parameters:
        if isinstance(parameters[0], (list, tuple, dict)):
            return len(parameters)
    return 1


def _do_executemany(cursor: t.Any, statement: str, parameters: t.Any, context: t.Any) -> None:
    _begin(cursor, statement, parameters, context, True)


def _do_execute_no_params(cursor: t.Any, statement: str, context: t.Any) -> None:
    _begin(cursor, statement, (), context)


def _handle_error(exception_context: ExceptionContext) -> None:
    record = _current_record.get()
    if record is None or record.closed:
        return
    try:
        context = exception_context.execution_context
        if context is None:
            return
        query = _query_of(context)
        if query is None:
            return
        error = type(exception_context.original_exception).__name__
        if query.done:
            # The statement ran; its fetch failed. It counts once, as an error.
            if query.error is None:
                query.error = error
                if not query.kept:  # already aggregated
                    record.errors += 1
                    loop = record.loops.get((query.fingerprint.id, query.site, query.relationship))
                    if loop is not None:
                        loop.errors += 1
            return
        _end_query(record, query, perf_counter(), error)
    except Exception as e:
        swallow("capture.handle_error", e)


def _query_of(context: t.Any) -> QueryInfo | None:
    """The statement capture recorded on an execution context, if any."""
    strategy = context.cursor_fetch_strategy
    if isinstance(strategy, QueryInfo):
        return strategy
    cursor = context.cursor
    if isinstance(cursor, _TimedCursor):
        query: QueryInfo = cursor._qw_query
        return query
    return None


# --- writes, for the cache ------------------------------------------------------------
#
# A cache (:mod:`querywatch.cache`) must learn which tables each commit wrote, before the
# commit returns. Writes are noted where capture already sees every statement; the
# commit and rollback are seen by wrapping the dialect's ``do_commit``/``do_rollback`` on
# each dialect instance that ran a write (SQLAlchemy has no event after a commit: its
# ``commit`` event fires before it). Nothing of this runs until a cache exists.

#: Called with the tables a committed write touched; None while nothing listens. A write
#: reaches every listener of the process (two apps on one database share its tables), so
#: this is per process: each app hands its hook to :func:`track_writes`.
_bump: t.Callable[[frozenset[str]], None] | None = None
_write_hooks: list[weakref.WeakMethod[t.Callable[[frozenset[str]], None]]] = []
_write_hooks_lock = threading.Lock()
#: Tables written in the open transaction of each DBAPI connection, by ``id``; emptied by
#: the connection's commit or rollback.
_pending: dict[int, set[str]] = {}
_pending_lock = threading.Lock()
_DDL = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME"})


def track_writes(bump: t.Callable[[frozenset[str]], None]) -> None:
    """Call the bound method ``bump(tables)`` each time a transaction that wrote ``tables``
    commits (for an autocommit write: before it runs and once it has), while its object
    lives (a weak reference: an app that is gone stops listening)."""
    global _bump
    with _write_hooks_lock:
        _write_hooks[:] = [r for r in _write_hooks if r() is not None]
        _write_hooks.append(weakref.WeakMethod(bump))
        _bump = _bump_hooks
    install()


def _bump_hooks(tables: frozenset[str]) -> None:
    for ref in list(_write_hooks):
        hook = ref()
        if hook is not None:
            try:
                hook(tables)
            except Exception as e:
                record_internal_error("cache.bump", e)


def _note_write(context: t.Any, statement: str, info: _Statement) -> frozenset[str] | None:
    """Note the tables a write touches on its connection's transaction. Returns them when
    the write commits on its own (autocommit, or DDL on MySQL), after bumping once: the
    caller bumps again once it has run."""
    from .sql import statement_tables

    written = statement_tables(info.fingerprint.sample or statement)[1]
    if not written or _bump is None:
        return None
    conn = context.root_connection
    dialect = context.dialect
    if conn._is_autocommit_isolation() or (
        dialect.name in ("mysql", "mariadb") and info.fingerprint.operation in _DDL
    ):
        _bump(written)
        return written
    # Keyed as the dialect's do_commit/do_rollback will see it: the pool's proxy of the
    # DBAPI connection.
    proxy = conn.connection
    with _pending_lock:
        _pending.setdefault(id(proxy), set()).update(written)
    if "_qw_commit" not in dialect.__dict__:
        _wrap_commit(dialect)
    return None


def _write_outside_record(context: t.Any, statement: str) -> None:
    try:
        if context.execution_options.get(IGNORE_OPTION):
            return
        info = _statement(context, statement)
        if info.select:
            return
        after = _note_write(context, statement, info)
        if after is not None:
            context.cursor = _BumpCursor(context.cursor, after)
    except Exception as e:
        swallow("capture.note_write", e)


def _wrap_commit(dialect: t.Any) -> None:
    with _pending_lock:
        if "_qw_commit" in dialect.__dict__:
            return
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: t.Any) -> None:
            commit(dbapi_connection)
            with _pending_lock:
                tables = _pending.pop(id(dbapi_connection), None)
            if tables and _bump is not None:
                try:
                    _bump(frozenset(tables))
                except Exception as e:
                    swallow("capture.commit", e)

        def do_rollback(dbapi_connection: t.Any) -> None:
            with _pending_lock:
                _pending.pop(id(dbapi_connection), None)
            rollback(dbapi_connection)

        dialect.do_commit = do_commit
        dialect.do_rollback = do_rollback
        dialect._qw_commit = True


class _BumpCursor(_CursorProxy):
    """The cursor of an autocommit write outside a unit of work: bumps its tables once
    the statement has run (SQLAlchemy closes a write's cursor right after it)."""

    __slots__ = ("_qw_tables",)

    def __init__(self, cursor: t.Any, tables: frozenset[str]) -> None:
        object.__setattr__(self, "_qw_cursor", cursor)
        object.__setattr__(self, "_qw_tables", tables)

    def close(self) -> None:
        try:
            self._qw_cursor.close()
        finally:
            tables = self._qw_tables
            if tables is not None and _bump is not None:
                object.__setattr__(self, "_qw_tables", None)
                _bump(tables)


def tables_read_by(
    fn: t.Callable[[], t.Any], new_record: t.Callable[[], Record]
) -> tuple[t.Any, frozenset[str]]:
    """Run ``fn`` and return its value with the tables its statements read (``{"*"}``
    when some statement was not kept or cannot be read). Outside a unit of work, ``fn``
    runs in a record of its own, which is then dropped."""
    from .sql import ALL_TABLES
    from .sql import statement_tables

    record = _current_record.get()
    token = None
    if record is None or record.closed:
        record = new_record()
        token = start_record(record)
    start, dropped = len(record.queries), record.dropped
    try:
        value = fn()
    finally:
        if token is not None:
            end_record(token)
    if record.dropped != dropped:
        return value, frozenset({ALL_TABLES})
    tables: set[str] = set()
    for q in record.queries[start:]:
        sample = q.fingerprint.sample
        if not sample:
            return value, frozenset({ALL_TABLES})
        read, written = statement_tables(sample)
        tables |= read | written
    return value, frozenset(tables)


_installed = False
_install_lock = threading.Lock()
_LISTENERS: tuple[tuple[str, t.Callable[..., t.Any]], ...] = (
    ("do_execute", _begin),
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
        # A session event, not a connection one: it leaves the statements' fast path be.
        event.listen(Session, "after_commit", _after_commit)
        _installed = True


def uninstall() -> None:
    """Remove the listeners."""
    global _installed
    with _install_lock:
        if not _installed:
            return
        for name, fn in _LISTENERS:
            event.remove(Dialect, name, fn)
        event.remove(Session, "after_commit", _after_commit)
        _installed = False
