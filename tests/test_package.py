"""The package's shape: what the layered redesign (issue 19) holds, step by step."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import typing as t

import querywatch
from querywatch.exceptions import QueryWatchError


def test_every_error_is_a_querywatch_error_and_lives_in_exceptions() -> None:
    """One tree: an app catches ``QueryWatchError`` and gets them all, and finds each
    in one module. (Private control-flow exceptions, named with ``_``, are not errors a
    user sees.)"""
    found = {}
    for mod in pkgutil.walk_packages(querywatch.__path__, "querywatch."):
        if mod.name.endswith("__main__"):
            continue  # runs the command line when imported
        module = importlib.import_module(mod.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("querywatch")
                and not name.startswith("_")
            ):
                found[obj.__qualname__] = obj
    assert len(found) >= 19
    stray = sorted(n for n, c in found.items() if c.__module__ != "querywatch.exceptions")
    assert stray == []
    outside = sorted(n for n, c in found.items() if not issubclass(c, QueryWatchError))
    assert outside == []


def test_no_module_imports_another_that_imports_it_back() -> None:
    """No import cycle between any two modules, counting the imports made inside
    functions (grimp's graph, as import-linter builds it; only ``TYPE_CHECKING`` blocks
    are left out). The layers contract in ``pyproject.toml`` checks the packages; this
    checks every module, a package's ``__init__`` and its own children included."""
    import grimp

    graph = grimp.build_graph("querywatch", exclude_type_checking_imports=True)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert len(graph.modules) > 50
    assert cycles == []


def test_the_library_never_imports_the_demo() -> None:
    """The demo sits on top, outside the library's import graph: ``querywatch demo``
    reaches it through the ``querywatch.commands`` entry point."""
    import grimp

    graph = grimp.build_graph("querywatch", exclude_type_checking_imports=True)
    importers = graph.find_downstream_modules("querywatch.demo", as_package=True)
    assert {m for m in importers if not m.startswith("querywatch.demo")} == set()


def test_no_module_is_over_800_lines() -> None:
    """One concern a module: a module that grows past 800 lines is split along its
    concerns before it grows further (docs/architecture.md)."""
    import pathlib

    root = pathlib.Path(querywatch.__file__).parent
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    assert len(sizes) > 80
    assert {name: n for name, n in sizes.items() if n > 800} == {}


def test_top_level_implementation_modules_are_private_by_name() -> None:
    """Users import what has no leading ``_`` (httpx's convention): at the top of the
    package that is these modules and the packages' faces, nothing else."""
    modules = {m.name for m in pkgutil.iter_modules(querywatch.__path__) if not m.ispkg}
    public = sorted(m for m in modules if not m.startswith("_"))
    assert public == ["exceptions", "fingerprint", "signals", "testing"]
    assert {"_config", "_sql", "_text", "_stats", "_detectors", "_report"} <= modules


def test_the_public_names_hand_out_no_working_state() -> None:
    """What ``querywatch`` exports of a unit of work is read-only: the record and its
    statements are views, frozen or without setters."""
    import dataclasses

    for name in ("QueryView", "ShapeView", "Finding", "Fingerprint"):
        cls = getattr(querywatch, name)
        assert dataclasses.is_dataclass(cls), name
        assert cls.__dataclass_params__.frozen, name
    view = querywatch.RecordView
    settable = [n for n, v in vars(view).items() if isinstance(v, property) and v.fset is not None]
    assert settable == []
    assert view.__slots__ == ("_record",)
    assert not {"Record", "QueryInfo"} & set(querywatch.__all__)


def test_the_benchmarks_use_only_names_that_exist() -> None:
    """``bench/`` runs rarely and outside the suite: every querywatch name it imports,
    and every attribute it reads of a querywatch module, must still be there."""
    import ast
    import pathlib

    missing = []
    for path in sorted((pathlib.Path(__file__).parent.parent / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("querywatch"):
                base = importlib.import_module(node.module or "")
                for alias in node.names:
                    if not hasattr(base, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}: {node.module}.{alias.name}")
                            continue
                    value = getattr(base, alias.name, None) or importlib.import_module(
                        f"{node.module}.{alias.name}"
                    )
                    if inspect.ismodule(value):
                        modules[alias.asname or alias.name] = value
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and not hasattr(modules[node.value.id], node.attr)
            ):
                missing.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert missing == []


def _python(code: str, *args: str, cwd: t.Any = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


#: A stack querywatch cannot load on: SQLAlchemy missing (an import that fails, as a
#: pinned SQLAlchemy 1.3 fails querywatch's imports).
_BROKEN = "import sys; sys.modules['sqlalchemy'] = None; "


def test_importing_querywatch_imports_neither_flask_nor_sqlalchemy() -> None:
    out = _python(
        "import sys, querywatch; print('flask' in sys.modules, 'sqlalchemy' in sys.modules);"
        " from querywatch import QueryWatch, fingerprint;"
        " print(QueryWatch.__name__, fingerprint.__name__)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "QueryWatch", "fingerprint"]


def test_the_entry_points_load_lazily_and_degrade_to_one_line(tmp_path: t.Any) -> None:
    """The app's ``flask`` and ``pytest`` load every installed entry point: on a stack
    querywatch cannot load on, ``flask --help`` and the app's tests still work, and
    querywatch says in one line why it is off. On a good one, both are the real thing."""
    app = tmp_path / "hello.py"
    app.write_text("from flask import Flask\napp = Flask(__name__)\n")
    (tmp_path / "test_hello.py").write_text("def test_ok():\n    assert True\n")
    flask = "from flask.cli import main; sys.argv[0] = 'flask'; main()"
    # Flask lists the command without importing querywatch's CLI.
    listed = _python(
        "import sys; "
        + flask.replace("main()", "sys.argv[1:] = ['--app', 'hello', '--help']; main()"),
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert "querywatch" in listed.stdout
    broken = _python(
        _BROKEN + flask.replace("main()", "sys.argv[1:] = ['--app', 'hello', '--help']; main()"),
        cwd=tmp_path,
    )
    assert broken.returncode == 0, broken.stderr
    assert "querywatch" in broken.stdout
    ran = _python(
        _BROKEN
        + flask.replace("main()", "sys.argv[1:] = ['--app', 'hello', 'querywatch']; main()"),
        cwd=tmp_path,
    )
    assert ran.returncode == 1
    (line,) = [x for x in ran.stderr.splitlines() if x.strip()]
    assert re.match(r"Error: querywatch is off here \((ModuleNotFound|Import)Error: ", line)
    assert line.endswith("it needs Flask 2.2+, Flask-SQLAlchemy 3.0+ and SQLAlchemy 1.4+.")
    good = _python(
        "import sys; "
        + flask.replace(
            "main()", "sys.argv[1:] = ['--app', 'hello', 'querywatch', '--help']; main()"
        ),
        cwd=tmp_path,
    )
    assert good.returncode == 0, good.stderr
    assert "advise" in good.stdout
    assert "report" in good.stdout
    # pytest: the project's tests pass, and the header says why querywatch is off.
    tests = _python(
        _BROKEN + "import pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider',"
        " '-p', 'no:xdist', '-p', 'no:randomly', 'test_hello.py']))",
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "1 passed" in tests.stdout
    header = _python(
        _BROKEN + "import pytest; sys.exit(pytest.main(['-p', 'no:cacheprovider',"
        " '-p', 'no:xdist', 'test_hello.py']))",
        cwd=tmp_path,
    )
    assert re.search(r"querywatch is off here \((ModuleNotFound|Import)Error: ", header.stdout)
    # On this stack the plugin is the real one: its options are there.
    real = _python(
        "import sys, pytest; sys.exit(pytest.main(['--help', '-p', 'no:cacheprovider']))",
        cwd=tmp_path,
    )
    assert "--querywatch-baseline" in real.stdout
