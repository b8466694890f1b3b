"""``querywatch check``: the CI gate for an app without tests that hit its endpoints.

A requests file lists the requests to make, each with its expected status and budget::

    # requests.yaml
    budget:                     # every request's (over [tool.querywatch])
      n_plus_one: forbid
      full_scans: forbid
    requests:
      - path: /api/orders/recent?limit=50
      - name: order lookup
        method: GET
        path: /api/orders/lookup?email=customer7@example.com
        status: 200
        budget: {max_queries: 3}
      - method: POST
        path: /api/orders
        json: {customer_id: 1, items: [{product_id: 2}]}
        status: 201

The app comes from ``--app module:name`` (a Flask app, or a factory called as Flask's
``--app`` calls it: ``module:create_app('testing')`` passes arguments), optionally seeded
by ``--seed module:function`` (called with the app, inside an app context). Each request
runs through the app's test client as a unit of work of its own and is judged like a
test: same rules, same baseline format, same outputs.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing as t

from ..exceptions import BudgetError
from ..exceptions import RequestsFileError
from .gate import FORBID
from .gate import Budget
from .gate import Collector
from .gate import evaluate
from .gate import gate_settings
from .gate import parse_budget
from .output import CaseResult

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask

    from .baseline import Baseline
    from .gate import PlanBook
    from .gate import ProjectConfig

__all__ = ["CheckRequest", "RequestsFileError", "load_requests", "run_checks"]

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_ENTRY_KEYS = ("name", "method", "path", "json", "headers", "status", "budget")


@dataclasses.dataclass(frozen=True)
class CheckRequest:
    name: str
    method: str
    path: str
    status: int
    budget: dict[str, t.Any]
    json: t.Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The entry's position (1-based) and line in the file.
    index: int = 0
    line: int | None = None


def load_requests(path: str) -> tuple[dict[str, t.Any], list[CheckRequest]]:
    """The file's default budget and its requests, validated."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        msg = f"The requests file {path} cannot be read: {e.strerror or e}."
        raise RequestsFileError(msg) from None
    try:
        data = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        msg = f"The requests file {path} is not valid YAML{where}: {problem}."
        raise RequestsFileError(msg) from None
    lines: list[int | None] = []
    entries: t.Any
    if isinstance(values, list):
        defaults: dict[str, t.Any] = {}
        entries = values
        node_list = data.value if data is not None else []
    elif isinstance(values, dict):
        unknown = [k for k in values if k not in ("budget", "requests")]
        if unknown:
            msg = (
                f"The requests file {path}: unknown top-level key {unknown[0]!r}; the keys"
                " are 'budget' and 'requests'."
            )
            raise RequestsFileError(msg)
        entries = values.get("requests")
        node_list = next(
            (v.value for k, v in data.value if k.value == "requests" and hasattr(v, "value")),
            [],
        )
        try:
            defaults = parse_budget(values.get("budget") or {}, f"{path}, 'budget'")
        except BudgetError as e:
            raise RequestsFileError(str(e)) from None
    else:
        msg = (
            f"The requests file {path} must hold a list of requests (or 'requests:' with"
            f" one), got {type(values).__name__}."
        )
        raise RequestsFileError(msg)
    if not isinstance(entries, list) or not entries:
        msg = f"The requests file {path}: 'requests' must be a non-empty list of requests."
        raise RequestsFileError(msg)
    for node in node_list if isinstance(node_list, list) else []:
        lines.append(node.start_mark.line + 1 if hasattr(node, "start_mark") else None)
    out = []
    names: set[str] = set()
    for i, entry in enumerate(entries, 1):
        line = lines[i - 1] if i - 1 < len(lines) else None
        req = _entry(path, i, line, entry)
        if req.name in names:
            msg = (
                f"The requests file {path}, entry {i} (line {line}): the name {req.name!r}"
                " is used twice; give each request a distinct 'name' (the baseline is keyed"
                " by it)."
            )
            raise RequestsFileError(msg)
        names.add(req.name)
        out.append(req)
    return defaults, out


def _entry(path: str, i: int, line: int | None, entry: t.Any) -> CheckRequest:
    at = f"line {line}" if line else f"entry {i}"
    where = f"The requests file {path}, entry {i} ({at})"

    def bad(key: str, expected: str, value: t.Any) -> RequestsFileError:
        return RequestsFileError(f"{where}: {key!r} must be {expected}, got {value!r}.")

    if not isinstance(entry, dict):
        msg = f"{where}: a request must be a mapping with at least 'path', got {entry!r}."
        raise RequestsFileError(msg)
    for key in entry:
        if key not in _ENTRY_KEYS:
            msg = f"{where}: unknown key {key!r}; the keys are {', '.join(_ENTRY_KEYS)}."
            raise RequestsFileError(msg)
    req_path = entry.get("path")
    if not isinstance(req_path, str) or not req_path.startswith("/"):
        raise bad("path", "a path starting with '/', such as /api/orders", req_path)
    method = entry.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        raise bad("method", f"one of {', '.join(_METHODS)}", method)
    method = method.upper()
    status = entry.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise bad("status", "an HTTP status such as 200", status)
    headers = entry.get("headers", {}) or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise bad("headers", "a mapping of header names to strings", headers)
    name = entry.get("name", f"{method} {req_path}")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "a non-empty string", name)
    try:
        budget = parse_budget(entry.get("budget") or {}, f"{where}, 'budget'")
    except BudgetError as e:
        raise RequestsFileError(str(e)) from None
    return CheckRequest(
        name=name,
        method=method,
        path=req_path,
        status=status,
        budget=budget,
        json=entry.get("json"),
        headers=headers,
        index=i,
        line=line,
    )


def _cwd_importable() -> None:
    # As ``flask --app`` does: modules in the current folder are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def load_app(spec: str) -> Flask:
    """The app named by ``module:name`` (Flask's ``--app`` syntax); raises
    :class:`click.UsageError` saying what could not be found."""
    import click
    from flask import Flask
    from flask.cli import NoAppException
    from flask.cli import locate_app
    from flask.cli import prepare_import

    module, _, name = spec.partition(":")
    if not module:
        msg = f"--app must be 'module:name' such as 'myapp:create_app', got {spec!r}."
        raise click.UsageError(msg)
    try:
        if module.endswith(".py") or os.sep in module:
            module = prepare_import(module)
        else:
            _cwd_importable()
        app = locate_app(module, name or None)
    except NoAppException as e:
        raise click.UsageError(f"--app {spec!r}: {e}") from None
    if not isinstance(app, Flask):
        raise click.UsageError(f"--app {spec!r} is not a Flask app.")
    return app


def load_callable(spec: str, option: str) -> t.Callable[..., t.Any]:
    """The function named by ``module:function``."""
    import importlib

    import click

    module, _, name = spec.partition(":")
    if not module or not name:
        raise click.UsageError(f"{option} must be 'module:function', got {spec!r}.")
    _cwd_importable()
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise click.UsageError(f"{option} {spec!r}: could not import {module!r}: {e}.") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise click.UsageError(f"{option} {spec!r}: {module!r} has no function {name!r}.")
    return t.cast("t.Callable[..., t.Any]", fn)


def dispose_engines(app: Flask) -> None:
    """Close the pooled connections of the app's Flask-SQLAlchemy engines."""
    from ..metrics import app_engines

    for engine in app_engines(app, None).values():
        engine.dispose()


def seed_app(app: Flask, seed: t.Callable[..., t.Any]) -> None:
    """Call ``seed`` with the app (or with nothing) inside an app context."""
    with app.app_context():
        params = [
            p
            for p in inspect.signature(seed).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if params:
            seed(app)
        else:
            seed()


def run_checks(
    app: Flask,
    requests: list[CheckRequest],
    defaults: Budget,
    *,
    plans: PlanBook,
    project: ProjectConfig,
    baseline: Baseline | None = None,
    update_baseline: bool = False,
    timing_fails: bool = False,
    requests_file: str | None = None,
    root: str | None = None,
    on_request: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    """Make each request, judge it, compare it with the baseline. ``on_request`` is
    called with each request's name as it is done (a progress bar)."""
    from .baseline import entry_for

    packages = project.app_packages or (app.import_name.split(".")[0],)
    settings = gate_settings(packages, n_plus_one_threshold=project.n_plus_one_threshold)
    client = app.test_client()
    results = []
    for req in requests:
        budget = defaults.merged(req.budget)
        with Collector(req.name, settings) as c:
            response = client.open(
                req.path, method=req.method, json=req.json, headers=req.headers or None
            )
            response.close()
        obs = c.observation
        need_plans = budget.full_scans == FORBID or baseline is not None
        violations = evaluate(obs, budget, plans if need_plans else None, root)
        result = CaseResult(
            name=req.name,
            file=requests_file,
            line=req.line,
            queries=obs.query_count,
            db_ms=obs.db_ms,
            violations=violations,
        )
        if response.status_code != req.status:
            body = response.get_data(as_text=True).strip().splitlines()
            first = f": {body[0][:200]}" if body else ""
            result.error = (
                f"{req.method} {req.path} answered {response.status_code}, expected"
                f" {req.status}{first}"
            )
        if baseline is not None:
            entry = entry_for(obs, plans, root)
            if update_baseline or not baseline.existed:
                baseline.tests[req.name] = entry
                result.baseline = "recorded"
            elif req.name in baseline.tests:
                found, notes = baseline.diff(
                    req.name, entry, obs, plans, budget, timing_fails=timing_fails, root=root
                )
                result.violations.extend(found)
                result.notes.extend(notes)
                result.baseline = "compared"
            else:
                result.baseline = "new"
        results.append(result)
        if on_request is not None:
            on_request(req.name)
    return results
