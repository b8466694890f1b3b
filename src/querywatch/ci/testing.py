"""Query budgets for an application's own tests.

With pytest, the ``querywatch`` fixture (see :mod:`querywatch.ci.pytest_plugin`) offers
these as methods; the functions here work in any test runner::

    from querywatch.testing import assert_max_queries, assert_no_n_plus_one

    with assert_max_queries(5):
        client.get("/api/orders/recent")

    with assert_no_n_plus_one():
        client.get("/api/orders/recent")

    assert_constant_queries(lambda n: client.get(f"/api/orders/recent?limit={n}"),
                            sizes=(10, 100), setup=seed_orders)

Each raises :class:`~querywatch.exceptions.QueryBudgetError` (an ``AssertionError``)
whose message lists each offending query shape, its count, the relationship or the
call site in the application's code, the plan flag and the fix.
"""

from __future__ import annotations

import contextlib
import threading
import typing as t

from ..exceptions import QueryBudgetError
from .gate import FORBID
from .gate import Budget
from .gate import Collector
from .gate import Observation
from .gate import PlanBook
from .gate import Violation
from .gate import constant_queries_violation
from .gate import evaluate
from .gate import gate_settings

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Iterator

    from .._config import Settings

__all__ = [
    "assert_constant_queries",
    "assert_max_queries",
    "assert_no_full_scans",
    "assert_no_n_plus_one",
    "capture_queries",
    "shared_plans",
]

_plans: PlanBook | None = None
_plans_lock = threading.Lock()


def shared_plans() -> PlanBook:
    """The plan cache of this run (a pytest session's, else the process's): each read
    shape is explained once per database and run."""
    global _plans
    if _plans is None:
        with _plans_lock:
            if _plans is None:
                _plans = PlanBook()
    return _plans


def reset_plans() -> None:
    """Forget every plan (a new run begins: the schema may have changed)."""
    global _plans
    with _plans_lock:
        old, _plans = _plans, None
    if old is not None:
        old.close()


def _settings(app_packages: Iterable[str] | None) -> Settings:
    return gate_settings(tuple(app_packages or ()))


@contextlib.contextmanager
def capture_queries(
    name: str = "block", *, app_packages: Iterable[str] | None = None
) -> Iterator[Observation]:
    """Collect what the block does with the database (requests of apps that run
    querywatch as their own units of work; other statements in one of the block's)."""
    with Collector(name, _settings(app_packages)) as c:
        yield c.observation


def raise_for(violations: list[Violation], header: str | None = None) -> None:
    __tracebackhide__ = True  # pytest shows the test's line, not ours
    if not violations:
        return
    parts = [header] if header else []
    parts.extend(v.text() for v in violations)
    raise QueryBudgetError("\n".join(parts), violations)


@contextlib.contextmanager
def _assert_budget(budget: Budget, app_packages: Iterable[str] | None) -> Iterator[Observation]:
    __tracebackhide__ = True
    with capture_queries("block", app_packages=app_packages) as obs:
        yield obs
    plans = shared_plans() if budget.full_scans == FORBID else None
    raise_for(evaluate(obs, budget, plans))


def assert_max_queries(
    n: int, *, app_packages: Iterable[str] | None = None
) -> contextlib.AbstractContextManager[Observation]:
    """Fail when the block runs more than ``n`` statements."""
    return _assert_budget(Budget(max_queries=n), app_packages)


def assert_no_n_plus_one(
    *, app_packages: Iterable[str] | None = None
) -> contextlib.AbstractContextManager[Observation]:
    """Fail when the block runs one shape in a loop (an N+1), in a request or not."""
    return _assert_budget(Budget(n_plus_one=FORBID), app_packages)


def assert_no_full_scans(
    min_rows: int = 0, *, app_packages: Iterable[str] | None = None
) -> contextlib.AbstractContextManager[Observation]:
    """Fail when a read of the block scans a whole table (of at least ``min_rows`` rows)
    that it filters or joins: no index serves it. Plans come from the database the
    statement ran on (a file or a server: an in-memory SQLite database cannot be
    explained from another connection)."""
    return _assert_budget(Budget(full_scans=FORBID, full_scan_min_rows=min_rows), app_packages)


def assert_constant_queries(
    fn: Callable[[int], t.Any],
    sizes: tuple[int, int] = (10, 100),
    *,
    setup: Callable[[int], t.Any] | None = None,
    app_packages: Iterable[str] | None = None,
) -> tuple[Observation, Observation]:
    """Fail when the number of statements grows with the data: ``setup(n)`` (not
    counted) makes ``n`` rows, then ``fn(n)`` runs counted, for each of the two sizes.
    Catches an N+1 with no threshold at all. Returns the two observations."""
    __tracebackhide__ = True
    if len(sizes) != 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
        msg = f"'sizes' must be two positive whole numbers such as (10, 100), got {sizes!r}."
        raise ValueError(msg)
    small_n, large_n = sorted(sizes)
    if small_n == large_n:
        msg = f"'sizes' must be two different sizes, got {sizes!r}."
        raise ValueError(msg)
    seen = []
    for n in (small_n, large_n):
        if setup is not None:
            setup(n)
        with capture_queries(f"size {n}", app_packages=app_packages) as obs:
            fn(n)
        seen.append(obs)
    v = constant_queries_violation((small_n, large_n), seen[0], seen[1])
    raise_for([v] if v is not None else [])
    return seen[0], seen[1]
