"""The result cache's hit path, side by side with Flask-Caching, and what it does for the
demo's slow endpoint.

1. **Hit cost**: one function returning the shop's first page of a category (20 rows as
   dicts), cached three ways in one process: querywatch in memory, Flask-Caching's
   ``memoize`` on its ``SimpleCache`` (in memory), and querywatch on Redis; the same
   function uncached for reference. Median of ``--hits`` calls each, in alternating
   batches.
2. **Round trips**: Redis commands a querywatch hit sends (``INFO commandstats``).
3. **The slow endpoint**: ``GET /api/orders/lookup``'s query (200,000 orders at
   ``--scale 1``) behind ``@qw.cached``, requests per second through Flask's full
   request path at a 90% hit ratio (each email asked ten times, in a shuffled order),
   against the same endpoint uncached.

    pip install -e '.[bench]'
    python bench/cache.py [--redis redis://127.0.0.1:6379/15] [--scale 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import typing as t

from sqlalchemy import create_engine
from sqlalchemy import select


def _median_us(fn: t.Callable[[], t.Any], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def hit_costs(db_url: str, redis_url: str | None, hits: int, workdir: str) -> dict[str, float]:
    from flask_caching import Cache as FlaskCache

    from querywatch.demo import shop

    app = shop.create_app(
        db_url,
        instance_path=f"{workdir}/instance-hits",
        config={
            "QUERYWATCH_ADVISE": False,
            "QUERYWATCH_FLUSH_INTERVAL": 3600,
            "CACHE_TYPE": "SimpleCache",
            "CACHE_DEFAULT_TIMEOUT": 300,
        },
    )
    qw = app.extensions["querywatch"].owner
    fc = FlaskCache(app)

    def page(category: str) -> list[dict[str, t.Any]]:
        rows = shop.db.session.scalars(
            select(shop.Product)
            .where(shop.Product.category == category)
            .order_by(shop.Product.id)
            .limit(20)
        ).all()
        return [{"id": p.id, "name": p.name, "price_cents": p.price_cents} for p in rows]

    variants: dict[str, t.Callable[[str], t.Any]] = {
        "uncached": page,
        "querywatch memory": qw.cached(name="bench.page")(page),
        "flask-caching memoize (SimpleCache)": fc.memoize(300)(page),
    }
    redis_app = None
    if redis_url:
        redis_app = shop.create_app(
            db_url,
            instance_path=f"{workdir}/instance-redis",
            config={
                "QUERYWATCH_ADVISE": False,
                "QUERYWATCH_FLUSH_INTERVAL": 3600,
                "QUERYWATCH_CACHE_URL": redis_url,
                "QUERYWATCH_CACHE_PREFIX": "qwbench:",
            },
        )
        rqw = redis_app.extensions["querywatch"].owner
        variants["querywatch redis"] = rqw.cached(name="bench.page.redis")(page)
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(5):  # alternating batches: the machine's drift falls on all alike
        for name, fn in variants.items():
            ctx = (redis_app if name == "querywatch redis" else app).app_context()
            with ctx:
                fn("books")  # warm: the first call computes
                out[name].append(_median_us(lambda fn=fn: fn("books"), hits // 5))
    result = {k: round(statistics.median(v), 2) for k, v in out.items()}
    if redis_app is not None:
        import redis

        # Round trips counted where the client sends them (Redis's own command counts
        # include the commands a script runs inside the server).
        sent = [0]
        original = redis.connection.Connection.send_packed_command

        def counting(self: t.Any, *a: t.Any, **kw: t.Any) -> t.Any:
            sent[0] += 1
            return original(self, *a, **kw)

        redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]
        try:
            with redis_app.app_context():
                fn = variants["querywatch redis"]
                for _ in range(1000):
                    fn("books")
        finally:
            redis.connection.Connection.send_packed_command = original  # type: ignore[method-assign]
        result["redis round trips per hit"] = round(sent[0] / 1000, 3)
        client = redis.Redis.from_url(redis_url)  # type: ignore[arg-type]
        keys = list(client.scan_iter("qwbench:*"))
        if keys:
            client.delete(*keys)
    return result


def slow_endpoint(db_url: str, scale: float, workdir: str, emails: int) -> dict[str, float]:
    from flask import jsonify
    from flask import request

    from querywatch.demo import shop

    engine = create_engine(db_url)
    if shop.seeded_version(engine) != (shop.SEED_VERSION, scale):
        shop.seed(engine, scale)
    engine.dispose()
    app = shop.create_app(
        db_url,
        instance_path=f"{workdir}/instance-slow",
        config={"QUERYWATCH_ADVISE": False, "QUERYWATCH_FLUSH_INTERVAL": 3600},
    )
    qw = app.extensions["querywatch"].owner

    @qw.cached(name="bench.lookup")
    def lookup(email: str) -> list[dict[str, t.Any]]:
        rows = shop.db.session.scalars(
            select(shop.Order).where(shop.Order.customer_email == email).order_by(shop.Order.id)
        ).all()
        return [shop._order_json(o) for o in rows]

    @app.get("/bench/lookup")
    def cached_lookup() -> t.Any:
        return jsonify(lookup(request.args.get("email", "")))

    client = app.test_client()
    rng = random.Random(7)
    addresses = [f"customer{rng.randint(1, 20_000)}@example.com" for _ in range(emails)]
    plan = [a for a in addresses for _ in range(10)]  # each asked 10 times: 90% hits
    rng.shuffle(plan)

    def run(path: str, seq: list[str]) -> float:
        t0 = time.perf_counter()
        for email in seq:
            assert client.get(f"{path}?email={email}").status_code == 200
        return len(seq) / (time.perf_counter() - t0)

    run("/api/orders/lookup", plan[:5])  # warm the pages both read
    uncached = run("/api/orders/lookup", plan[: max(50, len(plan) // 4)])
    cached = run("/bench/lookup", plan)
    st = app.extensions["querywatch"].cache.stats["bench.lookup"]
    return {
        "uncached_rps": round(uncached, 1),
        "cached_rps": round(cached, 1),
        "speedup": round(cached / uncached, 2),
        "hit_ratio": round(st.hits / (st.hits + st.misses), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--hits", type=int, default=20_000)
    parser.add_argument("--emails", type=int, default=60, help="distinct emails (x10 requests)")
    parser.add_argument("--redis", default=None, help="a Redis URL (its qwbench: keys are used)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="qw-cache-")
    from querywatch.demo import shop

    db_url = f"sqlite:///{workdir}/shop.db"
    engine = create_engine(db_url)
    shop.seed(engine, args.scale)
    engine.dispose()
    hits = hit_costs(db_url, args.redis, args.hits, workdir)
    for k, v in hits.items():
        unit = "" if "per hit" in k else " µs a hit"
        print(f"  {k:<40} {v:>10}{unit}")
    slow = slow_endpoint(db_url, args.scale, workdir, args.emails)
    print(
        f"  GET /api/orders/lookup: {slow['uncached_rps']} req/s uncached, {slow['cached_rps']}"
        f" req/s cached at a {slow['hit_ratio']:.0%} hit ratio (x{slow['speedup']})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hits": hits, "slow_endpoint": slow}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
