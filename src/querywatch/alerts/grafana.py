"""An importable Grafana dashboard over the metrics querywatch exports.

The first row answers the seed's question before any other: is traffic up (request rate
now against an hour and a day before), are requests failing, how slow, how much of the
time is the database, is the pool running out. The rows below name the query shapes that
take the time, the endpoints, the pool and the SLO burn rates.

The dashboard uses a ``datasource`` variable (any Prometheus), and ``job`` and ``route``
variables read from the series, so it imports into any Grafana 9 or later as is.
"""

from __future__ import annotations

import typing as t

from .objectives import DEFAULT_POLICY
from .objectives import Objective
from .objectives import _span
from .rules import _quote

__all__ = ["SCHEMA_VERSION", "dashboard"]

#: The dashboard JSON model's version the panels are written for (Grafana 10/11).
SCHEMA_VERSION = 39

_HTTP = "http_server_request_duration_seconds"
_DB = "db_client_operation_duration_seconds"
_DS = {"type": "prometheus", "uid": "${datasource}"}
_SEL = 'job=~"$job"'
_ROUTE = f'{_SEL}, http_route=~"$route"'
_5XX = ', http_response_status_code=~"5.."'
_HIT = ', result="hit"'


def _rate(metric: str, sel: str = _SEL, offset: str = "") -> str:
    """``rate(metric{sel}[$__rate_interval])``, optionally ``offset``."""
    off = f" offset {offset}" if offset else ""
    return f"rate({metric}{{{sel}}}[$__rate_interval]{off})"


def _target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {
        "refId": ref,
        "datasource": _DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }
    return out


class _Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.panels: list[dict[str, t.Any]] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append(
            {
                "id": self.next_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.next_id += 1
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def add(self, panel: dict[str, t.Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel["id"] = self.next_id
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel.setdefault("datasource", _DS)
        self.panels.append(panel)
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)


def _stat(
    title: str, expr: str, unit: str, description: str, thresholds: list[t.Any] | None = None
) -> dict[str, t.Any]:
    steps = [{"color": "green", "value": None}]
    for value, color in thresholds or []:
        steps.append({"color": color, "value": value})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": [_target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def _series(
    title: str, targets: list[dict[str, t.Any]], unit: str, description: str, stack: bool = False
) -> dict[str, t.Any]:
    custom: dict[str, t.Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    if stack:
        custom.update({"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 60})
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def _refs(exprs: list[tuple[str, str]]) -> list[dict[str, t.Any]]:
    return [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(exprs)]


def _query_variable(name: str, label: str, definition: str) -> dict[str, t.Any]:
    """A multi-value template variable read from the series (``label_values``)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": _DS,
        "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": definition,
        "current": {},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "hide": 0,
        "refresh": 2,
        "sort": 1,
        "options": [],
        "regex": "",
    }


def dashboard(
    objectives: t.Sequence[Objective] = (), *, title: str = "querywatch", uid: str = "querywatch"
) -> dict[str, t.Any]:
    """The dashboard JSON model (``json.dumps`` it and import it in Grafana)."""
    req_rate = f"sum({_rate(f'{_HTTP}_count', _ROUTE)})"
    lay = _Layout()
    lay.row("Is it traffic or the database?")
    lay.add(
        _stat(
            "Requests / s",
            req_rate,
            "reqps",
            "Requests per second over the selected routes.",
        ),
        4,
        4,
    )
    lay.add(
        _stat(
            "Traffic vs an hour ago",
            f"{req_rate} / sum({_rate(f'{_HTTP}_count', _ROUTE, '1h')})",
            "percentunit",
            "Request rate now divided by the rate an hour earlier: near 100% means the"
            " traffic is flat, so a slowdown is not a surge.",
            [[1.5, "orange"], [3, "red"]],
        ),
        4,
        4,
    )
    lay.add(
        _stat(
            "Error ratio",
            f"sum({_rate(_HTTP + '_count', _ROUTE + _5XX)}) / {req_rate}",
            "percentunit",
            "Share of requests answered with a 5xx status.",
            [[0.001, "orange"], [0.01, "red"]],
        ),
        4,
        4,
    )
    lay.add(
        _stat(
            "p95 latency",
            f"histogram_quantile(0.95, sum by (le) ({_rate(f'{_HTTP}_bucket', _ROUTE)}))",
            "s",
            "95th percentile of request duration.",
            [[0.3, "orange"], [1, "red"]],
        ),
        4,
        4,
    )
    lay.add(
        _stat(
            "Time in the database",
            f"sum({_rate(f'{_DB}_sum')}) / sum({_rate(f'{_HTTP}_sum')})",
            "percentunit",
            "Seconds spent in SQL statements per second of request time. Near 100%: the"
            " requests wait on the database.",
            [[0.5, "orange"], [0.8, "red"]],
        ),
        4,
        4,
    )
    lay.add(
        _stat(
            "Pool in use",
            "max(sum by (instance, pool_name)"
            f' (db_client_connections_usage{{{_SEL}, state="used"}})'
            f" / sum by (instance, pool_name) (db_client_connections_max{{{_SEL}}}))",
            "percentunit",
            "The fullest connection pool: connections checked out over the most it may open."
            " At 100% requests queue for a connection, then time out.",
            [[0.8, "orange"], [0.95, "red"]],
        ),
        4,
        4,
    )
    lay.add(
        _series(
            "Request latency",
            _refs(
                [
                    (
                        f"histogram_quantile({q}, sum by (le)"
                        f" ({_rate(_HTTP + '_bucket', _ROUTE)}))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ]
            ),
            "s",
            "p50, p95 and p99 of request duration.",
        ),
        12,
        8,
    )
    lay.add(
        _series(
            "Traffic: now, an hour ago, a day ago",
            _refs(
                [
                    (req_rate, "now"),
                    (f"sum({_rate(f'{_HTTP}_count', _ROUTE, '1h')})", "1 h ago"),
                    (f"sum({_rate(f'{_HTTP}_count', _ROUTE, '1d')})", "1 day ago"),
                ]
            ),
            "reqps",
            "The request rate beside the same rate an hour and a day earlier.",
        ),
        12,
        8,
    )
    lay.row("Where the time goes")
    lay.add(
        _series(
            "Database time by query shape (top 10)",
            _refs(
                [
                    (
                        f"topk(10, sum by (db_query_shape) ({_rate(f'{_DB}_sum')}))",
                        "{{db_query_shape}}",
                    )
                ]
            ),
            "s",
            "Seconds per second spent in each query shape (the fingerprint id of `querywatch"
            " report`; `other` past the cap). The widest band is the culprit.",
            stack=True,
        ),
        12,
        9,
    )
    lay.add(
        _series(
            "Statement p95 by query shape (top 10)",
            _refs(
                [
                    (
                        "topk(10, histogram_quantile(0.95, sum by (db_query_shape, le)"
                        f" ({_rate(f'{_DB}_bucket')})))",
                        "{{db_query_shape}}",
                    )
                ]
            ),
            "s",
            "95th percentile of each shape's statement duration.",
        ),
        12,
        9,
    )
    lay.add(
        _series(
            "Request time by route (top 10)",
            _refs(
                [
                    (
                        "topk(10, sum by (http_request_method, http_route)"
                        f" ({_rate(_HTTP + '_sum', _ROUTE)}))",
                        "{{http_request_method}} {{http_route}}",
                    )
                ]
            ),
            "s",
            "Seconds per second of request time, per url rule.",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        _series(
            "Queries per request, p95 by route",
            _refs(
                [
                    (
                        "histogram_quantile(0.95, sum by (http_route, le)"
                        f" ({_rate('querywatch_request_queries_bucket', _ROUTE)}))",
                        "{{http_route}}",
                    )
                ]
            ),
            "short",
            "Statements a request runs: a route whose count grows with the data has an N+1.",
        ),
        8,
        8,
    )
    lay.add(
        _series(
            "N+1 loops and slow statements",
            _refs(
                [
                    (
                        f"sum by (http_route) ({_rate('querywatch_n_plus_one_total', _ROUTE)})",
                        "N+1 {{http_route}}",
                    ),
                    (
                        f"sum by (http_route) ({_rate('querywatch_slow_queries_total', _ROUTE)})",
                        "slow {{http_route}}",
                    ),
                ]
            ),
            "ops",
            "Findings per second, by route.",
        ),
        8,
        8,
    )
    lay.row("Connection pool and querywatch")
    lay.add(
        _series(
            "Pool: connections used and the most allowed",
            _refs(
                [
                    (
                        f'sum by (pool_name) (db_client_connections_usage{{{_SEL}, state="used"}})',
                        "used {{pool_name}}",
                    ),
                    (
                        f"sum by (pool_name) (db_client_connections_max{{{_SEL}}})",
                        "max {{pool_name}}",
                    ),
                ]
            ),
            "short",
            "A slow query holds its connection; when used reaches max, requests wait.",
        ),
        8,
        8,
    )
    lay.add(
        _series(
            "Pool: checkout wait p95 and timeouts",
            _refs(
                [
                    (
                        "histogram_quantile(0.95, sum by (pool_name, le)"
                        f" ({_rate('db_client_connection_wait_time_seconds_bucket')}))",
                        "wait p95 {{pool_name}}",
                    ),
                    (
                        f"sum by (pool_name) ({_rate('db_client_connection_timeouts_total')})",
                        "timeouts/s {{pool_name}}",
                    ),
                ]
            ),
            "s",
            "How long a request waited for a connection, and checkouts that gave up: where"
            " slow queries turn into errors.",
        ),
        8,
        8,
    )
    lay.add(
        _series(
            "Result cache hit ratio, querywatch errors",
            _refs(
                [
                    (
                        f"sum({_rate('querywatch_cache_lookups_total', _SEL + _HIT)})"
                        f" / sum({_rate('querywatch_cache_lookups_total')})",
                        "cache hit ratio",
                    ),
                    (
                        f"sum by (where) ({_rate('querywatch_internal_errors_total')})",
                        "querywatch errors/s {{where}}",
                    ),
                ]
            ),
            "short",
            "The result cache's hits over lookups; querywatch's own swallowed errors.",
        ),
        8,
        8,
    )
    if objectives:
        lay.row("Service level objectives")
        for o in objectives:
            spans = sorted({w for b in DEFAULT_POLICY for w in (b.long_seconds, b.short_seconds)})
            lay.add(
                _series(
                    f"Error budget burn rate: {o.name}",
                    _refs(
                        [
                            (
                                f"max(querywatch:slo_errors:ratio_rate{_span(s)}"
                                f'{{slo="{_quote(o.name)}", {_SEL}}})'
                                f" / {o.budget:.6g}",
                                _span(s),
                            )
                            for s in spans
                        ]
                    ),
                    "x",
                    f"{o.describe()}. 1 spends the budget over 30 days; pages fire at 14.4"
                    " (1h and 5m) and 6 (6h and 30m). Needs the rules of `querywatch export"
                    " prometheus-rules`.",
                ),
                12,
                8,
            )
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": "querywatch: is it traffic or a query? Request, database and pool"
        " metrics of Flask + SQLAlchemy apps.",
        "tags": ["querywatch", "flask", "sqlalchemy"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                    "regex": "",
                },
                _query_variable("job", "Job", f"label_values({_HTTP}_count, job)"),
                _query_variable(
                    "route", "Route", f"label_values({_HTTP}_count{{{_SEL}}}, http_route)"
                ),
            ]
        },
        "panels": lay.panels,
    }
