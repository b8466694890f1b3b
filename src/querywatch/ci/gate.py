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
import functools
import typing as t

from .._detectors import Finding
from .._text import site_text
from ..exceptions import BudgetError
from ..fingerprint import Fingerprint
from ._budget import ALLOW
from ._budget import BUDGET_KEYS
from ._budget import FORBID
from ._budget import Budget
from ._budget import ProjectConfig
from ._budget import default_packages
from ._budget import gate_settings
from ._budget import load_project_config
from ._budget import parse_budget
from ._collect import Collector
from ._collect import Observation
from ._collect import ShapeUse
from ._plans import MAX_PLANS
from ._plans import PlanBook
from ._plans import Scan
from ._plans import ShapePlan

if t.TYPE_CHECKING:
    from ..capture import CallSite

__all__ = [
    "ALLOW",
    "BUDGET_KEYS",
    "FORBID",
    "MAX_PLANS",
    "Budget",
    "BudgetError",
    "Collector",
    "Observation",
    "PlanBook",
    "ProjectConfig",
    "Scan",
    "ShapePlan",
    "ShapeUse",
    "Violation",
    "constant_queries_violation",
    "default_packages",
    "evaluate",
    "full_scan_violation",
    "gate_settings",
    "load_project_config",
    "n_plus_one_violation",
    "over_budget",
    "parse_budget",
    "shape_text",
]

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
    from .._text import compact_shape

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
