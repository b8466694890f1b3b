from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sqlalchemy import bindparam
from sqlalchemy import column
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import table
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from querywatch.fingerprint import fingerprint

HEX16 = re.compile(r"^[0-9a-f]{16}$")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 2"),
        ("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = 'it''s'"),
        ("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = %s"),
        ("SELECT * FROM t WHERE a = :a", "SELECT * FROM t WHERE a = %(a_1)s"),
        ("SELECT * FROM t WHERE a = $1", "SELECT * FROM t WHERE a = 1.5e3"),
        ("SELECT * FROM t WHERE a IN (1)", "SELECT * FROM t WHERE a IN (1, 2, 3, 4)"),
        ("SELECT * FROM t WHERE a IN (?, ?)", "SELECT * FROM t WHERE a IN (__[POSTCOMPILE_a_1])"),
        (
            "INSERT INTO t (a, b) VALUES (1, 2)",
            "INSERT INTO t (a, b) VALUES (1, 2), (3, 4), (5, 6)",
        ),
        ("SELECT a FROM t -- why\n", "/* hint */ SELECT   a\n\tFROM t"),
        ("select A from T where B = 1", "SELECT a FROM t WHERE b = 2"),
        ('SELECT "order".id FROM "order"', "SELECT `order`.id FROM `order`"),
        ("SELECT $$body$$", "SELECT $fn$other body$fn$"),
        ("SELECT * FROM t WHERE a = %(a)s::INTEGER", "SELECT * FROM t WHERE a = ?"),
        (
            "SELECT * FROM t LIMIT %(p)s::INTEGER OFFSET %(q)s::INTEGER",
            "SELECT * FROM t LIMIT 1 OFFSET 2",
        ),
        ("SELECT x'ff', E'a\\'b'", "SELECT 1, 2"),
        ("SELECT * FROM a INNER JOIN b ON a.id = b.a", "SELECT * FROM a JOIN b ON a.id = b.a"),
        ("SELECT * FROM a LEFT OUTER JOIN b ON 1 = 1", "SELECT * FROM a LEFT JOIN b ON 2 = 2"),
        ("SELECT * FROM t LIMIT 20, 10", "SELECT * FROM t LIMIT 10 OFFSET 20"),
        ("SELECT * FROM t LIMIT 10", "SELECT * FROM t LIMIT 10 OFFSET 20"),
        (
            "SELECT * FROM t WHERE d >= %(d_1)s::TIMESTAMP WITHOUT TIME ZONE AND x = 1",
            "SELECT * FROM t WHERE d >= ? AND x = 1",
        ),
        ("SELECT %(a)s::DOUBLE PRECISION", "SELECT ?"),
    ],
)
def test_same_shape(a: str, b: str) -> None:
    """Statements that differ only in values, lists, comments, case or quoting are one shape."""
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa.id == fb.id, (fa.shape, fb.shape)
    assert fa.shape == fb.shape


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SELECT * FROM table2", "SELECT * FROM table3"),
        ("SELECT a FROM t", "SELECT b FROM t"),
        ("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a > 1"),
        ('SELECT * FROM "Order"', "SELECT * FROM order"),
        ("SELECT * FROM t WHERE a IN (1, 2)", "SELECT * FROM t WHERE a IN (SELECT b FROM u)"),
        ("SELECT a::text FROM t", "SELECT a FROM t"),
    ],
)
def test_different_shape(a: str, b: str) -> None:
    """Structure, identifiers (digits included), operators and real casts keep shapes apart."""
    assert fingerprint(a).id != fingerprint(b).id


def test_shape_text_and_operation() -> None:
    """The shape is readable SQL with ``?`` for values and ``(...)`` for lists."""
    f = fingerprint("select id, name from users where id in (1,2,3) and name = 'bob' -- c")
    assert f.shape == "SELECT id, name FROM users WHERE id IN (...) AND name = ?"
    assert f.operation == "SELECT"
    assert HEX16.match(f.id)
    assert fingerprint("WITH x AS (SELECT 1) SELECT * FROM x").operation == "SELECT"
    assert fingerprint("WITH x AS (SELECT 1) DELETE FROM t").operation == "DELETE"
    assert fingerprint("UPDATE t SET a = 1").operation == "UPDATE"
    assert fingerprint("SAVEPOINT sa_savepoint_1").operation == "SAVEPOINT"


def test_odd_input_does_not_break() -> None:
    """Bytes, invalid UTF-8, lone surrogates, unterminated quotes and 1 MB texts all work."""
    assert HEX16.match(fingerprint(b"SELECT \xff\xfe FROM t").id)
    assert HEX16.match(fingerprint("SELECT '\udcff' FROM t").id)
    assert HEX16.match(fingerprint("SELECT 'unterminated FROM t").id)
    assert HEX16.match(fingerprint("SELECT /* unterminated").id)
    big = "SELECT " + ", ".join(f"c{i}" for i in range(130_000)) + " FROM t"
    assert len(big) > 1_000_000
    f = fingerprint(big)
    assert HEX16.match(f.id)
    assert len(f.shape) <= 4000
    # The id covers the whole statement, not just the displayed part.
    assert fingerprint(big.replace("c129999", "d129999")).id != f.id


_values = st.one_of(
    st.integers(min_value=0, max_value=10**12).map(str),
    st.floats(min_value=0, max_value=1e9, allow_nan=False).map(lambda x: f"{x:.3f}"),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\\"),
        max_size=20,
    ).map(lambda s: "'" + s.replace("'", "''") + "'"),
    st.sampled_from(["?", "%s", "%(p_1)s", ":name", "$3", "__[POSTCOMPILE_x]"]),
)


@settings(max_examples=200, deadline=None)
@given(a=_values, b=_values, n=st.integers(1, 50), m=st.integers(1, 50))
def test_property_values_and_list_lengths_do_not_matter(a: str, b: str, n: int, m: int) -> None:
    """Any literal or placeholder in a value position, any IN-list length: one shape."""
    s1 = f"SELECT x FROM t WHERE a = {a} AND b IN ({', '.join([a] * n)})"
    s2 = f"SELECT x FROM t WHERE a = {b} AND b IN ({', '.join([b] * m)})"
    assert fingerprint(s1).id == fingerprint(s2).id


@settings(max_examples=200, deadline=None)
@given(
    ws=st.lists(st.sampled_from([" ", "\n", "\t", "  ", " /* c */ "]), min_size=6, max_size=6),
    upper=st.booleans(),
)
def test_property_whitespace_comments_case(ws: list[str], upper: bool) -> None:
    """White space, comments and keyword case never change the shape."""
    words = ["select", "a", "from", "t", "where", "b", "= 1"]
    text = words[0]
    for w, sep in zip(words[1:], ws, strict=False):
        text += sep + w
    if upper:
        text = text.upper()
    assert fingerprint(text).id == fingerprint("SELECT a FROM t WHERE b = 2").id


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_property_never_raises_and_is_stable(text: str) -> None:
    """Any text gives a 16-hex id, the same every time."""
    f = fingerprint(text)
    assert HEX16.match(f.id)
    assert fingerprint(text) == f


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 999), st.integers(0, 999))
def test_property_digits_in_identifiers_matter(i: int, j: int) -> None:
    """``t{i}`` and ``t{j}`` are different tables."""
    same = fingerprint(f"SELECT * FROM t{i}").id == fingerprint(f"SELECT * FROM t{j}").id
    assert same == (i == j)


# A corpus of real statements as SQLAlchemy compiles them for each dialect.
users = table("users", column("id"), column("email"), column("name"))
orders = table("order", column("id"), column("user_id"), column("total"))

_CORPUS = [
    select(users).where(users.c.id == bindparam("id")),
    select(users).where(users.c.id.in_([1, 2, 3])).limit(10).offset(20),
    select(users.c.name, func.count(orders.c.id))
    .join(orders, orders.c.user_id == users.c.id)
    .where(orders.c.total > 5)
    .group_by(users.c.name)
    .order_by(func.count(orders.c.id).desc()),
    select(orders).where(orders.c.id == 7),
    insert(users).values(email="a@b.c", name="x"),
    users.update().where(users.c.id == 3).values(name="y"),
    users.delete().where(users.c.email.like("%@example.com")),
]
_DIALECTS = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.psycopg.dialect(),  # type: ignore[attr-defined]
    "mysql": mysql.pymysql.dialect(),  # type: ignore[attr-defined]
}


@pytest.mark.parametrize("stmt", _CORPUS, ids=lambda s: str(s).split()[0])
def test_corpus_same_shape_across_dialects(stmt: object) -> None:
    """The same SQLAlchemy statement compiled for SQLite, PostgreSQL (psycopg, with its
    bind casts) and MySQL/MariaDB (PyMySQL, backtick quoting) is one fingerprint."""
    ids = {}
    for name, dialect in _DIALECTS.items():
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
        ids[name] = fingerprint(str(compiled))
    assert len({f.id for f in ids.values()}) == 1, {n: f.shape for n, f in ids.items()}


def test_cache_is_bounded_and_hits() -> None:
    """Repeated raw text is a cache hit; the cache never grows past its size."""
    from querywatch.fingerprint import fingerprint_cache_info

    fingerprint("SELECT 1 FROM cache_probe")
    before = fingerprint_cache_info()
    fingerprint("SELECT 1 FROM cache_probe")
    after = fingerprint_cache_info()
    assert after.hits == before.hits + 1
    for i in range(3000):
        fingerprint(f"SELECT {i} FROM t{i}")
    assert fingerprint_cache_info().currsize <= 2048


def test_sample_keeps_placeholders_and_masks_string_literals() -> None:
    fp = fingerprint("SELECT * FROM users WHERE email = 'ann@example.com' AND id = %(id_1)s")
    assert fp.sample == "SELECT * FROM users WHERE email = ? AND id = %(id_1)s"
    assert "ann@example.com" not in fp.sample
    # Two texts of one shape are one fingerprint whatever their samples.
    assert fp == fingerprint("SELECT * FROM users WHERE email = 'bob@x' AND id = %(id_1)s")
    assert fingerprint("SELECT 1 /* " + "x" * 5000 + " */").sample == ""
