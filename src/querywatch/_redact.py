"""Values out of the error text querywatch keeps.

A database quotes the value it choked on in its error (PostgreSQL ``invalid input syntax
for type integer: "ann@example.com"``, MariaDB ``Incorrect integer value:
'ann@example.com'``), and the advisor explains statements with an app's real
parameters. An error line kept for a person (a "no suggestion" reason, a note, a log
line) is masked by where values stand, like a plan's conditions
(:func:`querywatch.fingerprint.mask_literals`): every quoted word, and the values of a
key (``Key (email)=(...)``). Names a kind of name precedes (``relation "orders"``,
``Table 'shop.orders'``) are kept: they say what to fix.
"""

from __future__ import annotations

import re
import typing as t

__all__ = ["error_line", "mask_error"]

#: The kinds of name a database puts before a quoted name (PostgreSQL ``relation
#: "orders"``, MariaDB ``Table 'shop.orders'``): what follows them is a name, kept; any
#: other quoted word may be a value, masked.
_NAME_KINDS = (
    "relation|column|table|index|constraint|schema|function|procedure|type|sequence|view"
    "|database|role|user|operator|extension|trigger|collation|domain|cursor|savepoint"
    "|statement|parameter|tablespace|publication|subscription|policy|rule|server|aggregate"
    "|key|field"
)
_ERROR_RE = re.compile(
    rf"""
    (?P<name>\b(?:{_NAME_KINDS})\s+(?:"[^"]*(?:"|\Z)|'[^']*(?:'|\Z)))
    |(?P<quoted>(?<![^\W\d_])'[^']*(?:'|\Z)|"[^"]*(?:"|\Z))
    |(?P<key>=\((?:[^()]|\([^()]*\))*(?:\)|\Z))
    """,
    re.VERBOSE | re.IGNORECASE,
)


def mask_error(text: str) -> str:
    """``text`` with each value a database error may quote as ``?``."""

    def repl(m: re.Match[str]) -> str:
        if m.lastgroup == "name":
            return m.group()
        return "=(?)" if m.lastgroup == "key" else "?"

    return _ERROR_RE.sub(repl, text)


def error_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc`` (of the driver's error under a SQLAlchemy one), its
    values masked, at most ``limit`` characters; the class name when it says nothing."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[t.Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        # PyMySQL's (code, message): its str() quotes the whole message as a tuple.
        text = f"({args[0]}) {args[1]}".strip()
    else:
        text = str(orig).strip()
    if not text:
        return type(orig).__name__
    return mask_error(text.splitlines()[0])[:limit]
