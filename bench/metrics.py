"""How long ``/metrics`` takes to render while 1,000 query shapes are live, the shape
label capped at its default (50 shapes, the rest ``other``), and what observing costs.

The shop app (SQLite, small) with querywatch's defaults; 1,000 distinct statements run
through real requests (``SELECT ... WHERE id = ? + <n>``: one shape each) over every
route, then ``GET /metrics`` through Flask's test client, timed whole (view, fold of
whatever is queued, exposition), median of ``--renders``.

    python bench/metrics.py [--shapes 1000] [--renders 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from sqlalchemy import create_engine
from sqlalchemy import text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=1000)
    parser.add_argument("--renders", type=int, default=200)
    args = parser.parse_args()

    from querywatch.demo import shop

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/shop.db"
        engine = create_engine(url)
        shop.seed(engine, scale=0.002)
        engine.dispose()
        app = shop.create_app(
            url, instance_path=f"{tmp}/instance", config={"QUERYWATCH_FLUSH_INTERVAL": 3600}
        )

        @app.get("/bench/<int:n>")
        def many(n: int) -> str:
            # One distinct statement shape per n: a different constant column alias.
            with shop.db.engine.connect() as conn:
                conn.execute(text(f"SELECT id AS c{n} FROM products WHERE id = :i"), {"i": 1})
            return "ok"

        client = app.test_client()
        t0 = time.perf_counter()
        for n in range(args.shapes):
            assert client.get(f"/bench/{n}").status_code == 200
        for _ in range(3):
            client.get("/api/orders/recent?limit=20")
            client.get("/api/admin/overview")
        traffic = time.perf_counter() - t0
        state = app.extensions["querywatch"]
        metrics = state.metrics
        metrics.fold()
        live = len(metrics.db.series)
        renders = []
        for _ in range(args.renders):
            start = time.perf_counter()
            response = client.get("/metrics")
            renders.append(time.perf_counter() - start)
            assert response.status_code == 200
        body = response.get_data()
        shape_labels = {k[1] for k in metrics.db.series}
        lines = body.count(b"\n")
        print(
            f"{args.shapes} distinct shapes run ({traffic:.1f} s of requests); db series"
            f" {live} ({len(shape_labels) - 1} shapes + other, cap {metrics.max_shapes});"
            f" exposition {len(body):,} bytes, {lines:,} lines"
        )
        print(
            f"GET /metrics: median {statistics.median(renders) * 1000:.2f} ms,"
            f" p95 {sorted(renders)[int(len(renders) * 0.95)] * 1000:.2f} ms,"
            f" max {max(renders) * 1000:.2f} ms over {args.renders} renders"
        )
        with app.app_context():
            shop.db.engine.dispose()


if __name__ == "__main__":
    main()
