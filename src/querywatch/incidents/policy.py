"""Escalation policies: who is told, in what order, how long before the next level.

PagerDuty's model: ordered levels, each with targets and a delay before the next level;
the whole policy repeats ``repeat`` times; an acknowledgement stops it. Teams may keep a
simple on-call rotation (people, a shift length, a start); the first level's team names
the incident's owner. Read from ``QUERYWATCH_ESCALATION`` (a dict, or the path of a TOML
file with the same structure) and validated at start-up; an error names the field::

    [targets.backend-slack]
    type = "slack"
    url = "https://hooks.slack.com/services/..."

    [targets.devops-mail]
    type = "email"
    to = ["devops@example.com"]
    host = "smtp.example.com"
    port = 587
    starttls = true

    [teams.backend]
    rotation = ["alice", "bob"]
    shift = "1w"
    start = "2026-11-23T09:00:00+00:00"

    [[levels]]
    team = "backend"
    targets = ["backend-slack"]
    delay_minutes = 15

    [[levels]]
    targets = ["devops-mail"]
    delay_minutes = 15

    repeat = 2
    update_minutes = 30
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import typing as t

from ..exceptions import PolicyError
from .notifiers import NOTIFIERS

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = ["Level", "Policy", "PolicyError", "Rotation", "Target", "load_policy"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a notification goes: ``kind`` is a key of
    :data:`querywatch.incidents.notifiers.NOTIFIERS`, ``options`` what its notifier
    checked."""

    name: str
    kind: str
    options: dict[str, t.Any] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class Rotation:
    """A team's on-call: ``people`` take turns of ``shift`` seconds from ``start``."""

    team: str
    people: tuple[str, ...]
    shift: float
    start: float

    def on_call(self, now: float) -> str:
        turn = math.floor((now - self.start) / self.shift)
        return self.people[turn % len(self.people)]

    def next_handoff(self, now: float) -> float:
        turn = math.floor((now - self.start) / self.shift)
        return self.start + (turn + 1) * self.shift


@dataclasses.dataclass(frozen=True)
class Level:
    targets: tuple[str, ...]
    #: Seconds before the next level is notified (unless acknowledged).
    delay: float
    team: str | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    targets: dict[str, Target]
    levels: tuple[Level, ...]
    #: Times the whole policy runs before it stops escalating.
    repeat: int = 1
    #: An open incident without a status update for this long reminds its owner.
    update_interval: float = 1800.0
    rotations: dict[str, Rotation] = dataclasses.field(default_factory=dict)

    def owner(self, now: float) -> str | None:
        """Who owns a new incident: the on-call of the first level's team."""
        for level in self.levels:
            if level.team and level.team in self.rotations:
                return self.rotations[level.team].on_call(now)
            if level.team:
                return level.team
        return None


#: Without a configured policy, incidents are written to the log, once.
DEFAULT_POLICY = Policy(targets={"log": Target("log", "log")}, levels=(Level(("log",), 0.0),))


def _seconds(field: str, value: t.Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise PolicyError(field, f"expected a duration such as '1w', '12h' or '30m', got {value!r}.")


def _minutes(field: str, value: t.Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise PolicyError(field, f"expected a number of minutes such as 15, got {value!r}.")
    return float(value) * 60.0


def _target(name: str, spec: t.Any) -> Target:
    field = f"targets.{name}"
    if not isinstance(spec, dict):
        raise PolicyError(field, f"expected a table with a 'type', got {spec!r}.")
    kind = spec.get("type")
    notifier = NOTIFIERS.get(kind) if isinstance(kind, str) else None
    if notifier is None:
        raise PolicyError(f"{field}.type", f"expected one of {', '.join(NOTIFIERS)}, got {kind!r}.")
    options = {k: v for k, v in spec.items() if k != "type"}
    return Target(name, notifier.kind, notifier.validate(field, options))


def _rotation(team: str, spec: t.Any) -> Rotation:
    field = f"teams.{team}"
    if not isinstance(spec, dict):
        raise PolicyError(field, f"expected a table with 'rotation', got {spec!r}.")
    unknown = sorted(set(spec) - {"rotation", "shift", "start"})
    if unknown:
        raise PolicyError(f"{field}.{unknown[0]}", "a team takes rotation, shift and start.")
    people = spec.get("rotation")
    if (
        not isinstance(people, list)
        or not people
        or not all(isinstance(p, str) and p for p in people)
    ):
        raise PolicyError(f"{field}.rotation", f"expected a list of people, got {people!r}.")
    shift = _seconds(f"{field}.shift", spec.get("shift", "1w"))
    if shift <= 0:
        raise PolicyError(f"{field}.shift", "a shift lasts more than 0 seconds.")
    start_raw = spec.get("start", "1970-01-05T00:00:00+00:00")  # a Monday
    try:
        start = (
            start_raw.timestamp()
            if isinstance(start_raw, dt.datetime)
            else dt.datetime.fromisoformat(str(start_raw)).timestamp()
        )
    except ValueError:
        raise PolicyError(
            f"{field}.start", f"expected an ISO 8601 time of the first handoff, got {start_raw!r}."
        ) from None
    return Rotation(team, tuple(people), shift, start)


def load_policy(value: t.Any) -> Policy:
    """The policy from a dict, a TOML file's path, or None (the default: the log)."""
    if value is None or value == "":
        return DEFAULT_POLICY
    if isinstance(value, Policy):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        import sys

        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        try:
            with open(path, "rb") as f:
                value = tomllib.load(f)
        except OSError as e:
            raise PolicyError(path, f"cannot be read ({e.strerror}).") from None
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(path, f"is not valid TOML ({e}).") from None
    if not isinstance(value, dict):
        raise PolicyError("(top)", f"expected a table (dict) or a TOML file, got {value!r}.")
    unknown = sorted(set(value) - {"targets", "teams", "levels", "repeat", "update_minutes"})
    if unknown:
        raise PolicyError(
            unknown[0], "a policy has targets, teams, levels, repeat and update_minutes."
        )
    targets = {"log": Target("log", "log")}
    raw_targets = value.get("targets", {})
    if not isinstance(raw_targets, dict):
        raise PolicyError("targets", f"expected a table of targets, got {raw_targets!r}.")
    for name, spec in raw_targets.items():
        targets[name] = _target(name, spec)
    raw_teams = value.get("teams", {})
    if not isinstance(raw_teams, dict):
        raise PolicyError("teams", f"expected a table of teams, got {raw_teams!r}.")
    rotations = {team: _rotation(team, spec) for team, spec in raw_teams.items()}
    raw_levels = value.get("levels")
    if not isinstance(raw_levels, list) or not raw_levels:
        raise PolicyError("levels", "expected a list of levels, each with 'targets'.")
    levels = []
    for i, spec in enumerate(raw_levels):
        field = f"levels[{i}]"
        if not isinstance(spec, dict):
            raise PolicyError(field, f"expected a table, got {spec!r}.")
        extra = sorted(set(spec) - {"targets", "delay_minutes", "team"})
        if extra:
            raise PolicyError(f"{field}.{extra[0]}", "a level has targets, delay_minutes, team.")
        names = spec.get("targets")
        if not isinstance(names, list) or not names:
            raise PolicyError(
                f"{field}.targets", f"expected a list of target names, got {names!r}."
            )
        for j, n in enumerate(names):
            if n not in targets:
                raise PolicyError(
                    f"{field}.targets[{j}]",
                    f"{n!r} is not a target; the targets are {', '.join(sorted(targets))}.",
                )
        team = spec.get("team")
        if team is not None and not isinstance(team, str):
            raise PolicyError(f"{field}.team", f"expected a team name, got {team!r}.")
        levels.append(
            Level(
                tuple(names),
                _minutes(f"{field}.delay_minutes", spec.get("delay_minutes", 15)),
                team,
            )
        )
    repeat = value.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise PolicyError(
            "repeat", f"expected a whole number of rounds of 1 or more, got {repeat!r}."
        )
    update = _minutes("update_minutes", value.get("update_minutes", 30))
    return Policy(targets, tuple(levels), repeat, update, rotations)


def escalation_setting(app: Flask) -> Policy:
    """The escalation policy (``QUERYWATCH_ESCALATION``: a dict, a TOML file's path, or
    None for the log only); a malformed one stops ``init_app`` with the field named."""
    return load_policy(app.config.setdefault("QUERYWATCH_ESCALATION", None))
