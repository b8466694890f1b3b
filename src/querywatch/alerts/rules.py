"""The objectives as Prometheus recording and alerting rules (``querywatch export
prometheus-rules``)."""

from __future__ import annotations

import typing as t

from .objectives import DEFAULT_POLICY
from .objectives import BurnWindow
from .objectives import Objective
from .objectives import _span

if t.TYPE_CHECKING:
    pass


# --- Prometheus rules -------------------------------------------------------------------

_HTTP = "http_server_request_duration_seconds"


def _window_expr(seconds: float) -> str:
    return _span(seconds)


def _route_matchers(endpoint: str) -> str:
    method, _, route = endpoint.partition(" ")
    return f'http_request_method="{method}", http_route="{_quote(route)}"'


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _matchers(o: Objective, *extra: str) -> str:
    parts = [*extra]
    if o.endpoint is not None:
        parts.append(_route_matchers(o.endpoint))
    return "{" + ", ".join(parts) + "}" if parts else ""


def _sum_rate(metric: str, matchers: str, span: str, o: Objective) -> str:
    """``sum by (job) (rate(...))`` of an objective's requests: its endpoint only, or
    every endpoint but those it leaves out (``unless`` on method and route)."""
    inner = f"rate({metric}{matchers}[{span}])"
    for ep in sorted(o.exclude):
        inner += (
            f" unless on (http_request_method, http_route) {_HTTP}_count{{{_route_matchers(ep)}}}"
        )
    return f"sum by (job) ({inner})"


def prometheus_rules(
    objectives: t.Sequence[Objective], policy: t.Sequence[BurnWindow] = DEFAULT_POLICY
) -> dict[str, t.Any]:
    """Recording and alerting rules (a Prometheus rule file's content) for the
    objectives, over the metrics querywatch exports: the same windows and burn rates as
    the in-process evaluation."""
    from ..metrics import HTTP_BUCKETS

    windows = sorted({w for b in policy for w in (b.long_seconds, b.short_seconds)})
    recording = []
    alerting = []
    for o in objectives:
        if o.kind == "latency":
            assert o.threshold_ms is not None
            le = o.threshold_ms / 1000
            if le not in HTTP_BUCKETS:
                shown = ", ".join(f"{b * 1000:g}" for b in HTTP_BUCKETS)
                msg = (
                    f"Objective {o.name!r}: {o.threshold_ms:g} ms is not a bucket boundary of"
                    f" {_HTTP} ({shown} ms); Prometheus counts requests under a boundary"
                    " only: use the nearest one."
                )
                raise ValueError(msg)
        for w in windows:
            span = _window_expr(w)
            total = _sum_rate(f"{_HTTP}_count", _matchers(o), span, o)
            if o.kind == "availability":
                bad = _sum_rate(
                    f"{_HTTP}_count", _matchers(o, 'http_response_status_code=~"5.."'), span, o
                )
            else:
                good = _sum_rate(f"{_HTTP}_bucket", _matchers(o, f'le="{le:g}"'), span, o)
                bad = f"({total} - {good})"
            recording.append(
                {
                    "record": f"querywatch:slo_errors:ratio_rate{span}",
                    "expr": f"{bad} / {total}",
                    "labels": {"slo": o.name},
                }
            )
        for b in policy:
            long_s, short_s = _window_expr(b.long_seconds), _window_expr(b.short_seconds)
            factor = f"({b.burn_rate:g} * {o.budget:.6g})"
            sel = f'{{slo="{_quote(o.name)}"}}'
            alerting.append(
                {
                    "alert": "QuerywatchErrorBudgetBurn",
                    "expr": (
                        f"querywatch:slo_errors:ratio_rate{long_s}{sel} > {factor}"
                        f" and querywatch:slo_errors:ratio_rate{short_s}{sel} > {factor}"
                    ),
                    "labels": {"severity": b.severity, "slo": o.name, "window": b.name},
                    "annotations": {
                        "summary": (
                            f"{o.name}: the error budget burns {b.burn_rate:g}x faster than"
                            f" sustainable over {long_s} and {short_s}"
                        ),
                        "description": (
                            "Run `querywatch report --since "
                            f"{long_s}` on the service: it names the query shape and endpoint"
                            " that take the time, and whether traffic rose."
                        ),
                    },
                }
            )
    return {
        "groups": [
            {"name": "querywatch-slo-recording", "rules": recording},
            {"name": "querywatch-slo-alerts", "rules": alerting},
        ]
    }
