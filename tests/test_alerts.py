"""Burn-rate arithmetic against the Google SRE workbook's recommended alerting
parameters (chapter "Alerting on SLOs")."""

from __future__ import annotations

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
