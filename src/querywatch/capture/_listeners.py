"""The SQLAlchemy plumbing: the dialect events that begin, time and end each statement
of the current unit of work, installed once per process."""

from __future__ import annotations

import sys
import threading
import typing as t
import weakref
from time import perf_counter

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from .._compat import DEFAULT_FETCH
from .._compat import FAST
from .._compat import ORM_LOAD_OPTIONS
from .._compat import SERVER_SIDE
from .._compat import SETUP_FLAG
from .._compat import SQLALCHEMY_14
from .._failopen import swallow
from .._sql import IGNORE_OPTION
from ._record import QueryInfo
from ._record import Record
from ._record import _current_record
from ._sites import _after_commit
from ._sites import _params_hash
from ._sites import _refreshed
from ._sites import _statement
from ._sites import _walk_for_site
from ._timing import _end_query
from ._timing import _TimedCursor
from ._timing import _TimedRead
from ._writes import _BumpCursor
from ._writes import _note_write
from ._writes import _write_hooks
from ._writes import _write_hooks_lock
from ._writes import _write_outside_record

if t.TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext


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
        if _write_hooks and context is not None:
            _write_outside_record(context, statement)
        return
    try:
        if type(context.cursor) is _TimedCursor:
            _next_batch(record, statement, parameters, context, executemany)
            return
        options = context.execution_options
        if options.get(IGNORE_OPTION):
            return
        if not getattr(context.root_connection, SETUP_FLAG, True):
            # SQLAlchemy's dialect set-up on an engine's first connection (it runs them
            # on a Connection of its own): not the app's queries.
            record = record.setup or _setup_record(record)
        budget = record.budget
        if budget is not None:
            budget.apply(cursor, context)
        compiled = context.compiled
        info = compiled.__dict__.get("_querywatch") if compiled is not None else None
        if info is None:
            info = _statement(context, statement)
        after_write = None
        if _write_hooks and not info.select:
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
        load = options.get(ORM_LOAD_OPTIONS)
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
            and FAST.reads
            and context.cursor_fetch_strategy is DEFAULT_FETCH
            and not getattr(context, SERVER_SIDE, False)
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
        if statement_hooks:
            _statement_hooks(record, context, info.fingerprint, site)
        if timed_read:
            query.sample_min = record.sample_min
            context.cursor_fetch_strategy = query
        elif info.select:  # the fallback path (or a streamed read): slow ones keep a sample
            query.sample_min = record.sample_min
            context.cursor = _TimedCursor(context.cursor, query, record, context)
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
        original = exception_context.original_exception
        error = type(original).__name__
        if record.budget is not None:
            record.budget.failed(query.fingerprint.id, original)
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


_installed = False
_install_lock = threading.Lock()
_LISTENERS: tuple[tuple[str, t.Callable[..., t.Any]], ...] = (
    ("do_execute", _begin),
    ("do_executemany", _do_executemany),
    ("do_execute_no_params", _do_execute_no_params),
    ("handle_error", _handle_error),
)


def _target(name: str) -> t.Any:
    """Where a listener goes: the Dialect class; SQLAlchemy 1.4 has ``handle_error``
    among the Engine's events only (a statement that fails is rare: its dispatch path
    costs nothing on the others... but an engine event puts every statement of 1.4 on
    SQLAlchemy's event-dispatch path, measured in bench/README.md)."""
    if name == "handle_error" and SQLALCHEMY_14:
        from sqlalchemy.engine import Engine

        return Engine
    return Dialect


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
            event.listen(_target(name), name, fn)
        # A session event, not a connection one: it leaves the statements' fast path be.
        event.listen(Session, "after_commit", _after_commit)
        _installed = True


def uninstall() -> None:
    """Remove the listeners (the benchmarks measure capture by switching it off)."""
    global _installed
    with _install_lock:
        if not _installed:
            return
        for name, fn in _LISTENERS:
            event.remove(_target(name), name, fn)
        event.remove(Session, "after_commit", _after_commit)
        _installed = False


#: Called for each statement of a unit of work just before it runs, with the record, the
#: execution context, the statement's shape and its call site (OpenTelemetry's statement
#: span is open then). Empty, they cost one test a statement.
statement_hooks: list[t.Callable[[Record, t.Any, t.Any, t.Any], None]] = []


def _statement_hooks(record: Record, context: t.Any, fingerprint: t.Any, site: t.Any) -> None:
    for hook in statement_hooks:
        try:
            hook(record, context, fingerprint, site)
        except Exception as e:
            swallow("capture.statement_hook", e)


def add_statement_hook(hook: t.Callable[[Record, t.Any, t.Any, t.Any], None]) -> None:
    """Call ``hook`` for every statement from now on (once, however often added)."""
    if hook not in statement_hooks:
        statement_hooks.append(hook)
    install()


def track_writes(bump: t.Callable[[frozenset[str]], None]) -> None:
    """Call the bound method ``bump(tables)`` each time a transaction that wrote ``tables``
    commits (for an autocommit write: before it runs and once it has), while its object
    lives (a weak reference: an app that is gone stops listening)."""
    with _write_hooks_lock:
        _write_hooks[:] = [r for r in _write_hooks if r() is not None]
        _write_hooks.append(weakref.WeakMethod(bump))
    install()
