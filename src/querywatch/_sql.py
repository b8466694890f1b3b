"""What querywatch reads in a statement's text, below every layer that reads one: the
tables it reads and writes, whether it is a read-only ``SELECT``, its placeholders in any
paramstyle, and sqlglot parsing that stays quiet in the app's logs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import typing as t

from ._redact import error_line
from .exceptions import ExplainError
from .exceptions import UnsafeStatementError

#: The execution option that marks querywatch's own statements: capture skips them.
IGNORE_OPTION = "querywatch_ignore"
#: The dependency of a computation whose statements could not all be read.
ALL_TABLES = "*"


# --- what may be explained --------------------------------------------------------------

_SQLGLOT_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}


def sqlglot_dialect(dialect: str) -> str:
    return _SQLGLOT_DIALECTS.get(dialect, "")


_parsing = threading.local()


class _OwnParses(logging.Filter):
    """Drops what sqlglot logs while querywatch parses one of the app's statements: one
    it reads as a Command (SQLAlchemy's ``show standard_conforming_strings`` on connect)
    is the app's, valid SQL, and the warning reached the app's stderr. The app's own
    use of sqlglot is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_parsing, "active", False)


_OWN_PARSES = _OwnParses()


@contextlib.contextmanager
def quiet_parse() -> t.Iterator[None]:
    """Parse with sqlglot inside this block without its warnings reaching the app."""
    sqlglot_logger = logging.getLogger("sqlglot")
    if _OWN_PARSES not in sqlglot_logger.filters:
        sqlglot_logger.addFilter(_OWN_PARSES)
    before = getattr(_parsing, "active", False)
    _parsing.active = True
    try:
        yield
    finally:
        _parsing.active = before


def check_read_only(sql: str, dialect: str = "") -> t.Any:
    """Parse ``sql`` and return its sqlglot tree if it is one read-only ``SELECT``;
    raise :class:`UnsafeStatementError` (or :class:`ExplainError` when it does not
    parse) otherwise."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    if any(
        m.lastgroup == "comment" and m.group(0).startswith(("/*!", "/*M!"))
        for m in _TOKEN_RE.finditer(sql)
    ):
        # MariaDB/MySQL run the text of /*! ... */ as SQL (SELECT … /*!INTO OUTFILE …*/
        # wrote a file on the server); a parser sees a comment. Refused on every
        # database: a statement that carries one is not worth the doubt.
        msg = (
            "The statement holds a MariaDB/MySQL executable comment (/*! ... */), which"
            " the server runs as SQL: it is never explained nor run."
        )
        raise UnsafeStatementError(msg)
    marked, _ = number_placeholders(sql)
    try:
        with quiet_parse():
            trees = sqlglot.parse(marked, read=sqlglot_dialect(dialect) or None)
        trees = [tr for tr in trees if tr]
    except ParseError as e:
        msg = f"The statement could not be parsed ({error_line(e)}); it was not explained."
        raise ExplainError(msg) from None
    if len(trees) != 1:
        msg = f"Expected one statement, got {len(trees)}; only a single SELECT is explained."
        raise UnsafeStatementError(msg)
    tree = trees[0]
    statements = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop)
    if not isinstance(tree, (exp.Query, *statements, exp.Alter, exp.Command, exp.Set)):
        msg = "The statement could not be parsed as SQL; it was not explained."
        raise ExplainError(msg)
    if not isinstance(tree, exp.Query):
        kind = type(tree).__name__.upper()
        msg = (
            f"Only SELECT and WITH ... SELECT are explained; this is {kind}."
            " A write is never explained nor run."
        )
        raise UnsafeStatementError(msg)
    for node in tree.walk():
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create)):
            msg = (
                "The statement writes (a data-modifying WITH or subquery):"
                " it is never explained nor run."
            )
            raise UnsafeStatementError(msg)
        if isinstance(node, exp.Select):
            if node.args.get("locks"):
                msg = "SELECT ... FOR UPDATE/SHARE takes row locks: it is never explained."
                raise UnsafeStatementError(msg)
            if node.args.get("into"):
                msg = "SELECT ... INTO creates a table: it is never explained."
                raise UnsafeStatementError(msg)
    return tree


# --- placeholders -----------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<dollar>\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?\$(?P=tag)\$)
    |(?P<string>[eEbBxXnNuU]?'(?:[^'\\]|''|\\.)*')
    |(?P<qident>"(?:[^"]|"")*"|`(?:[^`]|``)*`)
    |(?P<param>\?|%s|%\([^)]*\)s|(?<![:\w]):[^\W\d]\w*|\$\d+)
    |(?P<cast>::)
    |(?P<other>[^'"`$?%:\-/]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)

MARKER = "qwp"


def number_placeholders(sql: str) -> tuple[str, int]:
    """Rewrite every placeholder (any paramstyle) as ``:qwp1``, ``:qwp2``... in text
    order; returns the text and how many there were. A repeated ``:name`` or ``$1`` gets
    a number each time it appears."""
    out: list[str] = []
    n = 0
    for m in _TOKEN_RE.finditer(sql):
        if m.lastgroup == "param":
            n += 1
            out.append(f":{MARKER}{n}")
        else:
            out.append(m.group(0))
    return "".join(out), n


def placeholder_values(sql: str, params: t.Any) -> list[t.Any] | None:
    """The value of each placeholder of ``sql`` in text order (``:qwpN`` is the N-th),
    from the driver's ``params`` in any paramstyle; None where they do not match."""
    from collections.abc import Mapping
    from collections.abc import Sequence

    tokens = [m.group(0) for m in _TOKEN_RE.finditer(sql) if m.lastgroup == "param"]
    out: list[t.Any] = []
    try:
        for i, tok in enumerate(tokens):
            if isinstance(params, Mapping):
                if tok.startswith("%("):
                    out.append(params[tok[2:-2]])
                elif tok.startswith(":"):
                    out.append(params[tok[1:]])
                else:
                    return None
            elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
                out.append(params[int(tok[1:]) - 1] if tok.startswith("$") else params[i])
            else:
                return None
    except (KeyError, IndexError, ValueError):
        return None
    return out


_MARKER_RE = re.compile(r":qwp(\d+)\b")


def render_placeholders(marked: str, style: str, *, escape_percent: bool) -> str:
    """Turn ``:qwpN`` markers into ``style`` (``named`` ``:qwpN``, ``pyformat``
    ``%(qwpN)s``, ``numeric_dollar`` ``$N``, ``literal`` left to the caller)."""
    out: list[str] = []
    for m in _TOKEN_RE.finditer(marked):
        tok = m.group(0)
        if m.lastgroup == "param" and _MARKER_RE.fullmatch(tok):
            num = tok[len(MARKER) + 1 :]
            if style == "named":
                out.append(tok)
            elif style == "pyformat":
                out.append(f"%({MARKER}{num})s")
            elif style == "numeric_dollar":
                out.append(f"${num}")
            else:  # pragma: no cover - programming error
                raise ValueError(style)
        elif escape_percent:
            out.append(tok.replace("%", "%%"))
        else:
            out.append(tok)
    return "".join(out)


def filter_terms(
    marked: str, dialect: str, columns: t.Collection[str] | None = None
) -> tuple[str, str, set[str]] | None:
    """A one-table ``SELECT``'s table, its ``WHERE`` terms as one condition (only those
    on ``columns``, an index's, when given) and the ``qwpN`` placeholders they use; None
    for a statement that joins, has no such terms, or does not parse. ``marked`` holds
    ``:qwpN`` placeholders."""
    import sqlglot
    from sqlglot import exp

    gen = sqlglot_dialect(dialect)
    try:
        with quiet_parse():
            tree = sqlglot.parse_one(marked, read=gen)
    except Exception:
        return None
    if not isinstance(tree, exp.Select) or tree.args.get("joins"):
        return None
    where = tree.args.get("where")
    tables = list(tree.find_all(exp.Table))
    if where is None or len(tables) != 1 or where.find(exp.Select) is not None:
        return None
    terms = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    if columns is not None:
        wanted = {c.lower() for c in columns}
        terms = [
            x
            for x in terms
            if (found := {c.name.lower() for c in x.find_all(exp.Column)}) and found <= wanted
        ]
    if not terms:
        return None
    cond = " AND ".join(f"({x.sql(dialect=gen)})" for x in terms)
    used = {p.name for x in terms for p in x.find_all(exp.Placeholder)}
    return tables[0].sql(dialect=gen), cond, used


# --- which tables a statement reads and writes ------------------------------------------

_FALLBACK_READ_RE = re.compile(r"\b(?:FROM|JOIN)\s+([\w.\"`]+)", re.I)
_FALLBACK_WRITE_RE = re.compile(
    r"^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO|"
    r"TRUNCATE(?:\s+TABLE)?|(?:CREATE|ALTER|DROP)\s+(?:\w+\s+)*?TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?)"
    r"\s+([\w.\"`]+)",
    re.I,
)


def _name(text: str) -> str:
    return text.replace('"', "").replace("`", "").split(".")[-1].lower()


@functools.lru_cache(maxsize=4096)
def statement_tables(sql: str) -> tuple[frozenset[str], frozenset[str]]:
    """(tables read, tables written) by one statement, lower case; ``{"*"}`` when the
    statement cannot be read (every table, to be safe)."""
    import sqlglot
    from sqlglot import exp

    marked, _ = number_placeholders(sql)
    try:
        with quiet_parse():
            tree = sqlglot.parse_one(marked)
    except Exception:
        tree = None
    if tree is None:
        m = _FALLBACK_WRITE_RE.match(sql)
        if m:
            return frozenset(), frozenset({_name(m.group(1))})
        found = {_name(x) for x in _FALLBACK_READ_RE.findall(sql)}
        return (frozenset(found) if found else frozenset({ALL_TABLES})), frozenset()
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    tables = {tb.name.lower() for tb in tree.find_all(exp.Table) if tb.name} - ctes
    written: set[str] = set()
    for node in tree.walk():
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
            target = node.this
            if isinstance(target, exp.Schema):
                target = target.this
            if isinstance(target, exp.Table) and target.name:
                written.add(target.name.lower())
        elif isinstance(node, (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)):
            for tb in node.find_all(exp.Table):
                if tb.name:
                    written.add(tb.name.lower())
    if isinstance(tree, exp.Command):
        m = _FALLBACK_WRITE_RE.match(sql)
        written.add(_name(m.group(1)) if m else ALL_TABLES)
    return frozenset(tables - written), frozenset(written)


def split_statements(text: str) -> list[str]:
    """Split a SQL script on ``;`` outside strings, quoted names and comments."""
    out: list[str] = []
    cur: list[str] = []
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(0)
        if m.lastgroup == "other" and ";" in tok:
            pieces = tok.split(";")
            cur.append(pieces[0])
            for p in pieces[1:]:
                out.append("".join(cur))
                cur = [p]
        else:
            cur.append(tok)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip() and not _only_comments(s)]


def _only_comments(sql: str) -> bool:
    return all(m.lastgroup == "comment" or not m.group(0).strip() for m in _TOKEN_RE.finditer(sql))
