"""The Flask extension: ``QueryWatch(app)`` or ``qw.init_app(app)``."""

from __future__ import annotations

import contextlib
import typing as t
import weakref

from flask import current_app
from flask import has_app_context

from .. import capture
from .._compat import current_app as current_app_object
from .._config import load_settings
from .._config import warn_unknown_keys
from .._failopen import fail_open
from .._failopen import log_limited
from ..exceptions import NotInitializedError
from ..integrations import otel
from ._hooks import _register_views
from ._hooks import _request_hooks
from ._state import _EXTENSION_KEY
from ._state import PROCESS
from ._state import AppState

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Iterator

    from flask import Flask
    from sqlalchemy.engine import Engine
    from typing_extensions import Unpack

    from ..cache import Cache
    from ..cache import CacheOptions
    from ..store import Store

__all__ = ["QueryWatch", "cached_query"]


class QueryWatch:
    """Watch every SQL statement of a Flask app.

    .. code-block:: python

        qw = QueryWatch(app)  # or qw = QueryWatch(); qw.init_app(app)

    :param app: the app to watch now; else call :meth:`init_app` later.
    :param engines: capture only these engines. By default every SQLAlchemy engine the
        app uses is captured (Flask-SQLAlchemy's, its binds, and plain engines).

    .. versionadded:: 0.1
    """

    def __init__(
        self, app: Flask | None = None, *, engines: Iterable[Engine] | None = None
    ) -> None:
        self._engines = frozenset(engines) if engines is not None else None
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``: validate the config, hook requests and SQLAlchemy."""
        if _EXTENSION_KEY in app.extensions:
            msg = (
                "A 'QueryWatch' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
            raise RuntimeError(msg)
        warn_unknown_keys(app)
        from ..alerts import objectives_setting
        from ..guard import guard_setting
        from ..incidents.policy import escalation_setting

        settings = load_settings(
            app,
            objectives=objectives_setting,
            escalation=escalation_setting,
            guard=guard_setting,
        )
        state = AppState(app, settings, self._engines)
        state.owner = self
        app.extensions[_EXTENSION_KEY] = state
        self._apps.add(app)
        PROCESS.add(state)
        if not settings.enabled:
            return
        capture.install()
        if settings.cache_url:
            # A process that only writes must still bump the versions every other process
            # reads: the shared cache watches commits from the start.
            _ = state.cache
        if settings.metrics_path is not None or settings.ready_path is not None:
            _register_views(app, state)
        if settings.dashboard_path is not None:
            from .. import dashboard

            if settings.dashboard_path.rstrip("/") in {r.rule for r in app.url_map.iter_rules()}:
                log_limited(
                    "dashboard.path",
                    "querywatch did not add its dashboard at %s: the app already routes it."
                    " Set QUERYWATCH_DASHBOARD_PATH to another path (or None).",
                    settings.dashboard_path,
                )
            else:
                dashboard.register(app, state)
        before, after, teardown = _request_hooks(state)
        app.before_request_funcs.setdefault(None, []).insert(0, before)
        app.after_request_funcs.setdefault(None, []).append(after)
        app.teardown_request_funcs.setdefault(None, []).append(teardown)
        state.teardown = teardown
        if otel.statement_spans():
            # The app traces its statements: each span hears its shape and call site.
            capture.add_statement_hook(otel.annotate_statement)
            state._statements_traced = True
        if state.guard is not None:
            # Flask stops at the first teardown_request hook that raises, so one of the
            # app's could keep ours from giving a bulkhead's permit back, for good. The
            # app context's teardown runs whatever happened: there, a request record
            # still open is ended (once: the hook sees it ended already otherwise).
            current = capture.current_record

            def backstop(exc: BaseException | None) -> None:
                record = current()
                if record is not None and record.kind == "request":
                    teardown(exc)

            app.teardown_appcontext_funcs.append(backstop)

        from .. import cli

        if "querywatch" not in app.cli.commands:
            app.cli.add_command(cli.cli, "querywatch")

    def _state(self, app: Flask | None = None) -> AppState:
        if app is None:
            if has_app_context():
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            else:
                apps = list(self._apps)
                if len(apps) == 1:
                    app = apps[0]
        if app is None or _EXTENSION_KEY not in app.extensions:
            msg = (
                "No QueryWatch is registered on the current app. Did you forget to call"
                " 'init_app', or to push an app context ('with app.app_context():')?"
            )
            raise NotInitializedError(msg)
        return t.cast("AppState", app.extensions[_EXTENSION_KEY])

    @contextlib.contextmanager
    def capture(self, name: str, *, app: Flask | None = None) -> Iterator[capture.RecordView]:
        """Capture the statements of work outside a request (CLI command, task)::

            with qw.capture("nightly-sync") as record:
                sync()
            print(record.query_count, record.db_time)

        The work is reported as the endpoint ``job:<name>``. Yields a read-only
        :class:`~querywatch.RecordView` of it: the work so far inside the block, final
        after it.
        """
        state = self._state(app)
        record = state.new_record(f"job:{name}", "job")
        token = capture.start_record(record)
        status = 0
        try:
            yield record.view()
        except BaseException:
            status = 500
            raise
        finally:
            capture.end_record(token)
            with fail_open("extension.capture"):
                state.finish(record, status)

    def flush(self, app: Flask | None = None) -> bool:
        """Write pending aggregates to the store now (normally a background thread does).
        Returns False when the store could not be written."""
        return self._state(app).flusher.flush()

    def store(self, app: Flask | None = None) -> Store:
        """The app's store."""
        return self._state(app).store

    @property
    def cache(self) -> Cache:
        """The current app's result cache (see :mod:`querywatch.cache`)::

        qw.cache.get_or_compute("stats", compute_stats, ttl=30)
        qw.cache.invalidate(table="orders")
        """
        return self._state().cache

    def cached(
        self,
        ttl: float | None = None,
        **options: Unpack[CacheOptions],
    ) -> Callable[[Callable[..., t.Any]], Callable[..., t.Any]]:
        """Cache a function's result until a table it read is written, or ``ttl``
        seconds (``QUERYWATCH_CACHE_TTL`` by default)::

            @qw.cached(ttl=60)
            def best_sellers(category: str) -> list[dict]: ...

            best_sellers("books", cache_bypass=True)  # computed, cache untouched

        The key is the function's module and name and a digest of its arguments
        (``key=`` replaces it); the tables come from the statements it ran (``tables=``
        adds more). Values are JSON; ``pickle=True`` stores a pickle signed with the app's
        ``SECRET_KEY`` instead. ``invalidate=False`` keeps an entry its whole TTL whatever
        is written (Flask-Caching's ``memoize``), for reads that may be that stale. The
        app is the current one at call time.
        """
        from ..cache import cached_with

        def current_cache() -> Cache | None:
            state = self._state(current_app_object())
            return state.cache if state.settings.enabled else None

        return cached_with(current_cache, ttl, **options)


def cached_query(
    ttl: float | None = None,
    **options: Unpack[CacheOptions],
) -> Callable[[Callable[..., t.Any]], Callable[..., t.Any]]:
    """``@qw.cached`` for modules that do not hold the ``QueryWatch`` instance: the
    cache is the current app's, looked up at each call::

        from querywatch import cached_query

        @cached_query(ttl=60)
        def best_sellers(category: str) -> list[dict]: ...
    """
    from ..cache import cached_with

    def current_cache() -> Cache | None:
        app = current_app_object()
        if app is None:
            msg = "A cached_query function was called outside an app context."
            raise NotInitializedError(msg)
        state = app.extensions.get(_EXTENSION_KEY)
        if state is None or not state.settings.enabled:
            return None  # no querywatch here: the function runs uncached
        cache: Cache = state.cache
        return cache

    return cached_with(current_cache, ttl, **options)
