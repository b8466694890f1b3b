"""Python bytecodes querywatch adds to a request, counted with ``sys.settrace``.

The instruction counts of instructions.py move with the process's memory layout by more
than a change to capture is worth (its docstring says why); the bytecodes a request
executes do not. Each configuration serves one endpoint 30 times to warm up (its
background threads then stopped), then ``--requests`` times with an opcode tracer, in a
process of its own. Bytecodes are not instructions (a call or a dict lookup is one
bytecode of very different cost), so this tells whether a change made the request path
do more or less Python work, and which functions: ``--top`` lists the functions whose
counts differ between this checkout and ``--compare``'s.

    python bench/bytecodes.py [--endpoints 1-query] [--compare ../before/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import instructions

#: Each endpoint's path, as instructions.py serves it.
ENDPOINTS = {ep: path for ep, (path, _) in instructions.ENDPOINTS.items()}

SERVE = (
    """
import collections
import json
import sys
config, db_url, workdir, path, n = sys.argv[1:6]
"""
    + instructions.WARM
    + """
counts = collections.Counter()
names = {}

def name(code):
    # querywatch's functions by name alone, so two checkouts whose modules moved compare.
    path = code.co_filename
    where = "querywatch" if "/querywatch/" in path else path.rpartition("site-packages/")[2]
    return where + ":" + code.co_qualname

def trace(frame, event, arg):
    frame.f_trace_opcodes = True
    if event == "opcode":
        code = frame.f_code
        key = names.get(code)
        if key is None:
            key = names[code] = name(code)
        counts[key] += 1
    return trace

sys.settrace(trace)
for _ in range(int(n)):
    assert client.get(path).status_code == 200
sys.settrace(None)
print(json.dumps(counts))
"""
)


def count(python: str, config: str, db_url: str, path: str, n: int) -> dict[str, float]:
    workdir = tempfile.mkdtemp(prefix="qw-bytecodes-")
    out = subprocess.run(
        [python, "-c", SERVE, config, db_url, workdir, path, str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {k: v / n for k, v in json.loads(out.stdout.splitlines()[-1]).items()}


def _querywatch(counts: dict[str, float]) -> float:
    return sum(v for k, v in counts.items() if k.startswith("querywatch:"))


def _minus(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) - b.get(k, 0) for k in a.keys() | b.keys()}


def _print_top(this: dict[str, float], that: dict[str, float], n: int) -> None:
    """The ``n`` functions whose counts differ most between two runs, this minus that."""
    diff = {k: this.get(k, 0) - that.get(k, 0) for k in this.keys() | that.keys()}
    for k in sorted(diff, key=lambda k: -abs(diff[k]))[:n]:
        print(f"    {diff[k]:+10.1f}  {k}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--compare", metavar="PYTHON", help="Another checkout's interpreter.")
    parser.add_argument("--top", type=int, default=0, help="Functions that differ most.")
    parser.add_argument(
        "--guard",
        action="store_true",
        help="Also count querywatch with a guard configured but not engaged, and what it"
        " adds to querywatch alone.",
    )
    parser.add_argument(
        "--beside",
        default="",
        help="Comma-separated: sentry, otel. Also count querywatch beside sentry-sdk or"
        " OpenTelemetry, against each alone: the bytecodes it adds there, and its own.",
    )
    args = parser.parse_args()

    from sqlalchemy import create_engine

    from querywatch.demo import shop

    workdir = tempfile.mkdtemp(prefix="qw-bytecodes-")
    db_url = f"sqlite:///{workdir}/shop.db"
    engine = create_engine(db_url)
    shop.seed(engine, 0.05)
    engine.dispose()

    head = f"{'endpoint':<12}{'none':>12}{'querywatch':>12}{'added':>10}{'':>8}{'in qw':>8}"
    if args.compare:
        head += f"{'compared':>12}{'added':>10}{'in qw':>8}{'this/compared':>15}"
    print(head)
    for ep in (e for e in args.endpoints.split(",") if e):
        path = ENDPOINTS[ep]
        none_counts = count(sys.executable, "none", db_url, path, args.requests)
        none = sum(none_counts.values())
        now = count(sys.executable, "querywatch", db_url, path, args.requests)
        total = sum(now.values())
        line = (
            f"{ep:<12}{none:>12,.0f}{total:>12,.0f}{total - none:>10,.0f}"
            f"{(total - none) / none:>8.1%}{_querywatch(now):>8,.0f}"
        )
        if args.compare:
            other = count(args.compare, "querywatch", db_url, path, args.requests)
            o_total = sum(other.values())
            line += (
                f"{o_total:>12,.0f}{o_total - none:>10,.0f}{_querywatch(other):>8,.0f}"
                f"{total / o_total:>15.4f}"
            )
        print(line)
        if args.guard:
            guarded = count(sys.executable, "guard", db_url, path, args.requests)
            g_total = sum(guarded.values())
            print(f"    with a guard configured: {g_total:,.0f} ({g_total - total:+,.0f})")
            _print_top(guarded, now, args.top)
        if args.compare:
            _print_top(now, other, args.top)
        for tracer in (b for b in args.beside.split(",") if b):
            alone_counts = count(sys.executable, tracer, db_url, path, args.requests)
            alone = sum(alone_counts.values())
            both = count(sys.executable, f"{tracer}+querywatch", db_url, path, args.requests)
            b_total = sum(both.values())
            print(
                f"    beside {tracer}: {alone:,.0f} alone, {b_total:,.0f} with querywatch:"
                f" {b_total - alone:+,.0f} (alone {total - none:+,.0f}), of which in"
                f" querywatch's own code {_querywatch(both):,.0f} (alone {_querywatch(now):,.0f})"
            )
            # Where querywatch's added work differs beside the tracer from alone.
            _print_top(_minus(both, alone_counts), _minus(now, none_counts), args.top)
    print(f"bytecodes a request, over {args.requests} requests after 30 to warm up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
