"""``querywatch export grafana-dashboard``: a dashboard JSON model Grafana imports, whose
every query a real Prometheus runs without error over the shop's metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request

import pytest
from click.testing import CliRunner

from conftest import _unavailable
from querywatch.alerts.grafana import SCHEMA_VERSION
from querywatch.cli import cli
from test_metrics import _start_prometheus

APP_MODULE = """
from flask import Flask
from querywatch import QueryWatch

def create_app():
    app = Flask(__name__)
    app.config["QUERYWATCH_STORE_URL"] = "sqlite://"
    app.config["QUERYWATCH_OBJECTIVES"] = [
        {"name": "availability", "target": "99.5%"},
        {"name": "latency", "target": 0.99, "threshold_ms": 250,
         "overrides": {"GET /api/reports": {"threshold_ms": 2500}, "POST /import": None}},
    ]
    QueryWatch(app)
    return app
"""


def _export(*args: str) -> dict[str, t.Any]:
    result = CliRunner().invoke(cli, ["export", "grafana-dashboard", *args])
    assert result.exit_code == 0, result.output
    model: dict[str, t.Any] = json.loads(result.output)
    return model


def _panels(model: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    return [p for p in model["panels"] if p["type"] != "row"]


def _exprs(model: dict[str, t.Any]) -> list[str]:
    return [tg["expr"] for p in _panels(model) for tg in p["targets"]]


def test_the_dashboard_is_a_valid_json_model() -> None:
    """The fields Grafana's dashboard model requires, with their types; panels on the
    24-column grid without overlaps, unique ids and refIds, every target on the
    ``datasource`` variable, and every variable a query uses defined."""
    model = _export()
    for key, kind in {
        "uid": str,
        "title": str,
        "tags": list,
        "timezone": str,
        "schemaVersion": int,
        "version": int,
        "time": dict,
        "templating": dict,
        "annotations": dict,
        "panels": list,
        "refresh": str,
        "editable": bool,
    }.items():
        assert isinstance(model[key], kind), key
    assert model["id"] is None  # a new dashboard on import
    assert model["schemaVersion"] == SCHEMA_VERSION
    assert set(model["time"]) == {"from", "to"}
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in model["panels"]:
        pos = p["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"}
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24
        assert pos["h"] > 0
        covered = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not covered & cells, f"panel {p['title']!r} overlaps another"
        cells |= covered
        assert p["type"] in {"row", "stat", "timeseries"}
        assert isinstance(p["title"], str)
        assert p["title"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "route"):
        assert variables[name]["type"] == "query"
        assert variables[name]["definition"].startswith("label_values(")
    for p in _panels(model):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [tg["refId"] for tg in p["targets"]]
        assert refs
        assert len(refs) == len(set(refs))
        assert p["fieldConfig"]["defaults"]["unit"]
        for tg in p["targets"]:
            assert tg["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\$(\w+)", tg["expr"])) - {"__rate_interval"}
            assert used <= set(variables), used
    titles = [p["title"] for p in model["panels"]]
    assert titles[:3] == [
        "Is it traffic or the database?",
        "Requests / s",
        "Traffic vs an hour ago",
    ]
    assert "Database time by query shape (top 10)" in titles
    # The default objectives, as an app without QUERYWATCH_OBJECTIVES has them.
    assert [t for t in titles if t.startswith("Error budget")] == [
        "Error budget burn rate: availability",
        "Error budget burn rate: latency",
    ]


def test_objectives_come_from_the_app(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--app`` both exports use the app's QUERYWATCH_OBJECTIVES, overrides too:
    an overridden endpoint is left out of the general objective with ``unless on``, and
    promtool accepts the rules."""
    (tmp_path / "slo_app.py").write_text(APP_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = _export("--app", "slo_app:create_app")
    assert [p["title"] for p in model["panels"] if p["title"].startswith("Error budget")] == [
        "Error budget burn rate: availability",
        "Error budget burn rate: latency GET /api/reports",
        "Error budget burn rate: latency",
    ]
    assert any(e.endswith("/ 0.005") for e in _exprs(model))  # 99.5%: a 0.5% budget
    rules_file = tmp_path / "rules.yml"
    result = CliRunner().invoke(
        cli, ["export", "prometheus-rules", "--app", "slo_app:create_app", "-o", str(rules_file)]
    )
    assert result.exit_code == 0, result.output
    import yaml

    groups = yaml.safe_load(rules_file.read_text())["groups"]
    exprs = {(r["labels"]["slo"], r["record"]): r["expr"] for r in groups[0]["rules"]}
    general = exprs[("latency", "querywatch:slo_errors:ratio_rate5m")]
    assert (
        "unless on (http_request_method, http_route) http_server_request_duration_seconds_count"
        '{http_request_method="GET", http_route="/api/reports"}'
    ) in general
    assert 'http_request_method="POST", http_route="/import"' in general
    assert 'le="0.25"' in general
    own = exprs[("latency GET /api/reports", "querywatch:slo_errors:ratio_rate5m")]
    assert 'le="2.5", http_request_method="GET", http_route="/api/reports"' in own
    assert "unless" not in own
    promtool = shutil.which("promtool")
    if promtool is None:
        _unavailable("promtool", "not installed; Debian package 'prometheus'")
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    bad = CliRunner().invoke(cli, ["export", "grafana-dashboard", "--app", "nowhere:create_app"])
    assert bad.exit_code == 2
    assert "--app 'nowhere:create_app'" in bad.output


def _query(port: int, expr: str) -> dict[str, t.Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body: dict[str, t.Any] = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    return body


@pytest.fixture
def served_shop(tmp_path: t.Any) -> t.Iterator[tuple[t.Any, int]]:
    from werkzeug.serving import make_server

    from querywatch._compat import create_engine
    from querywatch.demo import shop

    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, scale=0.002)
    engine.dispose()
    app = shop.create_app(
        url, instance_path=str(tmp_path / "inst"), config={"QUERYWATCH_ADVISE": False}
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield app, server.server_port
    server.shutdown()


def test_every_panel_query_runs_in_a_real_prometheus(
    served_shop: tuple[t.Any, int], tmp_path: t.Any
) -> None:
    """Debian's Prometheus scrapes the shop while it serves a mix including the slow order
    lookup; each of the dashboard's queries (variables set as Grafana would) is accepted
    by Prometheus, and the first-row panels and the shapes panel have data."""
    _, port = served_shop
    proc, prom_port = _start_prometheus(tmp_path, port)
    # The mix goes on for the whole test: a rate over 1m needs two scrapes that saw
    # different counts, and a busy machine's Prometheus may take its first scrape late.
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        try:
            while not stop.is_set():
                for path in ("/api/products/3", "/api/orders/lookup?email=customer1@example.com",
                             "/api/orders/recent?limit=5"):  # fmt: skip
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
                        assert r.status == 200
                stop.wait(0.05)
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        model = _export()
        panels = {p["title"]: p for p in _panels(model)}
        first_row = [
            panels[title]["targets"][0]["expr"] for title in ("Requests / s", "p95 latency")
        ]

        def evaluate() -> dict[str, t.Any]:
            results = {}
            for expr in _exprs(model):
                concrete = (
                    expr.replace("$__rate_interval", "1m")
                    .replace("$job", "shop")
                    .replace("$route", ".*")
                )
                body = _query(prom_port, concrete)
                assert body["status"] == "success", (expr, body)
                results[expr] = body["data"]["result"]
            return results

        # Each panel read below has data: a busy machine's Prometheus may have rates for
        # the requests before it has them for the time in the database.
        rated = first_row + [panels["Time in the database"]["targets"][0]["expr"]]
        listed = [
            tg["expr"]
            for title in (
                "Pool in use",
                "Database time by query shape (top 10)",
                "Request time by route (top 10)",
            )
            for tg in panels[title]["targets"]
        ]

        def rising(results: dict[str, t.Any]) -> bool:
            return all(results[e] and float(results[e][0]["value"][1]) > 0 for e in rated) and all(
                results[e] for e in listed
            )

        # Until Prometheus listens and has scraped twice; a watchdog for one that never does.
        deadline = time.monotonic() + 120
        while True:
            try:
                results = evaluate()
            except urllib.error.URLError:  # not listening yet: a busy machine starts it late
                if time.monotonic() > deadline:
                    raise
                results = {}
            if results and rising(results) or time.monotonic() > deadline or errors:
                break
            time.sleep(1)
        assert not errors, errors

        def data(title: str) -> list[t.Any]:
            out = []
            for tg in panels[title]["targets"]:
                out += results[tg["expr"]]
            return out

        assert float(data("Requests / s")[0]["value"][1]) > 0
        assert 0 < float(data("Time in the database")[0]["value"][1]) <= 1
        assert float(data("p95 latency")[0]["value"][1]) > 0
        assert data("Pool in use")
        shapes = {
            s["metric"]["db_query_shape"] for s in data("Database time by query shape (top 10)")
        }
        assert shapes
        assert "other" not in shapes
        routes = {s["metric"]["http_route"] for s in data("Request time by route (top 10)")}
        assert "/api/orders/lookup" in routes
    finally:
        stop.set()
        sender.join(timeout=30)
        proc.terminate()
        proc.wait(timeout=10)
