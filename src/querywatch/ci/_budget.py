"""What a test may do with the database (:class:`Budget`, from ``[tool.querywatch]``, a
marker or a requests file), the gate's settings and the project's configuration."""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing as t

from .._config import Settings
from ..exceptions import BudgetError

if t.TYPE_CHECKING:
    from collections.abc import Mapping


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
