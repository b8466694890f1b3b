"""The pytest plugin, run with ``pytester`` over ``gate_app`` (a small library app that
is not the demo shop: an N+1, an unindexed filter and a healthy endpoint), on SQLite
and PostgreSQL."""

from __future__ import annotations

import json
import pathlib

import pytest

# Imported here, before any in-process run: pytester forgets the modules a run imported,
# and an app thread of an earlier run may import them again half-way.
import querywatch.advisor  # noqa: F401
import querywatch.ci.baseline  # noqa: F401
import querywatch.ci.check  # noqa: F401
import querywatch.store  # noqa: F401
import querywatch.testing  # noqa: F401

HERE = pathlib.Path(__file__).parent
GATE_APP = (HERE / "gate_app.py").read_text()


def _line(marker: str) -> int:
    """The line of ``gate_app.py`` that carries ``# gate: <marker>``."""
    for i, text in enumerate(GATE_APP.splitlines(), 1):
        if text.rstrip().endswith(f"# gate: {marker}"):
            return i
    raise AssertionError(marker)


N1_LINE = _line("n+1")
SCAN_LINE = _line("scan")
PARENTS_LINE = _line("parents")

CONFTEST = """
import os
import pytest
from gate_app import create_app, seed

@pytest.fixture
def app(tmp_path):
    url = os.environ.get("GATE_DB") or f"sqlite:///{tmp_path}/library.db"
    app = create_app(url, fixed=os.environ.get("GATE_FIXED") == "1")
    seed(app)
    yield app
    from gate_app import db
    with app.app_context():
        db.engine.dispose()

@pytest.fixture
def client(app):
    return app.test_client()
"""

TESTS = """
import pytest

pytestmark = pytest.mark.query_budget(n_plus_one="forbid", full_scans="forbid")

def test_authors(client):
    assert client.get("/authors").status_code == 200

def test_by_isbn(client):
    assert client.get("/books/by-isbn?isbn=978-000000007").status_code == 200

def test_book(client):
    assert client.get("/books/3").status_code == 200
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def library(
    request: pytest.FixtureRequest, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A project holding ``gate_app`` and its conftest, its database on each dialect."""
    pytester.makepyfile(gate_app=GATE_APP, conftest=CONFTEST)
    # This project's gate_app first: an earlier test's project may still be on sys.path.
    monkeypatch.syspath_prepend(str(pytester.path))
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        from sqlalchemy import text

        from querywatch._compat import create_engine

        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS hypopg"))
        engine.dispose()
        monkeypatch.setenv("GATE_DB", url)
    else:
        monkeypatch.delenv("GATE_DB", raising=False)
    monkeypatch.delenv("GATE_FIXED", raising=False)
    return pytester


def _scan_fix(pytester: pytest.Pytester) -> str:
    import os

    if os.environ.get("GATE_DB", "").startswith("postgresql"):
        return "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_lib_books_isbn ON lib_books (isbn);"
    return "CREATE INDEX IF NOT EXISTS ix_lib_books_isbn ON lib_books (isbn);"


def test_marker_fails_exactly_the_two_bad_endpoints_at_their_lines(
    library: pytest.Pytester,
) -> None:
    """The N+1 and the unindexed filter fail, each naming the shape, count, call site,
    plan and fix; the healthy endpoint passes."""
    library.makepyfile(test_library=TESTS)
    result = library.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "FAILED test_library.py::test_authors" in out
    assert "FAILED test_library.py::test_by_isbn" in out
    assert "FAILED test_library.py::test_book" not in out
    result.stdout.fnmatch_lines(
        [
            "N+1: 20 x SELECT … FROM lib_books WHERE ? = lib_books.author_id in GET /authors"
            " (lazy load of Author.books).",
            f"    at gate_app.py:{N1_LINE} (<listcomp>)",
            "    fix: 20 lazy loads of Author.books in one unit of work, triggered at"
            f" gate_app.py:{N1_LINE} (<listcomp>). The parents were loaded at"
            f" gate_app.py:{PARENTS_LINE} (authors): add .options(selectinload(Author.books)).",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "Full scan of lib_books (60 rows): SELECT … FROM lib_books WHERE lib_books.isbn"
            " = ? (1 x in GET /books/by-isbn).",
            f"    at gate_app.py:{SCAN_LINE} (by_isbn)",
            "    plan: *lib_books*: reads all 60 rows of lib_books",
            f"    fix: {_scan_fix(library)}",
        ]
    )
    # Parameter values never appear, not even in the plan's words.
    assert "978-000000007" not in out


def test_the_fixed_variant_passes(
    library: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager loading and the index make the same tests pass."""
    monkeypatch.setenv("GATE_FIXED", "1")
    library.makepyfile(test_library=TESTS)
    result = library.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["querywatch: 3 checked, 4 queries, no budget broken, *"])


def test_project_budget_from_pyproject_and_marker_override(library: pytest.Pytester) -> None:
    """``[tool.querywatch]`` sets every test's budget; a marker overrides a key."""
    library.makepyprojecttoml(
        """
        [tool.querywatch]
        n_plus_one = "forbid"
        max_queries = 5
        """
    )
    library.makepyfile(
        test_library="""
        import pytest

        def test_authors(client):
            client.get("/authors")

        @pytest.mark.query_budget(n_plus_one="allow", max_queries=None)
        def test_authors_allowed(client):
            client.get("/authors")

        def test_book(client):
            client.get("/books/3")
        """
    )
    result = library.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED test_library.py::test_authors - *",
        ]
    )
    result.stdout.fnmatch_lines(["Expected to perform 5 queries or less but 21 were done."])
    assert "test_authors_allowed -" not in result.stdout.str()


def test_fixture_context_managers(library: pytest.Pytester) -> None:
    """The fixture's context managers judge only their block, with the same messages;
    the fixture shows what the test did so far."""
    library.makepyfile(
        test_library="""
        import pytest
        from querywatch.exceptions import QueryBudgetError

        def test_counts(client, querywatch):
            client.get("/books/3")
            assert querywatch.query_count == 1
            with querywatch.assert_max_queries(1):
                client.get("/books/4")
            with pytest.raises(QueryBudgetError) as info:
                with querywatch.assert_max_queries(3):
                    client.get("/authors")
            assert str(info.value).splitlines()[0] == (
                "Expected to perform 3 queries or less but 21 were done."
            )
            assert querywatch.query_count == 23
            assert len(querywatch.queries) == 23
            assert [f.kind for f in querywatch.findings] == ["n_plus_one"]
            plans = querywatch.plans()
            assert len(plans) == 3  # the book by id, the authors, their books one by one
            assert all(p.uses_index or p.flags == ("full_scan:lib_authors",)
                       for p in plans.values())

        def test_no_n_plus_one(client, querywatch):
            with querywatch.assert_no_n_plus_one():
                client.get("/authors")

        def test_no_full_scans(client, querywatch):
            with querywatch.assert_no_full_scans():
                client.get("/books/by-isbn?isbn=x")

        def test_no_full_scans_over_more_rows(client, querywatch):
            with querywatch.assert_no_full_scans(min_rows=1000):
                client.get("/books/by-isbn?isbn=x")
        """
    )
    result = library.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*QueryBudgetError: N+1: 20 x SELECT … FROM lib_books WHERE ? ="
            " lib_books.author_id in GET /authors (lazy load of Author.books).",
        ]
    )
    result.stdout.fnmatch_lines(["*QueryBudgetError: Full scan of lib_books (60 rows): *"])
    assert "test_no_full_scans_over_more_rows FAILED" not in result.stdout.str()


def test_assert_constant_queries(library: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count that grows with the data fails with the shape that grew, whatever the
    N+1 threshold; the fixed variant's count stays flat."""
    library.makepyfile(
        test_library="""
        from gate_app import seed

        def test_constant(app, client, querywatch):
            querywatch.assert_constant_queries(
                lambda n: client.get("/authors"),
                sizes=(3, 30),
                setup=lambda n: seed(app, authors=n),
            )
        """
    )
    result = library.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*QueryBudgetError: The query count grows with the data: 4 queries for 3 rows,"
            " 31 for 30.",
            f"E           3 -> 30 x SELECT … FROM lib_books WHERE ? = lib_books.author_id at"
            f" gate_app.py:{N1_LINE} (<listcomp>), lazy load of Author.books",
            "E           fix: Load Author.books eagerly: .options(selectinload(Author.books)).",
        ]
    )
    monkeypatch.setenv("GATE_FIXED", "1")
    library.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_untouched_without_budget_baseline_or_fixture(pytester: pytest.Pytester) -> None:
    """Installed but not asked for, the plugin changes nothing and prints nothing."""
    pytester.makepyfile(
        test_plain="""
        def test_plain():
            assert True
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "querywatch:" not in result.stdout.str()
    assert "- querywatch -" not in result.stdout.str()


# --- baselines ------------------------------------------------------------------------

PLAIN_TESTS = TESTS.replace(
    'pytestmark = pytest.mark.query_budget(n_plus_one="forbid", full_scans="forbid")', ""
)


def test_baseline_create_diff_update(
    library: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing baseline is created (sorted, stable); a regressed run fails against it
    naming each regression; ``--querywatch-update-baseline`` accepts the new state."""
    library.makepyfile(test_library=PLAIN_TESTS)
    monkeypatch.setenv("GATE_FIXED", "1")
    path = library.path / ".querywatch" / "baseline.json"
    args = ["-p", "no:cacheprovider", "--querywatch-baseline", ".querywatch/baseline.json"]
    created = library.runpytest(*args)
    created.assert_outcomes(passed=3)
    created.stdout.fnmatch_lines(
        ["querywatch: baseline created: 3 tests recorded in .querywatch/baseline.json."]
    )
    text = path.read_text()
    data = json.loads(text)
    assert data["querywatch_baseline"] == 1
    assert list(data["tests"]) == sorted(data["tests"])
    authors = data["tests"]["test_library.py::test_authors"]
    assert authors["queries"] == 2
    assert all(s["findings"] == [] for s in authors["shapes"].values())
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    # The same code compared with its own baseline passes.
    library.runpytest(*args).assert_outcomes(passed=3)

    # The regressions: the N+1 and the index are gone.
    monkeypatch.setenv("GATE_FIXED", "0")
    diffed = library.runpytest(*args)
    diffed.assert_outcomes(passed=1, failed=2)
    diffed.stdout.fnmatch_lines(
        [
            "The query count rose from 2 to 21 (more than the 10% tolerance over the baseline).",
            "    0 -> 20 x SELECT … FROM lib_books WHERE ? = lib_books.author_id at"
            f" gate_app.py:{N1_LINE} (<listcomp>)",
        ]
    )
    diffed.stdout.fnmatch_lines(["New N+1: 20 x SELECT … FROM lib_books WHERE *"])
    diffed.stdout.fnmatch_lines(
        [
            "New full scan of lib_books (60 rows): SELECT … FROM lib_books WHERE"
            " lib_books.isbn = ? (1 x in GET /books/by-isbn).",
            f"    at gate_app.py:{SCAN_LINE} (by_isbn)",
        ]
    )
    assert path.read_text() == text  # a comparing run never writes

    updated = library.runpytest(*args, "--querywatch-update-baseline")
    updated.assert_outcomes(passed=3)
    updated.stdout.fnmatch_lines(
        ["querywatch: baseline updated: 3 tests recorded in .querywatch/baseline.json."]
    )
    new = json.loads(path.read_text())
    assert new["tests"]["test_library.py::test_authors"]["queries"] == 21
    found = [
        s["findings"] for s in new["tests"]["test_library.py::test_authors"]["shapes"].values()
    ]
    assert sorted(found) == [[], ["n_plus_one"]]
    isbn = new["tests"]["test_library.py::test_by_isbn"]["shapes"]
    assert [s["flags"] for s in isbn.values()] == [["full_scan:lib_books"]]
    library.runpytest(*args).assert_outcomes(passed=3)


def test_new_tests_are_reported_not_failed(library: pytest.Pytester) -> None:
    """A test the baseline does not know yet passes, and the summary says how to add it."""
    library.makepyfile(test_library=PLAIN_TESTS)
    args = ["-p", "no:cacheprovider", "--querywatch-baseline", "b.json"]
    library.runpytest(*args, "-k", "test_book").assert_outcomes(passed=1, deselected=2)
    result = library.runpytest(*args)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "querywatch: 2 tests are not in the baseline yet; record them with"
            " --querywatch-update-baseline."
        ]
    )


def test_timing_is_a_ratio_reported_and_fails_only_when_asked(pytester: pytest.Pytester) -> None:
    """Database time over the baseline's tolerance is a note; with
    ``--querywatch-timing=fail`` it fails the test."""
    pytester.makepyfile(
        test_slow="""
        import sqlalchemy as sa

        def test_slow(tmp_path):
            engine = sa.create_engine(f"sqlite:///{tmp_path}/x.db")
            with engine.connect() as conn:
                conn.execute(sa.text(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
                    " WHERE x < 300000) SELECT count(*) FROM c"
                )).scalar()
            engine.dispose()
        """
    )
    shape_run = pytester.runpytest("-p", "no:cacheprovider", "--querywatch-baseline", "b.json")
    shape_run.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "b.json").read_text())
    data["tests"]["test_slow.py::test_slow"]["db_ms"] = 0.01
    (pytester.path / "b.json").write_text(json.dumps(data))
    reported = pytester.runpytest("-p", "no:cacheprovider", "--querywatch-baseline", "b.json")
    reported.assert_outcomes(passed=1)
    reported.stdout.fnmatch_lines(["  Database time x* over the baseline (0.01 ms -> * ms)."])
    failed = pytester.runpytest(
        "-p", "no:cacheprovider", "--querywatch-baseline", "b.json", "--querywatch-timing=fail"
    )
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["Database time x* over the baseline (0.01 ms -> * ms)."])


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"querywatch_baseline": 1, "tests": {',
            "ERROR: The baseline b.json is not valid JSON (line 1, column 38: Expecting"
            " property name enclosed in double quotes). Fix it, or regenerate it from the"
            " current code: pytest --querywatch-baseline b.json --querywatch-update-baseline"
            " (or querywatch check ... --update-baseline).",
        ),
        (
            '{"querywatch_baseline": 1, "tests": {"t.py::test_a": {"queries": "many"}}}',
            "ERROR: The baseline b.json, test 't.py::test_a': 'queries' must be a whole"
            " number of at least 0, got 'many'. Fix the entry, or delete it and run that test"
            " with --querywatch-update-baseline.",
        ),
        (
            '{"querywatch_baseline": 1, "tests": {"t.py::test_a": {"queries": 1, "shapes":'
            ' {"abc": {"calls": 2, "flags": "full_scan"}}}}}',
            "ERROR: The baseline b.json, test 't.py::test_a': shapes['abc'].flags must be a"
            " list of plan flags such as 'full_scan:orders', got 'full_scan'. Fix the entry,"
            " or delete it and run that test with --querywatch-update-baseline.",
        ),
        (
            '{"tests": {}}',
            "ERROR: The baseline b.json is not a querywatch baseline: it has no"
            " 'querywatch_baseline' version key. Regenerate it from the current code: pytest"
            " --querywatch-baseline b.json --querywatch-update-baseline (or querywatch check"
            " ... --update-baseline).",
        ),
        (
            '{"querywatch_baseline": 0, "tests": {}}',
            "ERROR: The baseline b.json was written by an older querywatch (format 0); this"
            " one reads format 1 and does not convert it. Regenerate it from the current"
            " code: pytest --querywatch-baseline b.json --querywatch-update-baseline (or"
            " querywatch check ... --update-baseline).",
        ),
        (
            '{"querywatch_baseline": 7, "tests": {}}',
            "ERROR: The baseline b.json was written by a newer querywatch (format 7); this"
            " one reads format 1. Upgrade querywatch (pip install -U querywatch), or"
            " regenerate the file with this version: Regenerate it from the current code:"
            " pytest --querywatch-baseline b.json --querywatch-update-baseline (or"
            " querywatch check ... --update-baseline).",
        ),
    ],
    ids=["syntax", "entry", "shape", "not-a-baseline", "older", "newer"],
)
def test_bad_baselines_are_rejected_with_the_file_entry_and_fix(
    pytester: pytest.Pytester, content: str, message: str
) -> None:
    """A baseline that cannot be used stops the run before any test, naming the file,
    the entry and what to do; it is never ignored or overwritten."""
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    (pytester.path / "b.json").write_text(content)
    result = pytester.runpytest("-p", "no:cacheprovider", "--querywatch-baseline", "b.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert (pytester.path / "b.json").read_text() == content


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            '[tool.querywatch]\nn_plus_on = "forbid"\n',
            "ERROR: {root}/pyproject.toml [tool.querywatch]: unknown key 'n_plus_on'. Did you"
            " mean 'n_plus_one'? The keys are baseline, app_packages, n_plus_one_threshold,"
            " timing, max_queries, max_db_ms, n_plus_one, full_scans, full_scan_min_rows,"
            " count_tolerance, timing_tolerance.",
        ),
        (
            "[tool.querywatch]\nmax_queries = -1\n",
            "ERROR: {root}/pyproject.toml [tool.querywatch]: 'max_queries' must be a whole"
            " number of at least 0, such as 20, got -1.",
        ),
        (
            '[tool.querywatch]\nfull_scans = "never"\n',
            "ERROR: {root}/pyproject.toml [tool.querywatch]: 'full_scans' must be 'forbid' or"
            " 'allow', got 'never'.",
        ),
    ],
    ids=["unknown-key", "negative", "bad-choice"],
)
def test_bad_project_config_names_the_key(
    pytester: pytest.Pytester, setting: str, message: str
) -> None:
    pytester.makepyprojecttoml(setting)
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message.format(root=pytester.path) in result.stderr.str()


def test_bad_marker_names_the_test_and_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.mark.query_budget(max_querys=3)
        def test_a():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "test_a.py::test_a: @pytest.mark.query_budget: unknown budget key 'max_querys'. Did"
        " you mean 'max_queries'?"
    ) in result.stderr.str()


# --- outputs --------------------------------------------------------------------------


def test_outputs_junit_markdown_step_summary_and_annotations(
    library: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JUnit XML carries the failure and the counts; the Markdown summary goes to a file
    and to ``$GITHUB_STEP_SUMMARY``; GitHub annotations point at the call sites."""
    from xml.etree import ElementTree as ET

    summary = library.path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    library.makepyfile(test_library=TESTS)
    result = library.runpytest(
        "-p", "no:cacheprovider", "--junitxml=junit.xml", "--querywatch-markdown=gate.md"
    )
    result.assert_outcomes(passed=1, failed=2)
    cases = {
        c.get("name"): c for c in ET.parse(library.path / "junit.xml").getroot().iter("testcase")
    }
    authors = cases["test_authors"]
    failure = authors.find("failure")
    assert failure is not None
    assert "N+1: 20 x SELECT … FROM lib_books" in failure.get("message", "")
    props = {p.get("name"): p.get("value") for p in authors.iter("property")}
    assert props["querywatch_queries"] == "21"
    assert cases["test_book"].find("failure") is None

    md = (library.path / "gate.md").read_text()
    assert md.startswith("## querywatch query gate\n")
    assert "| Test | Problem | Where | Fix |" in md
    assert (
        f"| `test_library.py::test_by_isbn` | Full scan of lib_books (60 rows): SELECT … FROM"
        f" lib_books WHERE lib_books.isbn = ? (1 x in GET /books/by-isbn). |"
        f" gate_app.py:{SCAN_LINE} (by_isbn) | {_scan_fix(library)} |"
    ) in md
    assert summary.read_text() == "earlier step\n" + md + "\n"

    out = result.stdout.str()
    assert (
        f"::error file=gate_app.py,line={N1_LINE},title=querywatch n_plus_one in"
        f" test_library.py%3A%3Atest_authors::N+1: 20 x SELECT"
    ) in out
    assert f"::error file=gate_app.py,line={SCAN_LINE},title=querywatch full_scan in" in out
    assert "%0A    at gate_app.py" in out  # one line per annotation, newlines escaped


def test_a_plain_sqlite_memory_database_is_explained(pytester: pytest.Pytester) -> None:
    """Tests on ``sqlite://`` (one in-memory database per engine) get plans too: the
    database is copied to a file to be explained."""
    pytester.makepyfile(gate_app=GATE_APP)
    pytester.makepyfile(
        test_memory="""
        import pytest
        from gate_app import create_app, seed

        @pytest.mark.query_budget(full_scans="forbid")
        def test_by_isbn():
            app = create_app("sqlite://")
            seed(app)
            app.test_client().get("/books/by-isbn?isbn=1")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["Full scan of lib_books (60 rows): *"])


def test_parallel_workers_write_one_whole_baseline(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under pytest-xdist, each worker's tests reach the controller, which writes the
    baseline once with all of them and prints one summary. (SQLite: each test has a
    database file of its own, where workers on one PostgreSQL database would share
    tables.)"""
    monkeypatch.delenv("GATE_DB", raising=False)
    monkeypatch.delenv("GATE_FIXED", raising=False)
    library = pytester
    library.makepyfile(gate_app=GATE_APP, conftest=CONFTEST, test_library=PLAIN_TESTS)
    args = ["-p", "no:cacheprovider", "-n", "2", "--querywatch-baseline", "b.json"]
    created = library.runpytest(*args)
    created.assert_outcomes(passed=3)
    created.stdout.fnmatch_lines(["querywatch: baseline created: 3 tests recorded in b.json."])
    data = json.loads((library.path / "b.json").read_text())
    assert sorted(data["tests"]) == [
        "test_library.py::test_authors",
        "test_library.py::test_book",
        "test_library.py::test_by_isbn",
    ]
    library.makepyfile(test_library=TESTS)  # now with a budget the app breaks
    judged = library.runpytest(*args)
    judged.assert_outcomes(passed=1, failed=2)
    judged.stdout.fnmatch_lines(
        ["querywatch: 2 of 3 failed the query gate (2 problems, 23 queries in all)."]
    )
