"""Helpers shared by the dialect modules: table aliases and database errors in words."""

from __future__ import annotations

import functools
import typing as t

from ..exceptions import ExplainError

if t.TYPE_CHECKING:
    from . import Session


@functools.lru_cache(maxsize=256)
def _alias_map(sql: str, dialect: str) -> tuple[tuple[str, str], ...]:
    import sqlglot
    from sqlglot import exp

    from .._sql import quiet_parse
    from .._sql import sqlglot_dialect

    try:
        with quiet_parse():
            tree = sqlglot.parse_one(sql, read=sqlglot_dialect(dialect) or None)
    except Exception:
        return ()
    out = []
    for tbl in tree.find_all(exp.Table):
        if tbl.alias:
            out.append((tbl.alias.lower(), tbl.name))
    return tuple(out)


def alias_map(sql: str, dialect: str) -> dict[str, str]:
    """Alias (lower case) to real table name, for the tables ``sql`` reads."""
    return dict(_alias_map(sql, dialect))


def translate_error(exc: Exception, session: Session) -> ExplainError:
    """A database error during EXPLAIN as an :class:`ExplainError` that says what to do."""
    from .._redact import error_line

    # The first line, its values masked: the statement may have run with an app's values.
    text = error_line(exc, 300)
    low = text.lower()
    if "interrupted" in low or "statement timeout" in low or "max_statement_time" in low:
        msg = (
            f"The statement (EXPLAIN, or a candidate index's build) took longer than the"
            f" {session.explainer.timeout:g} s statement timeout and was stopped ({text});"
            " raise it with 'querywatch advise --timeout' or QUERYWATCH_ADVISE_TIMEOUT."
        )
    elif (
        "no such table" in low
        or "does not exist" in low
        or "doesn't exist" in low
        or "unknown table" in low
    ):
        msg = f"A table or column the statement reads does not exist (any more): {text}."
    elif "permission denied" in low or "denied" in low or "privilege" in low:
        msg = (
            f"The database refused EXPLAIN for lack of privileges: {text}. Grant SELECT on"
            " the tables read, or connect as a user who has it."
        )
    else:
        msg = f"The database could not explain the statement: {text}."
    return ExplainError(msg)
