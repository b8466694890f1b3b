from __future__ import annotations

import json
import re
import time
import typing as t

import pytest
from click.testing import CliRunner
from flask import Flask

from conftest import on_finished
from querywatch._config import load_settings
from querywatch._report import REPORT_SCHEMA
from querywatch._report import build_report
from querywatch._report import parse_since
from querywatch.cli import cli

QUERY_KEYS = {
    "fingerprint",
    "shape",
    "operation",
    "calls",
    "errors",
    "total_ms",
    "mean_ms",
    "min_ms",
    "max_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "rows",
    "share",
    "endpoints",
    "call_site",
}
ENDPOINT_KEYS = {
    "endpoint",
    "requests",
    "statuses",
    "error_rate",
    "total_ms",
    "mean_ms",
    "p95_ms",
    "max_ms",
    "db_ms",
    "db_share",
    "queries_per_request",
    "max_queries",
    "dropped_queries",
}
FINDING_KEYS = {
    "kind",
    "endpoint",
    "fingerprint",
    "shape",
    "occurrences",
    "queries",
    "total_ms",
    "relationship",
    "call_site",
    "fix",
    "first_seen",
    "last_seen",
    "trace_id",
}


@pytest.fixture
def flushed(app: t.Any, client: t.Any) -> t.Any:
    """The shop after some traffic, flushed to its store: the lookup is the costliest."""
    for i in range(4):
        assert client.get(f"/api/orders/lookup?email=customer{i}@example.com").status_code == 200
        assert client.get("/api/products").status_code == 200
    assert client.get("/api/orders/recent").status_code == 200
    assert app.extensions["querywatch"].flusher.flush() is True
    return app


def test_json_schema_is_pinned(flushed: t.Any) -> None:
    """The --json report has a stable, documented set of keys."""
    store = flushed.extensions["querywatch"].store
    rep = build_report(store, since=time.time() - 3600)
    assert set(rep) == {
        "schema",
        "generated_at",
        "since",
        "until",
        "endpoint",
        "traffic",
        "db_time_ms",
        "queries",
        "endpoints",
        "findings",
        "cache",
    }
    assert rep["schema"] == REPORT_SCHEMA == "querywatch.report/1"
    assert set(rep["traffic"]) == {
        "requests",
        "rate_per_s",
        "previous_requests",
        "previous_rate_per_s",
        "change",
    }
    assert rep["traffic"]["requests"] == 9
    assert all(set(q) == QUERY_KEYS for q in rep["queries"])
    assert all(set(e) == ENDPOINT_KEYS for e in rep["endpoints"])
    assert rep["findings"]
    assert all(set(f) == FINDING_KEYS for f in rep["findings"])
    assert set(rep["queries"][0]["call_site"]) == {"file", "line", "function"}
    assert sum(q["share"] for q in rep["queries"]) == pytest.approx(1.0, abs=0.01)


def test_costliest_shape_comes_first(flushed: t.Any) -> None:
    """Shapes are ranked by total time with their endpoints and call site."""
    rep = build_report(flushed.extensions["querywatch"].store, since=time.time() - 3600)
    totals = [q["total_ms"] for q in rep["queries"]]
    assert totals == sorted(totals, reverse=True)
    n1 = [f for f in rep["findings"] if f["kind"] == "n_plus_one"]
    assert n1[0]["relationship"] == "Order.items"
    assert n1[0]["endpoint"] == "GET /api/orders/recent"
    # The lookup's shape (the recent orders' shape selects the column too, and on a busy
    # machine its one call can cost more than the four lookups on this small shop).
    lookup = [q for q in rep["queries"] if "WHERE orders.customer_email = ?" in (q["shape"] or "")]
    assert len(lookup) == 1
    assert lookup[0]["calls"] == 4
    assert lookup[0]["endpoints"][0]["endpoint"] == "GET /api/orders/lookup"
    assert lookup[0]["call_site"]["function"] == "find_orders_by_email"


def test_endpoint_filter(flushed: t.Any) -> None:
    """--endpoint limits every section to that endpoint."""
    rep = build_report(
        flushed.extensions["querywatch"].store,
        since=time.time() - 3600,
        endpoint="GET /api/products",
    )
    assert [e["endpoint"] for e in rep["endpoints"]] == ["GET /api/products"]
    assert len(rep["queries"]) == 1
    assert rep["findings"] == []


def test_cli_report_json_and_text(flushed: t.Any) -> None:
    """`querywatch report --store URL` prints the culprit; --json prints the schema."""
    url = flushed.config["QUERYWATCH_STORE_URL"]
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "--store", url, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema"] == "querywatch.report/1"
    result = runner.invoke(cli, ["report", "--store", url, "--since", "2h"])
    assert result.exit_code == 0, result.output
    assert "The costliest query shape takes" in result.output
    assert "Top query shapes by total time" in result.output
    assert "Order.items" in result.output


def test_flask_querywatch_report(flushed: t.Any) -> None:
    """The same command runs as `flask querywatch report`, using the app's store."""
    runner = flushed.test_cli_runner()
    result = runner.invoke(args=["querywatch", "report", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["traffic"]["requests"] == 9


def test_cli_errors_are_clear(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad --since or a missing store is a usage error that says how to fix it."""
    monkeypatch.delenv("QUERYWATCH_STORE_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["report", "--store", f"sqlite:///{tmp_path}/s.db", "--since", "yesterday"]
    )
    assert result.exit_code == 2
    assert (
        "'--since' must be a duration such as 30m, 1h or 2d, or an ISO time such as"
        " 2026-11-26T14:00, got 'yesterday'."
    ) in result.output
    result = runner.invoke(cli, ["report"])
    assert result.exit_code == 2
    assert "No store to read. Pass '--store URL'" in result.output
    # A typo in the store's path is an error; no store is created there.
    result = runner.invoke(cli, ["report", "--store", f"sqlite:///{tmp_path}/no/such/dir.db"])
    assert result.exit_code == 1
    assert f"the file {tmp_path}/no/such/dir.db does not exist" in result.output
    result = runner.invoke(cli, ["report", "--store", f"sqlite:///{tmp_path}/nope.db"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: No querywatch store at sqlite:///{tmp_path}/nope.db: the file"
        f" {tmp_path}/nope.db does not exist. Check the path (sqlite:/// and three"
        " slashes is relative to the current folder, four slashes an absolute path); an"
        " app creates its store in its instance folder when it serves its first request.\n"
    )
    assert not (tmp_path / "nope.db").exists()


def test_parse_since() -> None:
    """Durations count back from now; ISO times without a zone are UTC."""
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("2026-11-26T00:00:00") == 1795651200.0


def test_traffic_compares_with_the_window_before(tmp_path: t.Any) -> None:
    """Request rates come from disjoint windows: a flat rate reads as no change, and a
    minute is never counted in both windows."""
    from querywatch._stats import Stats
    from querywatch.capture import Record
    from querywatch.store import Store

    settings = load_settings(Flask(__name__))
    store = Store(f"sqlite:///{tmp_path}/t.db")
    now = time.time()
    this_minute = now // 60 * 60
    stats = Stats()
    for minutes_ago in range(6):
        for _ in range(30):
            r = Record(
                "GET /x", "request", settings, started_wall=this_minute - 60 * minutes_ago + 1
            )
            r.status = 200
            stats.add(r, [])
    store.write(stats.drain())
    rep = build_report(store, since=this_minute - 120 + 5, until=this_minute)
    assert rep["since"].endswith(":00+00:00")  # the start of the minute holding --since
    assert rep["traffic"] == {
        "requests": 60,
        "rate_per_s": 0.5,
        "previous_requests": 60,
        "previous_rate_per_s": 0.5,
        "change": 0.0,
    }


def test_version_and_whole_lines_when_piped(flushed: t.Any) -> None:
    """``querywatch --version`` prints the installed version; piped output (not a
    terminal) writes each line whole, however long, so no figure is cut at 80 columns."""
    import importlib.metadata
    import io

    from querywatch._console import make_console

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"querywatch {importlib.metadata.version('querywatch')}\n"

    buf = io.StringIO()
    console = make_console(file=buf, width=80)
    line = "x" * 70 + " 1,234.5 ms " + "y" * 70
    console.print(line)
    assert buf.getvalue() == line + "\n"
    # A table (the demo's summary, the report's endpoints) is as wide as it needs: its
    # cells were wrapped at 80 columns, "after" on one line and "48.1 ms" on the next.
    from rich.table import Table

    from querywatch._console import print_whole

    table = Table(show_header=False, box=None, padding=(0, 2))
    figures = "before 101.0 ms, during 192.1 ms, after 48.1 ms (querywatch's own: 10.7 ms)"
    table.add_row("  p95, all requests", figures)
    buf = io.StringIO()
    print_whole(make_console(file=buf, width=80), table)
    (row,) = buf.getvalue().splitlines()
    assert row.rstrip().endswith(figures)
    assert len(row.rstrip()) > 80

    url = flushed.config["QUERYWATCH_STORE_URL"]
    result = CliRunner().invoke(cli, ["report", "--store", url], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    headline = next(
        ln for ln in result.output.splitlines() if ln.startswith("The costliest query shape")
    )
    # The call site and the figures stay on the line, however long it is.
    assert re.search(r" in \S+ \([\d,]+ calls?, mean [\d.,]+ ms, p95 [\d.,]+ ms\)\.$", headline)
    assert len(headline) > 80


def test_a_slow_query_finding_names_the_command_for_its_shape(tmp_path: t.Any) -> None:
    """The slow-query fix names ``querywatch advise --shape <id>``, not the report it is
    printed in."""
    from querywatch.demo import shop as demo_shop

    url = f"sqlite:///{tmp_path}/shop.db"
    from querywatch._compat import create_engine

    engine = create_engine(url)
    demo_shop.seed(engine, scale=0.002)
    engine.dispose()
    app = demo_shop.create_app(
        url,
        instance_path=str(tmp_path / "instance"),
        config={"QUERYWATCH_SLOW_QUERY_MS": 0.001, "QUERYWATCH_ADVISE": False},
    )
    findings: list[t.Any] = []
    on_finished(app, lambda r, f: findings.extend(f))
    assert (
        app.test_client().get("/api/orders/lookup?email=customer1@example.com").status_code == 200
    )
    slow = [f for f in findings if f.kind == "slow_query"]
    assert slow
    for f in slow:
        assert f"`querywatch advise --shape {f.fingerprint.id}`" in f.fix
        assert "querywatch report" not in f.fix
