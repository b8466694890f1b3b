"""Where a statement came from: its fingerprint (once a compiled statement), the
application frame that issued it, its parameters' hash, and the relationship a lazy
load serves."""

from __future__ import annotations

import sys
import typing as t

from .._compat import compile_options
from .._failopen import swallow
from ..fingerprint import Fingerprint
from ..fingerprint import fingerprint
from ._record import CallSite
from ._record import _current_record

if t.TYPE_CHECKING:
    pass


# --- statements and call sites ----------------------------------------------------------

# Code objects compare equal without their file name: the same function loaded from two
# files (two checkouts, two copies of a module) is one key unless the file is part of it.

#: Per package prefixes: (code object, file) -> whether it is application code.
_app_code: dict[tuple[str, ...], dict[t.Any, bool]] = {}
#: Interned call sites, so the hot path builds none and hashes a cached tuple.
_sites: dict[tuple[t.Any, str, int], CallSite] = {}
_CACHE_SIZE = 20000


class _Statement:
    """What capture keeps about one statement between executions.

    SQLAlchemy reuses one compiled object per statement from its compiled cache; this sits
    on it, so an execution reads the shape, the relationship and the last call site from
    one object instead of hashing the SQL text and walking the stack. (An expanded ``IN``
    list or a rendered literal changes the text, never the shape; the ORM's loader path is
    part of SQLAlchemy's cache key, so a compiled object has one path.)"""

    __slots__ = ("fingerprint", "select", "relationship", "site_memo")

    def __init__(self, fp: Fingerprint, relationship: str | None) -> None:
        self.fingerprint = fp
        #: A read whose rows SQLAlchemy fetches through its default strategy.
        self.select = fp.operation == "SELECT"
        #: ``Model.attr`` when an ORM loader path issued it; used for lazy loads only.
        self.relationship = relationship
        #: ``(packages, depth, code, f_lasti, site)`` where application code last issued
        #: it, ``depth`` counted from :func:`_begin`'s frame.
        self.site_memo: tuple[tuple[str, ...], int, t.Any, int, CallSite | None] | None = None


#: Statements without a compiled object (``exec_driver_sql``), by SQL text.
_uncompiled: dict[str, _Statement] = {}

#: The URL of the engine that ran each read shape, by fingerprint, as the engine resolved
#: it (Flask-SQLAlchemy's instance-folder SQLite path, a bind's own database): the
#: advisor explains a shape on the database that ran it. Bounded, oldest dropped.
shape_urls: dict[str, t.Any] = {}
_SHAPE_URLS_CAP = 4096


def _note_url(info: _Statement, context: t.Any) -> None:
    """Remember the engine URL of a read shape (once per compiled statement)."""
    if not info.select:
        return
    try:
        shape_urls[info.fingerprint.id] = context.root_connection.engine.url
        if len(shape_urls) > _SHAPE_URLS_CAP:
            del shape_urls[next(iter(shape_urls))]
    except Exception as e:
        swallow("capture.shape_url", e)


def _statement(context: t.Any, statement: str) -> _Statement:
    compiled = context.compiled
    if compiled is None:
        info = _uncompiled.get(statement)
        if info is None:
            if len(_uncompiled) >= 2048:
                _uncompiled.clear()
            info = _Statement(fingerprint(statement, context.dialect), None)
            _note_url(info, context)
            if len(statement) <= 4096:
                _uncompiled[statement] = info
        return info
    info = compiled.__dict__.get("_querywatch")
    if info is None:
        # SQLAlchemy's compiled cache is the engine's own: one compiled object per engine.
        info = compiled._querywatch = _Statement(
            fingerprint(statement, context.dialect), _loader_relationship(context)
        )
        _note_url(info, context)
    return info


def find_call_site(packages: tuple[str, ...], depth: int = 1) -> tuple[CallSite | None, t.Any, int]:
    """The innermost frame of application code (modules under ``packages``): its call
    site, the frame, and its depth counted from the caller's frame (0), starting the walk
    at ``depth``. ``(None, None, -1)`` when no frame is application code.

    Walking the stack costs about as much as all the rest of capture, so :func:`_begin`
    remembers the result per statement and checks it with one ``sys._getframe``."""
    known = _app_code.get(packages)
    if known is None:
        known = _app_code[packages] = {}
    frame: t.Any = sys._getframe(depth + 1)
    d = depth
    while frame is not None:
        code = frame.f_code
        code_key = (code, code.co_filename)
        is_app = known.get(code_key)
        if is_app is None:
            if len(known) >= _CACHE_SIZE:
                known.clear()
            name = frame.f_globals.get("__name__") or ""
            is_app = known[code_key] = (name + ".").startswith(packages)
        if is_app:
            lineno = frame.f_lineno
            key = (code, code.co_filename, lineno)
            site = _sites.get(key)
            if site is None:
                if len(_sites) >= _CACHE_SIZE:
                    _sites.clear()
                site = _sites[key] = CallSite(code.co_filename, lineno, code.co_name)
            return site, frame, d
        frame = frame.f_back
        d += 1
    return None, None, -1


def _walk_for_site(info: _Statement, packages: tuple[str, ...]) -> CallSite | None:
    """The slow path of :func:`_begin`: walk the stack, and remember where the site was
    (as a depth from ``_begin``'s frame, one above this one) and at which instruction."""
    site, frame, depth = find_call_site(packages, 2)
    if frame is None:
        info.site_memo = None
        return None
    info.site_memo = (packages, depth - 1, frame.f_code, frame.f_lasti, site)
    return site


# --- parameters --------------------------------------------------------------------------


def _params_hash(parameters: t.Any) -> int:
    """A hash of the bound values, to tell "same parameters" from "different" without
    keeping them. Unhashable values (lists, dicts, buffers) fall back to their repr."""
    try:
        if isinstance(parameters, dict):
            return hash(tuple(parameters.items()))
        if isinstance(parameters, list):
            return hash(tuple(parameters))
        return hash(parameters)
    except TypeError:
        try:
            return hash(repr(parameters))
        except Exception:
            return 0


#: The relationship of a reload after a commit ends with this: ``"User" + REFRESHED``.
REFRESHED = " (refreshed after a commit)"

#: The table of each relationship's parent mapper (``"Author.books"``: ``"author"``), so
#: an N+1 finding can name the query that loaded the parents. Bounded.
relationship_tables: dict[str, str] = {}


def _refreshed(state: t.Any) -> str:
    try:
        return f"{state.class_.__name__}{REFRESHED}"
    except Exception:
        return f"object{REFRESHED}"


def _after_commit(session: t.Any) -> None:
    """An ORM session committed: remember where the app did it (see
    :attr:`Record.commit_site`)."""
    record = _current_record.get()
    if record is None or record.closed or not record.packages:
        return
    try:
        record.commit_site = find_call_site(record.packages)[0]
    except Exception as e:
        swallow("capture.commit", e)


def _loader_relationship(context: t.Any) -> str | None:
    """``Model.attr`` when an ORM loader path issued the statement, else None: the loader
    path's last element is the relationship."""
    options = compile_options(context.invoked_statement)
    path = getattr(options, "_current_path", None)
    if not path:
        return None
    prop = path[-1]
    mapper = getattr(prop, "parent", None)
    parent = getattr(mapper, "class_", None)
    key = getattr(prop, "key", None)
    if parent is not None and key is not None:
        name = f"{parent.__name__}.{key}"
        table = getattr(getattr(mapper, "local_table", None), "name", None)
        if table and len(relationship_tables) < 4096:
            relationship_tables[name] = str(table)
        return name
    return None
