"""The guard's part of the replay: what containment did during the outage, and what the
shop's users saw, outside the culprit endpoint and on it, with the guard (``--guard
enforce`` or ``shadow``) or without it (``--guard off``).

Every figure is the users' side, measured by the load process, over the outage before
the fix (from the onset to the fix, or to the end with ``--fix=none``):

- outside the culprit endpoint, the share of requests that succeeded and the share that
  met the latency objective (each endpoint's threshold, as the shop's objectives set it);
- the culprit endpoint's own success rate;
- the share of users affected: users who got an error (the seed's "unable to access the
  application"), beside the share who used the culprit endpoint, and the share who got
  an error or a slow answer.

Each run keeps its figures in the work folder (``guard-<mode>.json``), so the summary of
one run sets them beside the last run of the other mode.
"""

from __future__ import annotations

import json
import math
import os
import typing as t

from .load import LOOKUP_ROUTE

if t.TYPE_CHECKING:
    from rich.console import Console

    from ..incidents.manager import TimelineEvent
    from .replay import Replay
    from .traffic import Sample

__all__ = ["figures", "print_figures", "remember", "the_other_run"]


def threshold_ms(replay: Replay, route: str) -> float | None:
    """The latency objective's threshold for ``route`` in this replay (None: the route
    has no latency objective)."""
    return replay.threshold_for(route)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def figures(
    replay: Replay,
    during: t.Sequence[Sample],
    timeline: t.Sequence[TimelineEvent],
    *,
    since: float,
    until: float,
    alert_at: float | None,
    fix_at: float | None,
) -> dict[str, t.Any]:
    """The guard's figures for the outage's requests (``during``, sent from ``since`` to
    ``until``), and its decisions from the incident's timeline."""
    outside = [s for s in during if s.route != LOOKUP_ROUTE]
    lookups = [s for s in during if s.route == LOOKUP_ROUTE]
    limits = {route: threshold_ms(replay, route) for route in {s.route for s in during}}

    def slow(s: Sample) -> bool:
        limit = limits[s.route]
        return limit is not None and s.seconds * 1000 > limit

    failed_out = sum(1 for s in outside if s.failed)
    bad_out = sum(1 for s in outside if s.failed or slow(s))
    ok_lookups = sum(1 for s in lookups if not s.failed)
    users: dict[str, list[bool]] = {}  # user -> [failed, failed or slow, used the culprit]
    for s in during:
        seen = users.setdefault(s.user, [False, False, False])
        seen[0] = seen[0] or s.failed
        seen[1] = seen[1] or s.failed or slow(s)
        seen[2] = seen[2] or s.route == LOOKUP_ROUTE
    n_users = len(users)
    affected = sum(1 for u in users.values() if u[0])
    bad_users = sum(1 for u in users.values() if u[1])
    used = sum(1 for u in users.values() if u[2])
    affected_outside = sum(1 for u in users.values() if u[0] and not u[2])

    # The shop's objectives as querywatch counted them (each request's own time in the
    # app, against its endpoint's threshold), in the whole buckets of the window: by
    # kind, an endpoint's own latency objective (recent orders', checkout's) with the rest.
    objectives = {}
    for kind in ("availability", "latency"):
        events = bad = 0
        for objective in replay.state.settings.objectives:
            if objective.kind != kind:
                continue
            rows = replay.state.store.slo_endpoints(
                objective.name, math.ceil(since), until - 1, 1000
            )
            events += sum(n for ep, n, _ in rows if ep != LOOKUP_ROUTE)
            bad += sum(b for ep, _, b in rows if ep != LOOKUP_ROUTE)
        objectives[kind] = {
            "events": events,
            "bad": bad,
            "met_ratio": _ratio(events - bad, events),
        }
    guard = [e for e in timeline if e.kind == "guard"]
    engaged = next((e for e in guard if e.text.startswith("guard engaged")), None)
    lifted = next((e for e in guard if e.text.startswith("guard lifted")), None)
    return {
        "mode": replay.options.guard,
        "outside_culprit": {
            "requests": len(outside),
            "failed": failed_out,
            "success_ratio": _ratio(len(outside) - failed_out, len(outside)),
            "failed_or_slow": bad_out,
            "latency_ok_ratio": _ratio(len(outside) - bad_out, len(outside)),
            "objectives": objectives,
        },
        "culprit": {
            "endpoint": LOOKUP_ROUTE,
            "requests": len(lookups),
            "succeeded": ok_lookups,
            "success_ratio": _ratio(ok_lookups, len(lookups)),
            "shed": sum(1 for s in lookups if s.status == 503),
        },
        "users": {
            "seen": n_users,
            "affected": affected,
            "affected_ratio": _ratio(affected, n_users),
            "affected_without_the_culprit": affected_outside,
            "used_culprit": used,
            "used_culprit_ratio": _ratio(used, n_users),
            "failed_or_slow": bad_users,
            "failed_or_slow_ratio": _ratio(bad_users, n_users),
        },
        "engaged": engaged.text if engaged else None,
        "page_to_engaged_s": (
            round(engaged.at - alert_at, 2) if engaged is not None and alert_at else None
        ),
        "lifted": lifted.text if lifted else None,
        "fix_to_lifted_s": round(lifted.at - fix_at, 2) if lifted is not None and fix_at else None,
        "events": [e.text for e in guard],
    }


def _path(replay: Replay, mode: str) -> str:
    return os.path.join(replay.workdir, f"guard-{mode}.json")


def remember(replay: Replay, found: dict[str, t.Any], database: str) -> None:
    """Keep this run's figures for the next run of another mode to compare with."""
    with open(_path(replay, found["mode"]), "w", encoding="utf-8") as f:
        json.dump({**found, "database": database}, f, indent=2)


def the_other_run(replay: Replay, database: str) -> dict[str, t.Any] | None:
    """The figures of the last run with the guard off (or, for an off run, enforcing) on
    the same database, if the work folder has one."""
    other = "enforce" if replay.options.guard == "off" else "off"
    try:
        with open(_path(replay, other), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("database") == database else None


def _pct(x: float | None) -> str:
    return f"{x:.1%}" if x is not None else "-"


def _lines(g: dict[str, t.Any]) -> list[tuple[str, str]]:
    out, cul, users = g["outside_culprit"], g["culprit"], g["users"]
    latency = (out.get("objectives") or {}).get("latency") or {}
    return [
        (
            f"outside {cul['endpoint']}",
            f"{_pct(out['success_ratio'])} succeeded; {_pct(latency.get('met_ratio'))} met the"
            f" latency objective ({_pct(out['latency_ok_ratio'])} as the users timed them)",
        ),
        (
            cul["endpoint"],
            f"{_pct(cul['success_ratio'])} succeeded ({cul['shed']} shed)",
        ),
        (
            "users affected",
            f"{_pct(users['affected_ratio'])} got an error ({users['affected']} of"
            f" {users['seen']}); {_pct(users['used_culprit_ratio'])} used the lookup",
        ),
    ]


def print_figures(g: dict[str, t.Any], other: dict[str, t.Any] | None, console: Console) -> None:
    """The guard's part of the summary, and the other mode's last run beside it."""
    from rich.table import Table

    from .._console import print_whole

    console.rule("The outage before the fix, as the users saw it")
    table = Table(show_header=False, box=None, padding=(0, 2))
    if g["mode"] == "off":
        table.add_row("guard", "off (--guard off): nothing limited the lookup")
    elif g["engaged"]:
        table.add_row(
            "guard",
            f"{g['engaged']} {g['page_to_engaged_s']:.2f} s after the page"
            + (f"; lifted {g['fix_to_lifted_s']:.1f} s after the fix" if g["lifted"] else ""),
        )
    else:
        table.add_row("guard", g["events"][0] if g["events"] else "made no decision")
    for name, text in _lines(g):
        table.add_row(name, text)
    if other is not None:
        table.add_row("", "")
        table.add_row(f"last --guard {other['mode']} run", "")
        for name, text in _lines(other):
            table.add_row(f"  {name}", text)
    print_whole(console, table)
