"""The ``QUERYWATCH_*`` settings as a new user meets them: every error in one form,
misspelled keys named, the URLs hosts hand out, a store of its own for tests, and no
page or incident while a developer clicks around."""

from __future__ import annotations

import logging
import re
import typing as t

import pytest
from flask import Flask

from conftest import PG_DRIVER
from querywatch import ConfigError
from querywatch import QueryWatch
from querywatch import _config as config

#: One malformed value for each validator of ``load_settings``.
BAD_VALUES: list[tuple[str, t.Any]] = [
    ("QUERYWATCH_ENABLED", "maybe"),
    ("QUERYWATCH_SLOW_QUERY_MS", "fast"),
    ("QUERYWATCH_N_PLUS_ONE_THRESHOLD", 1),
    ("QUERYWATCH_MAX_SHAPES", 2.5),
    ("QUERYWATCH_CACHE_MAX_BYTES", -1),
    ("QUERYWATCH_APP_PACKAGES", 5),
    ("QUERYWATCH_STORE_URL", "not a url"),
    ("QUERYWATCH_STORE_URL", "oracle://scott:tiger@db/orcl"),
    ("QUERYWATCH_STORE_URL", "postgresql://"),
    ("QUERYWATCH_STORE_URL", "mysql+mysqldb://root@db/qw"),  # a driver not installed
    ("QUERYWATCH_FLUSH_INTERVAL", "1e-9"),
    ("QUERYWATCH_ALERT_INTERVAL", 0.001),
    ("QUERYWATCH_INCIDENT_INTERVAL", 0),
    ("QUERYWATCH_ADVISE_INTERVAL", -1),
    ("QUERYWATCH_METRICS_TOKEN", ""),
    ("QUERYWATCH_DASHBOARD_TOKEN", " " * 20),
    ("QUERYWATCH_DASHBOARD_TOKEN", "a token with spaces in it"),
    ("QUERYWATCH_METRICS_PATH", "/_querywatch"),
    ("QUERYWATCH_READY_PATH", "/metrics/"),
    ("QUERYWATCH_METRICS_PATH", "/_querywatch/metrics"),
    ("QUERYWATCH_DASHBOARD_PATH", "/"),
    ("QUERYWATCH_ADVISE_DATABASE_URL", 42),
    ("QUERYWATCH_ADVISE_TIMEOUT", 0),
    ("QUERYWATCH_ADVISE_ALLOW_DDL", "perhaps"),
    ("QUERYWATCH_CACHE_URL", "memcached://x"),
    ("QUERYWATCH_CACHE_PREFIX", ""),
    ("QUERYWATCH_METRICS_PATH", "metrics"),
    ("QUERYWATCH_METRICS_TOKEN", "short"),
    ("QUERYWATCH_DASHBOARD_TOKEN", "short"),
    ("QUERYWATCH_ALERT_SHAPE_P95_MS", "slow"),
    ("QUERYWATCH_INCIDENT_SEVERITIES", ["urgent"]),
    ("QUERYWATCH_USER", "no_such_module_xyz:who"),
    ("QUERYWATCH_TRACE_URL", "https://tempo.example/trace/"),  # no {trace_id}
    ("QUERYWATCH_TRACE_URL", "ftp://tempo.example/{trace_id}"),
    ("QUERYWATCH_OBJECTIVES", "availability"),
    ("QUERYWATCH_OBJECTIVES", ["latency:99:fast"]),
    ("QUERYWATCH_OBJECTIVES", ["latency:150:300ms"]),
    ("QUERYWATCH_OBJECTIVES", ["uptime"]),
    ("QUERYWATCH_OBJECTIVES", [42]),
    ("QUERYWATCH_OBJECTIVES", [{"name": "a", "target": "150%"}]),
    ("QUERYWATCH_OBJECTIVES", [{"name": "l", "target": 0.99, "threshold_ms": 0}]),
    ("QUERYWATCH_OBJECTIVES", [{"name": "l", "kind": "speed", "target": 0.99}]),
    ("QUERYWATCH_OBJECTIVES", [{"name": "", "target": 0.99}]),
    ("QUERYWATCH_OBJECTIVES", [{"name": "x", "target": 0.9, "treshold_ms": 3}]),
    ("QUERYWATCH_OBJECTIVES", ["availability:99.9", "availability:99"]),
    (
        "QUERYWATCH_OBJECTIVES",
        [{"name": "l", "target": 0.99, "threshold_ms": 300, "overrides": {"GET /r": 5}}],
    ),
]

#: The form: the key quoted, "must be", what is accepted starting in lower case, one
#: example, what was given, one sentence.
FORM = re.compile(r"^'QUERYWATCH_[A-Z_0-9]+.*?' must be [a-z'].*, such as .+, got .+\.$")

#: What a URL that names no PostgreSQL driver gets: psycopg 3's name, or nothing on
#: SQLAlchemy 1.4, whose default is psycopg2.
PG = "" if PG_DRIVER == "psycopg2" else "+psycopg"


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_every_config_error_names_the_key_what_is_accepted_an_example_and_the_value(
    key: str, value: t.Any, tmp_path: t.Any
) -> None:
    """Each validator's message is one sentence: the key, what it accepts with one
    example, and what was given (a secret is not shown)."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config[key] = value
    with pytest.raises(ConfigError) as info:
        QueryWatch(app)
    message = str(info.value)
    assert FORM.match(message), message
    assert message.count(" got ") == 1, message
    assert message.count(" such as ") == 1, message
    assert ". " not in message[:-1].replace("e.g. ", ""), message  # one sentence
    if "TOKEN" in key:
        assert "short" not in message
        assert message.endswith("got '<hidden>'.")
    elif "tiger" in str(value):
        assert "tiger" not in message  # a password is not shown
    else:
        assert message.endswith(f"got {info.value.value!r}.")


def test_objective_strings_are_explained_in_the_units_they_are_written_in(
    tmp_path: t.Any,
) -> None:
    """A percent of 150 is called 150, not 1.5; a threshold that is not a duration is
    named as the part that is wrong."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["QUERYWATCH_OBJECTIVES"] = ["latency:99:fast"]
    with pytest.raises(ConfigError) as info:
        QueryWatch(app)
    assert str(info.value) == (
        "'QUERYWATCH_OBJECTIVES[0]' must be 'availability:<percent>' or"
        " 'latency:<percent>:<threshold>' with a threshold in ms or s greater than 0 (not"
        " 'fast'), such as 'latency:99:300ms' or 'latency:99:0.3s', got 'latency:99:fast'."
    )
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["QUERYWATCH_OBJECTIVES"] = ["availability:99.9", "latency:150:300ms"]
    with pytest.raises(ConfigError) as info:
        QueryWatch(app)
    assert str(info.value) == (
        "'QUERYWATCH_OBJECTIVES[1]' must be 'availability:<percent>' or"
        " 'latency:<percent>:<threshold>' with a percent between 0 and 100 (not '150'),"
        " such as 'availability:99.9' or 'latency:99:300ms', got 'latency:150:300ms'."
    )


def test_the_known_keys_are_the_keys_init_app_reads(tmp_path: t.Any) -> None:
    """``config.KEYS`` (what the unknown-key warning checks against) is exactly the set
    of keys ``init_app`` writes back with their defaults."""
    app = Flask(__name__, instance_path=str(tmp_path))
    QueryWatch(app)
    written = {k for k in app.config if k.startswith("QUERYWATCH_")}
    assert written == set(config.KEYS)


@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("QUERYWATCH_SLOW_QUERY_MSS", "QUERYWATCH_SLOW_QUERY_MS"),
        ("QUERYWATCH_DASHBORD_TOKEN", "QUERYWATCH_DASHBOARD_TOKEN"),
    ],
)
def test_a_misspelled_key_is_warned_about_with_the_closest_known_key(
    key: str, closest: str, tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A misspelled key is not ignored in silence: a UserWarning and a warning on the
    ``querywatch`` logger name it and the key that was probably meant."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config[key] = "x" * 20
    message = (
        f"querywatch does not know the config key {key}, and ignores it. Did you mean"
        f" {closest}? The keys are listed in docs/configuration.md."
    )
    with caplog.at_level(logging.WARNING, logger="querywatch"):
        with pytest.warns(UserWarning, match="does not know the config key") as warned:
            QueryWatch(app)
    assert [str(w.message) for w in warned] == [message]
    assert [r.getMessage() for r in caplog.records if r.name == "querywatch"] == [message]


def test_a_key_like_no_other_is_warned_about_without_a_guess(tmp_path: t.Any) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["QUERYWATCH_XYZZY"] = 1
    with pytest.warns(UserWarning, match="QUERYWATCH_XYZZY, and ignores it. The keys") as w:
        QueryWatch(app)
    assert "Did you mean" not in str(w[0].message)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db.example:5432/shop", f"postgresql{PG}://u:p@db.example:5432/shop"),
        ("postgres+psycopg://db/shop", "postgresql+psycopg://db/shop"),
        ("postgresql://db/shop", f"postgresql{PG}://db/shop"),
        ("postgresql+psycopg://db/shop", "postgresql+psycopg://db/shop"),
        ("mysql://root@db/shop", "mysql+pymysql://root@db/shop"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("not a url", "not a url"),
    ],
)
def test_urls_as_hosts_hand_them_out_get_the_installed_driver(given: str, expected: str) -> None:
    """``postgres://`` (Heroku's form) is PostgreSQL; a URL naming no driver gets the one
    installed here (the dev set has psycopg 3 and PyMySQL, not psycopg2 or MySQLdb; the
    SQLAlchemy 1.4 set psycopg2, SQLAlchemy's own default)."""
    assert config.normalize_url(given) == expected


def test_a_postgres_url_opens_the_store(postgres_url: str, tmp_path: t.Any) -> None:
    """``QUERYWATCH_STORE_URL = "postgres://..."`` works as is."""
    from querywatch.store import Store

    url = "postgres://" + postgres_url.split("://", 1)[1]
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["QUERYWATCH_STORE_URL"] = url
    QueryWatch(app)
    state = app.extensions["querywatch"]
    assert state.settings.store_url.startswith(f"postgresql{PG}://")
    store = Store(url)
    try:
        assert store.migrate() >= 1
        assert store.engine.dialect.name == "postgresql"
    finally:
        store.dispose()


def test_an_app_under_test_writes_to_a_store_of_its_own(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``app.testing`` (or under the pytest plugin) and no QUERYWATCH_STORE_URL, the
    store is a temporary one, a different one for each app, never the instance folder's;
    an explicit URL is kept."""
    monkeypatch.setattr(config, "IN_TEST_SESSION", False)
    urls = []
    for testing in (True, True):
        app = Flask(__name__, instance_path=str(tmp_path))
        app.config["TESTING"] = testing
        QueryWatch(app)
        urls.append(app.extensions["querywatch"].settings.store_url)
    assert urls[0] != urls[1]
    for url in urls:
        assert not url.startswith(f"sqlite:///{tmp_path}")
        assert "querywatch-tests-" in url
    # Under the plugin (this session), even without TESTING.
    monkeypatch.setattr(config, "IN_TEST_SESSION", True)
    app = Flask(__name__, instance_path=str(tmp_path))
    QueryWatch(app)
    assert "querywatch-tests-" in app.extensions["querywatch"].settings.store_url
    # Set explicitly: kept.
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["QUERYWATCH_STORE_URL"] = f"sqlite:///{tmp_path}/mine.db"
    QueryWatch(app)
    assert app.extensions["querywatch"].settings.store_url == f"sqlite:///{tmp_path}/mine.db"
    # And out of tests: the instance folder.
    monkeypatch.setattr(config, "IN_TEST_SESSION", False)
    app = Flask(__name__, instance_path=str(tmp_path))
    QueryWatch(app)
    assert app.extensions["querywatch"].settings.store_url == (
        f"sqlite:///{tmp_path}/querywatch.db"
    )


def test_debug_mode_without_a_policy_opens_no_incident(tmp_path: t.Any) -> None:
    """In debug mode without QUERYWATCH_ESCALATION, alerts go to the log only (no
    incident, no worker); with a policy, or outside debug mode, incidents are on."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.debug = True
    QueryWatch(app)
    state = app.extensions["querywatch"]
    assert state.settings.incidents is False
    assert state.settings.alerts is True
    assert state.incident_worker is None
    assert app.config["QUERYWATCH_INCIDENTS"] is False

    app = Flask(__name__, instance_path=str(tmp_path))
    app.debug = True
    app.config["QUERYWATCH_ESCALATION"] = {
        "targets": {"log": {"type": "log"}},
        "levels": [{"targets": ["log"]}],
    }
    QueryWatch(app)
    assert app.extensions["querywatch"].incident_worker is not None

    app = Flask(__name__, instance_path=str(tmp_path))
    QueryWatch(app)
    assert app.extensions["querywatch"].incident_worker is not None


def test_a_handful_of_failed_requests_pages_nobody(tmp_path: t.Any) -> None:
    """Five failing requests of five (a developer clicking on a broken page) burn a
    99.9% objective's budget hundreds of times too fast, and page nobody: a page needs
    ten bad requests in its short window by default. The tenth fails it."""
    app = Flask(__name__, instance_path=str(tmp_path))

    @app.get("/broken")
    def broken() -> tuple[str, int]:
        return "no", 500

    QueryWatch(app)
    state = app.extensions["querywatch"]
    assert state.settings.alert_min_bad_events == 10
    client = app.test_client()

    def pages() -> list[str]:
        state.flusher.flush()
        state.flusher.evaluate_alerts(force=True)
        return sorted(
            k
            for k, a in state.store.alert_states().items()
            if a.severity == "page" and a.state == "firing"
        )

    for _ in range(5):
        assert client.get("/broken").status_code == 500
    assert pages() == []
    for _ in range(5):
        client.get("/broken")
    assert pages() == ["slo:availability:page"]
