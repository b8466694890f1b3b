"""What a statement of any content costs the request that runs it.

Times the fingerprint of 1 MB statements built from hostile pieces (unclosed and escaped
quotes, dollar tags, pyformat openings, comment openings, nesting) and of plain ones, on
each database's quoting, uncached (the cold path a new statement takes). Prints the best
of five in ms, and the ratio to a plain statement of the same length: the work is capped
at ``SCAN_CHARS`` characters and linear below it, so no ratio should be far above 1.

    python bench/fingerprint.py
"""

from __future__ import annotations

import importlib
import time

fp = importlib.import_module("querywatch.fingerprint")

SIZE = 1_000_000
HOSTILE = {
    "'\\ repeated": "'\\",
    "distinct $tN$ tags": None,
    "%( repeated": "%(",
    "E'\\ repeated": "E'\\",
    "/* repeated": "/*",
    '" repeated': '"',
    "( repeated": "(",
    "IN (1, repeated": "IN (1,",
    "a, repeated (one token a char)": "a,",
    "one string literal": None,
}


def statement(name: str, unit: str | None) -> str:
    if name.startswith("distinct"):
        text = "".join(f"$t{i}$" for i in range(SIZE // 6))
    elif name == "one string literal":
        text = "SELECT * FROM t WHERE name LIKE '%" + "x" * SIZE + "%'"
    else:
        assert unit is not None
        text = unit * (SIZE // len(unit))
    return "SELECT " + text


def best(sql: str, quoting: fp.Quoting, n: int = 5) -> float:
    out = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        fp._fingerprint(sql, quoting)
        out = min(out, time.perf_counter() - start)
    return out


def main() -> None:
    quotings = {"standard": fp.STANDARD, "postgresql": fp.POSTGRESQL, "mysql": fp.MYSQL}
    plain = "SELECT " + ", ".join(f"c{i % 1000}" for i in range(SIZE // 6))
    base = {name: best(plain, q) for name, q in quotings.items()}
    print(f"1 MB statements, best of 5, uncached (SCAN_CHARS = {fp.SCAN_CHARS:,})")
    print(f"{'statement':34} " + " ".join(f"{n:>20}" for n in quotings))
    print(f"{'plain (c1, c2, ...)':34} " + " ".join(f"{base[n] * 1000:17.1f} ms" for n in quotings))
    worst = 0.0
    for name, unit in HOSTILE.items():
        sql = statement(name, unit)
        cells = []
        for qname, q in quotings.items():
            took = best(sql, q)
            worst = max(worst, took)
            cells.append(f"{took * 1000:7.1f} ms {took / base[qname]:5.2f}x")
        print(f"{name:34} " + " ".join(f"{c:>20}" for c in cells))
    print(f"worst: {worst * 1000:.1f} ms for 1 MB (target: 50 ms)")
    request_ratio()


def request_ratio() -> None:
    """One request whose statement inlines a 97 KB search string of backslashes and
    doubled quotes (SQLite), a new one each request, with querywatch and without: the
    ratio of the medians. (Before the linear scanner: 6.1 s against 0.015 s.)"""
    from flask import Flask
    from flask import request
    from sqlalchemy import create_engine
    from sqlalchemy import text

    from querywatch import QueryWatch

    search = "\\''" * 32_500  # SQLite reads \ as a character and '' as a quote

    def app(with_querywatch: bool) -> Flask:
        a = Flask(__name__)
        a.config["PROPAGATE_EXCEPTIONS"] = True
        a.config.update(QUERYWATCH_FLUSH_INTERVAL=3600, QUERYWATCH_ADVISE=False)
        engine = create_engine("sqlite://")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(text("INSERT INTO products (name) VALUES ('a'), ('b')"))
        if with_querywatch:
            QueryWatch(a, engines=[engine])

        @a.get("/search")
        def find() -> str:
            # A new text each request, as a user's search is: never a cache hit.
            value = search + request.args["i"]
            with engine.connect() as conn:
                n = conn.execute(
                    text(f"SELECT count(*) FROM products WHERE name = '{value}'")
                ).scalar()
            return str(n)

        return a

    timings = {}
    for on in (False, True):
        client = app(on).test_client()
        took = []
        for i in range(21):
            start = time.perf_counter()
            r = client.get(f"/search?i={i}")
            assert r.status_code == 200, r.get_data(as_text=True)[:300]
            took.append(time.perf_counter() - start)
        timings[on] = sorted(took)[10]
    print(
        f"request with a {len(search) // 1000} KB inlined search string: median"
        f" {timings[True] * 1000:.1f} ms with querywatch, {timings[False] * 1000:.1f} ms"
        f" without: {timings[True] / timings[False]:.2f}x"
    )


if __name__ == "__main__":
    main()
