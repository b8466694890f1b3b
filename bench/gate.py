"""What the pytest plugin adds to the wall time of a test suite: 200 small database
tests, run whole (``python -m pytest`` in a fresh process each time) with the plugin
disabled and in each of its modes, alternating, in one run.

The suite: a Flask + Flask-SQLAlchemy app with querywatch (as it runs in production), a
SQLite file seeded once a session, and 200 tests of one or two requests each (1 to 4
statements a request), as a project's API tests are.

Modes:

* ``off``: ``-p no:querywatch`` (the plugin not loaded at all);
* ``budget``: ``[tool.querywatch]`` with ``max_queries`` and ``n_plus_one = "forbid"``
  (every test collected and judged; no plans);
* ``budget+plans``: also ``full_scans = "forbid"`` (each read shape explained once);
* ``baseline``: the full budget and ``--querywatch-baseline`` against a baseline recorded
  beforehand (plans, an entry built and compared per test).

    python bench/gate.py [--rounds 5] [--tests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

APP = """
from flask import Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from querywatch import QueryWatch


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Team(db.Model):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), index=True)
    members: Mapped[list["Member"]] = relationship(back_populates="team")


class Member(db.Model):
    __tablename__ = "members"
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    email: Mapped[str] = mapped_column(String(80), index=True)
    team: Mapped[Team] = relationship(back_populates="members")


def create_app(url):
    app = Flask("benchapp")
    app.config.update(SQLALCHEMY_DATABASE_URI=url, QUERYWATCH_ADVISE=False,
                      QUERYWATCH_FLUSH_INTERVAL=3600)
    db.init_app(app)
    QueryWatch(app)

    @app.get("/teams/<int:team_id>")
    def team(team_id):
        t = db.session.get(Team, team_id)
        return jsonify({"name": t.name})

    @app.get("/teams/<int:team_id>/members")
    def members(team_id):
        rows = db.session.scalars(select(Member).where(Member.team_id == team_id)).all()
        return jsonify([m.email for m in rows])

    @app.get("/teams")
    def teams():
        rows = db.session.scalars(
            select(Team).options(selectinload(Team.members)).order_by(Team.id).limit(5)
        ).all()
        return jsonify([{"name": t.name, "n": len(t.members)} for t in rows])

    @app.get("/members/by-email/<email>")
    def by_email(email):
        m = db.session.scalar(select(Member).where(Member.email == email))
        t = db.session.get(Team, m.team_id)
        return jsonify({"team": t.name})

    return app


def seed(app):
    with app.app_context():
        db.drop_all()
        db.create_all()
        for i in range(1, 51):
            t = Team(id=i, name=f"team {i}")
            t.members = [Member(email=f"m{i}-{j}@example.com") for j in range(4)]
            db.session.add(t)
        db.session.commit()
"""

CONFTEST = """
import pytest
from benchapp import create_app, seed


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    app = create_app(f"sqlite:///{tmp_path_factory.mktemp('db')}/bench.db")
    seed(app)
    return app


@pytest.fixture
def client(app):
    return app.test_client()
"""

TESTS = """
import pytest


@pytest.mark.parametrize("i", range(1, {n} + 1))
def test_team(client, i):
    assert client.get(f"/teams/{{i % 50 + 1}}").status_code == 200


@pytest.mark.parametrize("i", range(1, {n} + 1))
def test_members(client, i):
    assert client.get(f"/teams/{{i % 50 + 1}}/members").status_code == 200


@pytest.mark.parametrize("i", range(1, {n} + 1))
def test_listing(client, i):
    assert client.get("/teams").status_code == 200
    assert client.get(f"/teams/{{i % 50 + 1}}").status_code == 200


@pytest.mark.parametrize("i", range(1, {n} + 1))
def test_lookup(client, i):
    r = client.get(f"/members/by-email/m{{i % 50 + 1}}-1@example.com")
    assert r.status_code == 200
"""

BUDGET = """
[tool.querywatch]
max_queries = 10
n_plus_one = "forbid"
"""

PLANS = BUDGET + 'full_scans = "forbid"\n'


def _project(root: str, tests: int) -> None:
    with open(os.path.join(root, "benchapp.py"), "w") as f:
        f.write(APP)
    with open(os.path.join(root, "conftest.py"), "w") as f:
        f.write(CONFTEST)
    with open(os.path.join(root, "test_api.py"), "w") as f:
        f.write(textwrap.dedent(TESTS).format(n=tests // 4))


MODES = {
    "off": ("", ["-p", "no:querywatch"]),
    "budget": (BUDGET, []),
    "budget+plans": (PLANS, []),
    "baseline": (PLANS, ["--querywatch-baseline", "baseline.json"]),
}


def _env(bytecode_cache: bool) -> dict[str, str]:
    env = dict(os.environ)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(root: str, mode: str, env: dict[str, str]) -> float:
    config, args = MODES[mode]
    with open(os.path.join(root, "pyproject.toml"), "w") as f:
        f.write(config)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{mode}: pytest failed\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run as with PYTHONDONTWRITEBYTECODE=1: every module compiled afresh each run"
        " (pytest rewrites the plugin's modules then, each run)",
    )
    args = parser.parse_args()
    env = _env(not args.no_bytecode_cache)
    with tempfile.TemporaryDirectory(prefix="qw-gate-bench-") as root:
        _project(root, args.tests)
        # Record the baseline the 'baseline' mode compares with; warm the disk cache.
        config, extra = MODES["baseline"]
        with open(os.path.join(root, "pyproject.toml"), "w") as f:
            f.write(config)
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
            cwd=root, capture_output=True, check=True, env=env,
        )  # fmt: skip
        walls: dict[str, list[float]] = {m: [] for m in MODES}
        order = list(MODES)
        for r in range(args.rounds):
            for mode in order if r % 2 == 0 else order[::-1]:
                walls[mode].append(_run(root, mode, env))
            print(
                f"round {r + 1}: " + ", ".join(f"{m} {walls[m][-1]:.2f} s" for m in MODES),
                flush=True,
            )
    # Each round runs every mode back to back: a mode's ratio to 'off' in the same round
    # cancels the machine's slow drifts; the median of those ratios is the figure.
    off = statistics.median(walls["off"])
    cache = "without" if args.no_bytecode_cache else "with"
    print(
        f"\n{args.tests} tests, median of {args.rounds} rounds (wall time of the whole run,"
        f" {cache} Python's bytecode cache):"
    )
    print("| mode | median wall | ratio to off, same round (median, min-max) | per test |")
    print("|---|---:|---:|---:|")
    result = {}
    for mode, values in walls.items():
        med = statistics.median(values)
        ratios = [v / o for v, o in zip(values, walls["off"], strict=True)]
        ratio = statistics.median(ratios)
        per_test = (med - off) / args.tests * 1000
        result[mode] = {"median_s": med, "ratio": ratio, "ratios": ratios, "runs": values}
        print(
            f"| {mode} | {med:.2f} s | x{ratio:.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            f" | {per_test:+.2f} ms |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tests": args.tests, "rounds": args.rounds, "modes": result}, f, indent=2)


if __name__ == "__main__":
    main()
