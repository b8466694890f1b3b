"""One app's querywatch state: its settings, aggregates, store, cache, metrics and
workers, what it does when a unit of work ends, and the per-process hook that starts
them clean in a forked child."""

from __future__ import annotations

import os
import sys
import threading
import typing as t
import weakref
from types import MethodType

from .. import capture
from .._advice_worker import AdviceWorker
from .._config import Settings
from .._config import normalize_url
from .._detectors import Finding
from .._detectors import detect
from .._failopen import log_limited
from .._failopen import swallow
from .._stats import Stats
from ..integrations import otel
from ..integrations import sentry
from ..signals import Receivers
from ..signals import record_finished
from ._flusher import Flusher

if t.TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.engine import Engine

    from ..alerts import Evaluator
    from ..cache import Cache
    from ..guard import Guard
    from ..incidents.worker import IncidentWorker
    from ..metrics import AppMetrics
    from ..store import Store
    from . import QueryWatch


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
        #: The app's ``teardown_request`` hook that ends a request's record.
        self.teardown: t.Callable[[BaseException | None], None] | None = None
        #: The app's receivers of ``record_finished``, kept between requests.
        self.receivers = Receivers(self._app)
        self.flusher = Flusher(self)
        self.advice_worker = AdviceWorker(self)
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
            from ..incidents.worker import IncidentWorker

            self.incident_worker = IncidentWorker(
                lambda: self.store,
                settings.escalation,
                scale=settings.alert_time_scale,
                severities=settings.incident_severities,
                interval=settings.incident_interval,
            )
        #: Whether statement spans hear their shapes (OpenTelemetry came after init).
        self._statements_traced = False
        #: The guard (statement budgets), when ``QUERYWATCH_GUARD`` configures one.
        self.guard: Guard | None = None
        if settings.guard is not None:
            from ..guard import Guard

            self.guard = Guard(app, settings.guard)
            self.guard.objectives = tuple((o.name, o.target) for o in settings.objectives)
            self.guard.user_function = settings.user_function
            self.guard.min_bad_events = settings.alert_min_bad_events
            if self.incident_worker is not None:
                self.guard.on_event = self._tell_incident
                self.guard.incident_resolved = self._incident_resolved

    def _tell_incident(self, alert_key: str, text: str, at: float) -> bool:
        """Put what the guard did on the alert's incident and notify its targets."""
        from ..incidents.manager import Incidents

        settings = self.settings
        incidents = Incidents(self.store, settings.escalation, scale=settings.alert_time_scale)
        return incidents.guard_event(alert_key, text, at) is not None

    def _incident_resolved(self, alert_key: str, since: float) -> int | None:
        from ..incidents.manager import Incidents

        settings = self.settings
        incidents = Incidents(self.store, settings.escalation, scale=settings.alert_time_scale)
        return incidents.resolved_since(alert_key, since)

    @property
    def app(self) -> Flask | None:
        return self._app()

    def release_leases(self) -> None:
        """Give up the alerts and incidents leases if this process holds them."""
        from ..alerts import LEASE

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
            from ..alerts import AlertRules
            from ..alerts import Evaluator

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
                trace_url=s.trace_url,
            )
            self._evaluator = Evaluator(self.store, rules)
            guard = self.guard
            if guard is not None:
                self._evaluator.holds = lambda: guard.holds(self.store)
        return self._evaluator

    @property
    def store(self) -> Store:
        """The store, opened on first use."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    from ..store import Store

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
                    from ..cache import Cache
                    from ..cache import MemoryBackend
                    from ..cache import RedisBackend

                    s = self.settings
                    backend: MemoryBackend | RedisBackend
                    if s.cache_url:
                        backend = RedisBackend(s.cache_url, prefix=s.cache_prefix)
                    else:
                        backend = MemoryBackend(
                            max_entries=s.cache_max_entries, max_bytes=s.cache_max_bytes
                        )
                        if PROCESS.forked or int(os.environ.get("WEB_CONCURRENCY", "1") or 1) > 1:
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
                    from ..metrics import register_cache_collector

                    register_cache_collector(PROCESS.states)
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
        from .._sql import ALL_TABLES
        from .._sql import statement_tables

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

            from ..explain import Explainer

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
        from ..metrics import app_engines

        app = self._app()
        if app is None:
            return {}
        try:
            return app_engines(app, self.engines)
        except Exception as e:
            swallow("advisor.engines", e)
            return {}

    def new_record(self, name: str, kind: str) -> capture.Record:
        record = capture.Record(name=name, kind=kind, settings=self.settings, engines=self.engines)
        if not self._statements_traced and otel.statement_spans():
            # OpenTelemetry's SQLAlchemy instrumentation came after init: from this unit
            # of work on, each statement's span hears its shape and call site.
            capture.add_statement_hook(otel.annotate_statement)
            self._statements_traced = True
        if kind == "request":
            self.stats.arrive(record.started_wall)
            if self.guard is not None:
                record.budget = self.guard.budget(name)
        return record

    def finish(self, record: capture.Record, status: int) -> list[Finding]:
        """End a unit of work: findings, aggregates, and the flusher woken if needed."""
        record.finish(status)
        findings = detect(record, self.settings)
        if "opentelemetry.trace" in sys.modules:
            self._trace(record, findings)
        # Sentry's trace id where a link to it is worth its lookup: a request with
        # findings, or a slow read (a shape's slowest call, a sample, an incident's
        # evidence). The other requests pay one dictionary lookup.
        if (findings or record.slow) and "sentry_sdk" in sys.modules and record.trace_id is None:
            try:
                record.trace_id = sentry.trace_id()
            except Exception as e:
                swallow("integrations.sentry", e)
        if findings and "sentry_sdk" in sys.modules:
            try:
                sentry.report_findings(record, findings)
            except Exception as e:
                swallow("integrations.sentry", e)
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
        # Announced one way: the app's metrics, the CI gate and anyone else listen. Each
        # receiver on its own: one that raises does not keep the record from the rest.
        # querywatch's own receivers read the working record; everyone else is handed
        # read-only views, built once and only when someone else listens.
        if record_finished.receivers and not record_finished.is_muted:
            app = self._app()
            view: capture.RecordView | None = None
            frozen: tuple[Finding, ...] = ()
            for ref, method, live in self.receivers.current():
                receiver = ref()
                if receiver is None:
                    self.receivers.stale()
                    continue
                if method is not None:
                    receiver = MethodType(method, receiver)
                try:
                    if live:
                        receiver(app, record=record, findings=findings)
                        continue
                    if view is None:
                        view, frozen = record.view(), tuple(findings)
                    receiver(app, record=view, findings=frozen)
                except Exception as e:
                    swallow("signals.record_finished", e)
        return findings

    def _trace(self, record: capture.Record, findings: list[Finding]) -> None:
        """OpenTelemetry is imported: where the request's span records, it hears what
        querywatch found, and the record keeps its trace id (the API alone, which
        sentry-sdk imports, records nothing: one lookup)."""
        try:
            if not otel.recording():
                return
            environ = None
            if record.kind == "request":
                from flask import has_request_context
                from flask import request

                if has_request_context():
                    environ = request.environ
            record.trace_id = otel.annotate_request(record, findings, environ)
        except Exception as e:
            swallow("integrations.otel", e)


class Process:
    """What is truly per process, in one place: the apps that run querywatch here (a
    forked child starts each of them clean; prometheus_client's default registry, which
    is per process, sums their cache counters), and whether the process was forked after
    they were set up. Everything else is the state of the app that owns it."""

    def __init__(self) -> None:
        self._apps: weakref.WeakSet[AppState] = weakref.WeakSet()
        #: True in a process forked after querywatch was set up (a gunicorn worker).
        self.forked = False

    def add(self, state: AppState) -> None:
        self._apps.add(state)

    def states(self) -> list[AppState]:
        """The querywatch state of every app of the process."""
        return list(self._apps)

    def after_fork_in_child(self) -> None:
        # The parent's threads do not exist in the child, and what the parent had pending
        # is the parent's to write: start clean.
        self.forked = True
        for state in self.states():
            state.stats = state.new_stats()
            state.flusher.after_fork()
            state.advice_worker.after_fork()
            if state.incident_worker is not None:
                state.incident_worker.after_fork()
            if state.metrics is not None:
                state.metrics.after_fork()


#: This process.
PROCESS = Process()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=PROCESS.after_fork_in_child)


def _secret(value: t.Any) -> bytes | None:
    """The app's SECRET_KEY as bytes, to sign pickled cache values with."""
    if isinstance(value, bytes):
        return value or None
    if isinstance(value, str):
        return value.encode() or None
    return None
