"""The Flask extension: ``QueryWatch(app)`` or ``qw.init_app(app)``."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import typing as t
import weakref

from flask import current_app
from flask import has_app_context
from flask import request
from flask.globals import _cv_app

from . import capture
from ._failopen import fail_open
from ._failopen import log_limited
from ._failopen import record_internal_error
from ._failopen import swallow
from ._failopen import unavailable
from .advice_worker import AdviceWorker
from .config import Settings
from .config import load_settings
from .config import normalize_url
from .config import warn_unknown_keys
from .detectors import Finding
from .detectors import detect
from .exceptions import NotInitializedError
from .signals import record_finished
from .stats import FOLD_INTERVAL
from .stats import Stats

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Iterator

    from flask import Flask
    from flask import Response
    from sqlalchemy.engine import Engine
    from typing_extensions import Unpack

    from .alerts import Evaluator
    from .cache import Cache
    from .cache import CacheOptions
    from .incidents.worker import IncidentWorker
    from .metrics import AppMetrics
    from .store import Store

__all__ = ["QueryWatch", "cached_query"]

_EXTENSION_KEY = "querywatch"


class AppState:
    """What querywatch keeps for one app, at ``app.extensions["querywatch"]``."""

    def __init__(self, app: Flask, settings: Settings, engines: frozenset[Engine] | None) -> None:
        self.settings = settings
        self.engines = engines
        self.stats = self.new_stats()
        self.instance_path = app.instance_path
        #: The app's name (its import name), as metrics label it.
        self.name = app.name
        self._config = app.config
        self._app = weakref.ref(app)
        self.flusher = Flusher(self)
        self.advice_worker = AdviceWorker(self)
        #: Called with each finished record and its findings (used by test helpers).
        self.listeners: list[Callable[[capture.Record, list[Finding]], None]] = []
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        self._cache: Cache | None = None
        #: The tables of each of the app's databases, read once (one entry an engine).
        self._tables_by_url: dict[str, frozenset[str]] = {}
        #: The QueryWatch instance registered on the app.
        self.owner: QueryWatch | None = None
        #: The app's Prometheus metrics (None when ``QUERYWATCH_METRICS_PATH`` is None).
        self.metrics: AppMetrics | None = None
        self._evaluator: Evaluator | None = None
        #: Turns alerts into incidents, escalates, delivers notifications.
        self.incident_worker: IncidentWorker | None = None
        if settings.incidents and settings.alerts:
            from .incidents.worker import IncidentWorker

            self.incident_worker = IncidentWorker(
                lambda: self.store,
                settings.escalation,
                scale=settings.alert_time_scale,
                severities=settings.incident_severities,
                interval=settings.incident_interval,
            )

    def release_leases(self) -> None:
        """Give up the alerts and incidents leases if this process holds them."""
        from .alerts import LEASE

        if self.incident_worker is not None:
            self.incident_worker.release()
        if self._evaluator is not None:
            self.store.release_lease(LEASE, self._evaluator.holder)

    def new_stats(self) -> Stats:
        s = self.settings
        return Stats(
            max_shapes=s.max_shapes, bucket_seconds=s.bucket_seconds, objectives=s.objectives
        )

    @property
    def evaluator(self) -> Evaluator:
        """The app's alert evaluator (it evaluates only while holding the store's lease)."""
        if self._evaluator is None:
            from .alerts import AlertRules
            from .alerts import Evaluator

            s = self.settings
            rules = AlertRules(
                objectives=s.objectives,
                scale=s.alert_time_scale,
                shape_p95_ms=s.alert_shape_p95_ms,
                shape_min_calls=s.alert_shape_min_calls,
                new_n_plus_one=s.alert_new_n_plus_one,
                new_full_scan=s.alert_new_full_scan,
                bucket_seconds=s.bucket_seconds,
                min_bad_events=s.alert_min_bad_events,
            )
            self._evaluator = Evaluator(self.store, rules)
        return self._evaluator

    @property
    def store(self) -> Store:
        """The store, opened on first use."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    from .store import Store

                    if self.settings.store_url.startswith("sqlite:///" + self.instance_path):
                        os.makedirs(self.instance_path, exist_ok=True)
                    self._store = Store(self.settings.store_url)
        return self._store

    @property
    def cache(self) -> Cache:
        """The app's result cache, made on first use."""
        if self._cache is None:
            with self._store_lock:
                if self._cache is None:
                    from .cache import Cache
                    from .cache import MemoryBackend
                    from .cache import RedisBackend

                    s = self.settings
                    backend: MemoryBackend | RedisBackend
                    if s.cache_url:
                        backend = RedisBackend(s.cache_url, prefix=s.cache_prefix)
                    else:
                        backend = MemoryBackend(
                            max_entries=s.cache_max_entries, max_bytes=s.cache_max_bytes
                        )
                        if _forked or int(os.environ.get("WEB_CONCURRENCY", "1") or 1) > 1:
                            log_limited(
                                "cache.memory",
                                "querywatch's result cache is in memory, and this app runs"
                                " in several processes: a write invalidates the entries of"
                                " its own process only. Set QUERYWATCH_CACHE_URL to a"
                                " Redis URL to share entries and invalidations.",
                            )
                    self._cache = Cache(
                        backend,
                        default_ttl=s.cache_ttl,
                        track=lambda fn: capture.tables_read_by(
                            fn, lambda: self.new_record("job:cache", "job")
                        ),
                        secret=_secret(self._config.get("SECRET_KEY")),
                    )
                    # A committed write bumps the tables it wrote in this cache.
                    capture.track_writes(self._cache.bump)
                    from .metrics import register_cache_collector

                    register_cache_collector(app_states)
        return self._cache

    def advise_database_url(
        self, fingerprint: str | None = None, sql: str | None = None
    ) -> str | None:
        """The database the advisor asks for plans of a shape: ``QUERYWATCH_ADVISE_
        DATABASE_URL`` when set; else the engine that ran the shape, as capture saw it
        (a Flask-SQLAlchemy bind, a plain engine), when it is one of this app's or the
        app names none; else, for a shape this process did not run (``flask querywatch
        advise``), the one engine of the app whose database holds every table ``sql``
        reads (a bind's tables live in the bind's database); else the app's engine
        (Flask-SQLAlchemy's resolved URL: a relative SQLite path lives in the instance
        folder); else ``SQLALCHEMY_DATABASE_URI`` as written."""
        if self.settings.advise_database_url:
            return normalize_url(self.settings.advise_database_url)
        engines = self.app_engines()
        urls = [e.url for e in engines.values()]
        seen = capture.shape_urls.get(fingerprint) if fingerprint else None
        if seen is not None and (not urls or seen in urls):
            return str(seen.render_as_string(hide_password=False))
        if sql is not None and len(urls) > 1:
            holder = self._engine_holding(sql, list(engines.values()))
            if holder is not None:
                return str(holder.url.render_as_string(hide_password=False))
        if urls:
            first = engines.get("default") or next(iter(engines.values()))
            return str(first.url.render_as_string(hide_password=False))
        url = self._config.get("SQLALCHEMY_DATABASE_URI")
        return normalize_url(url) if isinstance(url, str) else None

    def _engine_holding(self, sql: str, engines: list[t.Any]) -> t.Any:
        """The one engine whose database holds every table ``sql`` reads; None where
        none or several do, or the statement cannot be read."""
        from .sql import ALL_TABLES
        from .sql import statement_tables

        read, _ = statement_tables(sql)
        if not read or ALL_TABLES in read:
            return None
        holders = [e for e in engines if read <= self._table_names(e)]
        return holders[0] if len(holders) == 1 else None

    def _table_names(self, engine: t.Any) -> frozenset[str]:
        """The tables and views of an engine's database, lower case, read once (through
        the advisor's own read-only connection: a SQLite file is never created)."""
        key = str(engine.url)
        if key not in self._tables_by_url:
            from sqlalchemy import inspect

            from .explain import Explainer

            names: frozenset[str] = frozenset()
            try:
                url = engine.url.render_as_string(hide_password=False)
                with Explainer(url, writable=False) as ex, ex.session() as s:
                    insp = inspect(s.conn)
                    names = frozenset(
                        n.lower() for n in (*insp.get_table_names(), *insp.get_view_names())
                    )
            except Exception as e:
                swallow("advisor.tables", e)
            self._tables_by_url[key] = names
        return self._tables_by_url[key]

    def app_engines(self) -> dict[str, t.Any]:
        """The app's engines by name (``QueryWatch(engines=...)``'s, else
        Flask-SQLAlchemy's binds); empty when they cannot be read."""
        from .metrics import app_engines

        app = self._app()
        if app is None:
            return {}
        try:
            return app_engines(app, self.engines)
        except Exception as e:
            swallow("advisor.engines", e)
            return {}

    def new_record(self, name: str, kind: str) -> capture.Record:
        return capture.Record(name=name, kind=kind, settings=self.settings, engines=self.engines)

    def finish(self, record: capture.Record, status: int) -> list[Finding]:
        """End a unit of work: findings, aggregates, and the flusher woken if needed."""
        record.finish(status)
        findings = detect(record, self.settings)
        self.stats.add(record, findings)
        if record.setup is not None:
            # SQLAlchemy's statements of a first connection: their own unit of work.
            record.setup.finish(0)
            self.stats.add(record.setup, [])
        self.flusher.ensure_started()
        if self.incident_worker is not None:
            self.incident_worker.ensure_started()
        if self.settings.advise:
            if record.slow:
                self.advice_worker.offer(record.slow)
            self.advice_worker.ensure_started()
        if self.listeners:
            for listener in list(self.listeners):
                listener(record, findings)
        if self.metrics is not None:
            self.metrics.add(record, findings)
        if record_finished.receivers:
            record_finished.send(self._app(), record=record, findings=findings)
        return findings


_states: weakref.WeakSet[AppState] = weakref.WeakSet()


def app_states() -> list[AppState]:
    """The querywatch state of every app of the process (the metrics that sum over apps
    of one name read it)."""
    return list(_states)


class Flusher:
    """Writes an app's pending aggregates to the store every few seconds, and at exit."""

    def __init__(self, state: AppState) -> None:
        self._state = weakref.ref(state)
        self.interval = state.settings.flush_interval
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_prune = 0.0
        self._next_eval = 0.0
        #: Flushes that failed because the store was unreachable, read-only or full.
        self.failures = 0
        self.flushes = 0
        self._atexit = False

    def ensure_started(self) -> None:
        if self._thread is not None and self._pid == _pid:
            return
        self._start()

    def _start(self) -> None:
        with self._lock:
            thread = self._thread
            if thread is not None and self._pid == _pid and thread.is_alive():
                return
            self._pid = _pid
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="querywatch-flusher", daemon=True
            )
            self._thread.start()
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True

    def _run(self) -> None:
        # Fold finished requests into the aggregates a few times a second, off the
        # request path; write them to the store every ``interval`` seconds.
        next_flush = time.monotonic() + self.interval
        while not self._stop.wait(min(FOLD_INTERVAL, self.interval)):
            try:
                state = self._state()
                if state is not None:
                    state.stats.fold()
                    if state.metrics is not None:
                        state.metrics.fold()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + self.interval
                    self.flush()
                    self.evaluate_alerts()
            except Exception as e:  # keep the thread alive whatever happens
                record_internal_error("flusher.run", e, log=not unavailable(e))
                log_limited(
                    "flusher.run",
                    "querywatch's flusher failed (%s: %s); it carries on, and the application"
                    " is not affected.",
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )

    def defer_alerts(self, seconds: float) -> None:
        """Evaluate no alert for the next ``seconds`` (0: at the next flush), as during
        a warm-up whose slow first requests should page nobody."""
        self._next_eval = time.monotonic() + seconds

    def evaluate_alerts(self, *, force: bool = False) -> list[t.Any] | None:
        """Evaluate the alerts if it is time (every ``QUERYWATCH_ALERT_INTERVAL``
        seconds) and this process holds the store's lease. Never raises: a failure is
        counted and logged."""
        state = self._state()
        if state is None or not state.settings.alerts:
            return None
        now = time.monotonic()
        if not force and now < self._next_eval:
            return None
        interval = state.settings.alert_interval
        self._next_eval = now + interval
        try:
            return state.evaluator.run(lease_seconds=max(3 * interval, 2 * self.interval))
        except Exception as e:
            record_internal_error("alerts.evaluate", e, log=not unavailable(e))
            log_limited(
                "alerts.evaluate",
                "querywatch could not evaluate its alerts (%s: %s); the application is not"
                " affected.",
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
            )
            return None

    def flush(self) -> bool:
        """Write what is pending now. Returns False when the store could not be written
        (the data is kept, bounded, and retried)."""
        state = self._state()
        if state is None:
            return True
        snap = state.stats.drain()
        cache = state._cache
        counts = cache.take_counts() if cache is not None else {}
        pools = state.metrics.take_pool_counts() if state.metrics is not None else {}
        if snap.is_empty() and not counts and not pools:
            return True
        written = counted = False
        try:
            store = state.store
            store.write(snap)
            written = True
            width = state.settings.bucket_seconds
            bucket = int(time.time() // width) * width
            if counts:
                store.write_cache_stats(bucket, counts)
            counted = True
            if pools:
                store.write_pool_stats(bucket, pools)
                pools = {}
            self.flushes += 1
            now = time.time()
            if now - self._last_prune > 3600:
                self._last_prune = now
                store.prune(now - state.settings.retention_days * 86400)
            return True
        except Exception as e:
            # Give back only what was not written, so nothing is counted twice.
            if not written:
                state.stats.restore(snap)
            if not counted and counts and cache is not None:
                cache.give_back(counts)
            if pools and state.metrics is not None:
                state.metrics.give_back_pool_counts(pools)
            self.failures += 1
            log_limited(
                "store.flush",
                "querywatch could not write to its store (%s: %s); %d flushes failed so far."
                " Aggregates stay in memory (bounded) and are retried; the application is"
                " not affected.",
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
                self.failures,
            )
            return False

    def stop(self) -> None:
        """Stop the thread, flush one last time, and give up the store's leases this
        process holds, so another process takes over at once (a rolling deploy)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=2 * self.interval + 1)
        with fail_open("flusher.stop"):
            self.flush()
        with fail_open("flusher.release"):
            state = self._state()
            if state is not None:
                state.release_leases()


#: This process's id, refreshed in a forked child, so requests need not ask the OS.
_pid = os.getpid()


def _secret(value: t.Any) -> bytes | None:
    """The app's SECRET_KEY as bytes, to sign pickled cache values with."""
    if isinstance(value, bytes):
        return value or None
    if isinstance(value, str):
        return value.encode() or None
    return None


#: True in a process forked after querywatch was set up (a gunicorn worker, say).
_forked = False


def _after_fork_in_child() -> None:
    # The parent's thread does not exist in the child, and what the parent had pending is
    # the parent's to write: start clean.
    global _pid, _forked
    _pid = os.getpid()
    _forked = True
    for state in list(_states):
        state.stats = state.new_stats()
        state.flusher._thread = None
        state.flusher._lock = threading.Lock()
        state.advice_worker.after_fork()
        if state.incident_worker is not None:
            state.incident_worker.after_fork()
        if state.metrics is not None:
            state.metrics.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
        from .alerts import objectives_setting
        from .incidents.policy import escalation_setting

        settings = load_settings(app, objectives=objectives_setting, escalation=escalation_setting)
        state = AppState(app, settings, self._engines)
        state.owner = self
        app.extensions[_EXTENSION_KEY] = state
        self._apps.add(app)
        _states.add(state)
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
            from . import dashboard

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

        from . import cli

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
    def capture(self, name: str, *, app: Flask | None = None) -> Iterator[capture.Record]:
        """Capture the statements of work outside a request (CLI command, task)::

            with qw.capture("nightly-sync"):
                sync()

        The work is reported as the endpoint ``job:<name>``. Yields the record.
        """
        state = self._state(app)
        record = state.new_record(f"job:{name}", "job")
        token = capture.start_record(record)
        status = 0
        try:
            yield record
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
        from .cache import cached_with

        def current_cache() -> Cache | None:
            ctx = _cv_app.get(None)  # current_app without the proxy: this is a hot path
            state = self._state(ctx.app if ctx is not None else None)
            return state.cache if state.settings.enabled else None

        return cached_with(current_cache, ttl, **options)


def _request_hooks(
    state: AppState,
) -> tuple[
    Callable[[], None],
    Callable[[Response], Response],
    Callable[[BaseException | None], None],
]:
    """The three request hooks of one app; they close over its state, which spares a
    ``current_app`` lookup per hook."""

    settings = state.settings
    current = capture.current_record
    from .metrics import OWN_PREFIX

    def _before_request() -> None:
        try:
            req = request._get_current_object()  # type: ignore[attr-defined]
            rule = req.url_rule
            if rule is not None and rule.endpoint.startswith(OWN_PREFIX):
                return  # querywatch's own endpoints are not the app's traffic
            name = f"{req.method} {rule.rule if rule is not None else '<unmatched>'}"
            record = state.new_record(name, "request")
            record.token = capture.start_record(record)
        except Exception as e:
            swallow("extension.before_request", e)

    # The record travels in capture's context variable, not in ``g``: a proxy lookup
    # costs more than all the rest of a hook. A record is this app's when it was made
    # with this app's settings.
    user_function = settings.user_function

    def _after_request(response: Response) -> Response:
        try:
            record = current()
            if record is not None and record.settings is settings and record.token is not None:
                record.status = response.status_code
                if user_function is not None:
                    user = user_function(request._get_current_object())  # type: ignore[attr-defined]
                    record.user = str(user)[:255] if user is not None else None
        except Exception as e:
            swallow("extension.after_request", e)
        return response

    def _teardown_request(exc: BaseException | None) -> None:
        try:
            record = current()
            if record is None or record.settings is not settings or record.token is None:
                return
            token, record.token = record.token, None
            capture.end_record(token)
            state.finish(record, 500 if exc is not None else (record.status or 200))
        except Exception as e:
            swallow("extension.teardown_request", e)

    return _before_request, _after_request, _teardown_request


def _register_views(app: Flask, state: AppState) -> None:
    """``/metrics`` and ``/readyz`` (their paths as configured), unless the app already
    routes those paths."""
    import hmac

    from flask import Response as FlaskResponse
    from flask import jsonify

    from . import metrics

    settings = state.settings
    app_ref = weakref.ref(app)
    explicit = state.engines

    def engines() -> dict[str, t.Any]:
        a = app_ref()
        return metrics.app_engines(a, explicit) if a is not None else {}

    taken = {r.rule for r in app.url_map.iter_rules()}
    if settings.metrics_path is not None:
        if settings.metrics_path in taken:
            log_limited(
                "metrics.path",
                "querywatch did not add %s: the app already routes it. Set"
                " QUERYWATCH_METRICS_PATH to another path (or None).",
                settings.metrics_path,
            )
        else:
            state.metrics = metrics.AppMetrics(
                state.name, engines, app_states, max_shapes=settings.metrics_max_shapes
            )
            token = settings.metrics_token

            def metrics_view() -> FlaskResponse:
                from prometheus_client import CONTENT_TYPE_LATEST

                if token is not None:
                    given = request.headers.get("Authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                        return FlaskResponse(
                            "A bearer token is required (QUERYWATCH_METRICS_TOKEN).\n",
                            status=401,
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                            mimetype="text/plain",
                        )
                m = state.metrics
                assert m is not None
                return FlaskResponse(m.exposition(), content_type=CONTENT_TYPE_LATEST)

            app.add_url_rule(
                settings.metrics_path, metrics.METRICS_ENDPOINT, metrics_view, methods=["GET"]
            )
    if settings.ready_path is not None and settings.ready_path not in taken:

        def ready_view() -> tuple[FlaskResponse, int]:
            report, ok = metrics.readiness(engines(), settings.ready_timeout)
            return jsonify(report), 200 if ok else 503

        app.add_url_rule(settings.ready_path, metrics.READY_ENDPOINT, ready_view, methods=["GET"])


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
    from .cache import cached_with

    def current_cache() -> Cache | None:
        ctx = _cv_app.get(None)  # what current_app reads, without the proxy
        if ctx is None:
            msg = "A cached_query function was called outside an app context."
            raise NotInitializedError(msg)
        state = ctx.app.extensions.get(_EXTENSION_KEY)
        if state is None or not state.settings.enabled:
            return None  # no querywatch here: the function runs uncached
        cache: Cache = state.cache
        return cache

    return cached_with(current_cache, ttl, **options)
