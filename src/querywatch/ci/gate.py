"""The CI gate: what a test (or a scripted request) did with the database, judged
against a budget and against the plans of its queries.

Shared by the pytest plugin (:mod:`querywatch.ci.pytest_plugin`) and ``querywatch check``:

* :class:`Collector` gathers every unit of work that finishes while it is open: the
  requests of apps that run querywatch (each judged on its own, as in production) and
  the statements run outside any request (kept in a record of the collector's own);
* :class:`Observation` adds them up per query shape, with call sites and findings;
* :class:`Budget` is what a test may do (``max_queries``, ``max_db_ms``,
  ``n_plus_one``, ``full_scans``), from ``[tool.querywatch]``, a marker or a request file;
* :class:`PlanBook` explains each read shape once per run through the advisor, so a full
  scan comes with the plan's words and a verified index;
* :func:`evaluate` turns the three into :class:`Violation` objects whose messages name
  the shape, its count, the relationship or call site, the plan flag and the fix.

Counts and plans are deterministic where timings on shared CI runners are not: budgets on
them fail a build; timings are compared as ratios (see :mod:`querywatch.ci.baseline`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import threading
import typing as t

from .. import capture
from ..config import Settings
from ..detectors import N_PLUS_ONE
from ..detectors import Finding
from ..detectors import detect
from ..exceptions import BudgetError
from ..exceptions import QueryWatchError
from ..fingerprint import Fingerprint
from ..redact import error_line
from ..signals import record_finished
from ..text import site_text

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from ..advisor import Advisor
    from ..capture import CallSite
    from ..capture import Record

__all__ = [
    "Budget",
    "BudgetError",
    "Collector",
    "Observation",
    "PlanBook",
    "ShapePlan",
    "ShapeUse",
    "Violation",
    "evaluate",
]

FORBID = "forbid"
ALLOW = "allow"


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one test or request may do with the database. ``None``: no limit."""

    #: Statements in all, requests and test code together.
    max_queries: int | None = None
    #: Milliseconds spent in the database in all.
    max_db_ms: float | None = None
    #: ``"forbid"``: any N+1 loop fails.
    n_plus_one: str = ALLOW
    #: ``"forbid"``: a read whose plan scans a whole table it filters or joins fails.
    full_scans: str = ALLOW
    #: Scans of tables with fewer rows are not counted.
    full_scan_min_rows: int = 0
    #: Baselines: the query count may grow by this fraction before it fails.
    count_tolerance: float = 0.1
    #: Baselines: the database time may grow by this factor before it is reported
    #: (and fails with ``--querywatch-timing=fail``).
    timing_tolerance: float = 2.0

    def merged(self, overrides: Mapping[str, t.Any]) -> Budget:
        return dataclasses.replace(self, **overrides) if overrides else self

    @property
    def enforced(self) -> bool:
        """True when some rule of this budget can fail a test."""
        return (
            self.max_queries is not None
            or self.max_db_ms is not None
            or self.n_plus_one == FORBID
            or self.full_scans == FORBID
        )


_BUDGET_KEYS: dict[str, tuple[str, t.Callable[[t.Any], t.Any]]] = {}


def _whole(minimum: int) -> t.Callable[[t.Any], int]:
    def check(v: t.Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError
        return v

    return check


def _number(minimum: float) -> t.Callable[[t.Any], float]:
    def check(v: t.Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= minimum:
            raise ValueError
        return float(v)

    return check


def _choice(v: t.Any) -> str:
    if v is True:
        return FORBID
    if v is False:
        return ALLOW
    if v not in (FORBID, ALLOW):
        raise ValueError
    return str(v)


_BUDGET_KEYS.update(
    {
        "max_queries": ("a whole number of at least 0, such as 20", _whole(0)),
        "max_db_ms": ("a number of milliseconds, such as 250", _number(0)),
        "n_plus_one": ("'forbid' or 'allow'", _choice),
        "full_scans": ("'forbid' or 'allow'", _choice),
        "full_scan_min_rows": ("a whole number of rows of at least 0", _whole(0)),
        "count_tolerance": ("a fraction of at least 0, such as 0.1 for 10%", _number(0)),
        "timing_tolerance": ("a factor of at least 1, such as 2.0", _number(1)),
    }
)

#: The budget keys, in the order they are documented.
BUDGET_KEYS = tuple(_BUDGET_KEYS)


def parse_budget(values: Mapping[str, t.Any], where: str) -> dict[str, t.Any]:
    """Validated budget overrides from ``values``; ``where`` names their origin in
    messages (``"pyproject.toml [tool.querywatch]"``, ``"requests.yaml, entry 3"``)."""
    if not isinstance(values, dict):
        msg = f"{where}: a budget must be a table of keys such as max_queries, got {values!r}."
        raise BudgetError(msg)
    out: dict[str, t.Any] = {}
    for key, value in values.items():
        spec = _BUDGET_KEYS.get(key)
        if spec is None:
            close = difflib.get_close_matches(str(key), BUDGET_KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = (
                f"{where}: unknown budget key {key!r}.{hint} The keys are {', '.join(BUDGET_KEYS)}."
            )
            raise BudgetError(msg)
        expected, check = spec
        if value is None and key in ("max_queries", "max_db_ms"):
            out[key] = None
            continue
        try:
            out[key] = check(value)
        except ValueError:
            msg = f"{where}: {key!r} must be {expected}, got {value!r}."
            raise BudgetError(msg) from None
    return out


def gate_settings(app_packages: tuple[str, ...] = (), *, n_plus_one_threshold: int = 5) -> Settings:
    """Settings for the statements a collector records itself (outside any request)."""
    return Settings(
        enabled=True,
        slow_query_seconds=float("inf"),
        n_plus_one_threshold=n_plus_one_threshold,
        repeated_query_threshold=2,
        max_queries_per_request=100_000,
        max_shapes=2000,
        app_packages=tuple(p.rstrip(".") + "." for p in app_packages),
        store_url="sqlite://",
        flush_interval=5.0,
        retention_days=1.0,
        advise=False,
    )


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


# --- rules ------------------------------------------------------------------------------


@dataclasses.dataclass
class Violation:
    """One way a test broke its budget or regressed from its baseline."""

    #: ``max_queries``, ``max_db_ms``, ``n_plus_one``, ``full_scan``, ``constant_queries``,
    #: ``count_increase``, ``new_n_plus_one``, ``new_full_scan``, ``timing``.
    rule: str
    #: One line: what broke.
    message: str
    #: The offending shapes, one line each, with counts, places and fixes.
    details: list[str] = dataclasses.field(default_factory=list)
    #: Where to annotate (the application code that issued the query).
    site: CallSite | None = None

    def text(self) -> str:
        return "\n".join([self.message, *("    " + d for d in self.details)])


def shape_text(fp: Fingerprint, n: int = 160) -> str:
    """The shape on one line for a message (select list elided)."""
    return _compact(fp.shape, n)


@functools.lru_cache(maxsize=4096)
def _compact(shape: str, n: int) -> str:
    # Cached: the same shapes come back in every test, and eliding costs a regex.
    from ..text import compact_shape

    return compact_shape(shape, n)


def _units(units: t.Iterable[str]) -> str:
    names = sorted(units)
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _top_lines(obs: Observation, key: t.Callable[[ShapeUse], float], root: str | None) -> list[str]:
    lines = []
    for use in sorted(obs.shapes.values(), key=key, reverse=True)[:5]:
        where = site_text(use.site, root)
        rel = f", lazy load of {use.relationship}" if use.relationship else ""
        lines.append(
            f"{use.calls} x {shape_text(use.fingerprint)} ({use.total * 1000:.1f} ms)"
            f" at {where}{rel}"
        )
    return lines


def over_budget(
    rule: str,
    message: str,
    obs: Observation,
    key: t.Callable[[ShapeUse], float],
    root: str | None,
    details: list[str] | None = None,
) -> Violation:
    """A violation of a whole-test limit: the top shapes by ``key`` as details, the
    first one's call site as the place."""
    top = max(obs.shapes.values(), key=key) if obs.shapes else None
    return Violation(
        rule,
        message,
        _top_lines(obs, key, root) if details is None else details,
        site=top.site if top is not None else None,
    )


def evaluate(
    obs: Observation, budget: Budget, plans: PlanBook | None = None, root: str | None = None
) -> list[Violation]:
    """The violations of ``budget`` in ``obs``; plans are asked only for
    ``full_scans="forbid"``."""
    out: list[Violation] = []
    if budget.max_queries is not None and obs.query_count > budget.max_queries:
        out.append(
            over_budget(
                "max_queries",
                f"Expected to perform {budget.max_queries} queries or less but"
                f" {obs.query_count} were done.",
                obs,
                lambda u: u.calls,
                root,
            )
        )
    if budget.max_db_ms is not None and obs.db_ms > budget.max_db_ms:
        out.append(
            over_budget(
                "max_db_ms",
                f"Expected to spend {budget.max_db_ms:g} ms or less in the database but"
                f" {obs.db_ms:.1f} ms were spent.",
                obs,
                lambda u: u.total,
                root,
            )
        )
    if budget.n_plus_one == FORBID:
        out.extend(n_plus_one_violation(f, unit, root) for f, unit in obs.n_plus_one())
    if budget.full_scans == FORBID and plans is not None:
        for use in sorted(obs.reads(), key=lambda u: u.fingerprint.id):
            plan = plans.plan(use)
            if plan is None:
                continue
            for scan in plan.scans:
                if scan.filtered and (scan.rows or 0) >= budget.full_scan_min_rows:
                    out.append(full_scan_violation(use, plan, scan, root))
    return out


def n_plus_one_violation(
    f: Finding, unit: str, root: str | None, rule: str = "n_plus_one"
) -> Violation:
    what = f"lazy load of {f.relationship}" if f.relationship else "a query in a loop"
    prefix = "New N+1" if rule.startswith("new_") else "N+1"
    return Violation(
        rule,
        f"{prefix}: {f.count} x {shape_text(f.fingerprint)} in {unit} ({what}).",
        [f"at {site_text(f.site, root)}", f"fix: {f.fix}"],
        site=f.site,
    )


def full_scan_violation(
    use: ShapeUse, plan: ShapePlan, scan: Scan, root: str | None, rule: str = "full_scan"
) -> Violation:
    rows = f"{scan.rows:,.0f} rows" if scan.rows is not None else "rows unknown"
    prefix = "New full scan" if rule.startswith("new_") else "Full scan"
    return Violation(
        rule,
        f"{prefix} of {scan.table} ({rows}): {shape_text(use.fingerprint)}"
        f" ({use.calls} x in {_units(use.units)}).",
        [
            f"at {site_text(use.site, root)}",
            f"plan: {scan.detail}",
            f"fix: {plan.fix}",
        ],
        site=use.site,
    )


@dataclasses.dataclass
class Growth:
    """A shape whose count grew with the data."""

    use: ShapeUse
    small: int
    large: int


def constant_queries_violation(
    sizes: tuple[int, int], small: Observation, large: Observation, root: str | None = None
) -> Violation | None:
    """A violation when ``large`` ran more statements than ``small`` (the data grew
    from ``sizes[0]`` to ``sizes[1]``), naming the shapes that grew."""
    if large.query_count <= small.query_count:
        return None
    grew = []
    for fp_id, use in large.shapes.items():
        before = small.shapes.get(fp_id)
        n = before.calls if before is not None else 0
        if use.calls > n:
            grew.append(Growth(use, n, use.calls))
    grew.sort(key=lambda g: g.large - g.small, reverse=True)
    details = []
    for g in grew[:5]:
        rel = f", lazy load of {g.use.relationship}" if g.use.relationship else ""
        details.append(
            f"{g.small} -> {g.large} x {shape_text(g.use.fingerprint)} at"
            f" {site_text(g.use.site, root)}{rel}"
        )
    if grew:
        fix = (
            f"fix: Load {grew[0].use.relationship} eagerly:"
            f" .options(selectinload({grew[0].use.relationship}))."
            if grew[0].use.relationship
            else "fix: Batch the per-item queries into one query with IN (...), outside the loop."
        )
        details.append(fix)
    return Violation(
        "constant_queries",
        f"The query count grows with the data: {small.query_count} queries for"
        f" {sizes[0]} rows, {large.query_count} for {sizes[1]}.",
        details,
        site=grew[0].use.site if grew else None,
    )


# --- project configuration ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProjectConfig:
    """``[tool.querywatch]`` of a project's ``pyproject.toml``."""

    budget: Budget = Budget()
    #: The baseline file, relative to the project's root.
    baseline: str | None = None
    #: Modules whose frames are call sites (default: the project's own packages).
    app_packages: tuple[str, ...] = ()
    #: Loops of at least this many statements are N+1s (outside requests).
    n_plus_one_threshold: int = 5
    #: ``"report"`` or ``"fail"``: what a database time over the baseline's does.
    timing: str = "report"
    #: Where it was read from, for messages.
    source: str = ""


_PROJECT_KEYS = ("baseline", "app_packages", "n_plus_one_threshold", "timing")


def load_project_config(path: str) -> ProjectConfig:
    """Read ``[tool.querywatch]`` from the ``pyproject.toml`` at ``path`` (defaults when
    the file or the table is missing). Raises :class:`BudgetError` naming the key."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

    where = f"{path} [tool.querywatch]"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return ProjectConfig()
    except tomllib.TOMLDecodeError as e:
        msg = f"{path} is not valid TOML: {e}."
        raise BudgetError(msg) from None
    table = data.get("tool", {}).get("querywatch")
    if table is None:
        return ProjectConfig(source=where)
    if not isinstance(table, dict):
        msg = f"{where} must be a table of settings, got {table!r}."
        raise BudgetError(msg)
    budget_values = {k: v for k, v in table.items() if k not in _PROJECT_KEYS}
    for key in budget_values:
        if key not in BUDGET_KEYS:
            close = difflib.get_close_matches(key, (*BUDGET_KEYS, *_PROJECT_KEYS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            msg = (
                f"{where}: unknown key {key!r}.{hint} The keys are"
                f" {', '.join((*_PROJECT_KEYS, *BUDGET_KEYS))}."
            )
            raise BudgetError(msg)
    budget = Budget().merged(parse_budget(budget_values, where))
    baseline = table.get("baseline")
    if baseline is not None and (not isinstance(baseline, str) or not baseline):
        msg = (
            f"{where}: 'baseline' must be a file path such as '.querywatch/baseline.json',"
            f" got {baseline!r}."
        )
        raise BudgetError(msg)
    packages = table.get("app_packages", [])
    if isinstance(packages, str):
        packages = [packages]
    if not isinstance(packages, list) or not all(
        isinstance(p, str) and p and " " not in p for p in packages
    ):
        msg = (
            f"{where}: 'app_packages' must be a list of module names such as ['myapp'],"
            f" got {packages!r}."
        )
        raise BudgetError(msg)
    threshold = table.get("n_plus_one_threshold", 5)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
        msg = (
            f"{where}: 'n_plus_one_threshold' must be a whole number of at least 2,"
            f" got {threshold!r}."
        )
        raise BudgetError(msg)
    timing = table.get("timing", "report")
    if timing not in ("report", "fail"):
        msg = f"{where}: 'timing' must be 'report' or 'fail', got {timing!r}."
        raise BudgetError(msg)
    return ProjectConfig(
        budget=budget,
        baseline=baseline,
        app_packages=tuple(packages),
        n_plus_one_threshold=threshold,
        timing=timing,
        source=where,
    )


def default_packages(root: str) -> tuple[str, ...]:
    """The top-level packages and modules of a project (in ``root`` and ``root/src``):
    where its call sites are, when ``app_packages`` is not set."""
    names: set[str] = set()
    skip = {"setup", "conftest", "noxfile", "build", "dist", "docs", "site-packages"}
    for folder in (root, os.path.join(root, "src")):
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith((".", "_")) or entry in skip:
                continue
            full = os.path.join(folder, entry)
            if entry.endswith(".py") and os.path.isfile(full):
                names.add(entry[:-3])
            elif os.path.isfile(os.path.join(full, "__init__.py")) and entry.isidentifier():
                names.add(entry)
    return tuple(sorted(names))
