"""Writes, for the result cache: which tables each commit wrote, told to the hooks the
apps hand over (:func:`track_writes`) before the commit returns."""

from __future__ import annotations

import threading
import typing as t
import weakref

from sqlalchemy import event

from .._compat import FAST
from .._compat import autocommit
from .._compat import dbapi_connection as dbapi_of
from .._compat import wrap_commit
from .._failopen import record_internal_error
from .._failopen import swallow
from .._sql import IGNORE_OPTION
from ._record import Record
from ._record import _current_record
from ._record import end_record
from ._record import start_record
from ._sites import _Statement
from ._sites import _statement

if t.TYPE_CHECKING:
    from collections.abc import Iterator


# --- writes, for the cache ------------------------------------------------------------
#
# A cache (:mod:`querywatch.cache`) must learn which tables each commit wrote, before the
# commit returns. Writes are noted where capture already sees every statement; the
# commit and rollback are seen by wrapping the dialect's ``do_commit``/``do_rollback`` on
# each dialect instance that ran a write (SQLAlchemy has no event after a commit: its
# ``commit`` event fires before it). Nothing of this runs until a cache exists.

#: Called with the tables a committed write touched (:func:`_bump`); empty while nothing
#: listens. A write reaches every listener of the process (two apps on one database share
#: its tables), so this is per process: each app hands its hook to :func:`track_writes`.
_write_hooks: list[weakref.WeakMethod[t.Callable[[frozenset[str]], None]]] = []
_write_hooks_lock = threading.Lock()
#: Tables written in the open transaction of each DBAPI connection, by ``id``; emptied by
#: the connection's commit or rollback.
_pending: dict[int, set[str]] = {}
_pending_lock = threading.Lock()
_DDL = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME"})


def _bump(tables: frozenset[str]) -> None:
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
    from .._sql import statement_tables

    written = statement_tables(info.fingerprint.sample or statement)[1]
    if not written or not _write_hooks:
        return None
    conn = context.root_connection
    dialect = context.dialect
    if autocommit(conn) or (
        dialect.name in ("mysql", "mariadb") and info.fingerprint.operation in _DDL
    ):
        _bump(written)
        return written
    if not FAST.commit:
        _note_for_checkin(conn, written)
        return None
    # Keyed as the dialect's do_commit/do_rollback will see it: the pool's proxy of the
    # DBAPI connection.
    proxy = conn.connection
    with _pending_lock:
        _pending.setdefault(id(proxy), set()).update(written)
    if "_qw_commit" not in dialect.__dict__:
        _wrap_commit(dialect)
    return None


# The fallback (:mod:`querywatch._compat`): on an SQLAlchemy whose ``do_commit`` is not
# known to be safe to wrap, a commit's tables are bumped by public events: noted at the
# connection's ``commit`` (which fires before the commit), dropped at its ``rollback``,
# and bumped at the pool's ``checkin``, once the connection goes back after the commit.
# Keyed by the DBAPI connection, as the pool event sees it.
_committed: dict[int, set[str]] = {}


def _note_for_checkin(conn: t.Any, written: frozenset[str]) -> None:
    key = id(dbapi_of(conn))
    with _pending_lock:
        _pending.setdefault(key, set()).update(written)
    engine = conn.engine
    if not getattr(engine, "_qw_checkin", False):
        with _pending_lock:
            if getattr(engine, "_qw_checkin", False):
                return
            event.listen(engine, "commit", _on_commit)
            event.listen(engine, "rollback", _on_rollback)
            event.listen(engine.pool, "checkin", _on_checkin)
            engine._qw_checkin = True


def _on_commit(conn: t.Any) -> None:
    key = id(dbapi_of(conn))
    with _pending_lock:
        tables = _pending.pop(key, None)
        if tables:
            _committed.setdefault(key, set()).update(tables)


def _on_rollback(conn: t.Any) -> None:
    with _pending_lock:
        _pending.pop(id(dbapi_of(conn)), None)


def _on_checkin(dbapi_connection: t.Any, connection_record: t.Any) -> None:
    with _pending_lock:
        tables = _committed.pop(id(dbapi_connection), None)
        _pending.pop(id(dbapi_connection), None)
    if tables and _write_hooks:
        try:
            _bump(frozenset(tables))
        except Exception as e:
            swallow("capture.commit", e)


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
        wrap_commit(dialect, _after_commit, _before_rollback)
        dialect._qw_commit = True


def _after_commit(dbapi_connection: t.Any) -> None:
    with _pending_lock:
        tables = _pending.pop(id(dbapi_connection), None)
    if tables and _write_hooks:
        try:
            _bump(frozenset(tables))
        except Exception as e:
            swallow("capture.commit", e)


def _before_rollback(dbapi_connection: t.Any) -> None:
    with _pending_lock:
        _pending.pop(id(dbapi_connection), None)


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
            if tables is not None and _write_hooks:
                object.__setattr__(self, "_qw_tables", None)
                _bump(tables)


def tables_read_by(
    fn: t.Callable[[], t.Any], new_record: t.Callable[[], Record]
) -> tuple[t.Any, frozenset[str]]:
    """Run ``fn`` and return its value with the tables its statements read (``{"*"}``
    when some statement was not kept or cannot be read). Outside a unit of work, ``fn``
    runs in a record of its own, which is then dropped."""
    from .._sql import ALL_TABLES
    from .._sql import statement_tables

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
