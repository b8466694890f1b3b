"""``querywatch check``: the gate over scripted requests, on the demo shop (its own CI
gate) and on ``gate_app``, a small app that is not the shop."""

from __future__ import annotations

import json
import pathlib
import sys
import typing as t
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner

from querywatch._text import relpath
from querywatch.cli import cli
from querywatch.demo import shop

HERE = pathlib.Path(__file__).parent
SHOP_FILE = pathlib.Path(shop.__file__)


def _shop_line(text: str, after: str | None = None) -> int:
    lines = SHOP_FILE.read_text().splitlines()
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines[start:], start + 1) if text in line)


def _run(*args: str) -> t.Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def elsewhere(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Run from a folder of the test's own, outside the repository (``check`` makes it
    importable, as ``flask --app`` does: ``sys.path`` is restored afterwards)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return tmp_path


# --- the demo shop's own gate -----------------------------------------------------------


def test_the_shop_gate_fails_on_the_n_plus_one_and_the_unindexed_lookup(
    elsewhere: pathlib.Path,
) -> None:
    """The shop's requests file fails exactly the N+1 endpoint and the seed outage's
    lookup, naming the relationship, the lines and the verified index."""
    result = _run(
        "check",
        "--app",
        "querywatch.demo.shop:create_app",
        "--seed",
        "querywatch.demo.shop:seed_for_check",
        "--requests",
        shop.CHECKS_FILE,
    )
    assert result.exit_code == 1, result.output
    out = result.output
    assert out.startswith(
        "querywatch: 2 of 7 failed the query gate (3 problems, 71 queries in all).\n"
    )
    failed = [line for line in out.splitlines() if line.startswith("FAILED ")]
    assert [f.split("  ")[0] for f in failed] == [
        "FAILED recent orders",
        "FAILED order lookup by email",
    ]
    n1_line = _shop_line('"items": [i.product_id for i in o.items]')
    parents_line = _shop_line("orders = db.session.scalars(query)")
    lookup_line = _shop_line("rows = db.session.scalars(", after="def find_orders_by_email")
    assert (
        "  N+1: 50 x SELECT … FROM order_items WHERE ? = order_items.order_id in GET"
        " /api/orders/recent (lazy load of Order.items).\n"
        f"      at {SHOP_FILE}:{n1_line} (<listcomp>)\n"
        f"      fix: 50 lazy loads of Order.items in one unit of work, triggered at"
        f" {relpath(str(SHOP_FILE))}:{n1_line} (<listcomp>). The parents were loaded at"
        f" {relpath(str(SHOP_FILE))}:{parents_line} (recent_orders): add"
        " .options(selectinload(Order.items)).\n"
    ) in out
    assert "  Expected to perform 20 queries or less but 51 were done.\n" in out
    assert (
        "  Full scan of orders (2,000 rows): SELECT … FROM orders WHERE"
        " orders.customer_email = ? ORDER BY orders.id (1 x in GET /api/orders/lookup).\n"
        f"      at {SHOP_FILE}:{lookup_line} (find_orders_by_email)\n"
        "      plan: SCAN orders: reads all 2,000 rows of orders\n"
        "      fix: CREATE INDEX IF NOT EXISTS ix_orders_customer_email ON orders"
        " (customer_email);\n"
    ) in out


def test_the_shop_gate_passes_once_fixed(elsewhere: pathlib.Path) -> None:
    """Eager loading of the items and the lookup's index: every request passes."""
    result = _run(
        "check",
        "--app",
        "querywatch.demo.shop:create_app(fixed=True)",
        "--seed",
        "querywatch.demo.shop:seed_for_check",
        "--requests",
        shop.CHECKS_FILE,
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "querywatch: 7 checked, 22 queries, no budget broken, no regression.\n"
    )
    assert "ok recent orders  2 queries" in result.output
    assert "ok order lookup by email  1 query" in result.output


# --- a second app -----------------------------------------------------------------------

REQUESTS = """
budget:
  n_plus_one: forbid
  full_scans: forbid
requests:
  - path: /authors
  - name: isbn lookup
    path: /books/by-isbn?isbn=978-000000007
  - path: /books/3
"""


def _gate_line(marker: str) -> int:
    text = (HERE / "gate_app.py").read_text().splitlines()
    return next(i for i, line in enumerate(text, 1) if line.rstrip().endswith(f"# gate: {marker}"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def library(request: pytest.FixtureRequest, elsewhere: pathlib.Path) -> t.Iterator[str]:
    """``gate_app`` copied into the working folder; returns its database URL."""
    (elsewhere / "gate_app.py").write_text((HERE / "gate_app.py").read_text())
    (elsewhere / "requests.yaml").write_text(REQUESTS)
    sys.modules.pop("gate_app", None)
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{elsewhere}/library.db"
    yield url
    sys.modules.pop("gate_app", None)  # this folder's copy: no later test may import it


def _check_library(url: str, *extra: str, fixed: bool = False) -> t.Any:
    return _run(
        "check",
        "--app",
        f"gate_app:create_app({url!r}, fixed={fixed})",
        "--seed",
        "gate_app:seed",
        "--requests",
        "requests.yaml",
        *extra,
    )


def test_check_flags_exactly_the_two_bad_endpoints_with_every_output(
    library: str, elsewhere: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an app that is not the shop: the N+1 and the unindexed filter fail at their
    lines; the healthy endpoint passes; JUnit XML, Markdown (and the step summary) and
    GitHub annotations say the same."""
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(elsewhere / "summary.md"))
    result = _check_library(
        library, "--junit-xml", "junit.xml", "--markdown", "gate.md", "--annotations", "github"
    )
    assert result.exit_code == 1, result.output
    out = result.output
    n1, scan = _gate_line("n+1"), _gate_line("scan")
    assert [line.split("  ")[0] for line in out.splitlines() if line[:3] in ("ok ", "FAI")] == [
        "FAILED GET /authors",
        "FAILED isbn lookup",
        "ok GET /books/3",
    ]
    assert f"      at gate_app.py:{n1} (<listcomp>)\n" in out
    assert f"      at gate_app.py:{scan} (by_isbn)\n" in out
    assert (
        f"::error file=gate_app.py,line={n1},title=querywatch n_plus_one in GET /authors::N+1:"
        " 20 x SELECT … FROM lib_books WHERE ? = lib_books.author_id in GET /authors (lazy"
        " load of Author.books).%0A    at gate_app.py"
    ) in out
    assert (
        f"::error file=gate_app.py,line={scan},title=querywatch full_scan in isbn lookup::" in out
    )

    suite = ET.parse(elsewhere / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "2")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["GET /books/3"].find("failure") is None
    failure = cases["isbn lookup"].find("failure")
    assert failure is not None
    assert failure.get("message", "").startswith("Full scan of lib_books (60 rows): SELECT")
    assert f"at gate_app.py:{scan} (by_isbn)" in (failure.text or "")

    md = (elsewhere / "gate.md").read_text()
    assert "| `GET /authors` | N+1: 20 x SELECT … FROM lib_books WHERE ? =" in md
    assert f"gate_app.py:{n1} (<listcomp>) | 20 lazy loads of Author.books in one unit" in md
    assert (elsewhere / "summary.md").read_text() == md + "\n"


def test_check_baseline_create_compare_update(library: str, elsewhere: pathlib.Path) -> None:
    """The same baseline rules as the plugin, keyed by request name."""
    base = ["--baseline", "qw.json"]
    created = _check_library(library, *base, fixed=True)
    assert created.exit_code == 0, created.output
    assert "querywatch: baseline created: 3 requests in qw.json." in created.output
    data = json.loads((elsewhere / "qw.json").read_text())
    assert sorted(data["tests"]) == ["GET /authors", "GET /books/3", "isbn lookup"]
    assert _check_library(library, *base, fixed=True).exit_code == 0
    # Without the fixes (and without the file's budget: only the baseline judges).
    (elsewhere / "requests.yaml").write_text("requests:" + REQUESTS.split("requests:")[1])
    regressed = _check_library(library, *base)
    assert regressed.exit_code == 1, regressed.output
    assert (
        "  The query count rose from 2 to 21 (more than the 10% tolerance over the baseline).\n"
        in regressed.output
    )
    assert "  New N+1: 20 x SELECT … FROM lib_books" in regressed.output
    assert (
        "  New full scan of lib_books (60 rows): SELECT … FROM lib_books WHERE" in regressed.output
    )
    updated = _check_library(library, *base, "--update-baseline")
    assert updated.exit_code == 0, updated.output
    assert "querywatch: baseline updated: 3 requests in qw.json." in updated.output
    assert _check_library(library, *base).exit_code == 0


def test_a_wrong_status_fails_the_request(library: str, elsewhere: pathlib.Path) -> None:
    (elsewhere / "requests.yaml").write_text(
        "- path: /books/3\n  status: 201\n- path: /nowhere\n  status: 404\n"
    )
    result = _check_library(library)
    assert result.exit_code == 1
    assert "  GET /books/3 answered 200, expected 201: " in result.output
    assert "ok GET /nowhere" in result.output


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "requests:\n  - path: /a\n   method: GET\n",
            "Error: The requests file r.yaml is not valid YAML (line 3, column 4): expected"
            " <block end>, but found '<block mapping start>'.",
        ),
        (
            "requests:\n  - path: /a\n  - path: /b\n    metod: POST\n",
            "Error: The requests file r.yaml, entry 2 (line 3): unknown key 'metod'; the keys"
            " are name, method, path, json, headers, status, budget.",
        ),
        (
            "- path: /a\n  status: ok\n",
            "Error: The requests file r.yaml, entry 1 (line 1): 'status' must be an HTTP"
            " status such as 200, got 'ok'.",
        ),
        (
            "- path: a\n",
            "Error: The requests file r.yaml, entry 1 (line 1): 'path' must be a path starting"
            " with '/', such as /api/orders, got 'a'.",
        ),
        (
            "- path: /a\n  budget: {max_queris: 3}\n",
            "Error: The requests file r.yaml, entry 1 (line 1), 'budget': unknown budget key"
            " 'max_queris'. Did you mean 'max_queries'? The keys are max_queries, max_db_ms,"
            " n_plus_one, full_scans, full_scan_min_rows, count_tolerance, timing_tolerance.",
        ),
        (
            "budget: {n_plus_one: never}\nrequests: [{path: /a}]\n",
            "Error: r.yaml, 'budget': 'n_plus_one' must be 'forbid' or 'allow', got 'never'.",
        ),
        ("requests: []\n", "Error: The requests file r.yaml: 'requests' must be a non-empty list"),
        (
            "- path: /a\n- path: /a\n",
            "Error: The requests file r.yaml, entry 2 (line 2): the name 'GET /a' is used"
            " twice; give each request a distinct 'name' (the baseline is keyed by it).",
        ),
    ],
    ids=["syntax", "unknown-key", "status", "path", "budget-key", "file-budget", "empty", "twice"],
)
def test_bad_requests_files_name_the_file_entry_and_problem(
    elsewhere: pathlib.Path, content: str, message: str
) -> None:
    (elsewhere / "r.yaml").write_text(content)
    result = _run("check", "--app", "querywatch.demo.shop:create_app", "--requests", "r.yaml")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output


def test_bad_app_and_seed_say_what_was_not_found(elsewhere: pathlib.Path) -> None:
    (elsewhere / "r.yaml").write_text("- path: /a\n")
    no_module = _run("check", "--app", "no_such_app:create_app", "--requests", "r.yaml")
    assert no_module.exit_code == 2
    assert "--app 'no_such_app:create_app': Could not import 'no_such_app'." in " ".join(
        no_module.output.split()
    )
    no_seed = _run(
        "check",
        "--app",
        "querywatch.demo.shop:create_app",
        "--seed",
        "querywatch.demo.shop:no_such_seed",
        "--requests",
        "r.yaml",
    )
    assert no_seed.exit_code == 2
    assert (
        "--seed 'querywatch.demo.shop:no_such_seed': 'querywatch.demo.shop' has no function"
        " 'no_such_seed'." in " ".join(no_seed.output.split())
    )


def test_a_bad_baseline_is_refused_and_kept(elsewhere: pathlib.Path) -> None:
    (elsewhere / "r.yaml").write_text("- path: /healthz\n")
    (elsewhere / "b.json").write_text('{"querywatch_baseline": 2, "tests": {}}')
    result = _run(
        "check",
        "--app",
        "querywatch.demo.shop:create_app",
        "--requests",
        "r.yaml",
        "--baseline",
        "b.json",
    )
    assert result.exit_code == 2
    assert "The baseline b.json was written by a newer querywatch (format 2)" in " ".join(
        result.output.split()
    )
    assert (elsewhere / "b.json").read_text() == '{"querywatch_baseline": 2, "tests": {}}'
