from __future__ import annotations

import io
import json
import typing as t

from click.testing import CliRunner
from rich.console import Console

from querywatch.cli import cli
from querywatch.demo.runner import run_demo


class _Watching(io.StringIO):
    """The demo's console output; when the dashboard's address appears, a thread opens
    the dashboard's overview (after the traffic has begun) while the demo runs."""

    def __init__(self) -> None:
        super().__init__()
        self.dashboard: str | None = None
        self.seen: tuple[int, str] | None = None

    def write(self, text: str) -> int:
        if self.dashboard is None and "Dashboard: " in text:
            import re
            import threading

            m = re.search(r"Dashboard: (\S+)", text)
            if m:
                self.dashboard = m.group(1)
                threading.Thread(target=self._visit, daemon=True).start()
        return super().write(text)

    def _visit(self) -> None:
        import time
        import urllib.request

        assert self.dashboard is not None
        time.sleep(5)  # the onset is at 40% of 8 s
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(self.dashboard, timeout=20) as r:
            self.seen = (r.status, r.read().decode())


def test_demo_report_names_the_unoptimized_query_first(tmp_path: t.Any) -> None:
    """A short demo on a smaller shop: real server, real HTTP traffic at a flat rate; the
    report puts the order lookup's full scan first and says traffic did not rise. (At
    0.3 of the default scale the scan's cost came within reach of the N+1's Python
    overhead on a loaded machine, and the N+1 once stood first.)"""
    out = _Watching()
    console = Console(file=out, width=120)
    code = run_demo(scale=0.8, duration=8, rate=30, workdir=str(tmp_path / "demo"), console=console)
    text = out.getvalue()
    assert code == 0, text
    # The dashboard's address is printed at the start and answers while the demo runs,
    # naming the culprit endpoint.
    assert out.dashboard is not None, text
    assert out.dashboard.startswith("http://127.0.0.1:")
    assert out.seen is not None, "the dashboard did not answer during the run"
    status, body = out.seen
    assert status == 200
    assert "GET /api/orders/lookup" in body
    assert "The unoptimized endpoint's query stands first." in text
    assert "Traffic did not rise" in text
    assert "orders.customer_email = ?" in text
    assert "Order.items" in text  # the N+1 finding of the recent-orders endpoint
    # The advisor's round after the traffic: the index that fixes it, verified.
    assert "Verified index (built and rolled back): CREATE INDEX IF NOT EXISTS" in text
    assert "ix_orders_customer_email ON orders (customer_email)" in text


def test_demo_json_and_reuse_of_the_seeded_database(tmp_path: t.Any) -> None:
    """`querywatch demo --json` prints the measured summary and the report; a second run
    reuses the seeded database."""
    runner = CliRunner()
    args = [
        "demo",
        "--scale",
        "0.8",
        "--duration",
        "6",
        "--rate",
        "30",
        "--workdir",
        str(tmp_path / "demo"),
        "--json",
    ]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    demo = data["demo"]
    assert demo["culprit_first"] is True
    assert demo["culprit_endpoint"] == "GET /api/orders/lookup"
    assert abs(demo["traffic_change"]) < 0.2
    assert demo["calm"]["lookup_share"] == 0
    assert 0.15 < demo["incident"]["lookup_share"] < 0.45
    assert data["report"]["schema"] == "querywatch.report/1"
    # The shop's product list is cached: the report counts its hits.
    (products,) = [c for c in data["report"]["cache"] if c["function"] == "shop.products_in"]
    assert products["hits"] > products["misses"] > 0
    fix = demo["verified_index"]
    assert fix["ddl"].endswith("ON orders (customer_email);")
    assert fix["cost_after"] < fix["cost_before"] / 2
    assert any(
        f["kind"] == "full_scan" and f["endpoint"] == "GET /api/orders/lookup"
        for f in data["report"]["findings"]
    )
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "Reusing the seeded shop database" in second.output
