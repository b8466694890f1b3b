"""The pytest plugin: query budgets and baselines for a project's own tests.

Installed with querywatch (entry point ``pytest11``); it does nothing until asked:

* the ``querywatch`` fixture: what the test did with the database, and the context
  managers ``assert_max_queries(n)``, ``assert_no_n_plus_one()``,
  ``assert_no_full_scans(min_rows=...)`` and ``assert_constant_queries(fn, sizes)``;
* the marker ``@pytest.mark.query_budget(max_queries=..., max_db_ms=...,
  n_plus_one="forbid", full_scans="forbid")``, over the project's default budget in
  ``pyproject.toml`` (``[tool.querywatch]``);
* ``--querywatch-baseline FILE``: record each test's shapes, counts, findings and plan
  flags, and fail later runs on regressions (:mod:`querywatch.ci.baseline`).

Each test's call phase is collected (not its fixtures' set-up): requests of apps that
run querywatch as their own units, the test's other statements in one unit of its own.
"""

from __future__ import annotations

import dataclasses
import io
import os
import typing as t

import pytest

from .._text import relpath
from ..exceptions import BaselineError
from ..exceptions import BudgetError
from .baseline import Baseline
from .baseline import entry_for
from .gate import FORBID
from .gate import Budget
from .gate import Collector
from .gate import Observation
from .gate import ProjectConfig
from .gate import default_packages
from .gate import evaluate
from .gate import gate_settings
from .gate import load_project_config
from .gate import parse_budget
from .output import CaseResult
from .output import github_annotations
from .output import markdown
from .output import render_terminal
from .output import write_step_summary

if t.TYPE_CHECKING:
    from collections.abc import Generator
    from collections.abc import Iterable

    from _pytest.config import Config
    from _pytest.config.argparsing import Parser
    from _pytest.fixtures import FixtureRequest
    from _pytest.nodes import Item
    from _pytest.terminal import TerminalReporter

    from .._detectors import Finding
    from ..capture import QueryView

__all__ = ["QueryWatchFixture"]


def pytest_addoption(parser: Parser) -> None:
    group = parser.getgroup("querywatch", "query budgets and baselines (querywatch)")
    group.addoption(
        "--querywatch-baseline",
        metavar="FILE",
        default=None,
        help="compare each test's queries with FILE and fail on regressions; the file is"
        " created when missing (default: 'baseline' in [tool.querywatch])",
    )
    group.addoption(
        "--querywatch-update-baseline",
        action="store_true",
        default=False,
        help="rewrite the baseline with the tests that ran (and passed)",
    )
    group.addoption(
        "--querywatch-timing",
        choices=("report", "fail"),
        default=None,
        help="a database time over the baseline's tolerance is reported (default) or fails",
    )
    group.addoption(
        "--querywatch-markdown",
        metavar="FILE",
        default=None,
        help="write a Markdown summary to FILE (also appended to $GITHUB_STEP_SUMMARY when set)",
    )
    group.addoption(
        "--querywatch-annotations",
        choices=("auto", "github", "none"),
        default="auto",
        help="print GitHub annotations at the call sites (auto: on GitHub Actions)",
    )


def pytest_configure(config: Config) -> None:
    config.addinivalue_line(
        "markers",
        "query_budget(max_queries=None, max_db_ms=None, n_plus_one='allow',"
        " full_scans='allow', full_scan_min_rows=0): what the test may do with the"
        " database (querywatch)",
    )
    from .. import _config as qw_config
    from .testing import reset_plans

    # The apps of a test session write to a temporary store of their own, not to the
    # developer's (unless QUERYWATCH_STORE_URL is set explicitly).
    qw_config.IN_TEST_SESSION = True
    reset_plans()  # plans are asked afresh each session
    root = str(config.rootpath)
    try:
        project = load_project_config(os.path.join(root, "pyproject.toml"))
    except BudgetError as e:
        raise pytest.UsageError(str(e)) from None
    gate = _Gate(config, project, root)
    config.stash[_GATE] = gate
    if gate.baseline_path is not None:
        try:
            gate.baseline = Baseline.load(gate.baseline_path)
        except BaselineError as e:
            raise pytest.UsageError(str(e)) from None


@dataclasses.dataclass
class _Gate:
    config: Config
    project: ProjectConfig
    root: str
    baseline: Baseline | None = None
    results: list[CaseResult] = dataclasses.field(default_factory=list)
    recorded: dict[str, dict[str, t.Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        opt = self.config.getoption
        path = opt("--querywatch-baseline") or self.project.baseline
        if path is not None and not os.path.isabs(path):
            # From the command line: relative to where pytest runs; from the project's
            # config: relative to its root.
            base = os.getcwd() if opt("--querywatch-baseline") else self.root
            path = os.path.join(base, path)
        self.baseline_path: str | None = path
        self.update = bool(opt("--querywatch-update-baseline"))
        if self.update and path is None:
            msg = (
                "--querywatch-update-baseline needs a baseline file: pass"
                " --querywatch-baseline FILE or set baseline = '...' in [tool.querywatch]."
            )
            raise pytest.UsageError(msg)
        self.timing_fails = (opt("--querywatch-timing") or self.project.timing) == "fail"
        self.packages = self.project.app_packages or default_packages(self.root)

    def settings_for(self, item: Item) -> t.Any:
        module = getattr(getattr(item, "module", None), "__name__", None)
        packages = (*self.packages, module) if module else self.packages
        return gate_settings(packages, n_plus_one_threshold=self.project.n_plus_one_threshold)

    def budget_for(self, item: Item) -> Budget:
        budget = self.project.budget
        for mark in reversed(list(item.iter_markers("query_budget"))):
            if mark.args:
                msg = (
                    f"{item.nodeid}: @pytest.mark.query_budget takes keywords only, such as"
                    f" query_budget(max_queries=20), got {mark.args!r}."
                )
                raise BudgetError(msg)
            budget = budget.merged(
                parse_budget(mark.kwargs, f"{item.nodeid}: @pytest.mark.query_budget")
            )
        return budget


_GATE = pytest.StashKey[_Gate]()
_BUDGET = pytest.StashKey[Budget]()


def pytest_collection_modifyitems(config: Config, items: list[Item]) -> None:
    # Budgets are read before any test runs: a malformed marker stops the session.
    gate = config.stash.get(_GATE, None)
    if gate is None:
        return
    for item in items:
        try:
            item.stash[_BUDGET] = gate.budget_for(item)
        except BudgetError as e:
            raise pytest.UsageError(str(e)) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: Item) -> Generator[None, None, None]:
    gate = item.config.stash.get(_GATE, None)
    if gate is None:
        return (yield)
    budget = item.stash.get(_BUDGET, None) or gate.budget_for(item)
    watched = (
        budget.enforced
        or gate.baseline is not None
        or "querywatch" in getattr(item, "fixturenames", ())
    )
    if not watched:
        return (yield)
    collector = Collector(item.nodeid, gate.settings_for(item))
    fixture = _fixture_of(item)
    if fixture is not None:
        fixture._observation = collector.observation
    with collector:
        result = yield
    _judge(gate, item, collector.observation, budget)
    return result


def _fixture_of(item: Item) -> QueryWatchFixture | None:
    funcargs = getattr(item, "funcargs", {})
    value = funcargs.get("querywatch")
    return value if isinstance(value, QueryWatchFixture) else None


def _judge(gate: _Gate, item: Item, obs: Observation, budget: Budget) -> None:
    from .testing import shared_plans

    baseline = gate.baseline
    need_plans = budget.full_scans == FORBID or baseline is not None
    plans = shared_plans() if need_plans else None
    violations = evaluate(obs, budget, plans, gate.root)
    notes: list[str] = []
    state = ""
    if baseline is not None:
        entry = entry_for(obs, plans, gate.root)
        if gate.update or not baseline.existed:
            gate.recorded[item.nodeid] = entry
            state = "recorded"
        elif item.nodeid in baseline.tests:
            found, notes = baseline.diff(
                item.nodeid, entry, obs, plans, budget,
                timing_fails=gate.timing_fails, root=gate.root,
            )  # fmt: skip
            violations.extend(found)
            state = "compared"
        else:
            state = "new"
    item.user_properties.append(("querywatch_queries", obs.query_count))
    item.user_properties.append(("querywatch_db_ms", round(obs.db_ms, 3)))
    path, line, _ = item.location
    gate.results.append(
        CaseResult(
            name=item.nodeid,
            file=os.path.join(str(item.config.rootpath), path),
            line=(line or 0) + 1,
            queries=obs.query_count,
            db_ms=obs.db_ms,
            violations=violations,
            notes=notes,
            baseline=state,
        )
    )
    if violations:
        text = "\n".join(v.text() for v in violations)
        pytest.fail(f"querywatch: the test failed the query gate.\n{text}", pytrace=False)


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: Config) -> None:
    gate = config.stash.get(_GATE, None)
    if gate is None or not gate.results and gate.baseline is None:
        return
    from rich.console import Console

    extra: list[str] = []
    baseline = gate.baseline
    if baseline is not None:
        new = [r.name for r in gate.results if r.baseline == "new"]
        if gate.recorded:
            verb = "updated" if baseline.existed else "created"
            extra.append(
                f"querywatch: baseline {verb}: {len(gate.recorded)} tests recorded in"
                f" {relpath(baseline.path)}."
            )
        if new:
            extra.append(
                f"querywatch: {len(new)} tests are not in the baseline yet; record them"
                f" with --querywatch-update-baseline."
            )
    from .testing import shared_plans

    for url, note in shared_plans().notes.items():
        extra.append(f"querywatch: no plans from {url}: {note}")
    buf = io.StringIO()
    width = terminalreporter._tw.fullwidth
    console = Console(
        file=buf, width=width, force_terminal=terminalreporter.hasmarkup, highlight=False
    )
    terminalreporter.write_sep("-", "querywatch")
    if gate.results:
        render_terminal(gate.results, console, extra=extra)
    else:
        for line in extra:
            console.print(line, markup=False)
    terminalreporter.write(buf.getvalue())
    mode = config.getoption("--querywatch-annotations")
    if mode == "github" or (mode == "auto" and os.environ.get("GITHUB_ACTIONS") == "true"):
        for line in github_annotations(gate.results, gate.root):
            terminalreporter.write_line(line)
    md_path = config.getoption("--querywatch-markdown")
    if gate.results and (md_path or os.environ.get("GITHUB_STEP_SUMMARY")):
        text = markdown(gate.results)
        if md_path:
            with open(md_path, "w", encoding="utf-8") as f:
                f.write(text)
        write_step_summary(text)


def pytest_unconfigure(config: Config) -> None:
    if config.stash.get(_GATE, None) is not None:
        from .testing import reset_plans

        reset_plans()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    gate = config.stash.get(_GATE, None)
    if gate is None:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # A pytest-xdist worker: the controller gathers every worker's results and
        # writes the baseline once (workers writing it would overwrite each other).
        workeroutput["querywatch"] = {
            "recorded": gate.recorded,
            "results": [_result_to_dict(r) for r in gate.results],
        }
        return
    if gate.baseline is None or not gate.recorded:
        return
    gate.baseline.tests.update(gate.recorded)
    gate.baseline.save()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: t.Any, error: t.Any) -> None:
    """pytest-xdist, on the controller: a worker finished; take its results."""
    gate = node.config.stash.get(_GATE, None)
    output = getattr(node, "workeroutput", {}).get("querywatch")
    if gate is None or not output:
        return
    gate.recorded.update(output["recorded"])
    gate.results.extend(_result_from_dict(d) for d in output["results"])


def _result_to_dict(r: CaseResult) -> dict[str, t.Any]:
    data = dataclasses.asdict(r)
    for v, raw in zip(r.violations, data["violations"], strict=True):
        raw["site"] = list(v.site) if v.site is not None else None
    return data


def _result_from_dict(d: dict[str, t.Any]) -> CaseResult:
    from ..capture import CallSite
    from .gate import Violation

    violations = [
        Violation(
            v["rule"],
            v["message"],
            list(v["details"]),
            CallSite(*v["site"]) if v["site"] is not None else None,
        )
        for v in d["violations"]
    ]
    return CaseResult(**{**d, "violations": violations})


# --- the fixture ------------------------------------------------------------------------


class QueryWatchFixture:
    """The ``querywatch`` fixture: what the test has done with the database so far, and
    budget assertions for a block of it.

    .. code-block:: python

        def test_recent_orders(client, querywatch):
            with querywatch.assert_no_n_plus_one():
                client.get("/api/orders/recent")
            assert querywatch.query_count < 10
    """

    def __init__(self, packages: Iterable[str]) -> None:
        self._packages = tuple(packages)
        self._observation: Observation | None = None

    @property
    def observation(self) -> Observation:
        if self._observation is None:
            msg = "The querywatch fixture collects during the test's call, not its set-up."
            raise RuntimeError(msg)
        return self._observation

    @property
    def query_count(self) -> int:
        """Statements run so far by the test (requests included)."""
        return self.observation.query_count

    @property
    def queries(self) -> list[QueryView]:
        """The statements of the test's finished units of work, in order (frozen)."""
        from ..capture import QueryView

        return [QueryView.of(q) for r in self.observation.records for q in r.queries]

    @property
    def findings(self) -> list[Finding]:
        """N+1, slow and repeated-query findings so far."""
        return [f for f, _ in self.observation.findings]

    def plans(self) -> dict[str, t.Any]:
        """The plan of each read shape so far, by shape id (asked of the database)."""
        from .testing import shared_plans

        book = shared_plans()
        out = {}
        for use in self.observation.reads():
            plan = book.plan(use)
            if plan is not None:
                out[use.fingerprint.id] = plan
        return out

    def assert_max_queries(self, n: int) -> t.Any:
        from .testing import assert_max_queries

        return assert_max_queries(n, app_packages=self._packages)

    def assert_no_n_plus_one(self) -> t.Any:
        from .testing import assert_no_n_plus_one

        return assert_no_n_plus_one(app_packages=self._packages)

    def assert_no_full_scans(self, min_rows: int = 0) -> t.Any:
        from .testing import assert_no_full_scans

        return assert_no_full_scans(min_rows, app_packages=self._packages)

    def assert_constant_queries(
        self,
        fn: t.Callable[[int], t.Any],
        sizes: tuple[int, int] = (10, 100),
        *,
        setup: t.Callable[[int], t.Any] | None = None,
    ) -> t.Any:
        from .testing import assert_constant_queries

        __tracebackhide__ = True
        return assert_constant_queries(fn, sizes, setup=setup, app_packages=self._packages)


@pytest.fixture
def querywatch(request: FixtureRequest) -> QueryWatchFixture:
    """What the test does with the database, and query budget assertions."""
    gate = request.config.stash.get(_GATE, None)
    packages: tuple[str, ...] = ()
    if gate is not None:
        packages = gate.settings_for(request.node).app_packages
    return QueryWatchFixture(p.rstrip(".") for p in packages)
