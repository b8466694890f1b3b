"""Burn-rate arithmetic against the Google SRE workbook's recommended alerting
parameters (chapter "Alerting on SLOs")."""

from __future__ import annotations

import typing as t

import pytest

from querywatch.alerts import DEFAULT_POLICY
from querywatch.alerts import Objective
from querywatch.alerts import WindowCounts
from querywatch.alerts import burn_rate
from querywatch.alerts import evaluate_objective

SLO = Objective("availability", 0.999)


def _steady(ratio: float, per_second: int = 100):  # type: ignore[no-untyped-def]
    """Counts of a service failing ``ratio`` of its requests in every window."""

    def counts(seconds: float) -> WindowCounts:
        total = int(seconds * per_second)
        return WindowCounts(total, round(total * ratio))

    return counts


@pytest.mark.parametrize(
    ("error_ratio", "fired"),
    [
        # 99.9%: the budget is 0.1% of requests; 14.4x is 1.44%, 6x is 0.6%, 1x is 0.1%.
        (0.02, [("page", "1h/5m"), ("page", "6h/30m"), ("ticket", "3d/6h")]),
        (0.0144, [("page", "1h/5m"), ("page", "6h/30m"), ("ticket", "3d/6h")]),
        (0.014, [("page", "6h/30m"), ("ticket", "3d/6h")]),
        (0.006, [("page", "6h/30m"), ("ticket", "3d/6h")]),
        (0.0059, [("ticket", "3d/6h")]),
        (0.001, [("ticket", "3d/6h")]),
        (0.0009, []),
        (0.0, []),
    ],
)
def test_which_window_pairs_fire_at_which_error_ratio(
    error_ratio: float, fired: list[tuple[str, str]]
) -> None:
    """The workbook's table for a 99.9% objective: a steady error ratio fires exactly
    the conditions whose burn rate it reaches."""
    firings = evaluate_objective(SLO, _steady(error_ratio))
    assert [(f.severity, f.window) for f in firings] == fired


def test_the_short_window_stops_the_alert_once_errors_stop() -> None:
    """An hour at 5% errors, then five quiet minutes: the long window still burns, the
    short one no longer does, so nothing fires."""

    def counts(seconds: float) -> WindowCounts:
        total = int(seconds * 100)
        quiet = min(seconds, 300) * 100
        return WindowCounts(total, round((total - quiet) * 0.05))

    assert burn_rate(counts(3600).error_ratio, SLO) > 14.4
    assert evaluate_objective(SLO, counts, DEFAULT_POLICY[:1]) == []


def test_one_failure_on_a_quiet_service_pages_nobody_with_min_bad_events() -> None:
    """A quiet service: 150 requests in six hours, one failed (0.67%, a burn of 6.7x),
    and it was one of the last half hour's 30 (33x): the 6h/30m page fires. With
    ``min_bad_events=10`` nothing fires until ten requests failed in the short window."""

    def quiet(seconds: float) -> WindowCounts:
        return WindowCounts(150, 1) if seconds > 1800 else WindowCounts(30, 1)

    assert evaluate_objective(SLO, quiet, DEFAULT_POLICY[1:2])  # 6h/30m: pages
    assert evaluate_objective(SLO, quiet, min_bad_events=10) == []

    def outage(seconds: float) -> WindowCounts:
        return WindowCounts(int(seconds), int(seconds * 0.37))

    fired = evaluate_objective(SLO, outage, min_bad_events=10)
    assert [(f.severity, f.window) for f in fired] == [
        ("page", "1h/5m"), ("page", "6h/30m"), ("ticket", "3d/6h")
    ]  # fmt: skip


def test_detection_time_at_full_outage_matches_the_workbook() -> None:
    """With every request failing from t=0 on a service that was healthy, the 1h/5m
    condition fires once 1.44% of the hour has failed: after 0.0144 h, 52 seconds (the
    workbook's "time to detect" for 100% errors)."""
    per_second = 50

    def counts_at(now: int):  # type: ignore[no-untyped-def]
        def counts(seconds: float) -> WindowCounts:
            total = int(seconds) * per_second
            bad = min(int(seconds), now) * per_second
            return WindowCounts(total, bad)

        return counts

    first = next(
        now for now in range(0, 600) if evaluate_objective(SLO, counts_at(now), DEFAULT_POLICY[:1])
    )
    assert first == 52


def test_windows_scale_for_tests_and_the_demo() -> None:
    """At a scale of 1/3600 an hour lasts a second, and the same ratios fire."""
    asked: list[float] = []

    def counts(seconds: float) -> WindowCounts:
        asked.append(seconds)
        return WindowCounts(1000, 20)

    firings = evaluate_objective(SLO, counts, scale=1 / 3600)
    assert [f.window for f in firings] == ["1h/5m", "6h/30m", "3d/6h"]
    assert asked[:2] == [pytest.approx(1.0), pytest.approx(300 / 3600)]


def test_latency_objectives_need_a_threshold() -> None:
    with pytest.raises(ValueError, match="needs 'threshold_ms'") as info:
        Objective("checkout latency", 0.99, kind="latency")
    assert str(info.value) == (
        "Objective 'checkout latency': a latency objective needs 'threshold_ms', such as"
        " 300 for '99% under 300 ms', got None."
    )
    with pytest.raises(ValueError, match="between 0 and 1"):
        Objective("availability", 99.9)


# --- the same alerts as Prometheus rules ---------------------------------------------


def test_exported_rules_pass_promtool_check_and_test(tmp_path: t.Any) -> None:
    """``querywatch export prometheus-rules`` writes rules that ``promtool check rules``
    accepts, and ``promtool test rules`` on synthetic series fires them as the
    workbook says: 2% errors fire the three availability alerts; five minutes after the
    errors stop, the 1h/5m page is gone while the slower ones still fire; fast requests
    never fire the latency objective, and half of them turning slow fires all three of
    its alerts (and none of availability's)."""
    import shutil
    import subprocess

    import yaml
    from click.testing import CliRunner

    from querywatch.cli import cli

    promtool = shutil.which("promtool")
    if promtool is None:
        from conftest import _unavailable

        _unavailable("promtool", "not installed; Debian package 'prometheus'")
    rules = tmp_path / "rules.yml"
    result = CliRunner().invoke(
        cli,
        ["export", "prometheus-rules", "--objective", "availability:99.9",
         "--objective", "latency:99:250ms", "-o", str(rules)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 16 rules found" in checked.stdout

    annotations = {
        (r["labels"]["slo"], r["labels"]["window"]): r["annotations"]
        for r in yaml.safe_load(rules.read_text())["groups"][1]["rules"]
    }

    def expected(*windows: str, slo: str = "availability") -> list[dict[str, t.Any]]:
        severity = {"1h/5m": "page", "6h/30m": "page", "3d/6h": "ticket"}
        return [
            {
                "exp_labels": {"job": "shop", "slo": slo, "window": w,
                               "severity": severity[w]},
                "exp_annotations": annotations[(slo, w)],
            }
            for w in windows
        ]  # fmt: skip

    count = "http_server_request_duration_seconds_count"
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'{count}{{job="shop",http_response_status_code="200"}}',
                     "values": "0+98x180"},
                    {"series": f'{count}{{job="shop",http_response_status_code="500"}}',
                     "values": "0+2x90 180+0x90"},
                    {"series": 'http_server_request_duration_seconds_bucket{job="shop",le="0.25"}',
                     "values": "0+100x90 9000+98x90"},  # every request fast
                ],
                "alert_rule_test": [
                    {"eval_time": "70m", "alertname": "QuerywatchErrorBudgetBurn",
                     "exp_alerts": expected("1h/5m", "6h/30m", "3d/6h")},
                    {"eval_time": "100m", "alertname": "QuerywatchErrorBudgetBurn",
                     "exp_alerts": expected("6h/30m", "3d/6h")},
                ],
            },
            {
                # No request fails; after an hour, half of them take over 250 ms.
                "interval": "1m",
                "input_series": [
                    {"series": f'{count}{{job="shop",http_response_status_code="200"}}',
                     "values": "0+100x180"},
                    {"series": 'http_server_request_duration_seconds_bucket{job="shop",le="0.25"}',
                     "values": "0+100x60 6000+50x120"},
                ],
                "alert_rule_test": [
                    {"eval_time": "50m", "alertname": "QuerywatchErrorBudgetBurn",
                     "exp_alerts": []},
                    {"eval_time": "90m", "alertname": "QuerywatchErrorBudgetBurn",
                     "exp_alerts": expected("1h/5m", "6h/30m", "3d/6h", slo="latency-250ms")},
                ],
            },
        ],
    }  # fmt: skip
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    run = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_a_latency_threshold_must_be_a_bucket_boundary() -> None:
    from click.testing import CliRunner

    from querywatch.cli import cli

    result = CliRunner().invoke(
        cli, ["export", "prometheus-rules", "--objective", "latency:99:300ms"]
    )
    assert result.exit_code == 2
    assert (
        "Objective 'latency-300ms': 300 ms is not a bucket boundary of"
        " http_server_request_duration_seconds (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000,"
        " 2500, 5000, 7500, 10000 ms); Prometheus counts requests under a boundary only: use"
        " the nearest one."
    ) in " ".join(result.output.split())
    bad = CliRunner().invoke(cli, ["export", "prometheus-rules", "--objective", "uptime"])
    assert bad.exit_code == 2
    assert (
        "An objective must be 'availability:<percent>' or 'latency:<percent>:<threshold>',"
        " such as 'availability:99.9' or 'latency:99:300ms', got 'uptime'."
    ) in " ".join(bad.output.split())
