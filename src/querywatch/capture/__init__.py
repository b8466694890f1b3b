"""The hot path: SQLAlchemy's dialect events record every statement of the current unit
of work (a request or a job) into a :class:`Record` held in a
:class:`contextvars.ContextVar`.

When no unit of work is open the listeners cost one ``ContextVar.get``. No I/O happens
here: records are handed to :mod:`querywatch._stats` when the unit of work ends, and the
store is written later by a background thread.

A statement's duration runs from just before the DBAPI ``execute`` until its result is
exhausted or closed, not only until ``execute()`` returns: SQLite does most of a scan
while rows are fetched, so execute-only timing would hide exactly the full scans we hunt.
Reads are timed by :class:`_TimedRead`, the fetch strategy SQLAlchemy calls for every
fetch and for the close of the result; writes and streamed reads by :class:`_TimedCursor`,
a wrapper of the DBAPI cursor the result is built on.

The package: :mod:`._record` (the record model and the current record),
:mod:`._sites` (statements, call sites, parameters), :mod:`._timing` (timing reads and
writes), :mod:`._writes` (the tables each commit wrote, for the result cache),
:mod:`._listeners` (the SQLAlchemy events, installed once per process) and
:mod:`._views` (the read-only views users are handed).
"""

from __future__ import annotations

from ._listeners import add_statement_hook
from ._listeners import install
from ._listeners import track_writes
from ._listeners import uninstall
from ._record import MAX_PARAM_HASHES
from ._record import CallSite
from ._record import LoopStats
from ._record import QueryInfo
from ._record import Record
from ._record import ShapeStats
from ._record import StatementBudget
from ._record import current_record
from ._record import end_record
from ._record import sample_every_read
from ._record import start_record
from ._sites import REFRESHED
from ._sites import find_call_site
from ._sites import relationship_tables
from ._sites import shape_urls
from ._views import QueryView
from ._views import RecordView
from ._views import ShapeView
from ._writes import tables_read_by

__all__ = [
    "MAX_PARAM_HASHES",
    "REFRESHED",
    "CallSite",
    "LoopStats",
    "QueryInfo",
    "QueryView",
    "Record",
    "RecordView",
    "ShapeStats",
    "ShapeView",
    "StatementBudget",
    "add_statement_hook",
    "current_record",
    "end_record",
    "find_call_site",
    "install",
    "relationship_tables",
    "sample_every_read",
    "shape_urls",
    "start_record",
    "tables_read_by",
    "track_writes",
    "uninstall",
]
