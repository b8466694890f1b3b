"""The same ORM queries on real SQLite, PostgreSQL and MariaDB servers."""

from __future__ import annotations

import typing as t

import pytest
from sqlalchemy import select

from conftest import on_finished
from querywatch._compat import create_engine
from querywatch._detectors import N_PLUS_ONE
from querywatch.demo import shop

GET_ENDPOINTS = [
    "/api/products?category=books",
    "/api/products/3",
    "/api/customers/3/orders",
    "/api/orders/recent",
    "/api/orders/lookup?email=customer3@example.com",
    "/api/admin/overview",
]


def _observe(url: str, instance: str) -> dict[str, t.Any]:
    """Seed the shop on ``url``, call each endpoint, return what querywatch saw."""
    engine = create_engine(url)
    shop.seed(engine, scale=0.002)
    engine.dispose()
    app = shop.create_app(url, instance_path=instance, config={"TESTING": True})
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append((r, f)))
    client = app.test_client()
    # The first connection runs the dialect's own set-up statements (server version,
    # schema); they are real work of that request, and not what is compared here.
    assert client.get("/healthz").status_code == 200
    with app.app_context():
        shop.db.session.execute(select(shop.Product.id).limit(1)).all()
        shop.db.session.remove()
    out: dict[str, t.Any] = {}
    for path in GET_ENDPOINTS:
        assert client.get(path).status_code == 200
        record, findings = seen[-1]
        out[path] = {
            "fingerprints": [q.fingerprint.id for q in record.queries],
            "shapes": [q.fingerprint.shape for q in record.queries],
            "rows": [q.rows for q in record.queries],
            "n_plus_one": [(f.relationship, f.count) for f in findings if f.kind == N_PLUS_ONE],
            "sites": {q.site.function for q in record.queries if q.site},
        }
    with app.app_context():
        shop.db.engine.dispose()
    return out


@pytest.mark.postgres
@pytest.mark.mariadb
def test_same_fingerprints_across_dialects(
    postgres_url: str, mariadb_url: str, tmp_path: t.Any
) -> None:
    """One ORM query is one fingerprint on SQLite (``?``), PostgreSQL (``%(name)s`` with
    ``::TYPE`` casts) and MariaDB (``%(name)s``, backticks, ``LIMIT a, b``); the N+1
    finding names ``Order.items`` on all three."""
    results = {
        "sqlite": _observe(f"sqlite:///{tmp_path}/shop.db", str(tmp_path / "i1")),
        "postgresql": _observe(postgres_url, str(tmp_path / "i2")),
        "mariadb": _observe(mariadb_url, str(tmp_path / "i3")),
    }
    base = results["sqlite"]
    for name in ("postgresql", "mariadb"):
        for path in GET_ENDPOINTS:
            assert results[name][path]["fingerprints"] == base[path]["fingerprints"], (
                name,
                path,
                results[name][path]["shapes"],
                base[path]["shapes"],
            )
            assert results[name][path]["rows"] == base[path]["rows"], (name, path)
            assert results[name][path]["sites"] == base[path]["sites"]
    for name, res in results.items():
        assert res["/api/orders/recent"]["n_plus_one"] == [("Order.items", 50)], name
        assert len(res["/api/admin/overview"]["fingerprints"]) == 10


def test_duration_includes_fetch_on_every_dialect(shop_url: str, tmp_path: t.Any) -> None:
    """On each dialect, a read's recorded end lies after execute() returned."""
    from time import perf_counter

    from sqlalchemy import text

    from querywatch import QueryWatch

    app = shop.create_app(shop_url, instance_path=str(tmp_path / "i"))
    qw = QueryWatch()
    engine = create_engine(shop_url)
    with app.app_context(), engine.connect() as conn, qw.capture("fetch") as record:
        result = conn.execute(text("SELECT id, customer_email FROM orders ORDER BY id"))
        after_execute = perf_counter()
        rows = result.all()
        after_fetch = perf_counter()
    q = record.queries[0]
    assert q.rows == len(rows) == 400
    assert after_execute < q.start + q.duration <= after_fetch
    engine.dispose()
    with app.app_context():
        shop.db.engine.dispose()


def test_the_shop_takes_orders_after_seeding(shop_url: str, tmp_path: t.Any) -> None:
    """On each dialect the write endpoint works on a freshly seeded shop (ids continue
    after the seeded rows), and the writes are captured."""
    app = shop.create_app(shop_url, instance_path=str(tmp_path / "i"))
    seen: list[t.Any] = []
    on_finished(app, lambda r, f: seen.append(r))
    client = app.test_client()
    ids = []
    for customer in (1, 2):
        resp = client.post(
            "/api/orders", json={"customer_id": customer, "items": [{"product_id": 3}]}
        )
        assert resp.status_code == 201, resp.json
        ids.append(resp.json["id"])
    assert ids[0] > 400
    assert ids[1] == ids[0] + 1
    record = seen[-1]
    assert record.name == "POST /api/orders"
    assert any(q.fingerprint.operation == "INSERT" for q in record.queries)
    assert record.errors == 0
    with app.app_context():
        shop.db.engine.dispose()
