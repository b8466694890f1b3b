"""SQL text to a normalized shape and a stable 16-hex id.

Two statements have the same shape when they differ only in values: literals and bound
parameters of every placeholder style (``?``, ``%s``, ``%(name)s``, ``:name``, ``$1``), the
length of ``IN (...)`` lists and of multi-row ``VALUES`` lists, comments, white space,
keyword and unquoted-identifier case, identifier quoting (``"order"``, ```order```),
the ``::TYPE`` casts that SQLAlchemy's psycopg dialect adds to bound parameters, the page
of a query (``LIMIT ? OFFSET ?``, ``LIMIT ?, ?`` and ``LIMIT ?`` are one shape), and
``INNER JOIN``/``OUTER JOIN`` spelled long or short. That
makes the same ORM query one shape on SQLite, PostgreSQL and MariaDB. Digits inside
identifiers are kept: ``table2`` is not ``table3``.

Where a string literal ends is each database's own rule (:class:`Quoting`): a backslash
escapes a quote on MySQL and MariaDB, not on PostgreSQL or SQLite, so capture passes the
engine's dialect. Read with the wrong rule, ``'C:\\' OR email = 'ann@example.com'`` would
keep the email as SQL.

The scanner is one compiled regular expression a quoting rule rather than ``sqlglot``'s
tokenizer: it knows every placeholder style at once, it never fails on text it does not
understand, and it is several times faster on the cold path. Each of its alternatives
is linear (an unclosed quote or comment runs to the end of the text), and it reads at
most :data:`SCAN_CHARS` characters, so no statement costs the request more than that. The
hot path is a bounded LRU keyed by the raw text (by a digest of it for long statements),
so a statement seen before costs one dictionary hit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import threading
import typing as t

__all__ = [
    "MYSQL",
    "POSTGRESQL",
    "STANDARD",
    "Fingerprint",
    "Quoting",
    "fingerprint",
    "mask_literals",
    "quoting_for",
]

#: Statements longer than this are normalized each time instead of being cached, so the
#: cache's memory stays bounded (at most ``_CACHE_SIZE * _CACHE_MAX_CHARS`` characters).
_CACHE_MAX_CHARS = 4096
_CACHE_SIZE = 2048
#: The shape kept for display is cut to this many characters (the id covers all of it).
SHAPE_DISPLAY_CHARS = 4000
#: A statement is read up to this many characters, on the request thread: longer ones
#: are told apart by this much of their text, and their shape ends in `` …``.
SCAN_CHARS = 32_768


@dataclasses.dataclass(frozen=True, slots=True)
class Quoting:
    """How a database reads quotes and comments: where a string literal ends decides
    what is a value, so the wrong rule reads a value as SQL and keeps it.

    ``'C:\\' OR email = 'ann@example.com'`` holds two strings on PostgreSQL and SQLite,
    which take no backslash escapes, and one on MySQL, which does."""

    #: ``'...'`` takes backslash escapes (MySQL and MariaDB, unless
    #: ``NO_BACKSLASH_ESCAPES``; PostgreSQL with ``standard_conforming_strings = off``).
    backslash: bool = False
    #: ``"..."`` is a string, not a name (MySQL and MariaDB without ``ANSI_QUOTES``).
    double_quoted_strings: bool = False
    #: ``E'...'`` takes backslash escapes and ``$tag$...$tag$`` quotes (PostgreSQL).
    postgresql: bool = False
    #: ``#`` starts a comment (MySQL and MariaDB).
    hash_comments: bool = False


#: SQLite and the SQL standard: ``''`` doubles a quote, nothing else escapes.
STANDARD = Quoting()
POSTGRESQL = Quoting(postgresql=True)
MYSQL = Quoting(backslash=True, double_quoted_strings=True, hash_comments=True)


def quoting_for(dialect: t.Any) -> Quoting:
    """The :class:`Quoting` of a SQLAlchemy dialect (its server modes included, once a
    connection has told them) or of a dialect name; :data:`POSTGRESQL`'s rules, which
    read SQLite's statements too, when unknown."""
    name = dialect if isinstance(dialect, str) else getattr(dialect, "name", "")
    if name == "sqlite":
        return STANDARD
    if name in ("mysql", "mariadb"):
        if isinstance(dialect, str):
            return MYSQL
        backslash = getattr(dialect, "_backslash_escapes", True) is not False
        ansi = bool(getattr(dialect, "_server_ansiquotes", False))
        if backslash and not ansi:
            return MYSQL
        return Quoting(backslash=backslash, double_quoted_strings=not ansi, hash_comments=True)
    # Told by the server as the dialect initializes (SQLAlchemy 1.4 assumes it before).
    if (
        name == "postgresql"
        and getattr(dialect, "server_version_info", None) is not None
        and getattr(dialect, "_backslash_escapes", False) is True
    ):
        return Quoting(backslash=True, postgresql=True)
    return POSTGRESQL


def _quoted(q: str, backslash: bool) -> str:
    """A literal quoted by ``q``: ``qq`` doubles it, ``\\`` escapes when ``backslash``.
    An unclosed one runs to the end of the text, so it is masked whole. Written as an
    unrolled loop: no backtracking, linear in the text's length."""
    q = re.escape(q)
    if backslash:
        return rf"{q}[^{q}\\]*(?:(?:{q}{q}|\\.?)[^{q}\\]*)*(?:{q}|\Z)"
    return rf"{q}[^{q}]*(?:{q}{q}[^{q}]*)*(?:{q}|\Z)"


@functools.lru_cache(maxsize=16)
def _token_re(quoting: Quoting) -> re.Pattern[str]:
    """The scanner for ``quoting``. Every alternative is linear in the text it reads
    (an unclosed quote or comment runs to the end instead of failing and being tried
    again further on), so a hostile statement costs what a plain one of its length does."""
    strings = [rf"(?:[bBxXnN]|[uU]&?)?{_quoted(chr(39), quoting.backslash)}"]
    if quoting.postgresql:
        strings.insert(0, rf"[eE]{_quoted(chr(39), True)}")
    if quoting.double_quoted_strings:
        strings.append(_quoted('"', quoting.backslash))
    names = [_quoted("`", False)]
    if not quoting.double_quoted_strings:
        names.append(_quoted('"', False))
    comment = r"--[^\n]*|/\*.*?(?:\*/|\Z)" + (r"|\#[^\n]*" if quoting.hash_comments else "")
    dollar = (
        r"|(?P<dollar>\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z))"
        if quoting.postgresql
        else ""
    )
    return re.compile(
        rf"""
        (?P<ws>\s+)
        |(?P<comment>{comment})
        |(?P<postcompile>__\[POSTCOMPILE_[^\]]{{0,256}}\])
        {dollar}
        |(?P<string>{"|".join(strings)})
        |(?P<qident>{"|".join(names)})
        |(?P<param>\?|%s|%\([^)%\n]{{0,256}}\)s|(?<!:):[^\W\d]\w*|\$\d+|:\d+)
        |(?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
        |(?P<word>[^\W\d]\w*)
        |(?P<op>::|<>|!=|<=|>=|\|\||->>?|\#>>?|@>|<@|&&|.)
        """,
        re.VERBOSE | re.DOTALL,
    )


def mask_literals(text: str, quoting: Quoting = POSTGRESQL, *, numbers: bool = True) -> str:
    """``text`` (SQL, or a plan's conditions as the database prints them) with every
    literal as ``?``: strings, dollar-quoted bodies and, unless ``numbers`` is False,
    numbers. Names, operators and placeholders are kept as they are. Masks by where
    literals stand, not by known values, so a value the database rewrote before
    printing it (folded, cast, quoted again) is masked too."""
    masked = ("string", "dollar", "number") if numbers else ("string", "dollar")
    parts = []
    for m in _token_re(quoting).finditer(text):
        kind = m.lastgroup
        tok = m.group()
        if kind in masked or (kind == "qident" and not _closed(tok)):
            parts.append("?")
        elif kind == "comment":
            # An optimizer hint (/*+ ... */) is part of the statement: kept, its quoted
            # words masked. Any other comment is dropped: sqlcommenter's tags, a
            # statement commented out, or the rest of the text after an unclosed /*.
            parts.append(_COMMENT_QUOTED_RE.sub("?", tok) if tok.startswith("/*+") else " ")
        else:
            parts.append(tok)
    return "".join(parts)


_COMMENT_QUOTED_RE = re.compile(r"'[^']*(?:'|\Z)")


def _closed(tok: str) -> bool:
    return len(tok) > 1 and tok[-1] == tok[0]


_PLAIN_IDENT_RE = re.compile(r"[a-z_][a-z0-9_$]*\Z")

KEYWORDS = frozenset(
    """
    ADD ALL ALTER ANALYZE AND ANY ARRAY AS ASC BEGIN BETWEEN BY CASCADE CASE CAST CHECK
    COLLATE COLUMN COMMIT CONFLICT CONSTRAINT CREATE CROSS CURRENT_DATE CURRENT_TIME
    CURRENT_TIMESTAMP DEFAULT DELETE DESC DISTINCT DO DROP DUPLICATE ELSE END ESCAPE EXCEPT
    EXISTS EXPLAIN FALSE FETCH FILTER FIRST FOR FOREIGN FROM FULL GROUP HAVING IF ILIKE IN
    INDEX INNER INSERT INTERSECT INTERVAL INTO IS JOIN KEY LAST LATERAL LEFT LIKE LIMIT
    LOCKED MATERIALIZED MERGE NATURAL NEXT NOT NOTHING NOWAIT NULL NULLS OFFSET ON ONLY OR
    ORDER OUTER OVER PARTITION PRAGMA PRIMARY RECURSIVE REFERENCES RELEASE REPLACE RETURNING
    RIGHT ROLLBACK ROW ROWS SAVEPOINT SELECT SET SHARE SHOW SKIP TABLE THEN TO TRANSACTION
    TRUE UNION UNIQUE UPDATE USING VALUES VIEW WHEN WHERE WINDOW WITH
    """.split()
)

_MAIN_OPERATIONS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE"})
#: What may stand inside a list group that collapses to ``(...)``.
_LIST_ATOMS = frozenset({"?", ",", "(", ")", "-", "+", "NULL", "TRUE", "FALSE", "DEFAULT"})
#: Words that continue a type name: ``TIMESTAMP WITHOUT TIME ZONE``, ``DOUBLE PRECISION``.
_TYPE_WORDS = frozenset({"WITH", "WITHOUT", "TIME", "ZONE", "PRECISION", "VARYING"})
_NO_SPACE_BEFORE = frozenset({",", ")", ".", "::"})
_NO_SPACE_AFTER = frozenset({"(", ".", "::"})


@dataclasses.dataclass(frozen=True, slots=True)
class Fingerprint:
    """The normalized shape of one SQL statement."""

    #: 16 hex digits, stable across processes, hosts and versions of Python.
    id: str
    #: The normalized text, cut to :data:`SHAPE_DISPLAY_CHARS` characters.
    shape: str
    #: ``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``, or the statement's first keyword.
    operation: str
    #: One statement of this shape as the driver received it, runnable by EXPLAIN: its
    #: placeholders kept, string literals masked as ``?``; empty when longer than
    #: :data:`SHAPE_DISPLAY_CHARS`. It holds no bound value.
    sample: str = dataclasses.field(default="", compare=False)

    @property
    def is_read(self) -> bool:
        """True for a ``SELECT`` (including ``WITH ... SELECT``)."""
        return self.operation == "SELECT"


def _tokens(sql: str, quoting: Quoting) -> list[str]:
    """Normalized tokens: values become ``?``, words fold case, quoting is dropped."""
    out: list[str] = []
    append = out.append
    for m in _token_re(quoting).finditer(sql):
        kind = m.lastgroup
        if kind == "word":
            word = m.group()
            upper = word.upper()
            append(upper if upper in KEYWORDS else word.lower())
        elif kind == "op":
            append(m.group())
        elif kind in ("param", "number", "string", "dollar", "postcompile"):
            append("?")
        elif kind == "qident":
            raw = m.group()
            if not _closed(raw):
                append("?")  # unclosed: whatever follows may be a value
                continue
            q = raw[0]
            inner = raw[1:-1].replace(q + q, q)
            append(inner if _PLAIN_IDENT_RE.match(inner) else '"' + inner.replace('"', '""') + '"')
        # ws and comment are dropped
    return out


def _drop_param_casts(tokens: list[str]) -> list[str]:
    """``? :: INTEGER`` and ``? :: VARCHAR(30)`` become ``?``: the cast is the driver's."""
    out: list[str] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        out.append(tok)
        i += 1
        if tok == "?":
            while i + 1 < n and tokens[i] == "::" and tokens[i + 1] not in ("(", "?"):
                i += 2
                while i < n and tokens[i].upper() in _TYPE_WORDS:
                    i += 1
                if i < n and tokens[i] == "(":
                    depth = 0
                    while i < n:
                        if tokens[i] == "(":
                            depth += 1
                        elif tokens[i] == ")":
                            depth -= 1
                        i += 1
                        if depth == 0:
                            break
                while i + 1 < n and tokens[i] == "[" and tokens[i + 1] == "]":
                    i += 2
    return out


def _simple_group_end(tokens: list[str], start: int, cut: bool = False) -> int:
    """If ``tokens[start]`` opens a group of values only, the index after its ``)``
    (or the end of ``tokens``, when the statement was ``cut`` inside the group)."""
    depth = 0
    for i in range(start, len(tokens)):
        tok = tokens[i]
        if tok not in _LIST_ATOMS:
            return -1
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(tokens) if cut else -1


def _collapse_lists(tokens: list[str], cut: bool = False) -> list[str]:
    """``IN (?, ?, ?)`` -> ``IN (...)``; ``VALUES (?, ?), (?, ?)`` -> ``VALUES (...)``;
    ``LIMIT ?, ?`` and ``LIMIT ? OFFSET ?`` -> ``LIMIT ?``; ``INNER JOIN`` -> ``JOIN``."""
    out: list[str] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if tok == "(" and out and out[-1] in ("IN", "VALUES"):
            end = _simple_group_end(tokens, i, cut)
            if end > 0:
                out.append("(...)")
                if out[-2] == "VALUES":
                    while end + 1 < n and tokens[end] == ",":
                        nxt = _simple_group_end(tokens, end + 1, cut)
                        if nxt < 0:
                            break
                        end = nxt
                i = end
                continue
        if tok in ("INNER", "OUTER") and i + 1 < n and tokens[i + 1] == "JOIN":
            # ``INNER JOIN`` is ``JOIN``; ``LEFT OUTER JOIN`` is ``LEFT JOIN`` (MySQL's
            # compiler writes the long forms).
            i += 1
            continue
        if tok == "LIMIT" and (
            tokens[i + 1 : i + 4] == ["?", ",", "?"]
            or tokens[i + 1 : i + 4] == ["?", "OFFSET", "?"]
        ):
            # A page of a query is that query: ``LIMIT ? OFFSET ?`` (SQLite always renders
            # the offset) and MySQL's ``LIMIT offset, count`` are ``LIMIT ?``, like the
            # first page PostgreSQL renders without an offset.
            out.extend(("LIMIT", "?"))
            i += 4
            continue
        out.append(tok)
        i += 1
    return out


def _render(tokens: list[str]) -> str:
    parts: list[str] = []
    prev = ""
    for tok in tokens:
        if parts and not (
            tok in _NO_SPACE_BEFORE
            or prev in _NO_SPACE_AFTER
            or (tok == "(" and prev not in KEYWORDS and (prev[:1].isalnum() or prev[:1] == "_"))
        ):
            parts.append(" ")
        parts.append(tok)
        prev = tok
    return "".join(parts)


def _operation(tokens: list[str]) -> str:
    depth = 0
    for tok in tokens:
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok in _MAIN_OPERATIONS:
            return tok
    for tok in tokens:
        if tok[:1].isalpha():
            return tok.upper()
    return ""


def _sample(sql: str, quoting: Quoting) -> str:
    """``sql`` with its string literals masked as ``?`` (they may hold values an app
    formatted into its SQL); empty when too long to keep."""
    if len(sql) > SHAPE_DISPLAY_CHARS:
        return ""
    if "'" not in sql and "$" not in sql and '"' not in sql:
        return sql.strip()
    return mask_literals(sql, quoting, numbers=False).strip()


def _fingerprint(sql: str, quoting: Quoting) -> Fingerprint:
    cut = len(sql) > SCAN_CHARS
    tokens = _collapse_lists(_drop_param_casts(_tokens(_head(sql) if cut else sql, quoting)), cut)
    shape = _render(tokens) + (" …" if cut else "")
    digest = hashlib.blake2b(shape.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return Fingerprint(
        id=digest,
        shape=shape[:SHAPE_DISPLAY_CHARS],
        operation=_operation(tokens),
        sample=_sample(sql, quoting),
    )


def _head(sql: str) -> str:
    """The first :data:`SCAN_CHARS` characters of ``sql``, cut after the word or the
    number that straddles the cut so no name is read half."""
    end = SCAN_CHARS
    while end < len(sql) and end < SCAN_CHARS + 64 and (sql[end].isalnum() or sql[end] == "_"):
        end += 1
    return sql[:end]


_cached_fingerprint = functools.lru_cache(maxsize=_CACHE_SIZE)(_fingerprint)
#: Statements longer than :data:`_CACHE_MAX_CHARS`, by a digest of their text: a long
#: statement run again costs a hash, not a scan, and the cache holds no text.
_long: dict[tuple[bytes, Quoting], Fingerprint] = {}
_LONG_SIZE = 256
_long_lock = threading.Lock()


def _long_fingerprint(sql: str, quoting: Quoting) -> Fingerprint:
    key = (hashlib.blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=16).digest(), quoting)
    found = _long.get(key)
    if found is not None:
        return found
    fp = _fingerprint(sql, quoting)
    with _long_lock:
        _long[key] = fp
        while len(_long) > _LONG_SIZE:
            del _long[next(iter(_long))]
    return fp


def fingerprint(sql: str | bytes, dialect: t.Any = None) -> Fingerprint:
    """The :class:`Fingerprint` of ``sql``.

    ``dialect`` (a SQLAlchemy dialect, its name, or a :class:`Quoting`) says how the
    database reads quotes, so a value is never taken for SQL; without it, PostgreSQL's
    rules (which read SQLite's statements the same).

    Never raises on odd text: bytes are decoded as UTF-8 with replacement. The work is
    linear in the statement's length and capped: a statement is read up to its first
    :data:`SCAN_CHARS` characters (its shape then ends in ``…``), and one seen before is a
    cache hit.

    .. versionadded:: 0.1
    """
    if not isinstance(sql, str):
        sql = (
            bytes(sql).decode("utf-8", "replace")
            if isinstance(sql, (bytes, bytearray))
            else str(sql)
        )
    quoting = dialect if isinstance(dialect, Quoting) else quoting_for(dialect)
    if len(sql) <= _CACHE_MAX_CHARS:
        return _cached_fingerprint(sql, quoting)
    return _long_fingerprint(sql, quoting)


def fingerprint_cache_info() -> t.Any:
    """The LRU's hit/miss counters (``functools._CacheInfo``)."""
    return _cached_fingerprint.cache_info()
