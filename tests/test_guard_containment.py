"""Automatic containment: which firing alerts engage it, how its limit follows the culprit
query, when it lifts, and how every process applies the lease holder's decision."""

from __future__ import annotations

import copy
import dataclasses
import typing as t

import pytest
from flask import Flask

from querywatch.guard import STATE_KEY
from querywatch.guard import Guard
from querywatch.guard import load_guard
from querywatch.guard._containment import Containment
from querywatch.guard._containment import Policy
from querywatch.guard._containment import adapt
from querywatch.guard._containment import engage
from querywatch.guard._state import pin
from querywatch.guard._state import read as read_state
from querywatch.store import AlertChange
from querywatch.store import Store

LOOKUP = "GET /api/orders/lookup"
PAGE = "slo:latency:page"

#: The evidence of the outage as the alert evaluation gathers it: traffic flat, 90% of
#: the objective's bad requests on the support team's lookup (10% of the traffic), its
#: query from 19 ms to 185 ms a call.
EVIDENCE: dict[str, t.Any] = {
    "window": {"before": [0, 600], "now": [900, 1560], "seconds": 600, "at": 1560},
    "traffic": {"ratio": 1.02, "requests_now": 6000, "requests_before": 5880},
    "errors": {"ratio_now": 0.01, "ratio_before": 0.0},
    "objective": {"name": "latency", "bad": 500},
    "bad_endpoints": [
        {"endpoint": LOOKUP, "bad": 450},
        {"endpoint": "GET /api/products/<int:id>", "bad": 50},
    ],
    "endpoints": [
        {"endpoint": LOOKUP, "requests": 600, "time_s": 111.0, "db_share": 0.95, "errors": 60},
        {
            "endpoint": "GET /api/products/<int:id>",
            "requests": 5400,
            "time_s": 162.0,
            "db_share": 0.4,
            "errors": 0,
        },
    ],
    "shapes": [
        {
            "fingerprint": "f-lookup",
            "endpoint": LOOKUP,
            "time_now_s": 111.0,
            "time_before_s": 11.4,
            "calls_now": 600,
            "calls_before": 600,
            "mean_ms_now": 185.0,
            "mean_ms_before": 19.0,
        },
        {
            "fingerprint": "f-product",
            "endpoint": "GET /api/products/<int:id>",
            "time_now_s": 30.0,
            "time_before_s": 27.0,
            "calls_now": 5400,
            "calls_before": 5300,
            "mean_ms_now": 5.6,
            "mean_ms_before": 5.1,
        },
    ],
    "pools": [],
}


def evidence(**changes: t.Any) -> dict[str, t.Any]:
    ev = copy.deepcopy(EVIDENCE)
    for path, value in changes.items():
        node = ev
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return ev


def test_a_page_with_flat_traffic_and_one_endpoint_to_blame_engages() -> None:
    d = engage(Policy(mode="enforce"), PAGE, EVIDENCE, 1560.0)
    c = d.containment
    assert c is not None
    assert (c.endpoint, c.mode, c.alert, c.shape) == (LOOKUP, "enforce", PAGE, "f-lookup")
    # One request a second at 19 ms when calm: 0.019 in flight, twice over, at least 1.
    assert c.limit == 1
    assert (c.baseline_ms, c.latency_ms) == (19.0, 185.0)
    assert d.event == (
        "guard engaged on GET /api/orders/lookup: at most 1 at once (90% of the bad requests"
        " are its; it is 10% of the traffic)."
    )
    # More traffic at its calm latency, a higher limit: 20 a second x 19 ms x 2.
    busy = evidence(endpoints=[{**EVIDENCE["endpoints"][0], "requests": 12000}])
    c2 = engage(Policy(mode="enforce", max_shed_share=1.0), PAGE, busy, 1560.0).containment
    assert c2 is not None
    assert c2.limit == 1 + int(2 * 20 * 0.019)


@pytest.mark.parametrize(
    "traffic",
    [
        # Clients retry what the lookup fails: requests x1.90, the same users.
        {"ratio": 1.9, "users_ratio": 1.02},
        # Users give up on a slow app: fewer requests, and the lookup still to blame.
        {"ratio": 0.55},
        {"ratio": 0.6, "users_ratio": 0.58},
    ],
)
def test_retries_and_users_giving_up_are_no_surge(traffic: dict[str, float]) -> None:
    """The seed's team read a slow query as a surge. Requests that climb while the users
    do not are retries, and traffic that fell is users leaving: neither is a reason to
    leave the slow endpoint unlimited."""
    d = engage(Policy(mode="enforce"), PAGE, evidence(traffic=traffic), 1560.0)
    assert d.containment is not None, d.event
    assert d.containment.endpoint == LOOKUP


@pytest.mark.parametrize(
    ("changes", "policy", "why"),
    [
        ({"traffic__ratio": 2.4}, Policy(), "traffic rose (x2.40), a surge"),
        (
            {"traffic": {"ratio": 1.9, "users_ratio": 1.6}},
            Policy(),
            "users rose (x1.60), a surge",
        ),
        ({"traffic__ratio": None}, Policy(), "no traffic in the window before to compare"),
        (
            {
                "bad_endpoints": [
                    {"endpoint": LOOKUP, "bad": 300},
                    {"endpoint": "GET /x", "bad": 200},
                ]
            },
            Policy(),
            "60% of the bad requests are GET /api/orders/lookup, under the 80%",
        ),
        ({}, Policy(never_shed=frozenset({LOOKUP})), "is marked never_shed"),
        (
            # Half the traffic, and so slow now that one at a time sheds 94% of it.
            {
                "endpoints": [
                    {**EVIDENCE["endpoints"][0], "requests": 5400},
                    EVIDENCE["endpoints"][1],
                ],
                "shapes": [
                    {**EVIDENCE["shapes"][0], "mean_ms_now": 1850.0},
                    EVIDENCE["shapes"][1],
                ],
            },
            Policy(),
            "is 50% of the app's traffic, and 1 at once would shed about 47% of it, over the"
            " 30% containment may shed",
        ),
        ({"bad_endpoints": []}, Policy(), "names no endpoint with bad requests"),
    ],
)
def test_every_no_says_why(changes: dict[str, t.Any], policy: Policy, why: str) -> None:
    d = engage(policy, PAGE, evidence(**changes), 1560.0)
    assert d.containment is None
    assert d.event is not None
    assert d.event.startswith("guard not engaged: ")
    assert why in d.event


def test_the_shed_cap_weighs_what_the_limit_would_shed_not_the_whole_endpoint() -> None:
    # Half the traffic, at 185 ms: one at a time sheds 1 - 1 / (9 a second x 0.185 s),
    # 40% of its requests, 20% of the app's: under the cap.
    half = evidence(
        endpoints=[{**EVIDENCE["endpoints"][0], "requests": 5400}, EVIDENCE["endpoints"][1]]
    )
    c = engage(Policy(mode="enforce"), PAGE, half, 1560.0).containment
    assert c is not None
    assert c.limit == 1
    # The evidence lists only the costliest endpoints: the share is of every request the
    # objective counted, not of the listed ones.
    listed = evidence(
        objective={"name": "latency", "bad": 500, "events": 20000},
        bad_endpoints=[
            {"endpoint": LOOKUP, "bad": 450, "events": 600},
            {"endpoint": "GET /api/products/<int:id>", "bad": 50, "events": 5400},
        ],
    )
    d = engage(Policy(mode="enforce"), PAGE, listed, 1560.0)
    assert d.event is not None
    assert "it is 3% of the traffic" in d.event


def test_a_query_with_no_calm_latency_starts_at_one_and_learns_its_best() -> None:
    """New in the window (no calm latency to aim at): the limit starts at 1 and aims at
    the best latency the query has had while limited. While its page fires it does not
    grow (that best is what the limit holds it to, so a probe up always looks calm, and
    each step up cost the rest of the app its objectives); once no page fires, up to
    what Little's law gives there. It lifts when the query runs at half its best or
    less (a fix did that, not the limit), three rounds in a row."""
    new = evidence(shapes=[{**EVIDENCE["shapes"][0], "mean_ms_before": None, "calls_before": 0}])
    policy = Policy(mode="enforce")
    c = engage(policy, PAGE, new, 0.0).containment
    assert c is not None
    assert (c.limit, c.baseline_ms) == (1, None)
    # 40 ms while limited, 20 a second, the page firing: it stays at 1, however long.
    for _ in range(3):
        c = adapt(policy, c, paging=True, latency_ms=40.0, now=1.0, rate=20.0).containment
        assert c is not None
        assert (c.limit, c.floor_ms, c.calm_rounds) == (1, 40.0, 0)
    # No page fires (a shadow limit's, or one a person resolved): it may grow to
    # 2 x 20 x 0.04 = 2, one a round.
    for expected in (2, 2):
        c = adapt(policy, c, paging=False, latency_ms=40.0, now=1.0, rate=20.0).containment
        assert c is not None
        assert (c.limit, c.floor_ms) == (expected, 40.0)
    c = adapt(policy, c, paging=True, latency_ms=40.0, now=1.0, rate=20.0).containment
    assert c is not None
    assert (c.limit, c.calm_rounds) == (2, 0)
    # Slower than 1.5 x its best: down by the gradient.
    c = adapt(policy, c, paging=True, latency_ms=120.0, now=2.0, rate=20.0).containment
    assert c is not None
    assert c.limit == 1
    # At its best while limited the query is still slow: the page goes on, so does the
    # limit, however long.
    for _ in range(5):
        c = adapt(policy, c, paging=True, latency_ms=40.0, now=3.0, rate=20.0).containment
        assert c is not None
        assert c.calm_rounds == 0
    # The fix: 1 ms, under half its best. Three rounds in a row, then it lifts.
    for rounds in (1, 2):
        c = adapt(policy, c, paging=True, latency_ms=1.0, now=4.0, rate=20.0).containment
        assert c is not None
        assert c.calm_rounds == rounds
    d = adapt(policy, c, paging=True, latency_ms=1.0, now=5.0, rate=20.0)
    assert d == (
        None,
        "guard lifted on GET /api/orders/lookup: its query is down to 1 ms, from 40 ms at"
        " best while limited, 3 rounds in a row.",
    )


def test_a_fix_that_leaves_the_query_over_its_calm_latency_still_lifts_it() -> None:
    """Calm at 19 ms, 185 ms at best while limited; the fix brings it to 35 ms (1.8x
    its calm latency, over the 1.5x): under half its best while limited, so a fix, not
    the limit. Its page stays firing while the limit holds, so the limit must lift."""
    policy = Policy(mode="enforce")
    c: Containment | None = dataclasses.replace(_engaged(2), floor_ms=185.0)
    # At its best while limited (the limit alone): no lift, however long.
    for _ in range(4):
        assert c is not None
        c = adapt(policy, c, paging=True, latency_ms=185.0, now=1.0).containment
        assert c is not None
        assert c.calm_rounds == 0
    for rounds in (1, 2):
        c = adapt(policy, c, paging=True, latency_ms=35.0, now=2.0).containment
        assert c is not None
        assert c.calm_rounds == rounds
    assert c is not None
    d = adapt(policy, c, paging=True, latency_ms=35.0, now=3.0)
    assert d == (
        None,
        "guard lifted on GET /api/orders/lookup: its query is down to 35 ms, from 185 ms"
        " at best while limited, 3 rounds in a row.",
    )


def test_over_the_shed_cap_the_limit_doubles_whatever_the_latency() -> None:
    policy = Policy(mode="enforce", max_shed_share=0.3)
    d = adapt(policy, _engaged(2), paging=True, latency_ms=500.0, now=1.0, shed_share=0.35)
    assert d.containment is not None
    assert d.containment.limit == 4
    assert d.event == (
        "guard on GET /api/orders/lookup: at most 4 at once (it shed 35% of the app's"
        " traffic, over the 30% cap)."
    )
    # Under the cap, the latency decides again.
    d = adapt(policy, _engaged(2), paging=True, latency_ms=500.0, now=1.0, shed_share=0.2)
    assert d.containment is not None
    assert d.containment.limit == 1


def _engaged(limit: int = 8) -> Containment:
    return Containment(LOOKUP, "enforce", limit, PAGE, "f-lookup", 19.0, 185.0, 0.0, 0.0)


def test_while_the_rest_of_the_app_misses_its_objectives_the_limit_halves_not_grows() -> None:
    """Under overload the limited query may run at its best while the statements it
    crowds out (the rest of the app's) are slow: a limit grows only while the rest is
    within its objectives, and halves (never under 1) while it is not."""
    policy = Policy(mode="enforce")
    c = _engaged(8)
    # The culprit at its calm latency: alone, that would let the limit grow.
    grown = adapt(policy, c, paging=True, latency_ms=19.0, now=1.0, rate=1000.0).containment
    assert grown is not None
    assert grown.limit == 9
    d = adapt(policy, c, paging=True, latency_ms=19.0, now=1.0, rate=1000.0, rest_missed=True)
    assert d.containment is not None
    assert d.containment.limit == 4
    assert d.event == (
        "guard on GET /api/orders/lookup: at most 4 at once (the rest of the app misses its"
        " objectives)."
    )
    # Its query back at its calm latency does not lift it either while the rest misses
    # its objectives: the limit may be what keeps it there.
    c = d.containment
    for _ in range(4):
        c = adapt(policy, c, paging=True, latency_ms=19.0, now=2.0, rest_missed=True).containment
        assert c is not None
    assert c.limit == 1
    assert c.calm_rounds == 0
    # A query new in the window, at half its best while limited: a fix did that, not the
    # limit, so it lifts after three rounds even while the rest still misses.
    new = dataclasses.replace(c, baseline_ms=None, floor_ms=40.0)
    for _ in range(2):
        new = adapt(policy, new, paging=True, latency_ms=1.0, now=2.5, rest_missed=True).containment
        assert new is not None
    assert adapt(policy, new, paging=True, latency_ms=1.0, now=2.6, rest_missed=True) == (
        None,
        "guard lifted on GET /api/orders/lookup: its query is down to 1 ms, from 40 ms at best"
        " while limited, 3 rounds in a row.",
    )
    # The shed cap still wins: containment may not shed more than its share.
    d = adapt(policy, c, paging=True, latency_ms=19.0, now=3.0, shed_share=0.4, rest_missed=True)
    assert d.containment is not None
    assert d.containment.limit == 2


def test_a_limit_grows_only_once_a_whole_window_has_measured_it() -> None:
    """The rest's objectives are read over two buckets, the rounds come every half
    bucket: grown at each round, the limit went from 1 to 3 before the rest could say
    that 2 was already too many. It grows once a window has passed since it was set;
    it falls at once."""
    policy = Policy(mode="enforce")
    c = dataclasses.replace(_engaged(1), changed=10.0)
    held = adapt(policy, c, paging=True, latency_ms=19.0, now=10.5, window=2.0)
    assert held.containment is not None
    assert held.containment.limit == 1
    assert held.event is None
    grown = adapt(policy, held.containment, paging=True, latency_ms=19.0, now=12.0, window=2.0)
    assert grown.containment is not None
    assert (grown.containment.limit, grown.containment.changed) == (2, 12.0)
    # Half a bucket later the rest misses its objectives: back to 1 at once.
    fallen = adapt(
        policy, grown.containment, paging=True, latency_ms=19.0, now=12.5, window=2.0,
        rest_missed=True,
    )  # fmt: skip
    assert fallen.containment is not None
    assert (fallen.containment.limit, fallen.containment.changed) == (1, 12.5)


def test_the_shed_share_counts_a_request_its_client_retried_once() -> None:
    """Clients that retry a shed request (urllib3's Retry, after the Retry-After) send it
    up to four times: counted at each try, a limit turning away half the lookups looked
    like 80% of them, and their retries made the lookup most of the app's traffic. The
    share leaves the retries out (the app names its users)."""
    from querywatch.guard import _app_share

    guard = _guard("enforce")
    guard.apply({LOOKUP: _engaged(1)})
    bulkhead = guard.bulkheads[LOOKUP]
    assert guard._shed_since(LOOKUP, "enforce") == (None, 0.0)  # the first round counts
    for i in range(20):
        assert bulkhead.enter(f"admitted{i}")
        bulkhead.leave()
    assert bulkhead.enter("holder")
    for i in range(19):
        for _ in range(4):  # the first try and three retries, all shed
            assert not bulkhead.enter(f"shed{i}")
    bulkhead.leave()
    # 21 admitted (the holder among them), 19 turned away at each of their four tries:
    # 97 arrivals, 40 of them first tries.
    assert (bulkhead.arrived, bulkhead.shed, bulkhead.retried) == (97, 76, 57)
    shed, retried = guard._shed_since(LOOKUP, "enforce")
    assert shed == pytest.approx(19 / 40)
    assert retried == pytest.approx(57 / 97)
    # Of an app of 200 requests, 97 of them the lookup's: 19 of 143 first tries shed.
    assert _app_share(shed, retried, 97, 200) == pytest.approx(19 / 143)
    # Counted at each try, it would be 76 of 200, over the 30% cap.
    assert 76 / 200 > 0.3 > _app_share(shed, retried, 97, 200)


def test_the_limit_follows_the_culprits_latency_and_never_falls_below_one() -> None:
    policy = Policy(mode="enforce")
    c = _engaged(8)
    # Slow: down by the latency gradient (1.5 x 19 / 57 = 0.5).
    c = adapt(policy, c, paging=True, latency_ms=57.0, now=1.0).containment
    assert c is not None
    assert c.limit == 4
    # Very slow: at most halved a round, and never below 1.
    for expected in (2, 1, 1):
        c = adapt(policy, c, paging=True, latency_ms=500.0, now=2.0).containment
        assert c is not None
        assert c.limit == expected
    # Calm: one more a round; after three calm rounds in a row it lifts itself.
    c = adapt(policy, c, paging=True, latency_ms=20.0, now=3.0).containment
    assert c is not None
    assert (c.limit, c.calm_rounds) == (2, 1)
    c = adapt(policy, c, paging=True, latency_ms=300.0, now=4.0).containment
    assert c is not None
    assert c.calm_rounds == 0
    for _ in range(2):
        c = adapt(policy, c, paging=True, latency_ms=20.0, now=5.0).containment
        assert c is not None
    d = adapt(policy, c, paging=True, latency_ms=20.0, now=6.0)
    assert d.containment is None
    assert d.event == (
        "guard lifted on GET /api/orders/lookup: its query is back to 20 ms (calm: 19 ms),"
        " 3 rounds in a row."
    )


def test_it_lifts_three_rounds_after_the_last_page_resolves_unless_pinned() -> None:
    """The limit may be what ended the page (the lookups stopped timing out): lifting
    at the first quiet round would bring the page back. A page firing again starts the
    count over."""
    policy = Policy(mode="enforce")
    c: Containment | None = _engaged()
    for paging, rounds in ((False, 1), (False, 2), (True, 0), (False, 1), (False, 2)):
        assert c is not None
        c = adapt(policy, c, paging=paging, latency_ms=185.0, now=1.0).containment
        assert c is not None
        assert c.calm_rounds == rounds
    d = adapt(policy, c, paging=False, latency_ms=185.0, now=1.0)
    assert d == (None, "guard lifted on GET /api/orders/lookup: no page fires, 3 rounds in a row.")
    pinned = Containment(LOOKUP, "enforce", 3, PAGE, "f-lookup", 19.0, 185.0, 0.0, 0.0, pinned=True)
    assert adapt(policy, pinned, paging=False, latency_ms=20.0, now=1.0) == (pinned, None)


def _page(store: Store, state: str, ev: dict[str, t.Any], at: float) -> None:
    store.set_alert_states([AlertChange(PAGE, "slo", "page", state, at, "latency", ev)])


LIFTED = "guard lifted on GET /api/orders/lookup: no page fires, 3 rounds in a row."


def _quiet(guard: Guard, store: Store, start: float) -> list[str]:
    """Three rounds of the lease holder, a second apart, with no page firing: what they
    said (the lift, at the third)."""
    said: list[str] = []
    for i in range(3):
        said += guard.contain(store, leader=True, now=start + i, width=60)
    return said


def _guard(mode: str, **extra: t.Any) -> Guard:
    config = load_guard({"containment": mode, **extra})
    assert config is not None
    return Guard(Flask(__name__), config)


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
def test_the_lease_holder_decides_and_every_process_applies(tmp_path: t.Any, mode: str) -> None:
    store = Store(f"sqlite:///{tmp_path}/qw.db")
    leader, follower = _guard(mode), _guard(mode)
    try:
        # Nothing fires: nothing is contained anywhere.
        assert leader.contain(store, leader=True, now=1560.0, width=60) == []
        follower.contain(store, leader=False, now=1560.0, width=60)
        assert LOOKUP not in follower.bulkheads
        _page(store, "firing", EVIDENCE, 1560.0)
        # A process that does not hold the lease decides nothing.
        assert follower.contain(store, leader=False, now=1561.0, width=60) == []
        assert store.meta_value(STATE_KEY) is None
        events = leader.contain(store, leader=True, now=1562.0, width=60)
        assert len(events) == 1
        assert LOOKUP in events[0]
        # The follower reads the decision at its next round.
        follower.contain(store, leader=False, now=1563.0, width=60)
        bulkhead = follower.bulkheads[LOOKUP]
        if mode == "enforce":
            assert (bulkhead.limit, bulkhead.shadow_limit) == (1, None)
            assert bulkhead.enter()
            assert not bulkhead.enter()  # a second at once is shed
            assert bulkhead.shed == 1
        else:
            assert bulkhead.shadow_limit == 1
            assert bulkhead.enter()
            assert bulkhead.enter()
            assert (bulkhead.shed, bulkhead.would_shed) == (0, 1)
        # A second round does not engage the same alert again.
        assert leader.contain(store, leader=True, now=1564.0, width=60) == []
        # The alert resolves: the leader lifts, and the follower at its next round.
        _page(store, "resolved", EVIDENCE, 1600.0)
        assert _quiet(leader, store, 1601.0) == [LIFTED]
        follower.contain(store, leader=False, now=1602.0, width=60)
        assert LOOKUP not in follower.bulkheads
        assert follower.contained == {}
    finally:
        store.engine.dispose()


def test_a_second_page_blaming_the_contained_endpoint_says_nothing(tmp_path: t.Any) -> None:
    """The availability page contained the lookup; the latency page that follows blames
    it too, but by then the clients' retries of the lookup make it most of the traffic:
    it would be refused, and saying "not engaged" of an endpoint under a limit would
    mislead. A page blaming another endpoint is still judged."""
    store = Store(f"sqlite:///{tmp_path}/qw.db")
    guard = _guard("enforce")
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        assert guard.contain(store, leader=True, now=1561.0, width=60)[0].startswith(
            "guard engaged on GET /api/orders/lookup"
        )
        retried = evidence()
        retried["endpoints"][0]["requests"] = 6000
        retried["endpoints"][1]["requests"] = 500
        refused = engage(Policy(mode="enforce"), "slo:availability:page", retried, 1562.0)
        assert refused.containment is None
        assert "over the 30%" in (refused.event or "")
        other = evidence(bad_endpoints=[{"endpoint": "GET /api/products/<int:id>", "bad": 5}])
        store.set_alert_states(
            [
                AlertChange("slo:availability:page", "slo", "page", "firing", 1562.0,
                            "availability", retried),
                AlertChange("errors:page", "errors", "page", "firing", 1562.0, "errors",
                            other),
            ]
        )  # fmt: skip
        events = guard.contain(store, leader=True, now=1563.0, width=60)
        assert [e for e in events if "not engaged" in e] == [
            "guard not engaged: 1% of the bad requests are GET /api/products/<int:id>, under"
            " the 80% that implicates one endpoint."
        ]
        assert read_state(store)[LOOKUP].limit == 1
    finally:
        store.engine.dispose()


def test_a_configured_bulkhead_keeps_its_own_limit_under_and_after_containment(
    tmp_path: t.Any,
) -> None:
    store = Store(f"sqlite:///{tmp_path}/qw.db")
    guard = _guard("enforce", endpoints={LOOKUP: {"max_concurrent": 4}})
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        guard.contain(store, leader=True, now=1561.0, width=60)
        assert guard.bulkheads[LOOKUP].limit == 1  # the lower of the two
        _page(store, "resolved", EVIDENCE, 1600.0)
        _quiet(guard, store, 1601.0)
        assert guard.bulkheads[LOOKUP].limit == 4
    finally:
        store.engine.dispose()


def test_off_decides_and_applies_nothing(tmp_path: t.Any) -> None:
    store = Store(f"sqlite:///{tmp_path}/qw.db")
    guard = _guard("off")
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        assert guard.contain(store, leader=True, now=1561.0, width=60) == []
        assert store.meta_value(STATE_KEY) is None
        assert guard.bulkheads == {}
    finally:
        store.engine.dispose()


def test_a_new_lease_holder_carries_on_from_the_store(tmp_path: t.Any) -> None:
    """The process holding the lease dies while the guard is engaged: the next one reads
    the containment from the store and goes on adapting and lifting it."""
    store = Store(f"sqlite:///{tmp_path}/qw.db")
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        first = _guard("enforce")
        first.contain(store, leader=True, now=1561.0, width=60)
        assert first.contained[LOOKUP].limit == 1
        del first  # gone, without a word
        second = _guard("enforce")
        assert second.contain(store, leader=True, now=1562.0, width=60) == []
        # Not lost, not engaged twice: the same containment, carried on.
        carried = second.contained[LOOKUP]
        assert (carried.since, carried.limit, carried.alert) == (1561.0, 1, PAGE)
        assert carried.updated == 1562.0
        assert second.bulkheads[LOOKUP].limit == 1
        _page(store, "resolved", EVIDENCE, 1600.0)
        assert _quiet(second, store, 1601.0) == [LIFTED]
    finally:
        store.engine.dispose()


def test_the_lease_holder_killed_while_engaged_another_takes_over_and_the_limit_survives(
    tmp_path: t.Any,
) -> None:
    """A real process holds the alert evaluation's lease, engages containment and is
    killed (SIGKILL: no release, no goodbye). While its lease lasts, another process
    only applies what the store holds; once it expires, that process takes the lease and
    carries the containment on (the same one, not engaged a second time)."""
    import subprocess
    import sys
    import textwrap
    import time

    from querywatch.alerts.evaluation import LEASE

    url = f"sqlite:///{tmp_path}/qw.db"
    store = Store(url)
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        script = textwrap.dedent(
            f"""
            import time
            from flask import Flask
            from querywatch.alerts.evaluation import LEASE
            from querywatch.guard import Guard, load_guard
            from querywatch.store import Store
            store = Store({url!r})
            guard = Guard(Flask("first"), load_guard({{"containment": "enforce"}}))
            assert store.acquire_lease(LEASE, "first", time.time(), 2.0)
            print(guard.contain(store, leader=True, now=time.time(), width=60), flush=True)
            time.sleep(600)
            """
        )
        first = subprocess.Popen(  # noqa: S603 (our own script)
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
        )
        assert first.stdout is not None
        said = first.stdout.readline()
        assert "guard engaged on GET /api/orders/lookup: at most 1 at once" in said, said
        engaged = read_state(store)[LOOKUP]
        first.kill()
        first.wait()
        first.stdout.close()
        second = _guard("enforce")
        if not store.acquire_lease(LEASE, "second", time.time(), 2.0):
            # The dead process's lease still runs: the survivor applies, decides nothing.
            assert second.contain(store, leader=False, now=time.time(), width=60) == []
            assert second.bulkheads[LOOKUP].limit == 1
        deadline = time.monotonic() + 120  # a watchdog, not a measurement
        while not store.acquire_lease(LEASE, "second", time.time(), 2.0):
            assert time.monotonic() < deadline, "the dead process's lease never expired"
            time.sleep(0.1)
        assert second.contain(store, leader=True, now=time.time(), width=60) == []
        carried = second.contained[LOOKUP]
        assert (carried.since, carried.limit, carried.alert) == (engaged.since, 1, PAGE)
        assert carried.updated > engaged.updated
        assert second.bulkheads[LOOKUP].limit == 1
    finally:
        store.engine.dispose()


def test_a_person_sees_lifts_and_pins_it_from_the_command_line(tmp_path: t.Any) -> None:
    from click.testing import CliRunner

    from querywatch.cli import cli

    url = f"sqlite:///{tmp_path}/qw.db"
    store = Store(url)
    store.migrate()
    runner = CliRunner()
    leader = _guard("enforce")
    try:
        result = runner.invoke(cli, ["guard", "status", "--store", url])
        assert (result.exit_code, result.output) == (0, "No endpoint is contained.\n")
        _page(store, "firing", EVIDENCE, 1560.0)
        leader.contain(store, leader=True, now=1561.0, width=60)
        result = runner.invoke(cli, ["guard", "status", "--store", url])
        assert result.exit_code == 0
        assert result.output.startswith("GET /api/orders/lookup: enforce, at most 1 at once")
        assert "(alert slo:latency:page); its query 185 ms (calm: 19 ms)" in result.output
        # Lifted by hand: gone, and the alert, still firing, does not engage it again.
        result = runner.invoke(cli, ["guard", "lift", LOOKUP, "--store", url])
        assert result.exit_code == 0, result.output
        assert leader.contain(store, leader=True, now=1562.0, width=60) == []
        other = _guard("enforce")  # nor does another lease holder
        assert other.contain(store, leader=True, now=1563.0, width=60) == []
        assert other.contained == {}
        result = runner.invoke(cli, ["guard", "lift", LOOKUP, "--store", url])
        assert result.exit_code == 1
        assert "GET /api/orders/lookup is not contained" in result.output
        # Pinned with a limit: enforced everywhere, and the resolved alert keeps it.
        result = runner.invoke(cli, ["guard", "pin", LOOKUP, "--limit", "2", "--store", url])
        assert result.exit_code == 0, result.output
        _page(store, "resolved", EVIDENCE, 1600.0)
        assert _quiet(other, store, 1601.0) == []
        assert other.bulkheads[LOOKUP].limit == 2
        result = runner.invoke(cli, ["guard", "pin", "GET /x", "--store", url])
        assert result.exit_code == 1
        assert "Give --limit to put it under one." in result.output
        result = runner.invoke(cli, ["guard", "pin", LOOKUP, "--limit", "0", "--store", url])
        assert result.exit_code == 2
    finally:
        store.engine.dispose()


def test_each_decision_goes_on_the_alerts_incident_and_to_its_targets(tmp_path: t.Any) -> None:
    from querywatch.incidents.manager import Incidents
    from querywatch.incidents.manager import follow_alerts

    store = Store(f"sqlite:///{tmp_path}/qw.db")
    incidents = Incidents(store)
    guard = _guard("enforce")
    guard.on_event = lambda key, text, at: incidents.guard_event(key, text, at) is not None
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        # Engaged before the incident worker opened the alert's incident: the event waits.
        guard.contain(store, leader=True, now=1561.0, width=60)
        assert incidents.recent() == []
        follow_alerts(incidents, now=1562.0)
        (inc,) = incidents.recent()
        queued = len(store.due_messages(1e12, 1000))
        guard.contain(store, leader=True, now=1563.0, width=60)
        _page(store, "resolved", EVIDENCE, 1600.0)
        _quiet(guard, store, 1601.0)
        said = [(e.at, e.actor, e.text) for e in incidents.timeline(inc.id) if e.kind == "guard"]
        # Each at the moment the guard decided, the engage before its incident opened.
        assert said == [
            (1561.0, "querywatch", guard.events[0]),
            (1603.0, "querywatch", LIFTED),
        ]
        assert guard.events[0].startswith("guard engaged on GET /api/orders/lookup: at most 1")
        # Each went to the one target the incident had notified (the policy's log).
        assert len(store.due_messages(1e12, 1000)) == queued + 2
        assert guard._untold == []
    finally:
        store.engine.dispose()


def test_a_lift_told_after_the_incident_resolved_goes_on_its_timeline(tmp_path: t.Any) -> None:
    from querywatch.incidents.manager import Incidents
    from querywatch.incidents.manager import follow_alerts

    store = Store(f"sqlite:///{tmp_path}/qw.db")
    incidents = Incidents(store)
    guard = _guard("enforce")
    guard.on_event = lambda key, text, at: incidents.guard_event(key, text, at) is not None
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        follow_alerts(incidents, now=1561.0)
        guard.contain(store, leader=True, now=1562.0, width=60)
        _page(store, "resolved", EVIDENCE, 1600.0)
        # The incident worker resolves the incident before the guard's round lifts it.
        follow_alerts(incidents, now=1600.5)
        (inc,) = incidents.recent()
        assert inc.status == "resolved"
        _quiet(guard, store, 1601.0)
        texts = [e.text for e in incidents.timeline(inc.id) if e.kind == "guard"]
        assert texts[-1] == LIFTED
        assert guard._untold == []
        # Long after, an event finds no incident to go on, and waits its turns out.
        assert incidents.guard_event(PAGE, "late", 1601.0 + 3600) is None
    finally:
        store.engine.dispose()


def test_a_person_who_resolves_the_incident_of_a_held_page_lifts_its_limit(
    tmp_path: t.Any,
) -> None:
    """The page stays firing while its limit holds; the person who resolves its incident
    (the fix is out, or they accept the risk) lifts the limit at the guard's next round,
    on the incident's timeline; the page still firing does not engage it again. An
    incident resolved before the limit was set lifts nothing; a pinned limit stays."""
    from querywatch.incidents.manager import Incidents
    from querywatch.incidents.manager import follow_alerts

    store = Store(f"sqlite:///{tmp_path}/qw.db")
    incidents = Incidents(store)
    guard = _guard("enforce")
    guard.on_event = lambda key, text, at: incidents.guard_event(key, text, at) is not None
    guard.incident_resolved = incidents.resolved_since
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        follow_alerts(incidents, now=1561.0)
        (inc,) = incidents.recent()
        guard.contain(store, leader=True, now=1562.0, width=60)
        assert guard.holds(store) == {PAGE: "the guard limits GET /api/orders/lookup to 1 at once"}
        # Still open: the limit holds round after round.
        assert guard.contain(store, leader=True, now=1563.0, width=60) == []
        assert LOOKUP in guard.contained
        incidents.resolve(inc.id, "alice", "Index created by hand.", now=1570.0)
        said = guard.contain(store, leader=True, now=1571.0, width=60)
        lifted = f"guard lifted on GET /api/orders/lookup: its incident #{inc.id} was resolved."
        assert said == [lifted]
        assert guard.contained == {}
        assert guard.holds(store) == {}
        assert [e.text for e in incidents.timeline(inc.id) if e.kind == "guard"][-1] == lifted
        # The page still fires (its windows still hold the bad requests): not again.
        assert guard.contain(store, leader=True, now=1572.0, width=60) == []
        assert guard.contained == {}
        # A pinned limit is a person's: resolving the incident leaves it.
        pin(store, LOOKUP, 2, 1573.0)
        assert guard.contain(store, leader=True, now=1574.0, width=60) == []
        assert guard.contained[LOOKUP].pinned
        # An incident resolved before a limit was set lifts nothing.
        assert incidents.resolved_since(PAGE, 1570.0) == inc.id
        assert incidents.resolved_since(PAGE, 1575.0) is None
    finally:
        store.engine.dispose()


def test_the_dashboard_shows_lifts_and_pins_with_token_and_csrf(guarded_shop: Flask) -> None:
    from conftest import GUARDED_TOKEN
    from querywatch.guard._state import read

    auth = {"Authorization": f"Bearer {GUARDED_TOKEN}"}
    app = guarded_shop
    state = app.extensions["querywatch"]
    store = state.store
    _page(store, "firing", EVIDENCE, 1560.0)
    state.guard.contain(store, leader=True, now=1561.0, width=60)
    client = app.test_client()
    page = client.get("/_querywatch/alerts", headers=auth)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<table id="guard">' in html
    assert "<code>GET /api/orders/lookup</code></td><td>enforce</td>" in html
    lift = "/_querywatch/api/guard/lift"
    body = {"endpoint": LOOKUP}
    assert client.post(lift, json=body, headers=auth).status_code == 403
    csrf = client.get("/_querywatch/api/csrf", headers=auth).get_json()["csrf"]
    headers = {**auth, "X-CSRF-Token": csrf}
    assert client.post(lift, json=body, headers={"X-CSRF-Token": csrf}).status_code == 401
    r = client.post(lift, json=body, headers=headers)
    assert (r.status_code, r.get_json()) == (200, {"guard": []})
    assert read(store) == {}
    assert client.post(lift, json=body, headers=headers).status_code == 409
    pin = "/_querywatch/api/guard/pin"
    assert client.post(pin, json={**body, "limit": 0}, headers=headers).status_code == 400
    assert client.post(pin, json=body, headers=headers).status_code == 409
    r = client.post(pin, json={**body, "limit": 2}, headers=headers)
    assert r.status_code == 200
    assert [(c["endpoint"], c["limit"], c["pinned"]) for c in r.get_json()["guard"]] == [
        (LOOKUP, 2, True)
    ]
    r = client.post("/_querywatch/api/guard/shed", json=body, headers=headers)
    assert r.status_code == 404
    assert "the actions are lift, pin" in r.get_json()["error"]


def test_a_change_of_the_limit_says_what_it_spares_the_rest_of_the_app(tmp_path: t.Any) -> None:
    """Each new limit tells the incident what it costs the endpoint and whether the rest
    of the app is within its objectives, from the store's last two whole buckets."""
    import time

    from querywatch.fingerprint import fingerprint
    from querywatch.guard._state import write
    from test_alert_eval import AVAILABILITY
    from test_alert_eval import LATENCY
    from test_alert_eval import LOOKUP_SQL
    from test_alert_eval import _replay

    store = Store(f"sqlite:///{tmp_path}/qw.db")
    try:
        start = float(int(time.time()) - 120)
        onset = start + 60
        # Lookups take 2 s and half of them fail from the onset; products stay fine.
        _replay(store, start, 100, incident=(onset, start + 100))
        guard = _guard("enforce")
        guard.objectives = ((AVAILABILITY.name, 0.999), (LATENCY.name, 0.99))
        _page(store, "firing", EVIDENCE, onset + 5)
        shape = fingerprint(LOOKUP_SQL).id
        write(store, {LOOKUP: Containment(LOOKUP, "enforce", 4, PAGE, shape, 19.0, None,
                                          onset + 10, onset + 10)})  # fmt: skip
        events = guard.contain(store, leader=True, now=start + 90.5, width=1)
        assert events == [
            "guard on GET /api/orders/lookup: at most 2 at once (its query: 2000 ms); the"
            " rest of the app is within its objectives."
        ]
        # Had it limited the products instead, the lookups outside it (one in three fails,
        # each over 300 ms) miss both.
        missed = guard._missed(store, "GET /api/products/<int:id>", start + 90, 1)
        status = guard._status(0.38, missed)
        assert status == (
            "; 38% of its requests shed; outside it, availability 66.7% (objective 99.9%),"
            " latency 0.0% (objective 99.0%)"
        )
    finally:
        store.engine.dispose()


def test_a_page_refused_at_first_is_judged_again_while_it_fires(tmp_path: t.Any) -> None:
    """Seconds after the onset the overload has not sorted the culprit from what it slows
    (the page's evidence: 60% of the bad requests on the lookup). While the page fires
    and nothing is contained, each round gathers its evidence again; the refusal is said
    once, and the guard engages once the store puts the bad requests on the lookup."""
    import time

    from querywatch.alerts import evidence as gather_evidence
    from test_alert_eval import _replay

    store = Store(f"sqlite:///{tmp_path}/qw.db")
    try:
        start = float(int(time.time()) - 120)
        onset = start + 60
        _replay(store, start, 100, incident=(onset, start + 100))
        at_page = gather_evidence.gather(
            store, onset + 10.5, 10, width=1, gap=10, objective="latency"
        )
        assert at_page["bad_endpoints"][0]["endpoint"] == LOOKUP
        # As at the page: the lookup's share not sorted out yet.
        at_page["bad_endpoints"] = [
            {"endpoint": LOOKUP, "events": 30, "bad": 30},
            {"endpoint": "GET /api/products/<int:id>", "events": 70, "bad": 20},
        ]
        at_page["objective"] = {**at_page["objective"], "bad": 50}
        _page(store, "firing", at_page, onset + 10.5)
        guard = _guard("enforce")
        first = guard.contain(store, leader=True, now=onset + 11, width=1)
        assert first == [
            "guard not engaged: 60% of the bad requests are GET /api/orders/lookup, under the"
            " 80% that implicates one endpoint."
        ]
        assert guard.contained == {}
        # The next round reads the store: every bad request is the lookup's.
        second = guard.contain(store, leader=True, now=onset + 12, width=1)
        assert len(second) == 1
        assert second[0].startswith("guard engaged on GET /api/orders/lookup: at most 1 at once")
        assert guard.contained[LOOKUP].alert == PAGE
        assert guard.bulkheads[LOOKUP].limit == 1
    finally:
        store.engine.dispose()


def test_a_limit_lifted_by_a_fix_is_not_engaged_again_while_its_page_fires(
    tmp_path: t.Any,
) -> None:
    """The fix brings the lookup down to 1 ms and the limit lifts itself while the page
    still fires (its windows still hold the slow lookups of before the fix). Judged
    again on that evidence, the page would engage the lookup again: it does not, nor for
    a lease holder that takes over, nor another page whose evidence began before the
    lift."""
    import time

    from querywatch._stats import Stats
    from querywatch.alerts import evidence as gather_evidence
    from querywatch.fingerprint import fingerprint
    from querywatch.guard._state import write
    from test_alert_eval import LATENCY
    from test_alert_eval import LOOKUP_SQL
    from test_alert_eval import PRODUCT_SQL
    from test_alert_eval import _replay
    from test_alert_eval import _request

    store = Store(f"sqlite:///{tmp_path}/qw.db")
    try:
        start = float(int(time.time()) - 120)
        onset = start + 60
        fixed = start + 100
        _replay(store, start, 100, incident=(onset, fixed))
        stats = Stats(bucket_seconds=1, objectives=(LATENCY,))
        for k in range(12):  # after the fix: three lookups a second, 1 ms each
            stats.add(_request(LOOKUP, LOOKUP_SQL, 0.001, fixed + k / 3), [])
        store.write(stats.drain())
        ev = gather_evidence.gather(store, onset + 10.5, 10, width=1, gap=10, objective="latency")
        _page(store, "firing", ev, onset + 10.5)
        # Still firing after the fix, the page's evidence blames the lookup.
        again = gather_evidence.gather(store, fixed + 3.5, 10, width=1, gap=10, objective="latency")
        assert engage(Policy(mode="enforce"), PAGE, again, fixed + 3.5).containment is not None
        shape = fingerprint(LOOKUP_SQL).id
        write(store, {LOOKUP: Containment(LOOKUP, "enforce", 1, PAGE, shape, None, 2000.0,
                                          onset + 11, fixed, calm_rounds=2, floor_ms=2000.0,
                                          changed=onset + 11)})  # fmt: skip
        guard = _guard("enforce")
        guard._judged[PAGE] = onset + 10.5  # it engaged this page
        said = guard.contain(store, leader=True, now=fixed + 3.5, width=1)
        assert said == [
            "guard lifted on GET /api/orders/lookup: its query is down to 1 ms, from 2000 ms"
            " at best while limited, 3 rounds in a row."
        ]
        for k in range(3):
            assert guard.contain(store, leader=True, now=fixed + 4.5 + k, width=1) == []
        successor = _guard("enforce")
        assert successor.contain(store, leader=True, now=fixed + 8.5, width=1) == []
        assert read_state(store) == {}
        # Another page fires after the lift, its evidence over a window that began before
        # it (the replay's availability page did): it engages nothing either.
        other = "slo:availability:page"
        store.set_alert_states(
            [AlertChange(other, "slo", "page", "firing", fixed + 8.6, "availability", again)]
        )
        for k in range(2):
            assert successor.contain(store, leader=True, now=fixed + 9 + k, width=1) == []
        assert read_state(store) == {}
        # Nor one whose evidence, begun before the lift, blames another endpoint (the
        # few slow product reads of the recovery): it tells of the app before the fix.
        products = "GET /api/products/<int:id>"
        recovery = {
            **again,
            "bad_endpoints": [{"endpoint": products, "events": 60, "bad": 6}],
            "objective": {**again["objective"], "bad": 6},
        }
        assert engage(Policy(mode="enforce"), "x", recovery, fixed + 9).containment is not None
        third = "slo:latency:page:2"
        store.set_alert_states(
            [AlertChange(third, "slo", "page", "firing", fixed + 11, "latency", recovery)]
        )
        assert successor.contain(store, leader=True, now=fixed + 11.5, width=1) == []
        assert read_state(store) == {}
        # A window gathered wholly after the lift, while the pages still fire on their
        # long windows: one lookup of sixty over the objective. It blames the lookup, but
        # alone it would page nobody (a replay's engaged a limit at 1 on a 1 ms query
        # that nothing could lift, and its page stayed firing): it engages nothing.
        successor.min_bad_events = 5
        successor.objectives = (("latency", 0.99), ("availability", 0.999))
        later = fixed + 12
        stats = Stats(bucket_seconds=1, objectives=(LATENCY,))
        for second in range(50):
            for k in range(6):
                # Calm, but one lookup slow at 25 s; from 40 s on, the fix did not hold.
                slow = second >= 40 or (second, k) == (25, 0)
                at = later + second + k / 6
                stats.add(_request(LOOKUP, LOOKUP_SQL, 0.4 if slow else 0.001, at), [])
                for j in range(2):  # and the rest of the app, calm
                    stats.add(_request(products, PRODUCT_SQL, 0.001, at + j / 20), [])
        store.write(stats.drain())
        now = later + 30.5
        lone = gather_evidence.gather(store, now, 10, width=1, gap=10, objective="latency")
        assert lone["objective"]["bad"] == 1
        assert engage(Policy(mode="enforce"), third, lone, now).containment is not None
        assert successor.contain(store, leader=True, now=now, width=1) == []
        assert read_state(store) == {}
        # The fix did not hold: every lookup of a later window over the objective. That
        # window alone pages, and the limit is engaged again.
        said = successor.contain(store, leader=True, now=later + 50.5, width=1)
        assert len(said) == 1
        assert said[0].startswith("guard engaged on GET /api/orders/lookup")
        assert LOOKUP in read_state(store)
    finally:
        store.engine.dispose()


def test_a_refusal_that_still_holds_is_said_once(tmp_path: t.Any) -> None:
    """A page whose endpoint is never_shed is judged again each round, and says nothing
    more."""
    store = Store(f"sqlite:///{tmp_path}/qw.db")
    guard = _guard("enforce", endpoints={LOOKUP: {"never_shed": True}})
    try:
        _page(store, "firing", EVIDENCE, 1560.0)
        assert guard.contain(store, leader=True, now=1561.0, width=60) == [
            "guard not engaged: GET /api/orders/lookup is marked never_shed."
        ]
        for i in range(3):
            assert guard.contain(store, leader=True, now=1562.0 + i, width=60) == []
        assert guard.contained == {}
    finally:
        store.engine.dispose()


@pytest.mark.allow_internal_errors
def test_a_user_function_that_fails_leaves_the_limit_in_force() -> None:
    """The app's QUERYWATCH_USER raising while an endpoint is contained: the request is
    counted as a new one and the limit still holds (it is shed, not let through)."""
    import types

    from querywatch import _failopen

    guard = _guard("enforce")

    def broken(request: t.Any) -> str:
        raise LookupError("no session")

    guard.user_function = broken
    guard.apply({LOOKUP: _engaged(1)})
    assert guard.bulkheads[LOOKUP].enter("holder")
    before = _failopen.internal_error_counts().get("guard.user", 0)
    record = types.SimpleNamespace(name=LOOKUP, held=None)
    with Flask(__name__).test_request_context("/api/orders/lookup"):
        response = guard.admit(record)
    assert response is not None
    assert response.status_code == 503
    assert record.held is None
    assert _failopen.internal_error_counts()["guard.user"] == before + 1
