"""Baselines: what each test did with the database, kept in a file the team reviews, and
the regressions of a later run against it.

The file is JSON, keys sorted, two-space indents, one test per key, so a change reads
well in a diff::

    {
      "querywatch_baseline": 1,
      "tests": {
        "tests/test_orders.py::test_recent": {
          "db_ms": 4.1,
          "queries": 3,
          "shapes": {
            "8c1f0e2b7d3a4f51": {
              "calls": 1,
              "findings": [],
              "flags": [],
              "site": "shop/views.py:143 (recent_orders)",
              "sql": "SELECT orders.id, ... FROM orders ORDER BY orders.id DESC LIMIT ?"
            }
          }
        }
      }
    }

Regressions (each fails the test): a new N+1 loop, a query count up by more than the
tolerance, a new full scan of a table over the row threshold, a new read shape whose plan
reads a table whole that it filters (no index serves it). The database time is compared
as a ratio, reported, and fails only when asked.
"""

from __future__ import annotations

import json
import math
import os
import typing as t

from .._detectors import N_PLUS_ONE
from .._text import relpath
from .._text import site_text
from ..exceptions import BaselineError
from .gate import Violation
from .gate import full_scan_violation
from .gate import n_plus_one_violation
from .gate import over_budget
from .gate import shape_text

if t.TYPE_CHECKING:
    from .gate import Budget
    from .gate import Observation
    from .gate import PlanBook

__all__ = ["FORMAT", "Baseline", "BaselineError"]

#: The version of the file's format this querywatch reads and writes.
FORMAT = 1
_KEY = "querywatch_baseline"


def _command(path: str) -> str:
    return (
        f"pytest --querywatch-baseline {path} --querywatch-update-baseline (or querywatch"
        " check ... --update-baseline)"
    )


def _regenerate(path: str) -> str:
    return f"Regenerate it from the current code: {_command(path)}."


def _sig2(x: float) -> float:
    """``x`` to two significant digits: timings vary run to run, and a baseline rewritten
    by a later run should not change for noise."""
    if x <= 0:
        return 0.0
    digits = 1 - int(math.floor(math.log10(x)))
    return round(x, max(digits, 0))


class Baseline:
    """The per-test records of one baseline file."""

    def __init__(self, path: str, tests: dict[str, dict[str, t.Any]] | None = None) -> None:
        self.path = path
        self.tests: dict[str, dict[str, t.Any]] = tests or {}
        #: The file existed when loaded.
        self.existed = tests is not None

    # --- reading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str) -> Baseline:
        """Read and validate ``path``; a missing file is an empty baseline (to be
        created). Raises :class:`BaselineError` naming the file and the entry."""
        real, path = path, relpath(path)
        try:
            with open(real, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return cls(real)
        except OSError as e:
            msg = f"The baseline {path} cannot be read: {e.strerror or e}."
            raise BaselineError(msg) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            msg = (
                f"The baseline {path} is not valid JSON (line {e.lineno}, column {e.colno}:"
                f" {e.msg}). Fix it, or regenerate it from the current code: {_command(path)}."
            )
            raise BaselineError(msg) from None
        if not isinstance(data, dict) or _KEY not in data:
            msg = (
                f"The baseline {path} is not a querywatch baseline: it has no"
                f" {_KEY!r} version key. {_regenerate(path)}"
            )
            raise BaselineError(msg)
        version = data[_KEY]
        if isinstance(version, bool) or not isinstance(version, int):
            msg = f"The baseline {path}: {_KEY!r} must be a whole number, got {version!r}."
            raise BaselineError(msg)
        if version > FORMAT:
            msg = (
                f"The baseline {path} was written by a newer querywatch (format {version});"
                f" this one reads format {FORMAT}. Upgrade querywatch"
                " (pip install -U querywatch), or regenerate the file with this version:"
                f" {_regenerate(path)}"
            )
            raise BaselineError(msg)
        if version < FORMAT:
            # No older format is read: its shapes and flags are not comparable.
            msg = (
                f"The baseline {path} was written by an older querywatch (format {version});"
                f" this one reads format {FORMAT} and does not convert it. {_regenerate(path)}"
            )
            raise BaselineError(msg)
        tests = data.get("tests")
        if not isinstance(tests, dict):
            msg = f"The baseline {path}: 'tests' must be an object of test ids, got {tests!r}."
            raise BaselineError(msg)
        for name, entry in tests.items():
            _check_entry(path, name, entry)
        return cls(real, tests)

    # --- writing -----------------------------------------------------------------------

    def dumps(self) -> str:
        data = {_KEY: FORMAT, "tests": self.tests}
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def save(self) -> None:
        """Write the file (atomically: a reader never sees half of it)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.dumps())
        os.replace(tmp, self.path)

    # --- comparing ---------------------------------------------------------------------

    def diff(
        self,
        name: str,
        entry: dict[str, t.Any],
        obs: Observation,
        plans: PlanBook | None,
        budget: Budget,
        *,
        timing_fails: bool = False,
        root: str | None = None,
    ) -> tuple[list[Violation], list[str]]:
        """The regressions of ``entry`` (made by :func:`entry_for` from ``obs``) against
        this baseline's record of ``name``, and notes (timing ratios). A test the
        baseline does not know has neither."""
        old = self.tests.get(name)
        if old is None:
            return [], []
        out: list[Violation] = []
        notes: list[str] = []
        old_shapes: dict[str, t.Any] = old.get("shapes", {})
        before, now = int(old["queries"]), int(entry["queries"])
        if now > before and now > before * (1.0 + budget.count_tolerance):
            grew = []
            for fp_id, use in sorted(obs.shapes.items(), key=lambda kv: -kv[1].calls):
                was = int(old_shapes.get(fp_id, {}).get("calls", 0))
                if use.calls > was:
                    grew.append(
                        f"{was} -> {use.calls} x {shape_text(use.fingerprint)} at"
                        f" {site_text(use.site, root)}"
                    )
            tolerance = f"{budget.count_tolerance:.0%}"
            out.append(
                over_budget(
                    "count_increase",
                    f"The query count rose from {before} to {now} (more than the"
                    f" {tolerance} tolerance over the baseline).",
                    obs,
                    lambda u: u.calls,
                    root,
                    details=grew[:5],
                )
            )
        for f, unit in obs.n_plus_one():
            if N_PLUS_ONE not in old_shapes.get(f.fingerprint.id, {}).get("findings", ()):
                out.append(n_plus_one_violation(f, unit, root, rule="new_n_plus_one"))
        if plans is not None:
            for use in sorted(obs.reads(), key=lambda u: u.fingerprint.id):
                plan = plans.plan(use)
                if plan is None:
                    continue
                prior = old_shapes.get(use.fingerprint.id)
                old_flags = set(prior.get("flags", ())) if prior is not None else set()
                for scan in plan.scans:
                    if not scan.filtered or f"full_scan:{scan.table}" in old_flags:
                        continue
                    if prior is None:
                        # A new shape that no index serves, whatever the table's size.
                        out.append(full_scan_violation(use, plan, scan, root, "new_unindexed"))
                    elif (scan.rows or 0) >= budget.full_scan_min_rows:
                        out.append(full_scan_violation(use, plan, scan, root, "new_full_scan"))
        old_ms, new_ms = float(old.get("db_ms", 0.0)), float(entry["db_ms"])
        if old_ms > 0 and new_ms - old_ms >= 1.0 and new_ms / old_ms >= budget.timing_tolerance:
            text = (
                f"Database time x{new_ms / old_ms:.1f} over the baseline"
                f" ({old_ms:g} ms -> {new_ms:g} ms)."
            )
            notes.append(text)
            if timing_fails:
                out.append(Violation("timing", text, _slowest(obs, root)))
        return out, notes


def _slowest(obs: Observation, root: str | None) -> list[str]:
    uses = sorted(obs.shapes.values(), key=lambda u: u.total, reverse=True)[:3]
    return [
        f"{u.total * 1000:.1f} ms in {u.calls} x {shape_text(u.fingerprint)} at"
        f" {site_text(u.site, root)}"
        for u in uses
    ]


def entry_for(
    obs: Observation, plans: PlanBook | None, root: str | None = None
) -> dict[str, t.Any]:
    """What a baseline keeps of one test: per shape its calls, findings (N+1, slow,
    repeated), plan flags, call site and SQL."""
    kinds: dict[str, set[str]] = {}
    for f, _ in obs.findings:
        kinds.setdefault(f.fingerprint.id, set()).add(f.kind)
    shapes: dict[str, t.Any] = {}
    for fp_id, use in obs.shapes.items():
        plan = plans.plan(use) if plans is not None and use.fingerprint.is_read else None
        shapes[fp_id] = {
            "calls": use.calls,
            "flags": list(plan.flags) if plan is not None else [],
            "findings": sorted(kinds.get(fp_id, ())),
            "site": site_text(use.site, root) if use.site is not None else None,
            "sql": shape_text(use.fingerprint, 240),
        }
    return {"db_ms": _sig2(obs.db_ms), "queries": obs.query_count, "shapes": shapes}


def _check_entry(path: str, name: str, entry: t.Any) -> None:
    where = f"The baseline {path}, test {name!r}"

    def bad(field: str, expected: str, value: t.Any) -> BaselineError:
        return BaselineError(
            f"{where}: {field} must be {expected}, got {value!r}. Fix the entry, or"
            f" delete it and run that test with --querywatch-update-baseline."
        )

    if not isinstance(entry, dict):
        raise bad("the entry", "an object", entry)
    q = entry.get("queries")
    if isinstance(q, bool) or not isinstance(q, int) or q < 0:
        raise bad("'queries'", "a whole number of at least 0", q)
    ms = entry.get("db_ms", 0.0)
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms < 0:
        raise bad("'db_ms'", "a number of milliseconds", ms)
    shapes = entry.get("shapes", {})
    if not isinstance(shapes, dict):
        raise bad("'shapes'", "an object of query shape ids", shapes)
    for fp_id, shape in shapes.items():
        field = f"shapes[{fp_id!r}]"
        if not isinstance(shape, dict):
            raise bad(field, "an object", shape)
        calls = shape.get("calls")
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
            raise bad(f"{field}.calls", "a whole number of at least 0", calls)
        flags = shape.get("flags", [])
        if not isinstance(flags, list) or not all(isinstance(x, str) for x in flags):
            raise bad(f"{field}.flags", "a list of plan flags such as 'full_scan:orders'", flags)
        found = shape.get("findings", [])
        if not isinstance(found, list) or not all(isinstance(x, str) for x in found):
            raise bad(f"{field}.findings", "a list of findings such as 'n_plus_one'", found)
