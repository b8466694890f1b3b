"""The pytest plugin's entry point (``pytest11``): :mod:`querywatch.ci.pytest_plugin`,
whose hooks and fixtures this module takes on; where it cannot load here (a Flask or
SQLAlchemy older than querywatch supports), one line in pytest's header says why, and
the project's tests run as they would without querywatch."""

from __future__ import annotations

import typing as t

from ._entry import unavailable

try:
    from .ci import pytest_plugin as _plugin
except Exception as _e:  # an unsupported stack: the plugin is off, pytest is not
    _off = unavailable(_e)

    def pytest_report_header(config: t.Any) -> str:
        return _off

else:
    globals().update(
        {k: v for k, v in vars(_plugin).items() if not k.startswith("__") and k != "annotations"}
    )
