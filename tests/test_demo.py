"""``querywatch demo``: the seed outage replayed end to end, on SQLite and PostgreSQL.
Ctrl-C: a run interrupted mid-replay stops its server, its load process and its threads,
leaves the database intact, and the next run, the README's command as it is, closes the
loop on a busy machine. On PostgreSQL at high speed (an hour in 10 s) on the README's
shop (600,000 orders); the other replays on a small one (200,000)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
import typing as t
import urllib.request

import pytest
from click.testing import CliRunner

from conftest import busy_machine
from querywatch.cli import cli
from querywatch.demo import shop

FAST = ["--scale", "1", "--speed", "360"]


def _replay(
    workdir: pathlib.Path, *extra: str, size_and_speed: t.Sequence[str] = FAST
) -> tuple[int, dict[str, t.Any], str]:
    """``querywatch demo --json``; ``size_and_speed=()`` runs the README's defaults."""
    result = CliRunner().invoke(
        cli,
        ["demo", "--workdir", str(workdir), "--json", *size_and_speed, *extra],
        catch_exceptions=False,
    )
    try:
        summary = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"no JSON summary (exit {result.exit_code}):\n{result.output}")
    return result.exit_code, summary, result.stderr


def _assert_the_loop_closed(
    summary: dict[str, t.Any], progress: str, workdir: pathlib.Path
) -> None:
    assert summary["loop_closed"] is True, (summary["checks"], progress)
    times = summary["times_s"]
    # The page fires after 14:00 and before the fix, and the order lookup's scan is named.
    assert 0 < times["onset_to_alert"] < times["onset_to_fix"]
    assert times["onset_to_fix"] <= times["onset_to_recovery"]
    # querywatch resolves the alert, then the incident, after the fix (the load
    # process's own view of the recovery is a separate measurement: on a busy machine
    # it may come a moment after querywatch's). With the guard enforcing, the page it
    # engaged on stays firing while the limit holds: on a busy machine the limit had
    # brought the objective back and the page resolved before the responder's fix.
    assert times["onset_to_fix"] < times["onset_to_alert_resolved"]
    assert times["onset_to_alert_resolved"] <= times["onset_to_incident_resolved"]
    culprit = summary["culprit"]
    assert culprit["endpoint"] == "GET /api/orders/lookup"
    assert "FROM orders WHERE orders.customer_email = ?" in culprit["shape"]
    assert culprit["call_site"]["file"].endswith("shop.py")
    # Traffic was flat: the mix changed, not the rate.
    assert 0.85 < summary["traffic"]["ratio"] < 1.15
    # The first notification (level 1, the backend team's webhook) says so and names
    # the culprit; devops heard it after the scaled delay, then the acknowledgement.
    incident = summary["incident"]
    first = incident["first_notification"]["incident"]["hypothesis"]
    assert first.startswith("Traffic is flat (x")
    assert "one query shape in GET /api/orders/lookup takes" in first
    assert "FROM orders WHERE orders.customer_email = ?" in first
    heard = [(n["team"], n["action"]) for n in incident["notifications"]]
    assert heard[0] == ("backend", "trigger")
    assert heard.index(("devops", "escalate")) < heard.index(("devops", "acknowledge"))
    assert ("backend", "resolve") in heard
    assert ("devops", "resolve") in heard
    # Not before the policy's 15 minutes (of the replay's clock).
    assert times["alert_to_level2"] >= 15 * 60 / summary["speed"] - 0.5
    # The index was verified by the planner, the gate failed before it and passed after.
    index = summary["index"]
    assert index["ddl"].startswith("CREATE INDEX ")
    assert index["ddl"].endswith(" ix_orders_customer_email ON orders (customer_email);")
    # The planner's estimate, from statistics it sampled (x55 to x130 seen on PostgreSQL
    # with ANALYZE's random sample at scale 1, x18,000 and up on SQLite).
    assert index["estimated_gain"] > 20
    assert summary["gate"]["before"]["passed"] is False
    assert "Full scan of orders" in summary["gate"]["before"]["output"]
    assert summary["gate"]["after"]["passed"] is True
    # Measured: the lookups' p95 fell by a wide ratio, as their users saw it and as
    # querywatch recorded their query (whatever the machine's speed: no figure in
    # milliseconds; the query's, not the endpoint's: the guard's 503s answer at once, and
    # beside burners they pulled the endpoint's p95 during the outage down to x2.9).
    # Quiet: x8 to x16 as users saw it, x20 to x40 as querywatch did. Beside two CPU
    # burners per core (the traffic lightened to 12 requests a second): x7 to x16 as
    # users saw it, x16 to x20 as querywatch did.
    assert culprit["p95_ms_during"] > 2 * culprit["p95_ms_after"]
    assert culprit["server_p95_ms_during"] > 3 * culprit["server_p95_ms_after"]
    assert index["measured_gain"] > 2
    # The postmortem names the query, the endpoint and the index.
    text = pathlib.Path(summary["postmortem"]).read_text()
    assert summary["postmortem"] == str(workdir / "postmortem.md")
    root = text.split("## Root Cause and Resolution", 1)[1].split("## Corrective", 1)[0]
    assert "one query shape in `GET /api/orders/lookup` took" in root
    assert "FROM orders WHERE orders.customer_email = ?" in root
    assert index["ddl"] in root
    assert "not a traffic surge" in root
    guard = summary["guard"]
    section = text.split("## Root Cause", 1)[0]
    if guard["mode"] == "enforce":
        # The guard (the default) limited the lookup when the page fired, and lifted
        # the limit once the fix had made the lookup fast; the postmortem tells it.
        assert guard["events"][0] == guard["engaged"], guard["events"]
        assert guard["engaged"].startswith("guard engaged on GET /api/orders/lookup: at most ")
        assert guard["page_to_engaged_s"] >= 0
        assert guard["lifted"].startswith("guard lifted on GET /api/orders/lookup: ")
        assert guard["fix_to_lifted_s"] > 0
        section = section.split("## Containment", 1)[1]
        assert "- **Engaged:** " in section
        assert "- **Lifted:** " in section
    else:
        # No guard: nothing contained, and the postmortem says how to have one.
        assert guard["mode"] == "off"
        assert (guard["events"], guard["engaged"], guard["culprit"]["shed"]) == ([], None, 0)
        assert "## Containment" not in text
        assert 'QUERYWATCH_GUARD = {"containment": "enforce"}' in text
    # Every request of the outage is counted on one side of the lookup or the other,
    # and every user who got an error is counted among the users.
    out, lookups, users = guard["outside_culprit"], guard["culprit"], guard["users"]
    assert out["requests"] > 0
    assert lookups["requests"] > 0
    assert lookups["shed"] <= lookups["requests"] - lookups["succeeded"]
    assert 0 < users["used_culprit"] <= users["seen"]
    assert users["affected"] <= users["seen"]
    # The one sentence: flat traffic, shape, endpoint, call site, index, both gains.
    sentence = summary["root_cause"]
    assert sentence.startswith("Traffic was flat (x")
    assert "shop.py:" in sentence
    assert "estimated x" in sentence
    assert "measured x" in sentence


def _session_processes(sid: int) -> list[str]:
    """The command lines of the processes still in session ``sid``."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            left.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return left


# The replays run one after the other on one worker: one replay measures the machine
# before it starts, and the other's CPU burners must not start after that.
@pytest.mark.xdist_group("replays")
def test_ctrl_c_stops_cleanly_and_the_next_replay_closes_the_loop_on_a_busy_machine(
    tmp_path: t.Any,
) -> None:
    """A newcomer's first run (no work folder, no database) sets itself up; Ctrl-C in
    the calm stops it: exit 130, no process left, the database intact. The second run,
    from the same folder, with two CPU-burning processes per core beside it for the
    whole replay (a busy laptop), replays the whole afternoon and closes the loop."""
    workdir = tmp_path / "first-time" / "demo"
    # The README's shop (600,000 orders, the default size). An hour in a minute: the
    # calm lasts a minute, time enough to check the dashboard and press Ctrl-C in it
    # however busy the machine.
    proc = subprocess.Popen(
        [sys.executable, "-m", "querywatch", "demo", "--workdir", str(workdir), "--speed", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
        # Ctrl-C as in a terminal: a test run in the background of a script inherits
        # SIGINT ignored, which a child keeps across exec (and Python then installs no
        # KeyboardInterrupt for it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ, "COLUMNS": "160"},
    )
    seen = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 600  # a watchdog for a hung replay, not a measurement

    def read_until(text: str) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if text in line:
                return
            assert time.monotonic() < deadline, "".join(seen)
        pytest.fail(f"the replay ended before {text!r}:\n" + "".join(seen))

    # The dashboard's address is printed at the start; it answers during the calm.
    read_until("Dashboard: ")
    address = seen[-1].split("Dashboard: ", 1)[1].strip()
    read_until("Calm traffic")
    time.sleep(1.5)  # the calm's first requests reach the store
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(address, timeout=60) as page:
        assert page.status == 200
        assert "GET /api/products" in page.read().decode()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does, in the calm
    rest, _ = proc.communicate(timeout=300)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output
    assert "Interrupted: stopping the load, the server and querywatch." in output
    assert "Traceback" not in output
    assert _session_processes(proc.pid) == []
    db = workdir / "instance" / "shop.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    from querywatch._compat import create_engine

    engine = create_engine(f"sqlite:///{db}")
    assert shop.seeded_version(engine) == (shop.SEED_VERSION, 3.0)
    engine.dispose()

    # The README's command as it is (its size and speed: an hour in 30 s). At 360x a
    # page's five-minute window is one second, and a busy machine's load process can
    # leave a second without a request; on 200,000 orders the lookup's scan is so close
    # to the objectives, once they are scaled to a busy machine, that it may not page.
    with busy_machine() as burners:
        assert burners == 2 * (os.cpu_count() or 1)
        code, summary, progress = _replay(workdir, size_and_speed=())
    assert code == 0, progress
    assert "Reusing the seeded shop database" in progress
    _assert_the_loop_closed(summary, progress, workdir)
    assert summary["database"] == "sqlite"
    # The index is dropped again by the next run, which starts from the outage.
    engine = create_engine(f"sqlite:///{db}")
    assert shop.drop_email_indexes(engine) == ["ix_orders_customer_email"]
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.xdist_group("replays")
def test_the_replay_on_postgresql_with_hypopg(postgres_url: str, tmp_path: t.Any) -> None:
    """The same afternoon on PostgreSQL, without the guard: the index verified with
    HypoPG. On the README's
    600,000 orders: the server's scan of 200,000 takes about as long as this process's
    own share of a request on a busy machine, and the fix's measured gain would be the
    machine's load as much as the index."""
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    workdir = tmp_path / "demo"
    # Without the guard: the outage as it was, whose lookups the fix makes many times
    # faster (with the guard the lookups run one at a time during the outage, and the
    # ratio measures the guard as much as the fix).
    code, summary, progress = _replay(
        workdir, "--database-url", url, "--guard", "off", size_and_speed=["--speed", "360"]
    )
    assert code == 0, progress
    _assert_the_loop_closed(summary, progress, workdir)
    assert summary["database"] == "postgresql"
    assert summary["index"]["verified_by"] == "hypopg"


def test_a_lighter_traffic_needs_fewer_bad_requests_to_page(tmp_path: t.Any) -> None:
    """At 40 requests a second a page needs ten bad requests in its short window; on a
    lighter traffic as many fewer, never under five (beside CPU burners the calm's first
    seconds hold a few slow requests, and three paged once)."""
    from rich.console import Console

    from querywatch.demo.options import DemoOptions
    from querywatch.demo.replay import Replay

    def needed(rate: float | None) -> int:
        options = DemoOptions(scale=1, speed=120, rate=rate, workdir=str(tmp_path), quiet=True)
        return Replay(options, console=Console()).min_bad_events

    assert needed(None) == 10
    assert needed(28) == 7
    assert needed(12) == 5
    assert needed(2) == 5


def test_bad_options_are_refused_with_the_reason(tmp_path: t.Any) -> None:
    result = CliRunner().invoke(cli, ["demo", "--fix", "rewrite", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "'rewrite' is not one of 'index', 'cache', 'none'" in result.output
    result = CliRunner().invoke(cli, ["demo", "--guard", "on", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "'on' is not one of 'enforce', 'shadow', 'off'" in result.output
    result = CliRunner().invoke(cli, ["demo", "--speed", "0", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--speed" in result.output
    # A database whose Python driver is not installed: said before anything is created,
    # with what to install (MySQLdb is not one of querywatch's drivers).
    url = "mysql+mysqldb://root@127.0.0.1/test"
    result = CliRunner().invoke(cli, ["demo", "--database-url", url, "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--database-url" in result.output
    assert "needs the Python driver 'MySQLdb', which is not installed here" in result.output
    assert "mysql+pymysql://" in result.output
    assert "pip install 'querywatch[mysql]'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_shops_statement_timeout_fails_the_slow_request_only(tmp_path: t.Any) -> None:
    """``statement_timeout_ms`` on SQLite: the lookup's scan of 60,000 orders is
    interrupted (500, the error recorded by querywatch on its shape), a product by id
    answers; without the timeout the lookup answers."""
    from querywatch._compat import create_engine

    url = f"sqlite:///{tmp_path}/shop.db"
    engine = create_engine(url)
    shop.seed(engine, 0.3)
    engine.dispose()
    app = shop.create_app(url, instance_path=str(tmp_path / "instance"), statement_timeout_ms=1)
    client = app.test_client()
    assert client.get("/api/products/3").status_code == 200
    assert client.get("/api/orders/lookup?email=customer7@example.com").status_code == 500
    state = app.extensions["querywatch"]
    state.flusher.flush()
    win = state.store.window(0, time.time() + 60)
    assert win.endpoints["GET /api/orders/lookup"].statuses == {"5xx": 1}
    assert any(
        a.errors for (ep, _), a in win.endpoint_shapes.items() if ep == "GET /api/orders/lookup"
    )
    relaxed = shop.create_app(url, querywatch=False)
    assert (
        relaxed.test_client().get("/api/orders/lookup?email=customer7@example.com").status_code
        == 200
    )


def test_the_summary_sets_the_guard_beside_the_last_run_without_it(tmp_path: t.Any) -> None:
    """Each run keeps its guard figures in the work folder; the next run of the other
    mode on the same database prints them beside its own."""
    import types

    from rich.console import Console

    from querywatch.demo import containment

    def run(mode: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            workdir=str(tmp_path), options=types.SimpleNamespace(guard=mode)
        )

    def figures(mode: str, outside: float, affected: int) -> dict[str, t.Any]:
        return {
            "mode": mode,
            "outside_culprit": {
                "success_ratio": outside,
                "latency_ok_ratio": outside,
                "objectives": {"latency": {"met_ratio": outside}},
            },
            "culprit": {"endpoint": "GET /api/orders/lookup", "success_ratio": 0.5, "shed": 7},
            "users": {
                "affected": affected,
                "seen": 300,
                "affected_ratio": affected / 300,
                "used_culprit_ratio": 0.2,
            },
            "engaged": "guard engaged on GET /api/orders/lookup: at most 1 at once (...)."
            if mode != "off"
            else None,
            "page_to_engaged_s": 0.02,
            "lifted": "guard lifted on GET /api/orders/lookup: ...",
            "fix_to_lifted_s": 2.5,
            "events": [],
        }

    assert containment.the_other_run(run("enforce"), "sqlite") is None
    off = figures("off", 0.95, 60)
    containment.remember(run("off"), off, "sqlite")
    assert containment.the_other_run(run("enforce"), "sqlite") == {**off, "database": "sqlite"}
    assert containment.the_other_run(run("enforce"), "postgresql") is None
    console = Console(record=True, width=200)
    containment.print_figures(figures("enforce", 0.999, 12), off, console)
    text = " ".join(console.export_text().split())
    assert (
        "guard engaged on GET /api/orders/lookup: at most 1 at once (...). 0.02 s after the page;"
        in text
    )
    assert "lifted 2.5 s after the fix" in text
    assert "outside GET /api/orders/lookup 99.9% succeeded; 99.9% met the latency objective" in text
    assert "4.0% got an error (12 of 300); 20.0% used the lookup" in text
    assert "last --guard off run" in text
    assert "95.0% succeeded; 95.0% met the latency objective" in text
    assert "20.0% got an error (60 of 300)" in text
    # A file that is not the figures is no run to compare with.
    (tmp_path / "guard-off.json").write_text("{not json")
    assert containment.the_other_run(run("enforce"), "sqlite") is None


@pytest.mark.xdist_group("replays")
def test_a_page_in_the_calm_starts_the_replay_over_on_a_slower_footing_then_says_why(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compressed, a second's stall of a busy machine is minutes of a slow shop, and a
    page in the calm stops the replay: it starts over, at most twice, on the seeded
    database (its store, server and load anew), each time taking the machine to be
    slower than the run that paged did (longer objectives, lighter traffic) however
    quiet the machine measures then; a third page in the calm stops it with why. The
    stall is a real firing page written to each run's store as the calm begins, and the
    machine measures quiet for every run."""
    from querywatch.demo import replay as replay_module
    from querywatch.demo.options import CALM_RESTART_SLOWDOWN
    from querywatch.demo.options import QUIET_SPIN_MS
    from querywatch.demo.options import RATE
    from querywatch.store import AlertChange

    Replay = replay_module.Replay
    original = Replay._calm_page
    runs: list[t.Any] = []

    def stalled(self: t.Any) -> t.Any:
        if not any(r is self for r in runs):
            runs.append(self)
            summary = (
                "SLO latency (99% of requests under 20 ms): the error budget burns 48.0x"
                " faster than sustainable over 6h/30m (page)"
            )
            self.state.store.set_alert_states(
                [AlertChange("slo:latency:page", "slo", "page", "firing", time.time(), summary, {})]
            )
        return original(self)

    monkeypatch.setattr(Replay, "_calm_page", stalled)
    # A whole core at a quiet machine's pace, whenever the replay measures it.
    monkeypatch.setattr(replay_module, "machine_pace", lambda *_: (1.0, QUIET_SPIN_MS))
    result = CliRunner().invoke(
        cli, ["demo", "--workdir", str(tmp_path), "--scale", "0.05", "--speed", "360"]
    )
    assert result.exit_code == 1, result.output
    assert len(runs) == 3
    assert all(r.closed for r in runs)
    assert len({id(r.server) for r in runs}) == 3
    # Quiet as measured, the first run keeps the objectives; each restart is slower.
    assert [r.slowdown for r in runs] == pytest.approx(
        [1.0, CALM_RESTART_SLOWDOWN, CALM_RESTART_SLOWDOWN**2]
    )
    assert runs[0].rate == RATE > runs[1].rate > runs[2].rate
    assert runs[0].threshold_ms < runs[1].threshold_ms < runs[2].threshold_ms
    out = " ".join(result.output.split())
    assert out.count("Starting the replay over.") == 2
    assert out.count("The run before paged in the calm: this one takes the machine") == 2
    assert "The calm paged: A page fired before 14:00 (SLO latency" in out
    assert out.count("Reusing the seeded shop database") == 2
    assert "The replay stopped: A page fired before 14:00 (SLO latency" in out
