"""Service level objectives and multiwindow, multi-burn-rate alerts.

The method is the Google SRE workbook's ("Alerting on SLOs", its recommended
parameters): an alert fires when the error budget burns at least ``burn_rate`` times the
sustainable rate over a long window *and* over a short one. The long window makes the
alert significant (a share of the budget is really gone); the short one makes it stop
soon after the errors stop.

=========  ============  =============  ===========  =========================
severity   long window   short window   burn rate    budget spent when it fires
=========  ============  =============  ===========  =========================
page       1 h           5 min          14.4         2% of 30 days
page       6 h           30 min         6            5%
ticket     3 days        6 h            1            10%
=========  ============  =============  ===========  =========================

Windows scale by one factor (``scale``) so that tests and ``querywatch demo`` see an
hour in seconds. An objective's *bad events* are failed requests (availability: status
500 and over) or requests slower than its threshold (latency: "99% under 300 ms").

Each request is counted against the objectives when it is folded in (``qw_slo_stats``:
events and bad events per bucket, objective and endpoint), so evaluating is a few sums in
SQL. :class:`Evaluator` runs in the process holding the store's lease (the flusher thread
of one worker), adds the per-shape rules (a shape's p95 over a threshold, a new N+1 loop,
a new full scan), writes each state change to the store with its evidence
(:mod:`.evidence`) and logs it.

The package: :mod:`.objectives` (objectives, burn rates, their configuration),
:mod:`.evaluation` (:class:`Evaluator` over the store), :mod:`.evidence` (what an alert
carries), :mod:`.rules` (Prometheus rules) and :mod:`.grafana` (the Grafana dashboard).
"""

from __future__ import annotations

from .evaluation import LEASE
from .evaluation import AlertRules
from .evaluation import Evaluator
from .objectives import DEFAULT_OBJECTIVES
from .objectives import DEFAULT_POLICY
from .objectives import BurnWindow
from .objectives import Firing
from .objectives import Objective
from .objectives import WindowCounts
from .objectives import burn_rate
from .objectives import evaluate_objective
from .objectives import objectives_setting
from .objectives import parse_objective
from .objectives import parse_objectives
from .rules import prometheus_rules

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DEFAULT_POLICY",
    "LEASE",
    "AlertRules",
    "BurnWindow",
    "Evaluator",
    "Firing",
    "Objective",
    "WindowCounts",
    "burn_rate",
    "evaluate_objective",
    "objectives_setting",
    "parse_objective",
    "parse_objectives",
    "prometheus_rules",
]
