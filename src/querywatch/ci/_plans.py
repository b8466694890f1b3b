"""The plans of a run's read shapes: :class:`PlanBook` explains each once through the
advisor, so a full scan comes with the plan's words and a verified index."""

from __future__ import annotations

import dataclasses
import os
import threading
import typing as t

from .._redact import error_line
from ..exceptions import QueryWatchError
from ..fingerprint import Fingerprint
from ._collect import ShapeUse

if t.TYPE_CHECKING:
    from ..advisor import Advisor


# --- plans ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scan:
    """A table a plan reads whole."""

    table: str
    rows: float | None
    #: The query filters or joins the table, so an index could spare the scan.
    filtered: bool
    #: The plan's words.
    detail: str


@dataclasses.dataclass(frozen=True)
class ShapePlan:
    """What the planner says about one read shape."""

    #: ``full_scan:<table>``, ``temp_sort``... sorted: the plan's flags as a baseline
    #: keeps them.
    flags: tuple[str, ...] = ()
    scans: tuple[Scan, ...] = ()
    indexes: tuple[str, ...] = ()
    #: The verified index (migration-ready DDL), when the advisor found one.
    index_ddl: str | None = None
    #: What to do when no index was verified.
    remedy: str | None = None
    #: Why there is no plan (the database could not be asked).
    error: str | None = None

    @property
    def uses_index(self) -> bool:
        return bool(self.indexes)

    @property
    def fix(self) -> str:
        if self.index_ddl:
            return self.index_ddl
        return self.remedy or "An index on the filtered columns, or a narrower query."


#: Plans a :class:`PlanBook` keeps (shapes x databases).
MAX_PLANS = 10_000


class PlanBook:
    """Plans of read shapes, asked of the database once per shape and run.

    Each database (by URL) gets one :class:`~querywatch.advisor.Advisor`, with
    ``prefer_indexes`` so that plans on a small test database tell whether an index
    serves the query rather than whether the table is small. Thread-safe.
    """

    def __init__(self, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._advisors: dict[str, Advisor | None] = {}
        self._plans: dict[tuple[str, str], ShapePlan] = {}
        self._lock = threading.Lock()
        self._tmpdir: t.Any = None
        self._failures: dict[str, str] = {}
        #: Why a database could not be explained, by its URL without the password (for
        #: the summary).
        self.notes: dict[str, str] = {}

    def close(self) -> None:
        for adv in self._advisors.values():
            if adv is not None:
                adv.close()
        self._advisors.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def plan(self, use: ShapeUse) -> ShapePlan | None:
        """The plan of a read shape; None when it cannot be explained (not a read, no
        runnable statement)."""
        fp = use.fingerprint
        if not fp.is_read:
            return None
        sample = use.sample
        sql = sample[0] if sample is not None else fp.sample
        if not sql or sample is None:
            return None
        url = _url_of(sample[2])
        # Each in-memory SQLite database is a database of its own.
        key = (url if sample[3] is None else f"{url}#{id(sample[3])}", fp.id)
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                target = url
                if sample[3] is not None:
                    try:
                        target = self._copy_of_memory(sample[3])
                    except Exception as e:
                        plan = ShapePlan(error=f"The in-memory database could not be copied: {e}")
                if plan is None:
                    plan = self._explain(target, sql, sample[1], fp)
                if len(self._plans) >= MAX_PLANS:
                    del self._plans[next(iter(self._plans))]  # the oldest
                self._plans[key] = plan
        return plan

    def _copy_of_memory(self, dbapi_connection: t.Any) -> str:
        """A file copy of an in-memory SQLite database (which no other connection can
        see), made afresh: the plan is asked of the data as the test left it."""
        import sqlite3
        import tempfile

        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="querywatch-plans-")
        path = os.path.join(self._tmpdir.name, "memory.db")
        dest = sqlite3.connect(path)
        try:
            dbapi_connection.backup(dest)
        finally:
            dest.close()
        return "sqlite:///" + path

    def _advisor(self, url: str) -> Advisor | str:
        if url in self._advisors:
            adv = self._advisors[url]
            return adv if adv is not None else self._failures[url]
        from ..advisor import Advisor

        try:
            # A test database: candidates may be built to verify them (rolled back, or
            # dropped again on MariaDB) where no hypothetical index exists.
            adv = Advisor(url, measure=False, scan_min_rows=0, timeout=self.timeout,
                          prefer_indexes=True, allow_ddl=True)  # fmt: skip
        except QueryWatchError as e:
            self._advisors[url] = None
            self._failures[url] = str(e)
            self.notes[_url_shown(url)] = str(e)
            return str(e)
        self._advisors[url] = adv
        return adv

    def _explain(self, url: str, sql: str, params: t.Any, fp: Fingerprint) -> ShapePlan:
        from ..advisor import QueryInput

        adv = self._advisor(url)
        if isinstance(adv, str):
            return ShapePlan(error=adv)
        try:
            advice = adv.advise(
                [QueryInput(sql=sql, params=params, fingerprint=fp.id)], index_health=False
            )
        except Exception as e:  # a planner surprise: the shape has no plan, say why
            return ShapePlan(error=f"{type(e).__name__}: {error_line(e)}")
        qa = advice.queries[0]
        if qa.plan is None:
            return ShapePlan(error="; ".join(qa.errors) or "no plan")
        # The plan's literals (the statement's parameters among them) were masked when
        # it was read.
        scans = []
        for f in qa.findings:
            if f.kind == "full_scan" and f.table:
                scans.append(Scan(f.table, f.rows, not f.by_design, f.evidence))
        flags = {f"full_scan:{s.table}" for s in scans}
        flags |= {fl for fl in qa.plan.flags if fl not in ("full_scan", "index_search")}
        ddl = None
        for s in advice.suggestions:
            if any(q is qa for q, _ in s.trials):
                ddl = s.candidate.ddl(advice.dialect, migration=True) + ";"
                break
        remedy = next((e for e in qa.errors if "candidates not verified" in e), None)
        if remedy is None and scans:
            # The advisor's verdict on the scan (an index, none helps, or the usual remedy).
            remedy = next(f.fix for f in qa.findings if f.kind == "full_scan")
        return ShapePlan(
            flags=tuple(sorted(flags)),
            scans=tuple(scans),
            indexes=tuple(sorted(qa.plan.indexes_used())),
            index_ddl=ddl,
            remedy=remedy,
        )


def _url_shown(url: str) -> str:
    """``url`` with its password hidden, to be printed."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _url_of(engine: t.Any) -> str:
    url = getattr(engine, "url", engine)
    render = getattr(url, "render_as_string", None)
    return render(hide_password=False) if render is not None else str(url)
