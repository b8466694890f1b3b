"""The package's shape: what the layered redesign (issue 19) holds, step by step."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

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
