"""The advisor's DDL runs where the app's tables are named like SQL keywords (``user``,
``order``, ``group``), in mixed case, or in another schema, on SQLite, PostgreSQL and
MariaDB. The statements are what SQLAlchemy sends (bound parameters, the dialect's
quoting); every CREATE INDEX the advisor would hand out, and its Alembic operation, is
executed, and the index is there."""

from __future__ import annotations

import typing as t
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from querywatch._compat import create_engine
from querywatch.advisor import Candidate
from querywatch.advisor._analysis import _analyse
from querywatch.advisor._candidates import _candidates


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[tuple[t.Any, str]]:
    """An engine (autocommit: PostgreSQL builds CONCURRENTLY outside a transaction) and
    a second schema of its own: an attached database on SQLite, a schema on PostgreSQL, a
    database on MariaDB."""
    schema = f"qw_app_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path}/main.db")

        @event.listens_for(engine, "connect")
        def _attach(dbapi_conn: t.Any, _record: t.Any) -> None:
            dbapi_conn.execute(f"ATTACH DATABASE '{tmp_path}/app.db' AS {schema}")

    else:
        url = request.getfixturevalue(
            "postgres_url" if request.param == "postgresql" else "mariadb_url"
        )
        # A connection a test: Alembic's autocommit_block leaves the server's default
        # level on its connection, which SQLAlchemy 1.4's pool keeps.
        engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with engine.connect() as conn:
            kind = "SCHEMA" if request.param == "postgresql" else "DATABASE"
            conn.execute(sa.text(f"CREATE {kind} {schema}"))
    try:
        yield engine, schema
    finally:
        if request.param != "sqlite":
            with engine.connect() as conn:
                if request.param == "postgresql":
                    conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                else:
                    conn.execute(sa.text(f"DROP DATABASE {schema}"))
        engine.dispose()


def _tables(schema: str) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    md = sa.MetaData()
    tables = {
        "user": sa.Table(
            "user", md, sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("email", sa.String(100)),
        ),
        "order": sa.Table(
            "order", md, sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("user_id", sa.Integer), sa.Column("created_at", sa.DateTime),
        ),
        "group": sa.Table(
            "group", md, sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(100)),
        ),
        "Account": sa.Table(
            "Account", md, sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("DisplayName", sa.String(100)),
        ),
        "orders": sa.Table(
            "orders", md, sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("email", sa.String(100)), schema=schema,
        ),
    }  # fmt: skip
    return md, tables


def _queries(tables: dict[str, sa.Table], dialect: str) -> list[tuple[t.Any, str]]:
    """(statement, the table its index is on) as an app's ORM or Core code issues them."""
    user, order, group = tables["user"], tables["order"], tables["group"]
    account, orders = tables["Account"], tables["orders"]
    out = [
        (sa.select(user.c.id).where(user.c.email == "a@example.com"), "user"),
        (
            sa.select(order.c.id)
            .where(order.c.user_id == 7)
            .order_by(order.c.created_at.desc(), order.c.id)  # mixed: a DESC key part
            .limit(20),
            "order",
        ),
        (sa.select(group.c.id).where(group.c.name == "admins"), "group"),
        (sa.select(account.c.id).where(account.c.DisplayName == "Ann"), "Account"),
        (sa.select(orders.c.id).where(orders.c.email == "b@example.com"), "orders"),
    ]
    if dialect != "mysql":  # MariaDB indexes no expression (a generated column does)
        out.append((sa.select(group.c.id).where(sa.func.lower(group.c.name) == "admins"), "group"))
    return out


def _index_names(engine: t.Any, table: str, schema: str | None) -> set[str]:
    """The indexes on ``table``, expression indexes included (SQLAlchemy's reflection
    skips those on SQLite)."""
    name = engine.dialect.name
    if name == "sqlite":
        sql = f"SELECT name FROM {schema or 'main'}.sqlite_master WHERE type = 'index'"
        sql += " AND tbl_name = :t"
    elif name == "postgresql":
        sql = "SELECT indexname FROM pg_indexes WHERE tablename = :t"
        sql += " AND schemaname = COALESCE(:s, current_schema())"
    else:
        sql = "SELECT index_name FROM information_schema.statistics WHERE table_name = :t"
        sql += " AND table_schema = COALESCE(:s, DATABASE())"
    with engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(sa.text(sql), {"t": table, "s": schema})}


def test_every_suggested_ddl_runs_on_keyword_mixed_case_and_schema_tables(
    database: tuple[t.Any, str],
) -> None:
    """Each candidate the advisor draws from the app's own statements is created, by its
    CREATE INDEX and by its Alembic operation (real Alembic, CONCURRENTLY inside
    ``autocommit_block`` on PostgreSQL), and the index exists on the right table."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    engine, schema = database
    dialect = "mysql" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name
    md, tables = _tables(schema)
    md.create_all(engine)
    columns = {name.lower(): {c.name.lower() for c in tbl.c} for name, tbl in tables.items()}
    tried: list[Candidate] = []
    for stmt, table_key in _queries(tables, dialect):
        sql = str(stmt.compile(engine))
        analysis = _analyse(sql, dialect, lambda tbl: columns.get(tbl.lower(), set()))
        candidates = _candidates(analysis, dialect)
        assert candidates, sql
        table = tables[table_key]
        for c in candidates:
            assert (c.table, c.schema) == (table.name, table.schema), (sql, c)
            with engine.connect() as conn:
                conn.execute(sa.text(c.ddl(dialect, migration=True)))
                if dialect != "postgresql":
                    conn.commit()
            assert c.name() in _index_names(engine, table.name, table.schema), c.ddl(dialect)
            with engine.connect() as conn:
                conn.execute(sa.text(c.drop_ddl(dialect, c.name())))
                if dialect != "postgresql":
                    conn.commit()
            assert c.name() not in _index_names(engine, table.name, table.schema)
            with engine.connect() as conn:
                code = c.alembic(dialect)
                exec(code, {"op": Operations(MigrationContext.configure(conn)), "sa": sa})
                if dialect != "postgresql":
                    conn.commit()
            assert c.name() in _index_names(engine, table.name, table.schema), code
            with engine.connect() as conn:
                conn.execute(sa.text(c.drop_ddl(dialect, c.name())))
                if dialect != "postgresql":
                    conn.commit()
            tried.append(c)
    tables_tried = {(c.schema, c.table) for c in tried}
    assert tables_tried == {(tbl.schema, tbl.name) for tbl in tables.values()}
    if dialect != "mysql":
        assert any(k.lower().startswith("lower(") for c in tried for k in c.keys)
    assert any(k.endswith(" DESC") for c in tried for k in c.keys)
    md.drop_all(engine)


def test_the_ddl_quotes_what_the_dialect_reserves() -> None:
    """The text a user copies: ``"user"`` and ``"order"`` quoted on PostgreSQL, ``order``
    and ``group`` backquoted on MariaDB, a mixed-case name quoted, a schema kept; the
    demo's plain case is as it always was."""
    assert Candidate("user", ("email",)).ddl("postgresql", migration=True) == (
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_user_email ON "user" (email)'
    )
    assert Candidate("order", ("user_id", "created_at DESC")).ddl("mysql") == (
        "CREATE INDEX ix_order_user_id_created_at_desc ON `order` (user_id, created_at DESC)"
    )
    assert Candidate("Account", ('"DisplayName"',), schema="app").ddl("sqlite") == (
        'CREATE INDEX app.ix_account_displayname ON "Account" ("DisplayName")'
    )
    assert Candidate("orders", ("customer_email",)).ddl("sqlite", migration=True) == (
        "CREATE INDEX IF NOT EXISTS ix_orders_customer_email ON orders (customer_email)"
    )
    alembic = Candidate("user", ("email",)).alembic("postgresql")
    assert alembic == (
        "with op.get_context().autocommit_block():\n"
        "    op.create_index('ix_user_email', 'user', ['email'],"
        " postgresql_concurrently=True, if_not_exists=True)"
    )
