"""Automatic containment: the decisions, as functions of what the store says.

When a paging alert fires, traffic is flat and its evidence puts most of the objective's
bad requests on one endpoint, that endpoint is put under a concurrency limit derived from
its culprit query's calm latency (Little's law: the requests a second it serves, times the
time a request takes when calm, with headroom). Each round after, the limit follows the
culprit's latency (AIMD, as in Netflix's concurrency-limits): multiplied down by the
latency gradient while the culprit is slow, one more while it is calm. It lifts itself
after a few calm rounds in a row (hysteresis) or when the alert resolves; a person can pin
it. A decision is taken by one process (the alert evaluation's lease holder) and written
to the store; every process applies what the store says.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing as t

from ..alerts.evidence import FLAT
from ..alerts.evidence import culprit


@dataclasses.dataclass(frozen=True)
class Policy:
    """What containment may do (``QUERYWATCH_GUARD``'s ``containment`` table)."""

    #: ``off``, ``shadow`` (count what would be shed, shed nothing) or ``enforce``.
    mode: str = "shadow"
    #: The least share of the objective's bad requests on one endpoint to contain it.
    culprit_share: float = 0.8
    #: The most of the app's traffic containment may shed; a limit that could take more
    #: is not set (and the incident says so).
    max_shed_share: float = 0.3
    #: Endpoints never limited (health checks, checkout).
    never_shed: frozenset[str] = frozenset()
    #: The culprit is calm when its mean latency is within this many times its calm one.
    calm_ratio: float = 1.5
    #: Calm rounds in a row before the limit lifts itself.
    lift_after: int = 3


@dataclasses.dataclass(frozen=True)
class Containment:
    """One endpoint under a limit, as the store holds it."""

    endpoint: str
    mode: str
    limit: int
    #: The alert that engaged it, and the culprit query (its shape id).
    alert: str
    shape: str | None
    #: The culprit's mean latency in the calm window before the alert, and now.
    baseline_ms: float | None
    latency_ms: float | None
    since: float
    updated: float
    calm_rounds: int = 0
    pinned: bool = False

    def to_json(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: t.Mapping[str, t.Any]) -> Containment:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def dumps(state: t.Mapping[str, Containment]) -> str:
    return json.dumps({k: c.to_json() for k, c in sorted(state.items())}, sort_keys=True)


def loads(text: str | None) -> dict[str, Containment]:
    if not text:
        return {}
    return {k: Containment.from_json(v) for k, v in json.loads(text).items()}


class Decision(t.NamedTuple):
    """What a round decided: the containment (None: none), and what to tell people."""

    containment: Containment | None
    event: str | None


def engage(policy: Policy, key: str, evidence: t.Mapping[str, t.Any], now: float) -> Decision:
    """The containment a firing paging alert's evidence calls for, or None with why not
    (every "no" says why)."""
    ratio = (evidence.get("traffic") or {}).get("ratio")
    if ratio is None or not FLAT[0] < ratio < FLAT[1]:
        what = "unknown" if ratio is None else f"x{ratio:.2f}"
        return Decision(
            None,
            f"guard not engaged: traffic is not flat ({what}), so no one endpoint is to blame.",
        )
    objective = evidence.get("objective") or {}
    bad = [b for b in evidence.get("bad_endpoints") or [] if b.get("bad")]
    total = objective.get("bad") or sum(b["bad"] for b in bad)
    if not bad or not total:
        return Decision(
            None, "guard not engaged: the evidence names no endpoint with bad requests."
        )
    top = max(bad, key=lambda b: b["bad"])
    endpoint, share = top["endpoint"], top["bad"] / total
    if share < policy.culprit_share:
        return Decision(
            None,
            f"guard not engaged: {share:.0%} of the bad requests are {endpoint}, under the"
            f" {policy.culprit_share:.0%} that implicates one endpoint.",
        )
    if endpoint in policy.never_shed:
        return Decision(None, f"guard not engaged: {endpoint} is marked never_shed.")
    rows = {e["endpoint"]: e for e in evidence.get("endpoints") or []}
    row = rows.get(endpoint)
    all_requests = sum(e["requests"] for e in rows.values())
    if row is None or not all_requests:
        return Decision(None, f"guard not engaged: no traffic of {endpoint} in the evidence.")
    traffic_share = row["requests"] / all_requests
    if traffic_share > policy.max_shed_share:
        return Decision(
            None,
            f"guard not engaged: {endpoint} is {traffic_share:.0%} of the app's traffic, and"
            f" containment may shed at most {policy.max_shed_share:.0%} of it.",
        )
    shapes = [s for s in evidence.get("shapes") or [] if s.get("endpoint") == endpoint]
    blamed = culprit(dict(evidence))
    if blamed is None or blamed.get("endpoint") != endpoint:
        blamed = max(shapes, key=lambda s: s["time_now_s"], default=None)
    baseline = blamed.get("mean_ms_before") if blamed else None
    latency = blamed.get("mean_ms_now") if blamed else None
    window = evidence.get("window") or {}
    seconds = window.get("seconds") or 0
    rate = row["requests"] / seconds if seconds else 0.0
    calm_s = (baseline if baseline else (row["time_s"] / row["requests"]) * 1000) / 1000.0
    # The requests in flight the endpoint needs at its calm latency for the traffic it
    # has (Little's law), twice over for headroom; never below 1.
    limit = max(1, math.ceil(2 * rate * calm_s))
    c = Containment(
        endpoint=endpoint,
        mode=policy.mode,
        limit=limit,
        alert=key,
        shape=blamed.get("fingerprint") if blamed else None,
        baseline_ms=baseline,
        latency_ms=latency,
        since=now,
        updated=now,
    )
    verb = "engaged" if policy.mode == "enforce" else "engaged in shadow mode"
    return Decision(
        c,
        f"guard {verb} on {endpoint}: at most {limit} at once ({share:.0%} of the bad"
        f" requests are its; it is {traffic_share:.0%} of the traffic).",
    )


def adapt(
    policy: Policy, c: Containment, *, alert_firing: bool, latency_ms: float | None, now: float
) -> Decision:
    """The next round of a containment: its new limit, or None when it lifts."""
    if c.pinned:
        return Decision(c, None)
    if not alert_firing:
        return Decision(None, f"guard lifted on {c.endpoint}: the alert resolved.")
    if c.baseline_ms is None or latency_ms is None:
        return Decision(dataclasses.replace(c, updated=now), None)
    calm = latency_ms <= policy.calm_ratio * c.baseline_ms
    if calm:
        rounds = c.calm_rounds + 1
        if rounds >= policy.lift_after:
            return Decision(
                None,
                f"guard lifted on {c.endpoint}: its query is back to {latency_ms:.0f} ms"
                f" (calm: {c.baseline_ms:.0f} ms) for {rounds} rounds.",
            )
        limit = c.limit + 1
    else:
        rounds = 0
        gradient = max(0.5, policy.calm_ratio * c.baseline_ms / latency_ms)
        limit = max(1, math.floor(c.limit * gradient))
    new = dataclasses.replace(
        c, limit=limit, latency_ms=latency_ms, calm_rounds=rounds, updated=now
    )
    event = None
    if limit != c.limit:
        event = f"guard on {c.endpoint}: at most {limit} at once (its query: {latency_ms:.0f} ms)."
    return Decision(new, event)
