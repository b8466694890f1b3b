"""The reference shop: a small but realistic Flask + Flask-SQLAlchemy API.

Healthy endpoints, a write endpoint, one N+1 endpoint, and the seed outage's failure: an
endpoint whose query filters the large ``orders`` table on an unindexed column
(``orders.customer_email``).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import typing as t

from flask import Flask
from flask import abort
from flask import jsonify
from flask import request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Column
from sqlalchemy import DateTime
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import relationship
from sqlalchemy.orm import selectinload
from sqlalchemy.pool import QueuePool

from .._compat import SQLALCHEMY_14
from ..extension import cached_query

if t.TYPE_CHECKING:
    from flask.typing import ResponseReturnValue
    from sqlalchemy.engine import Engine

__all__ = ["Customer", "Order", "OrderItem", "Product", "create_app", "db", "seed"]

#: Bumped when the seeded data or its database settings change (2: write-ahead log), so
#: an old demo database is re-seeded.
SEED_VERSION = 2
CATEGORIES = ("books", "garden", "kitchen", "toys", "tools", "sports", "music", "games")
STATUSES = ("paid", "shipped", "delivered", "refunded")


# Declared with Column (under the type checker, mapped_column, whose types it reads):
# the shop runs on SQLAlchemy 1.4 and 2.x alike.
if t.TYPE_CHECKING:
    from sqlalchemy.orm import mapped_column as col
else:
    col = Column

db = SQLAlchemy()


class Customer(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "customers"
    id: Mapped[int] = col(Integer, primary_key=True)
    email: Mapped[str] = col(String(120), unique=True, nullable=False)
    name: Mapped[str] = col(String(80), nullable=False)
    created_at: Mapped[dt.datetime] = col(DateTime, nullable=False)
    orders: Mapped[list[Order]] = relationship("Order", back_populates="customer")


class Product(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "products"
    id: Mapped[int] = col(Integer, primary_key=True)
    name: Mapped[str] = col(String(120), nullable=False)
    category: Mapped[str] = col(String(40), index=True, nullable=False)
    price_cents: Mapped[int] = col(Integer, nullable=False)
    stock: Mapped[int] = col(Integer, nullable=False)


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "orders"
    id: Mapped[int] = col(Integer, primary_key=True)
    customer_id: Mapped[int] = col(Integer, ForeignKey("customers.id"), index=True, nullable=False)
    # Denormalized for the support team's lookup, and never indexed: the seed outage.
    customer_email: Mapped[str] = col(String(120), nullable=False)
    status: Mapped[str] = col(String(20), nullable=False)
    total_cents: Mapped[int] = col(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = col(DateTime, index=True, nullable=False)
    customer: Mapped[Customer] = relationship("Customer", back_populates="orders")
    items: Mapped[list[OrderItem]] = relationship("OrderItem", back_populates="order")


class OrderItem(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "order_items"
    id: Mapped[int] = col(Integer, primary_key=True)
    order_id: Mapped[int] = col(Integer, ForeignKey("orders.id"), nullable=False)
    product_id: Mapped[int] = col(Integer, ForeignKey("products.id"), nullable=False)
    quantity: Mapped[int] = col(Integer, nullable=False)
    price_cents: Mapped[int] = col(Integer, nullable=False)
    order: Mapped[Order] = relationship("Order", back_populates="items")
    product: Mapped[Product] = relationship("Product")

    __table_args__ = (Index("ix_order_items_order_id", "order_id"),)


class DemoMeta(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "demo_meta"
    key: Mapped[str] = col(String(40), primary_key=True)
    value: Mapped[str] = col(String(200), nullable=False)


def _order_json(o: Order) -> dict[str, t.Any]:
    return {
        "id": o.id,
        "customer_id": o.customer_id,
        "status": o.status,
        "total_cents": o.total_cents,
        "created_at": o.created_at.isoformat(),
    }


@cached_query(ttl=300, name="shop.products_in")
def products_in(category: str) -> list[dict[str, t.Any]]:
    """The first page of a category (the cached read of ``GET /api/products``)."""
    rows = db.session.scalars(
        select(Product).where(Product.category == category).order_by(Product.id).limit(20)
    ).all()
    return [{"id": p.id, "name": p.name, "price_cents": p.price_cents} for p in rows]


def find_orders_by_email(email: str) -> list[dict[str, t.Any]]:
    # The seed outage: a filter on an unindexed column of the largest table.
    rows = db.session.scalars(
        select(Order).where(Order.customer_email == email).order_by(Order.id)
    ).all()
    return [_order_json(o) for o in rows]


@cached_query(ttl=120, name="shop.orders_by_email", invalidate=False)
def orders_by_email(email: str) -> list[dict[str, t.Any]]:
    """The lookup through the cache, up to two minutes stale: orders are written every
    second, and an entry dropped at each write would never be read."""
    return find_orders_by_email(email)


def register_routes(app: Flask) -> None:
    """The shop's API."""

    @app.get("/api/products")
    def list_products() -> ResponseReturnValue:
        # Read on every page, written rarely: cached until a write to products commits.
        return jsonify(products_in(request.args.get("category", "books")))

    @app.get("/api/products/<int:product_id>")
    def get_product(product_id: int) -> ResponseReturnValue:
        p = db.session.get(Product, product_id)
        if p is None:
            abort(404)
        return jsonify({"id": p.id, "name": p.name, "stock": p.stock})

    @app.get("/api/customers/<int:customer_id>/orders")
    def customer_orders(customer_id: int) -> ResponseReturnValue:
        rows = db.session.scalars(
            select(Order)
            .where(Order.customer_id == customer_id)
            .order_by(Order.created_at.desc())
            .limit(20)
        ).all()
        return jsonify([_order_json(o) for o in rows])

    @app.get("/api/orders/recent")
    def recent_orders() -> ResponseReturnValue:
        # N+1: each order's items are lazy-loaded one order at a time (unless fixed).
        limit = min(int(request.args.get("limit", 50)), 200)
        query = select(Order).order_by(Order.id.desc()).limit(limit)
        if app.config["SHOP_FIXED"]:
            query = query.options(selectinload(Order.items))
        orders = db.session.scalars(query).all()
        return jsonify(
            [{**_order_json(o), "items": [i.product_id for i in o.items]} for o in orders]
        )

    @app.get("/api/orders/lookup")
    def lookup_orders() -> ResponseReturnValue:
        email = request.args.get("email", "")
        if app.config.get("SHOP_CACHE_LOOKUP"):
            # The caching fix (``querywatch demo --fix=cache``), switched on at run time.
            return jsonify(orders_by_email(email))
        return jsonify(find_orders_by_email(email))

    @app.get("/api/admin/overview")
    def overview() -> ResponseReturnValue:
        s = db.session
        # The last 30 days' orders: a range of the created_at index, a few ms however
        # long the shop has run (counted from a fixed date, the count scanned half the
        # table and now and then ran past the statement timeout in the calm).
        latest = s.scalar(select(func.max(Order.created_at)))
        since = (latest or dt.datetime(2026, 8, 1)) - dt.timedelta(days=30)
        data = {
            "customers": s.scalar(select(func.count(Customer.id))),
            "products": s.scalar(select(func.count(Product.id))),
            "low_stock": s.scalar(select(func.count(Product.id)).where(Product.stock < 5)),
            "books": s.scalar(select(func.count(Product.id)).where(Product.category == "books")),
            "max_price": s.scalar(select(func.max(Product.price_cents))),
            "min_price": s.scalar(select(func.min(Product.price_cents))),
            "newest_customer": s.scalar(select(func.max(Customer.created_at))),
            "latest_order": latest,
            "recent_orders": s.scalar(
                select(func.count(Order.id)).where(Order.created_at >= since)
            ),
            "top_product": s.scalar(
                select(Product.name).order_by(Product.price_cents.desc()).limit(1)
            ),
        }
        return jsonify(
            {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in data.items()}
        )

    @app.post("/api/orders")
    def create_order() -> ResponseReturnValue:
        body = request.get_json(silent=True) or {}
        try:
            customer_id = int(body["customer_id"])
            lines = [(int(x["product_id"]), int(x.get("quantity", 1))) for x in body["items"]]
        except (KeyError, TypeError, ValueError):
            return jsonify(
                {"error": "Send {'customer_id': int, 'items': [{'product_id': int}]}."}
            ), 400
        customer = db.session.get(Customer, customer_id)
        if customer is None:
            return jsonify({"error": f"No customer {customer_id}."}), 404
        products = {
            p.id: p
            for p in db.session.scalars(
                select(Product).where(Product.id.in_([pid for pid, _ in lines]))
            )
        }
        if len(products) != len({pid for pid, _ in lines}):
            return jsonify({"error": "Unknown product in items."}), 400
        order = Order(
            customer_id=customer.id,
            customer_email=customer.email,
            status="paid",
            total_cents=sum(products[pid].price_cents * q for pid, q in lines),
            created_at=dt.datetime(2026, 8, 10, 14, 0),
        )
        order.items = [
            OrderItem(product_id=pid, quantity=q, price_cents=products[pid].price_cents)
            for pid, q in lines
        ]
        db.session.add(order)
        db.session.commit()
        return jsonify(_order_json(order)), 201

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify({"ok": True})


#: The shop's guard (``QUERYWATCH_GUARD``), less its containment mode, which the demo's
#: ``--guard`` sets: checkout and the health check are never shed.
GUARD: dict[str, t.Any] = {
    "endpoints": {
        "POST /api/orders": {"never_shed": True},
        "GET /healthz": {"never_shed": True},
    },
}


def request_user(req: t.Any) -> str | None:
    """The customer a request is made for: the shop's sign-in is out of the demo's scope,
    so its clients name the customer in ``X-User``."""
    user: str | None = req.headers.get("X-User")
    return user


def create_app(
    database_url: str = "sqlite://",
    *,
    instance_path: str | None = None,
    querywatch: bool = True,
    config: t.Mapping[str, t.Any] | None = None,
    fixed: bool = False,
    migrations: t.Sequence[str] = (),
    statement_timeout_ms: float | None = None,
) -> Flask:
    """The shop app, with querywatch on unless ``querywatch=False``.

    :param fixed: the fixed variant: the N+1 endpoint loads items eagerly, and
        :func:`seed_for_check` gives ``orders.customer_email`` its index.
    :param migrations: DDL that :func:`seed_for_check` runs after seeding (the demo's
        gate checks the index it applied).
    :param statement_timeout_ms: cancel a statement that runs longer, as a production
        database protects itself: the request fails with a 500 instead of holding its
        connection (PostgreSQL's ``statement_timeout``, MariaDB's
        ``max_execution_time`` for reads, on SQLite a progress handler).
    """
    app = Flask("querywatch.demo.shop", instance_path=instance_path)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SHOP_FIXED"] = fixed
    app.config["SHOP_MIGRATIONS"] = [*([EMAIL_INDEX_DDL] if fixed else []), *migrations]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = (
        {"pool_size": 10} if not database_url.startswith("sqlite") else {}
    )
    app.config["QUERYWATCH_APP_PACKAGES"] = ["querywatch.demo"]
    if statement_timeout_ms is not None:
        timeout = max(1, int(statement_timeout_ms))
        if database_url.startswith("postgresql"):
            app.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] = {
                "options": f"-c statement_timeout={timeout}"
            }
        elif database_url.startswith(("mysql", "mariadb")):
            app.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] = {
                "init_command": f"SET SESSION max_execution_time={timeout}"
            }
    app.config.update(config or {})
    if SQLALCHEMY_14 and database_url.startswith("sqlite:///") and ":memory:" not in database_url:
        # A pool of connections to the file, as SQLAlchemy 2 gives it (1.4: one a checkout).
        options = {"poolclass": QueuePool, **app.config["SQLALCHEMY_ENGINE_OPTIONS"]}
        options["connect_args"] = {"check_same_thread": False, **options.get("connect_args", {})}
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    db.init_app(app)
    if statement_timeout_ms is not None and database_url.startswith("sqlite"):
        with app.app_context():
            _sqlite_statement_timeout(db.engine, statement_timeout_ms / 1000)
    register_routes(app)
    if querywatch:
        from ..extension import QueryWatch

        QueryWatch(app)
    return app


def _sqlite_statement_timeout(engine: Engine, seconds: float) -> None:
    """SQLite has no statement timeout: a progress handler, called every few thousand
    virtual machine instructions, interrupts a statement (and the fetching of its rows)
    that has run longer than ``seconds`` (``sqlite3.OperationalError: interrupted``)."""
    import time

    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _handler(dbapi_conn: t.Any, record: t.Any) -> None:
        info = record.info

        def check() -> int:
            deadline = info.get("shop_deadline")
            return 1 if deadline is not None and time.perf_counter() > deadline else 0

        # About every 0.4 ms of scanning (SQLite runs some 50,000 instructions a
        # millisecond here): fine enough, and few calls into Python.
        dbapi_conn.set_progress_handler(check, 20_000)

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: t.Any, *args: t.Any) -> None:
        conn.info["shop_deadline"] = time.perf_counter() + seconds

    @event.listens_for(engine, "checkin")
    def _done(dbapi_conn: t.Any, record: t.Any) -> None:
        record.info.pop("shop_deadline", None)


#: The index the lookup endpoint lacks (what the advisor suggests for it).
EMAIL_INDEX_DDL = "CREATE INDEX ix_orders_customer_email ON orders (customer_email)"

#: The shop's gate: the requests ``querywatch check`` makes, with their budget.
CHECKS_FILE = os.path.join(os.path.dirname(__file__), "checks.yaml")


def seed_for_check(app: Flask, scale: float = 0.01) -> None:
    """Seed the app's database small (2,000 orders) for ``querywatch check``, then run
    the app's migrations (the fixed variant's: the lookup's index)."""
    seed(db.engine, scale)
    for ddl in app.config.get("SHOP_MIGRATIONS") or ():
        with db.engine.begin() as conn:
            conn.exec_driver_sql(ddl)


def drop_email_indexes(engine: Engine) -> list[str]:
    """Drop every index that leads with ``orders.customer_email`` (a demo run's fix: the
    advisor may choose ``(customer_email)`` or ``(customer_email, id)``), so the next run
    starts from the outage again. Returns their names."""
    from sqlalchemy import inspect

    names = [
        ix["name"]
        for ix in inspect(engine).get_indexes("orders")
        if ix["name"] and list(ix["column_names"])[:1] == ["customer_email"]
    ]
    with engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{name}"')
    return names


def seeded_version(engine: Engine) -> tuple[int, float] | None:
    """(seed version, scale) of an already seeded database, if any."""
    from sqlalchemy import inspect

    if not inspect(engine).has_table("demo_meta"):
        return None
    with engine.connect() as conn:
        rows = dict(conn.execute(select(DemoMeta.key, DemoMeta.value)).all())
    if "seed_version" not in rows or "scale" not in rows:
        return None
    return int(rows["seed_version"]), float(rows["scale"])


def sizes(scale: float) -> dict[str, int]:
    return {
        "customers": max(10, int(20_000 * scale)),
        "products": max(10, int(500 * scale)),
        "orders": max(20, int(200_000 * scale)),
    }


def seed(
    engine: Engine,
    scale: float = 1.0,
    *,
    progress: t.Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Create the tables and fill them deterministically. Returns the row counts."""
    n = sizes(scale)
    rng = random.Random(42)
    db.metadata.drop_all(engine)
    db.metadata.create_all(engine)
    if engine.dialect.name == "sqlite":
        # As a web app on SQLite should run: with a write-ahead log, the order lookup's
        # long scans never make a write's lock block the other endpoints' reads, so the
        # report measures the queries, not lock waits. The mode stays with the file.
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    epoch = dt.datetime(2025, 1, 1)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "id": i,
                    "email": f"customer{i}@example.com",
                    "name": f"Customer {i}",
                    "created_at": epoch + dt.timedelta(minutes=37 * i),
                }
                for i in range(1, n["customers"] + 1)
            ],
        )
        conn.execute(
            insert(Product),
            [
                {
                    "id": i,
                    "name": f"Product {i}",
                    "category": CATEGORIES[i % len(CATEGORIES)],
                    "price_cents": rng.randint(199, 19999),
                    "stock": rng.randint(0, 200),
                }
                for i in range(1, n["products"] + 1)
            ],
        )
        if progress:
            progress("customers and products")
        chunk = 20_000
        item_id = 1
        for start in range(1, n["orders"] + 1, chunk):
            orders, items = [], []
            for oid in range(start, min(start + chunk, n["orders"] + 1)):
                cid = rng.randint(1, n["customers"])
                count = rng.randint(1, 3)
                total = 0
                for _ in range(count):
                    price = rng.randint(199, 19999)
                    qty = rng.randint(1, 3)
                    total += price * qty
                    items.append(
                        {
                            "id": item_id,
                            "order_id": oid,
                            "product_id": rng.randint(1, n["products"]),
                            "quantity": qty,
                            "price_cents": price,
                        }
                    )
                    item_id += 1
                orders.append(
                    {
                        "id": oid,
                        "customer_id": cid,
                        "customer_email": f"customer{cid}@example.com",
                        "status": STATUSES[oid % len(STATUSES)],
                        "total_cents": total,
                        "created_at": epoch + dt.timedelta(minutes=3 * oid),
                    }
                )
            conn.execute(insert(Order), orders)
            conn.execute(insert(OrderItem), items)
            if progress:
                progress(f"orders {min(start + chunk - 1, n['orders']):,}/{n['orders']:,}")
        conn.execute(
            insert(DemoMeta),
            [
                {"key": "seed_version", "value": str(SEED_VERSION)},
                {"key": "scale", "value": repr(scale)},
            ],
        )
    if engine.dialect.name == "postgresql":
        # The rows were given their ids, so move each id sequence past them, or the
        # shop's first order would collide with a seeded one.
        with engine.begin() as conn:
            for table in ("customers", "products", "orders", "order_items"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT max(id) FROM {table}))"
                )
        # What a restore is followed by: statistics for the planner, and the vacuum
        # that sets the fresh rows' hint bits and visibility map, so that neither the
        # shop's first reads nor autovacuum write the tables over again during the calm
        # (a replay's first calm seconds after seeding once had a p95 of 700 ms, and paged).
        # The checkpoint writes the load out now; it needs pg_checkpoint or a superuser.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE customers, products, orders, order_items")
            try:
                conn.exec_driver_sql("CHECKPOINT")
            except DBAPIError:
                pass
    elif engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return {**n, "order_items": item_id - 1}
