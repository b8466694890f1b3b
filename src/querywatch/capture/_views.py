"""What users are handed of a unit of work: read-only views of the record.

The record itself (:class:`._record.Record`) is querywatch's working state: mutable, with a
raw DBAPI connection in a slow read's sample, and read by the detectors, the stats and the
metrics on the hot path. Code outside querywatch (a :data:`querywatch.signals.
record_finished` receiver, ``with qw.capture(...) as record``, the pytest fixture) gets
these instead: a :class:`RecordView` reads through to the record (while the work runs it
shows it so far, once it ended it is final) and cannot change it; its statements and shapes
are frozen dataclasses, as Flask-SQLAlchemy's ``get_recorded_queries()`` hands out.
"""

from __future__ import annotations

import dataclasses
import typing as t
from collections.abc import Mapping
from types import MappingProxyType

from ..fingerprint import Fingerprint

if t.TYPE_CHECKING:
    from ._record import CallSite
    from ._record import QueryInfo
    from ._record import Record

__all__ = ["QueryView", "RecordView", "ShapeView"]


@dataclasses.dataclass(frozen=True, slots=True)
class QueryView:
    """One statement of a unit of work, frozen when it was read."""

    fingerprint: Fingerprint
    #: ``time.perf_counter()`` when the cursor was asked to execute.
    start: float
    #: Seconds from execute until the result was exhausted or closed (so far, if not
    #: :attr:`done`).
    duration: float
    #: Rows fetched (reads) or affected (writes), as far as the driver tells.
    rows: int
    #: The exception's class name when the statement failed.
    error: str | None
    #: The line of application code that issued it.
    site: CallSite | None
    #: ``Model.attr`` when an ORM lazy load issued it.
    relationship: str | None
    #: Parameter sets of an ``executemany``; 1 otherwise.
    batch_size: int
    #: Hash of the bound parameters (never the values themselves).
    params_hash: int
    #: Whether :attr:`duration` is final.
    done: bool

    @classmethod
    def of(cls, q: QueryInfo) -> QueryView:
        return cls(
            q.fingerprint, q.start, q.duration, q.rows, q.error, q.site, q.relationship,
            q.batch_size, q.params_hash, q.done,
        )  # fmt: skip

    @property
    def statement(self) -> str:
        """The statement's normalized shape (no bound value)."""
        return self.fingerprint.shape


@dataclasses.dataclass(frozen=True, slots=True)
class ShapeView:
    """One query shape's statements in a unit of work, added up (exact whatever the
    count, statements past the per-request cap included)."""

    fingerprint: Fingerprint
    calls: int
    errors: int
    #: Seconds, all calls together.
    total: float
    min: float
    max: float
    rows: int
    #: Where the first of them was issued.
    site: CallSite | None


class RecordView:
    """A read-only view of one unit of work (a request or a ``qw.capture()`` job).

    It reads through to querywatch's record: inside ``with qw.capture(...) as record`` it
    shows the work so far, and once the work ended (always, for a
    :data:`~querywatch.signals.record_finished` receiver) it is final. Setting an attribute
    raises :class:`AttributeError`."""

    __slots__ = ("_record",)

    _record: Record

    def __init__(self, record: Record) -> None:
        object.__setattr__(self, "_record", record)

    def __setattr__(self, name: str, value: t.Any) -> None:
        msg = f"A {type(self).__name__} is read-only: '{name}' cannot be set."
        raise AttributeError(msg)

    def __delattr__(self, name: str) -> None:
        msg = f"A {type(self).__name__} is read-only: '{name}' cannot be deleted."
        raise AttributeError(msg)

    def __repr__(self) -> str:
        r = self._record
        return (
            f"<RecordView {r.name!r} {r.query_count} queries"
            f" {r.db_time * 1000:.1f} ms in the database>"
        )

    @property
    def name(self) -> str:
        """``"GET /orders/<int:id>"`` for a request, ``"job:nightly-sync"`` for a job."""
        return self._record.name

    @property
    def kind(self) -> str:
        """``"request"``, ``"job"`` or ``"test"``."""
        return self._record.kind

    @property
    def started_at(self) -> float:
        """When the work started, in seconds since the epoch."""
        return self._record.started_wall

    @property
    def finished(self) -> bool:
        """Whether the work ended (its figures are final)."""
        return self._record.closed

    @property
    def duration(self) -> float:
        """Seconds the work took; 0 until it ended."""
        return self._record.duration

    @property
    def status(self) -> int:
        """The response's HTTP status; 500 for a job that raised, 0 otherwise."""
        return self._record.status

    @property
    def query_count(self) -> int:
        """Statements run, past the per-request cap included."""
        return self._record.query_count

    @property
    def db_time(self) -> float:
        """Seconds spent in the database by the statements that ended."""
        return self._record.db_time

    @property
    def errors(self) -> int:
        """Statements that failed (counted as they end)."""
        return self._record.errors

    @property
    def dropped(self) -> int:
        """Statements not kept in :attr:`queries` because of
        ``QUERYWATCH_MAX_QUERIES_PER_REQUEST`` (still in :attr:`shapes` and the
        aggregates)."""
        return self._record.dropped

    @property
    def user(self) -> str | None:
        """Who made the request, when the app names its users (``QUERYWATCH_USER``)."""
        return self._record.user

    @property
    def trace_id(self) -> str | None:
        """The trace the work was part of (32 hex digits), when the app traces with
        OpenTelemetry; set when the work ends."""
        return self._record.trace_id

    @property
    def queries(self) -> tuple[QueryView, ...]:
        """The statements kept, in order, as they are now."""
        return tuple(map(QueryView.of, self._record.queries))

    @property
    def shapes(self) -> Mapping[str, ShapeView]:
        """Per query shape (by shape id), the statements added up; built on each read."""
        return MappingProxyType(
            {
                fp_id: ShapeView(
                    s.fingerprint, s.calls, s.errors, s.total, s.min, s.max, s.rows, s.site
                )
                for fp_id, s in self._record.shapes.items()
            }
        )
