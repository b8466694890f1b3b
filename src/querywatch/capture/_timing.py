"""Timing a statement until its result is exhausted or closed: reads as SQLAlchemy's
fetch strategy (:class:`_TimedRead`), writes and streamed reads through a cursor
wrapper (:class:`_TimedCursor`), then folded into the record."""

from __future__ import annotations

import typing as t
from time import perf_counter

from .._compat import NO_CURSOR_DQL
from .._compat import CursorFetchStrategy
from .._compat import dbapi_connection
from .._compat import hard_close as _hard_close
from .._compat import soft_close
from .._failopen import swallow
from ._record import QueryInfo
from ._record import Record
from ._record import _aggregate
from ._writes import _bump
from ._writes import _CursorProxy
from ._writes import _write_hooks

if t.TYPE_CHECKING:
    pass


# --- the cursor wrapper ------------------------------------------------------------------


class _TimedCursor(_CursorProxy):
    """A DBAPI cursor that tells capture when its result is exhausted or closed.

    It is put on ``context.cursor`` before the statement runs; SQLAlchemy executes on the
    raw cursor it already holds, then builds the result on this one, and closes it when
    the rows are exhausted (at once for statements that return none)."""

    __slots__ = ("_qw_query", "_qw_record", "_qw_context")

    def __init__(
        self, cursor: t.Any, query: QueryInfo, record: Record, context: t.Any = None
    ) -> None:
        object.__setattr__(self, "_qw_cursor", cursor)
        object.__setattr__(self, "_qw_query", query)
        object.__setattr__(self, "_qw_record", record)
        #: A read's execution context (the fallback path), for its sample if it is slow.
        object.__setattr__(self, "_qw_context", context)

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
                context = self._qw_context
                if context is not None:
                    object.__setattr__(self, "_qw_context", None)  # no cycle left behind
                    if end - q.start >= q.sample_min:
                        keep_sample(q, context)
                if not q.fetched:
                    rowcount = getattr(self._qw_cursor, "rowcount", -1)
                    if isinstance(rowcount, int) and rowcount > 0:
                        q.rows = rowcount
                _end_query(self._qw_record, q, end, None)
            except Exception as e:
                swallow("capture.cursor_close", e)
        self._qw_cursor.close()


def _end_query(record: Record, q: QueryInfo, end: float, error: str | None) -> None:
    """Fix ``q``'s duration; statements past the cap are aggregated at once."""
    if q.done:
        return
    q.done = True
    q.duration = end - q.start if end > q.start else 0.0
    if error is not None:
        q.error = error
    if _write_hooks:
        tables = getattr(q, "bump", None)
        if tables is not None:  # an autocommit write has landed
            _bump(tables)
    if not q.kept and not record.closed:
        _aggregate(record, q)


def keep_sample(q: QueryInfo, context: t.Any) -> None:
    """A slow read keeps its statement, parameters and engine URL, so the background
    advisor can explain it with real values (in memory only, dropped once used)."""
    try:
        params = context.parameters
        conn = context.root_connection
        url = conn.engine.url
        # An in-memory SQLite database exists on its connection only: keep it, so
        # the CI gate can copy the database to explain the read.
        memory = (
            dbapi_connection(conn)
            if url.database in (None, "", ":memory:") and url.get_backend_name() == "sqlite"
            else None
        )
        q.sample = (context.statement, params[0] if params else None, url, memory)
    except Exception as e:
        swallow("capture.sample", e)


class _TimedRead(QueryInfo, CursorFetchStrategy):
    """A read, and SQLAlchemy's fetch strategy for its result: it tells capture the
    rows and the end.

    SQLAlchemy calls its strategy for every fetch and for the close of a result anyway,
    so timing a read this way adds no call, where a cursor wrapper adds several; and
    being the statement itself, it needs nothing stored on SQLAlchemy's objects."""

    __slots__ = ()

    def soft_close(self, result: t.Any, dbapi_cursor: t.Any) -> None:
        result.cursor_strategy = NO_CURSOR_DQL
        if not self.done:
            end = perf_counter()
            self.done = True
            self.duration = end - self.start
            if self.duration >= self.sample_min:
                keep_sample(self, result.context)
            if not self.kept:  # past the cap: aggregated now
                try:
                    record = result.context._querywatch_record
                    if not record.closed:
                        _aggregate(record, self)
                except Exception as e:
                    swallow("capture.soft_close", e)

    hard_close = soft_close

    def fetchone(self, result: t.Any, dbapi_cursor: t.Any, hard_close: bool = False) -> t.Any:
        try:
            row = dbapi_cursor.fetchone()
            self.last_activity = perf_counter()
            if row is None:
                (_hard_close if hard_close else soft_close)(result)
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
                soft_close(result)
            return rows
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)

    def fetchall(self, result: t.Any, dbapi_cursor: t.Any) -> t.Any:
        try:
            rows = dbapi_cursor.fetchall()
            self.rows += len(rows)
            soft_close(result)
            return rows
        except BaseException as e:
            self.handle_exception(result, dbapi_cursor, e)
