"""The ``QUERYWATCH_*`` settings: read once at ``init_app``, validated, defaults written
back to ``app.config``. See ``docs/configuration.md``."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import os
import typing as t
import warnings

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ._compat import SQLALCHEMY_14
from .exceptions import ConfigError

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = ["Settings", "load_settings"]


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The validated ``QUERYWATCH_*`` settings of one app."""

    enabled: bool
    slow_query_seconds: float
    n_plus_one_threshold: int
    repeated_query_threshold: int
    max_queries_per_request: int
    max_shapes: int
    app_packages: tuple[str, ...]
    store_url: str
    flush_interval: float
    retention_days: float
    #: The background advisor: explain slow or hot read shapes of this app.
    advise: bool = True
    #: The database the advisor asks for plans (default: SQLALCHEMY_DATABASE_URI).
    advise_database_url: str | None = None
    #: Seconds between two rounds of the background advisor.
    advise_interval: float = 30.0
    #: A shape is analysed again after this many seconds.
    advise_ttl: float = 3600.0
    #: Shapes analysed per round at most.
    advise_per_round: int = 2
    #: Seconds any one statement of the background advisor may take.
    advise_timeout: float = 2.0
    #: Build candidate indexes to verify them (rolled back / dropped). None: SQLite only.
    advise_allow_ddl: bool | None = None
    #: A full scan of a table with this many rows is a finding.
    scan_min_rows: int = 10_000
    #: The result cache: default time to live, and the memory backend's bounds.
    cache_ttl: float = 60.0
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 64 * 2**20
    #: Redis for the cache's entries and versions (shared by every process), or None.
    cache_url: str | None = None
    cache_prefix: str = "qw:"
    #: Prometheus metrics at ``metrics_path`` (None: no endpoint, no metrics).
    metrics_path: str | None = "/metrics"
    #: A bearer token ``/metrics`` requires, or None.
    metrics_token: str | None = None
    #: Query shapes with a series of their own in the metrics.
    metrics_max_shapes: int = 50
    #: The readiness endpoint (None: none) and its per-database timeout.
    ready_path: str | None = "/readyz"
    ready_timeout: float = 2.0
    #: The width of the store's time buckets in seconds.
    bucket_seconds: int = 60
    #: Service level objectives (:class:`querywatch.alerts.Objective`).
    objectives: tuple[t.Any, ...] = ()
    #: Evaluate alerts in this app's processes (the one holding the store's lease).
    alerts: bool = True
    #: Seconds between two evaluations.
    alert_interval: float = 30.0
    #: Multiplies every alert window (tests and the demo compress time).
    alert_time_scale: float = 1.0
    #: A query shape's p95 above this many ms alerts (None: off), given enough calls.
    alert_shape_p95_ms: float | None = 1000.0
    #: A burn-rate alert needs this many bad events in its short window (the SRE
    #: workbook's advice for low-traffic services: count failures, not only a ratio).
    alert_min_bad_events: int = 10
    alert_shape_min_calls: int = 20
    #: Alert on an N+1 loop / a full scan first seen since alerting began.
    alert_new_n_plus_one: bool = True
    alert_new_full_scan: bool = True
    #: The dashboard's path (None: none), and the token it needs (None: debug mode and
    #: loopback clients only).
    dashboard_path: str | None = "/_querywatch"
    dashboard_token: str | None = None
    #: Incidents: on/off, the escalation policy, which alert severities open one, and
    #: the worker's round interval.
    incidents: bool = True
    escalation: t.Any = None
    incident_severities: tuple[str, ...] = ("page",)
    incident_interval: float = 5.0
    #: Names the user of a request (``request -> str | None``), to count users affected.
    user_function: t.Any = None
    #: The guard's configuration (:class:`querywatch.guard.GuardConfig`; None: no guard).
    guard: t.Any = None
    #: Where a trace is shown (``https://tempo.example/trace/{trace_id}``; None: no
    #: links).
    trace_url: str | None = None


def _bool(app: Flask, key: str, default: bool) -> bool:
    value = app.config.setdefault(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"true or false, such as {default!r}", value)


def _number(
    app: Flask,
    key: str,
    default: float,
    *,
    minimum: float,
    integer: bool = False,
    exclusive: bool = False,
) -> float:
    value = app.config.setdefault(key, default)
    what = "a whole number" if integer else "a number"
    example = str(int(default)) if float(default).is_integer() else f"{default:g}"
    if exclusive:
        expected = f"{what} greater than {minimum:g}, such as {example}"
    else:
        expected = f"{what} of at least {minimum:g}, such as {example}"
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise ConfigError(key, expected, app.config[key]) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, expected, value)
    if integer and not float(value).is_integer():
        raise ConfigError(key, expected, value)
    if value != value or value < minimum or (exclusive and value == minimum):
        raise ConfigError(key, expected, value)
    return float(value)


def _packages(app: Flask) -> tuple[str, ...]:
    key = "QUERYWATCH_APP_PACKAGES"
    default = app.import_name.split(".")[0]
    value = app.config.setdefault(key, [default])
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v and " " not in v for v in value
    ):
        raise ConfigError(key, "a list of module names, such as ['myapp']", value)
    return tuple(v.rstrip(".") + "." for v in value)


_URL_EXPECTED = "a database URL, such as 'postgresql+psycopg://host/db'"


#: The driver querywatch's extras install for each backend, and the extra.
_DRIVERS = {
    "postgresql": ("psycopg", "postgres"),
    "mysql": ("pymysql", "mysql"),
    "mariadb": ("pymysql", "mysql"),
}


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: For a URL that names no driver: the drivers tried in turn, the first installed one
#: taken (SQLAlchemy's own default first, so an app that has it keeps it).
_DEFAULT_DRIVERS = {
    "postgresql": (("psycopg2", "psycopg2"), ("psycopg", "psycopg")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
    "mariadb": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}


def normalize_url(url: str) -> str:
    """``url`` as SQLAlchemy takes it here: ``postgres://`` (Heroku's form and many
    hosts') is PostgreSQL, and a URL that names no driver gets the installed one
    (``postgresql://`` with psycopg 3 but not psycopg2 installed becomes
    ``postgresql+psycopg://``). Anything else, and a URL that does not parse, is
    returned as given."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    backend, plus, driver = scheme.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if not plus:
        choices: tuple[tuple[str, str], ...] = _DEFAULT_DRIVERS.get(backend, ())
        if SQLALCHEMY_14:  # SQLAlchemy 1.4 has no dialect for psycopg 3
            choices = tuple(c for c in choices if c[1] != "psycopg")
        found = next((name for module, name in choices if _installed(module)), None)
        if found is not None and found != choices[0][1]:
            driver, plus = found, "+"
        elif found is None and backend == "postgresql":
            # Neither is installed: name querywatch's own, whose extra installs it.
            driver, plus = ("psycopg2" if SQLALCHEMY_14 else "psycopg"), "+"
    return f"{backend}{plus}{driver}{sep}{rest}"


def missing_driver(url: str) -> str | None:
    """What is missing to connect to ``url`` here, and how to install it; None when its
    SQLAlchemy dialect and Python driver import (nothing is connected)."""
    try:
        sa_url = make_url(url)
    except ArgumentError:
        return f"{url!r} is not {_URL_EXPECTED}."
    shown = sa_url.render_as_string(hide_password=True)
    try:
        dialect = sa_url.get_dialect()
    except ArgumentError:
        return f"SQLAlchemy has no dialect {sa_url.drivername!r} (in {shown!r})."
    try:
        # SQLAlchemy 2.0's name; 1.4 calls it dbapi().
        load = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi")  # noqa: B009
        load()
    except ImportError as e:
        package = e.name or sa_url.get_driver_name()
        backend = sa_url.get_backend_name()
        ours, extra = _DRIVERS.get(backend, (None, None))
        install = f"pip install 'querywatch[{extra}]'"
        if SQLALCHEMY_14 and backend == "postgresql":  # no dialect for psycopg 3 on 1.4
            ours, install = "psycopg2", "pip install psycopg2-binary"
        if package == ours:
            how = install
        elif ours:
            how = f"install it, or use {backend}+{ours}:// after {install}"
        else:
            how = f"install it (pip install {package})"
        return f"{shown} needs the Python driver {package!r}, which is not installed here: {how}."
    return None


def _url(key: str, value: t.Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, _URL_EXPECTED, value)
    url = normalize_url(value)
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(key, _URL_EXPECTED, value) from None
    return url


#: Set by querywatch's pytest plugin: this process runs a test session.
IN_TEST_SESSION = False
_test_dir: str | None = None
_test_stores = itertools.count(1)


def _test_store_url() -> str:
    """A store of its own for one app of a test session, in a folder removed when the
    session's process exits: tests never write into the developer's store."""
    global _test_dir
    if _test_dir is None:
        import atexit
        import shutil
        import tempfile

        _test_dir = tempfile.mkdtemp(prefix="querywatch-tests-")
        atexit.register(shutil.rmtree, _test_dir, True)
    return "sqlite:///" + os.path.join(_test_dir, f"querywatch-{next(_test_stores)}.db")


def _store_url(app: Flask) -> str:
    key = "QUERYWATCH_STORE_URL"
    if app.config.get(key) is None and (app.testing or IN_TEST_SESSION):
        default = _test_store_url()
    else:
        default = "sqlite:///" + os.path.join(app.instance_path, "querywatch.db")
    value = app.config.setdefault(key, default)
    if value is None:
        value = app.config[key] = default
    return _supported(key, _url(key, value), "sqlite:////var/lib/shop/querywatch.db")


def _optional_url(app: Flask, key: str) -> str | None:
    value = app.config.setdefault(key, None)
    if value is None or value == "":
        return None
    return _supported(key, _url(key, value), "postgresql+psycopg://replica/shop")


#: The databases querywatch keeps its store in and asks for plans.
SUPPORTED_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")


def _supported(key: str, url: str, example: str) -> str:
    """``url``, refused at start-up unless querywatch can use it: a supported database,
    named, with its driver installed (not a warning at the first flush)."""
    sa_url = make_url(url)
    shown = sa_url.render_as_string(hide_password=True)
    backend = sa_url.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        expected = f"a SQLite, PostgreSQL or MariaDB/MySQL URL, such as {example!r}"
        raise ConfigError(key, expected, shown)
    if backend != "sqlite" and not sa_url.database:
        named = f"{sa_url.drivername}://{sa_url.host or 'db.internal'}/querywatch"
        expected = f"a URL that names its database, such as {named!r}"
        raise ConfigError(key, expected, shown)
    missing = missing_driver(url)
    if missing is not None:
        expected = f"a URL whose driver is installed ({missing.rstrip('.')}), such as {example!r}"
        raise ConfigError(key, expected, shown)
    return url


def _redis_url(app: Flask, key: str) -> str | None:
    value = app.config.setdefault(key, None)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(key, "a Redis URL, such as 'redis://localhost:6379/0'", value)
    return value


def _prefix(app: Flask, key: str, default: str) -> str:
    value = app.config.setdefault(key, default)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ConfigError(key, "a key prefix of 1 to 64 characters, such as 'qw:'", value)
    return value


def _optional_bool(app: Flask, key: str) -> bool | None:
    if app.config.setdefault(key, None) is None:
        return None
    return _bool(app, key, False)


#: The paths querywatch serves: the setting, the attribute, the default.
_PATH_KEYS = {
    "QUERYWATCH_METRICS_PATH": ("metrics_path", "/metrics"),
    "QUERYWATCH_READY_PATH": ("ready_path", "/readyz"),
    "QUERYWATCH_DASHBOARD_PATH": ("dashboard_path", "/_querywatch"),
}


def _path(app: Flask, key: str) -> str | None:
    default = _PATH_KEYS[key][1]
    value = app.config.setdefault(key, default)
    if value is None or value is False or value == "":
        return None
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.rstrip("/") == ""
        or any(c.isspace() for c in value)
    ):
        expected = f"a URL path below the root, or None to turn it off, such as {default!r}"
        raise ConfigError(key, expected, value)
    return value


def _check_paths(settings: Settings) -> None:
    """No two querywatch paths the same, and none under the dashboard's (which owns
    every path below it): one would hide the other."""
    paths = {k: getattr(settings, a) for k, (a, _) in _PATH_KEYS.items() if getattr(settings, a)}
    dashboard = (paths.get("QUERYWATCH_DASHBOARD_PATH") or "").rstrip("/")
    seen: dict[str, str] = {}
    for key, value in paths.items():
        norm = value.rstrip("/")
        clash = seen.get(norm)
        if clash is None and key != "QUERYWATCH_DASHBOARD_PATH" and dashboard:
            if norm == dashboard or norm.startswith(dashboard + "/"):
                clash = "QUERYWATCH_DASHBOARD_PATH"
        if clash is not None:
            expected = (
                f"a path apart from {clash} ({paths[clash]!r}) and below no other querywatch"
                f" path, such as {_PATH_KEYS[key][1]!r}"
            )
            raise ConfigError(key, expected, value)
        seen[norm] = key


def _token(app: Flask, key: str) -> str | None:
    value = app.config.setdefault(key, None)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 16 or any(c.isspace() for c in value):
        # An empty string is not "no token": it would leave the endpoint open without a
        # word. None (the default) says that.
        expected = (
            "a secret of at least 16 characters and no spaces (or None for none), such as"
            " the output of `python -c 'import secrets; print(secrets.token_urlsafe())'`"
        )
        raise ConfigError(key, expected, "<hidden>")
    return value


def _trace_url(app: Flask) -> str | None:
    """``QUERYWATCH_TRACE_URL``: a link to a trace, with ``{trace_id}`` where its id
    goes."""
    key = "QUERYWATCH_TRACE_URL"
    value = app.config.setdefault(key, None)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.startswith(("https://", "http://"))
        or "{trace_id}" not in value
        or value.count("{") != 1
        or value.count("}") != 1
    ):
        expected = (
            "an http(s) URL with {trace_id} where the trace's id goes, such as"
            " 'https://tempo.example/trace/{trace_id}' (or None for no links)"
        )
        raise ConfigError(key, expected, value)
    return value


def _optional_ms(app: Flask, key: str, default: float) -> float | None:
    if app.config.setdefault(key, default) is None:
        return None
    return _number(app, key, default, minimum=0, exclusive=True)


def _user_function(app: Flask) -> t.Any:
    """``QUERYWATCH_USER``: a callable taking the request and returning who made it (a
    string) or None, or its ``"module:function"`` path."""
    key = "QUERYWATCH_USER"
    value = app.config.setdefault(key, None)
    expected = (
        "a function of the request returning a user id, or its 'module:function',"
        " such as 'myapp.auth:current_user_id'"
    )
    if value is None:
        return None
    if isinstance(value, str):
        import importlib

        module, _, name = value.partition(":")
        try:
            value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(key, expected, app.config[key]) from None
    if not callable(value):
        raise ConfigError(key, expected, value)
    return value


def _severities(app: Flask) -> tuple[str, ...]:
    key = "QUERYWATCH_INCIDENT_SEVERITIES"
    value = app.config.setdefault(key, ["page"])
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not set(value) <= {"page", "ticket"}:
        raise ConfigError(
            key, "a list of the alert severities 'page' and 'ticket', such as ['page']", value
        )
    return tuple(value)


#: Every ``QUERYWATCH_*`` key of ``app.config`` (``docs/configuration.md``).
KEYS = (
    "QUERYWATCH_ENABLED",
    "QUERYWATCH_SLOW_QUERY_MS",
    "QUERYWATCH_N_PLUS_ONE_THRESHOLD",
    "QUERYWATCH_REPEATED_QUERY_THRESHOLD",
    "QUERYWATCH_MAX_QUERIES_PER_REQUEST",
    "QUERYWATCH_MAX_SHAPES",
    "QUERYWATCH_APP_PACKAGES",
    "QUERYWATCH_STORE_URL",
    "QUERYWATCH_FLUSH_INTERVAL",
    "QUERYWATCH_RETENTION_DAYS",
    "QUERYWATCH_ADVISE",
    "QUERYWATCH_ADVISE_DATABASE_URL",
    "QUERYWATCH_ADVISE_INTERVAL",
    "QUERYWATCH_ADVISE_TTL",
    "QUERYWATCH_ADVISE_PER_ROUND",
    "QUERYWATCH_ADVISE_TIMEOUT",
    "QUERYWATCH_ADVISE_ALLOW_DDL",
    "QUERYWATCH_SCAN_MIN_ROWS",
    "QUERYWATCH_CACHE_TTL",
    "QUERYWATCH_CACHE_MAX_ENTRIES",
    "QUERYWATCH_CACHE_MAX_BYTES",
    "QUERYWATCH_CACHE_URL",
    "QUERYWATCH_CACHE_PREFIX",
    "QUERYWATCH_METRICS_PATH",
    "QUERYWATCH_METRICS_TOKEN",
    "QUERYWATCH_METRICS_MAX_SHAPES",
    "QUERYWATCH_READY_PATH",
    "QUERYWATCH_READY_TIMEOUT",
    "QUERYWATCH_BUCKET_SECONDS",
    "QUERYWATCH_OBJECTIVES",
    "QUERYWATCH_ALERTS",
    "QUERYWATCH_ALERT_INTERVAL",
    "QUERYWATCH_ALERT_TIME_SCALE",
    "QUERYWATCH_ALERT_SHAPE_P95_MS",
    "QUERYWATCH_ALERT_MIN_BAD_EVENTS",
    "QUERYWATCH_ALERT_SHAPE_MIN_CALLS",
    "QUERYWATCH_ALERT_NEW_N_PLUS_ONE",
    "QUERYWATCH_ALERT_NEW_FULL_SCAN",
    "QUERYWATCH_DASHBOARD_PATH",
    "QUERYWATCH_DASHBOARD_TOKEN",
    "QUERYWATCH_INCIDENTS",
    "QUERYWATCH_ESCALATION",
    "QUERYWATCH_INCIDENT_SEVERITIES",
    "QUERYWATCH_INCIDENT_INTERVAL",
    "QUERYWATCH_USER",
    "QUERYWATCH_GUARD",
    "QUERYWATCH_TRACE_URL",
)

logger = logging.getLogger("querywatch")
_PREFIX = len("QUERYWATCH_")


def warn_unknown_keys(app: Flask) -> list[str]:
    """Warn (on the ``querywatch`` logger and as a :class:`UserWarning`) about each
    ``QUERYWATCH_*`` key of ``app.config`` that querywatch does not know, naming the
    closest known key; a misspelled key would otherwise be ignored without a word.
    Returns the messages."""
    known = set(KEYS)
    out = []
    for key in sorted(k for k in app.config if isinstance(k, str) and k.startswith("QUERYWATCH_")):
        if key in known:
            continue
        # Compared without the prefix every key shares, which would make any two close.
        close = difflib.get_close_matches(key[_PREFIX:], [k[_PREFIX:] for k in KEYS], n=1)
        hint = f" Did you mean QUERYWATCH_{close[0]}?" if close else ""
        msg = (
            f"querywatch does not know the config key {key}, and ignores it.{hint} The keys"
            " are listed in docs/configuration.md."
        )
        logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=4)
        out.append(msg)
    return out


#: The shortest interval of a background loop, in seconds: a smaller one (1e-9) turns an
#: idle worker into a busy loop.
_MIN_INTERVAL = 0.1


#: Reads one setting from the app's config; given by the module that owns its model.
Reader = t.Callable[["Flask"], t.Any]


def load_settings(
    app: Flask,
    *,
    objectives: Reader | None = None,
    escalation: Reader | None = None,
    guard: Reader | None = None,
) -> Settings:
    """Read and validate the ``QUERYWATCH_*`` keys, writing defaults back to
    ``app.config`` so it shows the effective values.

    The objectives and the escalation policy are models of the alerts and incidents,
    which sit above this module: their owners read them (``objectives``,
    :func:`querywatch.alerts.objectives_setting`; ``escalation``,
    :func:`querywatch.incidents.policy.escalation_setting`; the guard's, ``guard``,
    :func:`querywatch.guard.guard_setting`), and the extension passes them in. Without
    them the settings hold none."""
    settings = _read_settings(app, objectives, escalation, guard)
    _check_paths(settings)
    return settings


def _read_settings(
    app: Flask, objectives: Reader | None, escalation: Reader | None, guard: Reader | None
) -> Settings:
    return Settings(
        enabled=_bool(app, "QUERYWATCH_ENABLED", True),
        slow_query_seconds=_number(app, "QUERYWATCH_SLOW_QUERY_MS", 100, minimum=0, exclusive=True)
        / 1000.0,
        n_plus_one_threshold=int(
            _number(app, "QUERYWATCH_N_PLUS_ONE_THRESHOLD", 5, minimum=2, integer=True)
        ),
        repeated_query_threshold=int(
            _number(app, "QUERYWATCH_REPEATED_QUERY_THRESHOLD", 2, minimum=2, integer=True)
        ),
        max_queries_per_request=int(
            _number(app, "QUERYWATCH_MAX_QUERIES_PER_REQUEST", 1000, minimum=0, integer=True)
        ),
        max_shapes=int(_number(app, "QUERYWATCH_MAX_SHAPES", 2000, minimum=10, integer=True)),
        app_packages=_packages(app),
        store_url=_store_url(app),
        flush_interval=_number(app, "QUERYWATCH_FLUSH_INTERVAL", 5.0, minimum=_MIN_INTERVAL),
        retention_days=_number(app, "QUERYWATCH_RETENTION_DAYS", 7, minimum=0, exclusive=True),
        advise=_bool(app, "QUERYWATCH_ADVISE", True),
        advise_database_url=_optional_url(app, "QUERYWATCH_ADVISE_DATABASE_URL"),
        advise_interval=_number(app, "QUERYWATCH_ADVISE_INTERVAL", 30.0, minimum=_MIN_INTERVAL),
        advise_ttl=_number(app, "QUERYWATCH_ADVISE_TTL", 3600.0, minimum=0),
        advise_per_round=int(
            _number(app, "QUERYWATCH_ADVISE_PER_ROUND", 2, minimum=1, integer=True)
        ),
        advise_timeout=_number(app, "QUERYWATCH_ADVISE_TIMEOUT", 2.0, minimum=0, exclusive=True),
        advise_allow_ddl=_optional_bool(app, "QUERYWATCH_ADVISE_ALLOW_DDL"),
        scan_min_rows=int(
            _number(app, "QUERYWATCH_SCAN_MIN_ROWS", 10_000, minimum=1, integer=True)
        ),
        cache_ttl=_number(app, "QUERYWATCH_CACHE_TTL", 60.0, minimum=0, exclusive=True),
        cache_max_entries=int(
            _number(app, "QUERYWATCH_CACHE_MAX_ENTRIES", 10_000, minimum=1, integer=True)
        ),
        cache_max_bytes=int(
            _number(app, "QUERYWATCH_CACHE_MAX_BYTES", 64 * 2**20, minimum=1024, integer=True)
        ),
        cache_url=_redis_url(app, "QUERYWATCH_CACHE_URL"),
        cache_prefix=_prefix(app, "QUERYWATCH_CACHE_PREFIX", "qw:"),
        metrics_path=_path(app, "QUERYWATCH_METRICS_PATH"),
        metrics_token=_token(app, "QUERYWATCH_METRICS_TOKEN"),
        metrics_max_shapes=int(
            _number(app, "QUERYWATCH_METRICS_MAX_SHAPES", 50, minimum=1, integer=True)
        ),
        ready_path=_path(app, "QUERYWATCH_READY_PATH"),
        ready_timeout=_number(app, "QUERYWATCH_READY_TIMEOUT", 2.0, minimum=0, exclusive=True),
        bucket_seconds=int(_number(app, "QUERYWATCH_BUCKET_SECONDS", 60, minimum=1, integer=True)),
        objectives=objectives(app) if objectives is not None else (),
        alerts=_bool(app, "QUERYWATCH_ALERTS", True),
        alert_interval=_number(app, "QUERYWATCH_ALERT_INTERVAL", 30.0, minimum=_MIN_INTERVAL),
        alert_time_scale=_number(
            app, "QUERYWATCH_ALERT_TIME_SCALE", 1.0, minimum=0, exclusive=True
        ),
        alert_shape_p95_ms=_optional_ms(app, "QUERYWATCH_ALERT_SHAPE_P95_MS", 1000.0),
        alert_min_bad_events=int(
            _number(app, "QUERYWATCH_ALERT_MIN_BAD_EVENTS", 10, minimum=0, integer=True)
        ),
        alert_shape_min_calls=int(
            _number(app, "QUERYWATCH_ALERT_SHAPE_MIN_CALLS", 20, minimum=1, integer=True)
        ),
        alert_new_n_plus_one=_bool(app, "QUERYWATCH_ALERT_NEW_N_PLUS_ONE", True),
        alert_new_full_scan=_bool(app, "QUERYWATCH_ALERT_NEW_FULL_SCAN", True),
        dashboard_path=_path(app, "QUERYWATCH_DASHBOARD_PATH"),
        dashboard_token=_token(app, "QUERYWATCH_DASHBOARD_TOKEN"),
        # In debug mode without an escalation policy, alerts go to the log only: a
        # developer clicking around opens no incident.
        incidents=_bool(
            app,
            "QUERYWATCH_INCIDENTS",
            not (app.debug and app.config.get("QUERYWATCH_ESCALATION") is None),
        ),
        escalation=escalation(app) if escalation is not None else None,
        incident_severities=_severities(app),
        incident_interval=_number(app, "QUERYWATCH_INCIDENT_INTERVAL", 5.0, minimum=_MIN_INTERVAL),
        user_function=_user_function(app),
        guard=guard(app) if guard is not None else None,
        trace_url=_trace_url(app),
    )
