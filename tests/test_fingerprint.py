from __future__ import annotations

import functools
import re
import typing as t

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

from conftest import PG_DRIVER
from querywatch.fingerprint import MYSQL
from querywatch.fingerprint import POSTGRESQL
from querywatch.fingerprint import SCAN_CHARS
from querywatch.fingerprint import STANDARD
from querywatch.fingerprint import fingerprint
from querywatch.fingerprint import mask_literals

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
    # The id covers what is read of the statement, not just the displayed part...
    assert fingerprint(big.replace("c3000,", "d3000,")).id != f.id
    # ...which is its first SCAN_CHARS characters: the work on the request is capped.
    assert fingerprint(big.replace("c129999", "d129999")).id == f.id
    assert fingerprint(big[: SCAN_CHARS - 1]).id != f.id  # a cut statement is told apart


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
    "postgresql": getattr(postgresql, PG_DRIVER).dialect(),
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


# --- quotes as each database reads them, and hostile text -------------------------------

SECRET = "secret-7f3a@example.com"


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        # No backslash escapes in PostgreSQL's (standard_conforming_strings) and SQLite's
        # strings: 'C:\' is a whole string, and the email a second one.
        ("postgresql", f"SELECT * FROM t WHERE name = 'C:\\' OR email = '{SECRET}'"),
        ("sqlite", f"SELECT * FROM t WHERE name = 'C:\\' OR email = '{SECRET}'"),
        (None, f"SELECT * FROM t WHERE name = 'C:\\' OR email = '{SECRET}'"),
        # PostgreSQL's E'' strings and dollar quotes do take their own rules.
        ("postgresql", f"SELECT * FROM t WHERE a = E'it\\'s' OR email = '{SECRET}'"),
        ("postgresql", f"SELECT * FROM t WHERE a = $x$it's$x$ OR email = '{SECRET}'"),
        # MySQL and MariaDB: a backslash escapes, and "..." is a string.
        ("mysql", f"SELECT * FROM t WHERE name = 'it\\'s' OR email = '{SECRET}'"),
        ("mariadb", f"SELECT * FROM t WHERE name = 'C:\\\\' OR email = \"{SECRET}\""),
        ("mysql", f"SELECT * FROM t WHERE a = 1 # '{SECRET}'\nAND b = 2"),
        # A commented-out copy of the statement, or sqlcommenter's tags.
        ("postgresql", f"SELECT * FROM t /* email = '{SECRET}' */ WHERE a = 1"),
        ("postgresql", f"SELECT * FROM t WHERE email = '{SECRET}"),  # unclosed
    ],
)
def test_no_value_is_read_as_sql_whatever_the_database_quoting(
    dialect: str | None, sql: str
) -> None:
    """The value is masked in the shape and in the runnable sample on the database whose
    quoting the statement follows."""
    fp = fingerprint(sql, dialect)
    assert "secret" not in fp.shape
    assert "secret" not in fp.sample
    assert "7f3a" not in fp.shape + fp.sample


def test_the_same_statement_on_each_database_is_one_shape() -> None:
    """Quoting rules change where values end, not the shape of the statement."""
    sql = "SELECT * FROM t WHERE a = 'x' AND b = 2"
    assert len({fingerprint(sql, d).id for d in ("sqlite", "postgresql", "mysql", None)}) == 1


def test_the_quoting_comes_from_the_engines_modes() -> None:
    """A live MariaDB session in NO_BACKSLASH_ESCAPES mode, or with ANSI_QUOTES, and
    PostgreSQL with standard_conforming_strings off: each reads quotes its own way."""
    from querywatch.fingerprint import Quoting
    from querywatch.fingerprint import quoting_for

    my = mysql.pymysql.dialect()  # type: ignore[attr-defined]
    assert quoting_for(my) == MYSQL
    my._backslash_escapes = False
    assert quoting_for(my) == Quoting(double_quoted_strings=True, hash_comments=True)
    my._server_ansiquotes = True
    assert quoting_for(my) == Quoting(hash_comments=True)
    pg = getattr(postgresql, PG_DRIVER).dialect()
    assert quoting_for(pg) == POSTGRESQL  # before a connection tells (1.4 assumes escapes)
    pg._backslash_escapes = True
    assert quoting_for(pg) == POSTGRESQL
    pg.server_version_info = (15, 0)  # as the dialect initializes on its first connect
    assert quoting_for(pg).backslash
    assert quoting_for(sqlite.dialect()) == STANDARD


def test_plan_text_is_masked_by_position_not_by_value() -> None:
    """Every literal of a condition is masked (including one the database folded or
    cast), names, placeholders and digits in names are kept."""
    cond = (
        "((lower((customer_email)::text) = 'secret-7f3a@example.com'::text) AND"
        " (t2.amount > '100.5'::numeric) AND (id = 42) AND (x = $1)"
        " AND (tags @> '{a,b}'::text[]))"
    )
    assert mask_literals(cond, POSTGRESQL) == (
        "((lower((customer_email)::text) = ?::text) AND (t2.amount > ?::numeric) AND"
        " (id = ?) AND (x = $1) AND (tags @> ?::text[]))"
    )
    maria = "orders.customer_email = 'it\\'s secret' and orders.n > 7 and `t1`.`c2` = 3"
    assert mask_literals(maria, MYSQL) == (
        "orders.customer_email = ? and orders.n > ? and `t1`.`c2` = ?"
    )


#: Pieces hostile text is made of: unclosed and escaped quotes of every kind, dollar
#: tags, pyformat openings, comment openings, nesting.
_HOSTILE = ["'\\", "'", "\\", "''", '"', "`", "$t$", "$a1$", "$", "%(", "/*", "*/", "--",
            "#", "\n", "E'", "(", ")", ",", "IN (", "1", "a", ":", "?", "::"]  # fmt: skip
_hostile = st.lists(st.sampled_from(_HOSTILE), max_size=400).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_hostile, dialect=st.sampled_from(["sqlite", "postgresql", "mysql", None]))
def test_property_hostile_text_never_raises(text: str, dialect: str | None) -> None:
    f = fingerprint(text, dialect)
    assert HEX16.match(f.id)
    assert fingerprint(text, dialect) == f


#: What a value may hold: every character that ends or escapes a quote somewhere.
_content = st.text(alphabet="ab'\\\"`$/*-#\n%(?:", max_size=12)


def _literal(dialect: str, content: str, how: int) -> str:
    """``content`` as a string literal written the way ``dialect`` reads it."""
    if dialect == "mysql":
        esc = content.replace("\\", "\\\\")
        if how % 3 == 0:
            return "'" + esc.replace("'", "\\'") + "'"
        if how % 3 == 1:
            return "'" + esc.replace("'", "''") + "'"
        return '"' + esc.replace('"', '\\"') + '"'
    if dialect == "postgresql" and how % 3 == 1:
        return "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if dialect == "postgresql" and how % 3 == 2 and "$q$" not in content + "$":
        return "$q$" + content + "$q$"
    return "'" + content.replace("'", "''") + "'"


_NOT_LITERALS = ["(", ")", ",", " ", "\n", "%(p)s", "?", "$1", ":name", "::text", "x1",
                 "/* a'b \\ */", "-- it's\n", '"na""me"', "`na``me`", "1.5",
                 "IN (1, 2)"]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    dialect=st.sampled_from(["sqlite", "postgresql", "mysql"]),
    pieces=st.lists(
        st.one_of(
            st.sampled_from(_NOT_LITERALS).map(lambda p: ("sql", p, 0)),
            st.tuples(st.just("value"), _content, st.integers(0, 2)),
        ),
        max_size=12,
    ),
    at=st.integers(0, 12),
    how=st.integers(0, 2),
)
def test_property_a_value_among_hostile_values_is_never_kept(
    dialect: str, pieces: list[tuple[str, str, int]], at: int, how: int
) -> None:
    """A statement of literals holding quotes and backslashes of every kind, written as
    the database reads them, beside comments, quoted names and placeholders: the one
    holding the secret is masked in the shape and in the sample."""
    if dialect != "mysql":
        pieces = [p for p in pieces if not p[1].startswith("`")]
    else:
        pieces = [p for p in pieces if not p[1].startswith('"')]
    parts = [_literal(dialect, c, h) if kind == "value" else c for kind, c, h in pieces]
    parts.insert(min(at, len(parts)), " = " + _literal(dialect, "it's " + SECRET + "\\", how))
    sql = "SELECT a FROM t WHERE b " + " ".join(parts)
    f = fingerprint(sql, dialect)
    assert "secret" not in f.shape, sql
    assert "secret" not in f.sample, sql


def _best_of(n: int, fn: t.Callable[[], object]) -> float:
    import time

    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    "unit",
    ["'\\", "$t1$", "%(", "E'\\", "/*", '"', "(", "IN (1,"],
)
def test_hostile_text_costs_what_plain_text_of_its_length_costs(unit: str) -> None:
    """Linear time: a statement made of one hostile piece repeated costs about what a
    plain one of the same length does, at 8 KB and at 32 KB (a quadratic scanner took
    0.92 s for 10 KB of ``'\\``: a thousand times a plain statement). And past
    SCAN_CHARS, a 1 MB statement costs what its first SCAN_CHARS do."""
    from querywatch.fingerprint import _fingerprint

    plain_unit = "a, "
    for size in (8_192, 32_000):
        hostile = "SELECT " + unit * (size // len(unit))
        plain = "SELECT " + plain_unit * (size // len(plain_unit))
        for q in (STANDARD, POSTGRESQL, MYSQL):
            ratio = _best_of(5, functools.partial(_fingerprint, hostile, q)) / _best_of(
                5, functools.partial(_fingerprint, plain, q)
            )
            assert ratio < 10, (unit, size, q, ratio)
    huge = "SELECT " + unit * (1_000_000 // len(unit))
    plain = "SELECT " + plain_unit * (SCAN_CHARS // len(plain_unit))
    ratio = _best_of(3, lambda: _fingerprint(huge, POSTGRESQL)) / _best_of(
        3, lambda: _fingerprint(plain, POSTGRESQL)
    )
    assert ratio < 10, (unit, ratio)


def test_a_long_statement_seen_again_is_not_read_again() -> None:
    """Statements past the text-keyed cache are kept by a digest of their text."""
    import importlib

    fpmod = importlib.import_module("querywatch.fingerprint")

    big = "SELECT * FROM t WHERE id IN (" + ", ".join(str(i) for i in range(3000)) + ") -- x"
    assert len(big) > 4096
    first = fingerprint(big)
    assert any(v is first for v in fpmod._long.values())
    assert fingerprint(big) is first
    for i in range(fpmod._LONG_SIZE + 10):
        fingerprint(big + str(i))
    assert len(fpmod._long) <= fpmod._LONG_SIZE
