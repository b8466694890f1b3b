from __future__ import annotations

import logging
import typing as t

import pytest
from flask import Flask

from querywatch import ConfigError
from querywatch import QueryWatch
from querywatch import _failopen
from querywatch.exceptions import NotInitializedError


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "QUERYWATCH_SLOW_QUERY_MS",
            "fast",
            "'QUERYWATCH_SLOW_QUERY_MS' must be a number greater than 0, such as 100, got 'fast'.",
        ),
        (
            "QUERYWATCH_SLOW_QUERY_MS",
            -5,
            "'QUERYWATCH_SLOW_QUERY_MS' must be a number greater than 0, such as 100, got -5.",
        ),
        (
            "QUERYWATCH_N_PLUS_ONE_THRESHOLD",
            1,
            "'QUERYWATCH_N_PLUS_ONE_THRESHOLD' must be a whole number of at least 2, such as 5,"
            " got 1.",
        ),
        (
            "QUERYWATCH_N_PLUS_ONE_THRESHOLD",
            2.5,
            "'QUERYWATCH_N_PLUS_ONE_THRESHOLD' must be a whole number of at least 2, such as 5,"
            " got 2.5.",
        ),
        (
            "QUERYWATCH_MAX_QUERIES_PER_REQUEST",
            True,
            "'QUERYWATCH_MAX_QUERIES_PER_REQUEST' must be a whole number of at least 0, such as"
            " 1000, got True.",
        ),
        (
            "QUERYWATCH_ENABLED",
            "maybe",
            "'QUERYWATCH_ENABLED' must be true or false, such as True, got 'maybe'.",
        ),
        (
            "QUERYWATCH_STORE_URL",
            "not a url",
            "'QUERYWATCH_STORE_URL' must be a database URL, such as"
            " 'postgresql+psycopg://host/db', got 'not a url'.",
        ),
        (
            "QUERYWATCH_APP_PACKAGES",
            5,
            "'QUERYWATCH_APP_PACKAGES' must be a list of module names, such as ['myapp'], got 5.",
        ),
        (
            "QUERYWATCH_FLUSH_INTERVAL",
            0,
            "'QUERYWATCH_FLUSH_INTERVAL' must be a number of at least 0.1, such as 5, got 0.",
        ),
    ],
)
def test_malformed_config_fails_at_init_app(
    key: str, value: object, message: str, tmp_path: t.Any
) -> None:
    """A malformed QUERYWATCH_* value fails at init_app, naming the key and what it expects;
    the error is also a ValueError."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config[key] = value
    with pytest.raises(ConfigError) as info:
        QueryWatch(app)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    assert "querywatch" not in app.extensions


def test_defaults_are_written_back(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """app.config shows the effective values after init_app; strings are accepted. Out
    of a test session, the store is a file in the instance folder."""
    from querywatch import _config as config

    monkeypatch.setattr(config, "IN_TEST_SESSION", False)
    # root_path: Flask 2.2 looks for the module of a name it is not given one for.
    app = Flask("myapp.web", instance_path=str(tmp_path), root_path=str(tmp_path))
    app.config["QUERYWATCH_SLOW_QUERY_MS"] = "250"
    QueryWatch(app)
    assert app.config["QUERYWATCH_N_PLUS_ONE_THRESHOLD"] == 5
    assert app.config["QUERYWATCH_APP_PACKAGES"] == ["myapp"]
    assert app.config["QUERYWATCH_STORE_URL"] == f"sqlite:///{tmp_path}/querywatch.db"
    state = app.extensions["querywatch"]
    assert state.settings.slow_query_seconds == 0.25
    assert state.settings.app_packages == ("myapp.",)


def test_registering_twice_is_refused(tmp_path: t.Any) -> None:
    """A second QueryWatch on the same app is an error that says what to do."""
    app = Flask(__name__, instance_path=str(tmp_path))
    QueryWatch(app)
    with pytest.raises(RuntimeError) as info:
        QueryWatch(app)
    assert str(info.value) == (
        "A 'QueryWatch' instance has already been registered on this Flask app."
        " Import and use that instance instead."
    )


def test_app_factory_pattern(tmp_path: t.Any) -> None:
    """One QueryWatch() serves apps made later with init_app."""
    qw = QueryWatch()
    a = Flask("a", instance_path=str(tmp_path / "a"))
    b = Flask("b", instance_path=str(tmp_path / "b"))
    qw.init_app(a)
    qw.init_app(b)
    assert a.extensions["querywatch"] is not b.extensions["querywatch"]
    with a.app_context(), qw.capture("x") as record:
        pass
    assert record.name == "job:x"


def test_capture_without_app_says_what_is_missing() -> None:
    """capture() with no app to use raises a clear error."""
    qw = QueryWatch()
    with pytest.raises(NotInitializedError) as info, qw.capture("x"):
        pass
    assert str(info.value) == (
        "No QueryWatch is registered on the current app. Did you forget to call 'init_app',"
        " or to push an app context ('with app.app_context():')?"
    )


def test_disabled_registers_no_hooks(tmp_path: t.Any) -> None:
    """QUERYWATCH_ENABLED = False leaves requests alone."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["QUERYWATCH_ENABLED"] = False
    QueryWatch(app)
    assert not app.before_request_funcs.get(None)


def test_status_codes_and_unmatched_routes(client: t.Any, records: list[t.Any]) -> None:
    """Endpoints are url rules; unknown paths fold into one ``<unmatched>`` endpoint."""
    assert client.get("/api/products/999999").status_code == 404
    assert records[-1][0].name == "GET /api/products/<int:product_id>"
    assert records[-1][0].status == 404
    assert client.get("/no/such/path/12345").status_code == 404
    assert records[-1][0].name == "GET <unmatched>"
    assert client.post("/api/orders", json={"nope": 1}).status_code == 400
    assert records[-1][0].status == 400


def test_unhandled_exception_is_a_500(app: Flask, records: list[t.Any]) -> None:
    """A view that raises is recorded as a 5xx of its url rule."""
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    assert app.test_client().get("/boom").status_code == 500
    assert records[-1][0].name == "GET /boom"
    assert records[-1][0].status == 500


@pytest.mark.allow_internal_errors
def test_internal_error_fails_open(
    client: t.Any, app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug inside querywatch never reaches the request: it is counted and logged once."""
    from querywatch.extension import _state

    def broken(*args: object) -> t.NoReturn:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(_state, "detect", broken)
    before = _failopen.internal_error_counts().get("extension.teardown_request", 0)
    with caplog.at_level(logging.WARNING, logger="querywatch"):
        statuses = [client.get("/api/products").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert _failopen.internal_error_counts()["extension.teardown_request"] == before + 3
    logged = [r for r in caplog.records if "Internal error in querywatch" in r.getMessage()]
    assert len(logged) <= 1
