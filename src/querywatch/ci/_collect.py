"""What a test did with the database: :class:`Collector` gathers the units of work that
finish while it is open, :class:`Observation` adds them up per query shape."""

from __future__ import annotations

import dataclasses
import threading
import typing as t

from .. import capture
from .._config import Settings
from .._detectors import N_PLUS_ONE
from .._detectors import Finding
from .._detectors import detect
from ..fingerprint import Fingerprint
from ..signals import record_finished
from ..signals import takes_live_record

if t.TYPE_CHECKING:
    from ..capture import CallSite
    from ..capture import Record


# --- what a test did --------------------------------------------------------------------


@dataclasses.dataclass
class ShapeUse:
    """One query shape in one observation: how often, where from, how long."""

    fingerprint: Fingerprint
    calls: int = 0
    total: float = 0.0
    rows: int = 0
    #: Call site -> statements issued there.
    sites: dict[CallSite | None, int] = dataclasses.field(default_factory=dict)
    relationship: str | None = None
    #: The units of work (``GET /orders``, ``test``) that ran it.
    units: set[str] = dataclasses.field(default_factory=set)
    #: (statement, parameters, engine URL, in-memory SQLite connection) of one
    #: execution, to explain it with.
    sample: tuple[str, t.Any, t.Any, t.Any] | None = None

    @property
    def site(self) -> CallSite | None:
        """The call site that issued it most."""
        if not self.sites:
            return None
        return max(self.sites.items(), key=lambda kv: (kv[0] is not None, kv[1]))[0]


class Observation:
    """Every statement of a test (or a scripted request), by shape, with findings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[Record] = []
        self.findings: list[tuple[Finding, str]] = []
        self.shapes: dict[str, ShapeUse] = {}
        self.query_count = 0
        self.db_time = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Observation {self.name!r} {self.query_count} queries>"

    @property
    def db_ms(self) -> float:
        return self.db_time * 1000.0

    def add(self, record: Record, findings: list[Finding]) -> None:
        with self._lock:
            self._add(record, findings)

    def _add(self, record: Record, findings: list[Finding]) -> None:
        if record.query_count == 0 and not findings:
            return
        self.records.append(record)
        self.query_count += record.query_count
        self.db_time += record.db_time
        unit = record.name
        for f in findings:
            self.findings.append((f, unit))
        # Per (shape, call site), and the statements past the record's cap per shape.
        parts: list[t.Any] = [*record.loops.values(), *record.overflow.values()]
        for part in parts:
            use = self.shapes.get(part.fingerprint.id)
            if use is None:
                use = self.shapes[part.fingerprint.id] = ShapeUse(part.fingerprint)
            use.calls += part.calls
            use.total += part.total
            use.rows += part.rows
            use.sites[part.site] = use.sites.get(part.site, 0) + part.calls
            use.relationship = use.relationship or getattr(part, "relationship", None)
            use.units.add(unit)
        for q in record.queries:
            sample = getattr(q, "sample", None)
            if sample is not None:
                known = self.shapes.get(q.fingerprint.id)
                if known is not None and known.sample is None:
                    known.sample = sample

    def n_plus_one(self) -> list[tuple[Finding, str]]:
        return [(f, unit) for f, unit in self.findings if f.kind == N_PLUS_ONE]

    def reads(self) -> list[ShapeUse]:
        return [u for u in self.shapes.values() if u.fingerprint.is_read]


#: The collectors open in this process; every finished unit of work goes to each.
_active: list[Collector] = []
_active_lock = threading.Lock()


@takes_live_record
def _deliver(sender: t.Any, record: Record, findings: list[Finding], **_: t.Any) -> None:
    for c in list(_active):
        c.observation.add(record, findings)


class Collector:
    """Collect what the database did while the block runs::

        with Collector("checkout", gate_settings(("shop",))) as c:
            client.post("/checkout", json=...)
        c.observation.query_count

    Requests of apps that run querywatch finish as units of their own and are collected
    with their findings; statements outside any request go to a record of the
    collector's own, judged with ``settings``. Collectors nest: an inner one's record is
    also the outer one's. While one is open every read keeps its statement and
    parameters (in memory) so that its plan can be asked for.
    """

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.observation = Observation(name)
        self.record: Record | None = None
        self._token: t.Any = None

    def __enter__(self) -> Collector:
        capture.install()
        with _active_lock:
            if not _active:
                record_finished.connect(_deliver)
            _active.append(self)
            capture.sample_every_read(True)
        self.record = capture.Record(name=self.name, kind="test", settings=self.settings)
        self._token = capture.start_record(self.record)
        return self

    def __exit__(self, *exc: object) -> None:
        record = self.record
        assert record is not None
        capture.end_record(self._token)
        record.finish(500 if exc[0] is not None else 0)
        findings = detect(record, self.settings)
        _deliver(None, record, findings)
        with _active_lock:
            if self in _active:
                _active.remove(self)
            capture.sample_every_read(False)
            if not _active:
                record_finished.disconnect(_deliver)
