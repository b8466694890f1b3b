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

The scanner is a single compiled regular expression rather than ``sqlglot``'s tokenizer:
it knows every placeholder style at once (sqlglot's tokenizer is per dialect), it never
fails on text it does not understand, and it is several times faster on the cold path.
The hot path is a bounded LRU keyed by the raw text, so a statement seen before costs one
dictionary hit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import typing as t

__all__ = ["Fingerprint", "fingerprint"]

#: Statements longer than this are normalized each time instead of being cached, so the
#: cache's memory stays bounded (at most ``_CACHE_SIZE * _CACHE_MAX_CHARS`` characters).
_CACHE_MAX_CHARS = 4096
_CACHE_SIZE = 2048
#: The shape kept for display is cut to this many characters (the id covers all of it).
SHAPE_DISPLAY_CHARS = 4000

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<postcompile>__\[POSTCOMPILE_[^\]]*\])
    |(?P<dollar>\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?\$(?P=tag)\$)
    |(?P<string>[eEbBxXnNuU]?'(?:[^'\\]|''|\\.)*')
    |(?P<qident>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
    |(?P<param>\?|%s|%\([^)]*\)s|(?<!:):[^\W\d]\w*|\$\d+|:\d+)
    |(?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
    |(?P<word>[^\W\d]\w*)
    |(?P<op>::|<>|!=|<=|>=|\|\||->>?|\#>>?|@>|<@|&&|.)
    """,
    re.VERBOSE | re.DOTALL,
)

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


def _tokens(sql: str) -> list[str]:
    """Normalized tokens: values become ``?``, words fold case, quoting is dropped."""
    out: list[str] = []
    append = out.append
    for m in _TOKEN_RE.finditer(sql):
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


def _simple_group_end(tokens: list[str], start: int) -> int:
    """If ``tokens[start]`` opens a group of values only, the index after its ``)``."""
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
    return -1


def _collapse_lists(tokens: list[str]) -> list[str]:
    """``IN (?, ?, ?)`` -> ``IN (...)``; ``VALUES (?, ?), (?, ?)`` -> ``VALUES (...)``;
    ``LIMIT ?, ?`` and ``LIMIT ? OFFSET ?`` -> ``LIMIT ?``; ``INNER JOIN`` -> ``JOIN``."""
    out: list[str] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if tok == "(" and out and out[-1] in ("IN", "VALUES"):
            end = _simple_group_end(tokens, i)
            if end > 0:
                out.append("(...)")
                if out[-2] == "VALUES":
                    while end + 1 < n and tokens[end] == ",":
                        nxt = _simple_group_end(tokens, end + 1)
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


def _sample(sql: str) -> str:
    """``sql`` with its string literals masked as ``?`` (they may hold values an app
    formatted into its SQL); empty when too long to keep."""
    if len(sql) > SHAPE_DISPLAY_CHARS:
        return ""
    if "'" not in sql and "$" not in sql:
        return sql.strip()
    parts = []
    for m in _TOKEN_RE.finditer(sql):
        parts.append("?" if m.lastgroup in ("string", "dollar") else m.group())
    return "".join(parts).strip()


def _fingerprint(sql: str) -> Fingerprint:
    tokens = _collapse_lists(_drop_param_casts(_tokens(sql)))
    shape = _render(tokens)
    digest = hashlib.blake2b(shape.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return Fingerprint(
        id=digest,
        shape=shape[:SHAPE_DISPLAY_CHARS],
        operation=_operation(tokens),
        sample=_sample(sql),
    )


_cached_fingerprint = functools.lru_cache(maxsize=_CACHE_SIZE)(_fingerprint)


def fingerprint(sql: str | bytes) -> Fingerprint:
    """The :class:`Fingerprint` of ``sql``.

    Never raises on odd text: bytes are decoded as UTF-8 with replacement, and a
    statement of any length is accepted (only those up to 4,096 characters are cached).

    .. versionadded:: 0.1
    """
    if not isinstance(sql, str):
        sql = (
            bytes(sql).decode("utf-8", "replace")
            if isinstance(sql, (bytes, bytearray))
            else str(sql)
        )
    if len(sql) <= _CACHE_MAX_CHARS:
        return _cached_fingerprint(sql)
    return _fingerprint(sql)


def fingerprint_cache_info() -> t.Any:
    """The LRU's hit/miss counters (``functools._CacheInfo``)."""
    return _cached_fingerprint.cache_info()
