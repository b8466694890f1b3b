"""Automatic containment: the decisions, as functions of what the store says.

When a paging alert fires, traffic did not rise (in users where the app names them:
retries are not a surge) and its evidence puts most of the objective's bad requests on
one endpoint, that endpoint is put under a concurrency limit derived from
its culprit query's calm latency (Little's law: the requests a second it serves, times the
time a request takes when calm, with headroom). Each round after, the limit follows the
culprit's latency (AIMD, as in Netflix's concurrency-limits): multiplied down by the
latency gradient while the culprit is slow, one more while it is calm. It lifts itself
after a few calm rounds in a row (hysteresis); the page that engaged an enforced limit
stays firing while it holds (:meth:`querywatch.guard.Guard.holds`), so only a shadow
limit lifts as the pages resolve. A person can lift it (or resolve its incident), or pin
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
    #: The culprit's best latency while limited: what the limit aims at when the query
    #: has no calm latency (new in the window).
    floor_ms: float | None = None
    #: When the limit was last set (engaged or changed).
    changed: float = 0.0

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
    traffic = evidence.get("traffic") or {}
    # A surge is more users where the app names them: requests that climb while users
    # do not are clients retrying what the slow endpoint fails (the seed's team scaled
    # servers for such a "surge"). Traffic that fell is no surge either: users give up
    # on a slow app, and its slow endpoint is still to blame.
    users = traffic.get("users_ratio")
    ratio = users if users is not None else traffic.get("ratio")
    if ratio is None:
        return Decision(
            None,
            "guard not engaged: no traffic in the window before to compare with, so a surge"
            " cannot be told from one slow endpoint.",
        )
    if ratio >= FLAT[1]:
        what = "users" if users is not None else "traffic"
        return Decision(
            None,
            f"guard not engaged: {what} rose (x{ratio:.2f}), a surge, so no one endpoint is"
            " to blame.",
        )
    objective = evidence.get("objective") or {}
    bad = [b for b in evidence.get("bad_endpoints") or [] if b.get("bad")]
    total = objective.get("bad") or sum(b["bad"] for b in bad)
    top = _top(evidence)
    if top is None or not total:
        return Decision(
            None, "guard not engaged: the evidence names no endpoint with bad requests."
        )
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
    if row is None or not row["requests"]:
        return Decision(None, f"guard not engaged: no traffic of {endpoint} in the evidence.")
    traffic_share = _traffic_share(evidence, top, row)
    shapes = [s for s in evidence.get("shapes") or [] if s.get("endpoint") == endpoint]
    blamed = culprit(dict(evidence))
    if blamed is None or blamed.get("endpoint") != endpoint:
        blamed = max(shapes, key=lambda s: s["time_now_s"], default=None)
    baseline = blamed.get("mean_ms_before") if blamed else None
    latency = blamed.get("mean_ms_now") if blamed else None
    window = evidence.get("window") or {}
    seconds = window.get("seconds") or 0
    rate = row["requests"] / seconds if seconds else 0.0
    # The requests in flight the endpoint needs at its calm latency for the traffic it
    # has (Little's law), twice over for headroom; never below 1. A query new in this
    # window has no calm latency: it starts at 1, and the limit learns from there.
    limit = ceiling(rate, baseline)
    now_ms = latency or (row["time_s"] / row["requests"]) * 1000
    sheds = traffic_share * shed_fraction(limit, rate, now_ms)
    if sheds > policy.max_shed_share:
        return Decision(
            None,
            f"guard not engaged: {endpoint} is {traffic_share:.0%} of the app's traffic, and"
            f" {limit} at once would shed about {sheds:.0%} of it, over the"
            f" {policy.max_shed_share:.0%} containment may shed.",
        )
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
        changed=now,
    )
    verb = "engaged" if policy.mode == "enforce" else "engaged in shadow mode"
    return Decision(
        c,
        f"guard {verb} on {endpoint}: at most {limit} at once ({share:.0%} of the bad"
        f" requests are its; it is {traffic_share:.0%} of the traffic).",
    )


def _top(evidence: t.Mapping[str, t.Any]) -> t.Mapping[str, t.Any] | None:
    """The evidence's endpoint with the most bad requests (None: none has any)."""
    bad = [b for b in evidence.get("bad_endpoints") or [] if b.get("bad")]
    return max(bad, key=lambda b: b["bad"]) if bad else None


def blamed(evidence: t.Mapping[str, t.Any]) -> str | None:
    """The endpoint an alert's evidence puts the most bad requests on, if any."""
    top = _top(evidence)
    return str(top["endpoint"]) if top is not None else None


def _traffic_share(
    evidence: t.Mapping[str, t.Any], top: t.Mapping[str, t.Any], row: t.Mapping[str, t.Any]
) -> float:
    """The endpoint's share of the app's requests: of the objective's events where the
    evidence counts them per endpoint, else of the window's requests (the evidence lists
    only the costliest endpoints)."""
    events = (evidence.get("objective") or {}).get("events")
    if events and top.get("events"):
        return float(top["events"] / events)
    listed = sum(e["requests"] for e in evidence.get("endpoints") or [])
    counted = (evidence.get("traffic") or {}).get("requests_now") or 0
    return float(row["requests"] / max(listed, counted, 1))


def ceiling(rate: float, latency_ms: float | None) -> int:
    """The requests in flight an endpoint needs for ``rate`` a second at ``latency_ms``
    (Little's law), twice over; 1 when the latency is unknown."""
    if not latency_ms or rate <= 0:
        return 1
    return max(1, math.ceil(2 * rate * latency_ms / 1000))


def shed_fraction(limit: int, rate: float, latency_ms: float | None) -> float:
    """The share of an endpoint's requests a limit sheds if its latency stays as it is
    (Little's law; its latency falls once it is limited, so this is the most it sheds)."""
    needed = rate * (latency_ms or 0) / 1000
    return max(0.0, 1 - limit / needed) if needed > limit else 0.0


def adapt(
    policy: Policy,
    c: Containment,
    *,
    paging: bool,
    latency_ms: float | None,
    now: float,
    rate: float = 0.0,
    shed_share: float | None = None,
    rest_missed: bool = False,
    window: float = 0.0,
) -> Decision:
    """The next round of a containment: its new limit, or None when it lifts.

    ``paging`` is whether a paging alert fires, ``rate`` the endpoint's requests a second,
    ``shed_share`` the share of the app's traffic the limit shed since the last round
    (None: not known here), ``rest_missed`` whether the rest of the app (every other
    endpoint) missed one of its objectives over the last round, and ``window`` the
    seconds those are measured over.

    The limit aims at the culprit's calm latency, or, for a query with none, the best it
    has done while limited: one more a round while within :attr:`Policy.calm_ratio` of
    it (up to what Little's law gives at that latency, twice over), down by the latency
    gradient (at most halved) while slower. A query with no calm latency does not grow
    its limit while a page fires (its best while limited is what the limit holds it to,
    so every probe up looks calm, and costs the rest). While the rest of the app misses its
    objectives the limit is halved whatever the culprit's latency (its own query may be
    fast while the statements it crowds out are not): a limit grows only while it spares
    the rest, and only once a whole ``window`` has measured it (grown at each round, it
    went from 1 to 3 before the rest's objectives could tell). Over the shed cap, it
    doubles, whatever the latency.

    It lifts after :attr:`Policy.lift_after` rounds in a row with no page firing, or with
    the culprit's latency back: within :attr:`Policy.calm_ratio` of its calm latency
    while the rest of the app meets its objectives (the limit may be what brought it
    back), or at half its best while limited or less (a fix, not the limit, does
    that). A limit that ends the page does not lift itself at once:
    the page it ended would come back.
    """
    if c.pinned:
        return Decision(c, None)
    back = None
    if not paging:
        back = "no page fires"
    elif latency_ms is not None:
        # Not while the rest of the app misses its objectives: the limit may be what
        # brought the query back to its calm latency, and lifted, the rest would suffer.
        if (
            c.baseline_ms is not None
            and latency_ms <= policy.calm_ratio * c.baseline_ms
            and not rest_missed
        ):
            back = f"its query is back to {latency_ms:.0f} ms (calm: {c.baseline_ms:.0f} ms)"
        elif c.floor_ms is not None and latency_ms <= c.floor_ms / 2:
            # A fix, not the limit, halves the best it did while limited; the page it
            # holds firing (Guard.holds) resolves once it lifts, so a fix that leaves
            # the query a little over its calm latency must lift it too.
            back = (
                f"its query is down to {latency_ms:.0f} ms, from {c.floor_ms:.0f} ms at"
                " best while limited"
            )
    rounds = c.calm_rounds + 1 if back else 0
    if back and rounds >= policy.lift_after:
        return Decision(None, f"guard lifted on {c.endpoint}: {back}, {rounds} rounds in a row.")
    if latency_ms is None:
        return Decision(dataclasses.replace(c, calm_rounds=rounds, updated=now), None)
    # The best while limited: a round counted towards the lift (a fix) does not lower it.
    floor = c.floor_ms if back and c.floor_ms is not None else latency_ms
    if c.floor_ms is not None:
        floor = min(c.floor_ms, floor)
    target = c.baseline_ms or floor
    why = f"its query: {latency_ms:.0f} ms"
    if shed_share is not None and shed_share > policy.max_shed_share:
        limit = max(c.limit + 1, 2 * c.limit)
        cap = policy.max_shed_share
        why = f"it shed {shed_share:.0%} of the app's traffic, over the {cap:.0%} cap"
    elif rest_missed:
        limit = max(1, c.limit // 2)
        why = "the rest of the app misses its objectives"
    elif latency_ms <= policy.calm_ratio * target:
        if now - c.changed < window:
            limit = c.limit  # not measured long enough at this limit to grow it
        elif c.baseline_ms is None and paging:
            # No calm latency: the target is the best it did while limited, which the
            # limit itself holds it to, so a probe up always looks calm; its cost falls
            # on the rest of the app (each step up ended in a halving) while the page
            # fires. Only the shed cap raises it then.
            limit = c.limit
        elif rate:
            limit = max(c.limit, min(c.limit + 1, ceiling(rate, target)))
        else:
            limit = c.limit + 1
    else:
        gradient = max(0.5, policy.calm_ratio * target / latency_ms)
        limit = max(1, math.floor(c.limit * gradient))
    new = dataclasses.replace(
        c,
        limit=limit,
        latency_ms=latency_ms,
        floor_ms=floor,
        calm_rounds=rounds,
        updated=now,
        changed=now if limit != c.limit else c.changed,
    )
    event = None
    if limit != c.limit:
        event = f"guard on {c.endpoint}: at most {limit} at once ({why})."
    return Decision(new, event)
