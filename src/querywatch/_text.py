"""How querywatch writes durations, query shapes and call sites for people: one place, so
the report, the dashboard, the gate, alerts, incidents and the demo say them alike.

A call site is written two ways, each where it has always been read: ``file:line
(function)`` for a live :class:`~querywatch.capture.CallSite` (findings, the CI gate) and
``file:line in function`` for one read back from the store as a dict (the report,
evidence, the postmortem; the dashboard's ``site`` macro renders the same dict).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import typing as t

__all__ = [
    "compact_shape",
    "duration_text",
    "relpath",
    "short",
    "site_dict",
    "site_text",
    "stored_site_text",
]


class Site(t.Protocol):
    """What a call site carries (:class:`querywatch.capture.CallSite`)."""

    @property
    def filename(self) -> str: ...
    @property
    def lineno(self) -> int: ...
    @property
    def function(self) -> str: ...
    def __hash__(self) -> int: ...


def duration_text(seconds: float) -> str:
    """A duration for people: "42 s", "17 min", "2.5 h"."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def short(text: str | None, n: int) -> str:
    """``text`` cut at ``n`` characters with ``…``; ``?`` for none."""
    if not text:
        return "?"
    return text if len(text) <= n else text[: n - 1] + "…"


_SELECT_LIST_RE = re.compile(r"^SELECT (?:DISTINCT )?(.{60,}?) FROM ")


def compact_shape(shape: str | None, n: int = 200) -> str:
    """A shape for people: a long select list becomes ``…``, the rest is cut at ``n``."""
    if not shape:
        return "?"
    m = _SELECT_LIST_RE.match(shape)
    if m and "(" not in m.group(1):
        shape = shape[: m.start(1)] + "…" + shape[m.end(1) :]
    return short(shape, n)


def relpath(path: str, root: str | None = None) -> str:
    """``path`` relative to ``root`` (the current folder) when inside it."""
    try:
        rel = os.path.relpath(path, root or os.getcwd())
    except ValueError:
        return path
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def site_text(site: Site | None, root: str | None = None) -> str:
    """``file:line (function)``, the file relative to ``root`` (the current folder)."""
    if site is None:
        return "no call site in the application's packages"
    return _site_text(site, root or os.getcwd())


@functools.lru_cache(maxsize=4096)
def _site_text(site: Site, root: str) -> str:
    # Findings name their sites on every request that has them: computed once a site.
    return f"{relpath(site.filename, root)}:{site.lineno} ({site.function})"


def site_dict(site: Site | None) -> dict[str, t.Any] | None:
    """A call site as the store and the report's JSON keep it."""
    if site is None:
        return None
    return {"file": site.filename, "line": site.lineno, "function": site.function}


def stored_site_text(site: dict[str, t.Any] | None) -> str:
    """``file:line in function`` of a call site kept as a dict (:func:`site_dict`), the
    file relative to the current folder when inside it; empty for none."""
    if not site:
        return ""
    path = site["file"]
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
    return f"{path}:{site['line']} in {site['function']}"
