"""Index advice, verified against the real planner, and rewrite hints.

For each query (a captured shape, or SQL given by hand) the advisor

1. explains it (:mod:`querywatch.explain`) and turns the plan into findings: a full scan
   of a table over ``scan_min_rows``, a sort or temporary table without an index, an
   index left unused because of a function on its column, a leading-wildcard ``LIKE``;
2. builds candidate indexes from the parsed query (sqlglot): equality, range, ``ORDER BY``
   and ``GROUP BY`` columns, join keys on both sides, expressions such as
   ``lower(email)``, single and composite (equality columns first, then one range or sort
   column), and partial indexes where a column is compared to a constant; candidates an
   existing index already covers are dropped;
3. verifies each candidate with the index present: HypoPG on PostgreSQL when the
   extension is installed; else, when DDL is allowed, a real index built inside a
   transaction that is rolled back (SQLite, PostgreSQL) or built and dropped again
   (MariaDB/MySQL, whose DDL commits). A candidate survives only when the estimated cost
   falls by at least half (SQLite, which has no cost: a full scan or a sort becomes an
   index search) and the planner actually uses it;
4. where DDL is allowed, times the query (run and fetched, best of a few) with each
   survivor built, and ranks by measured time: an estimate can fall a hundredfold while
   the real time does not;
5. picks the smallest set of indexes that serves every improved query.

DDL is allowed by default on SQLite only (a rolled-back transaction leaves the file as it
was; writers wait for the build); on PostgreSQL and MariaDB it takes ``allow_ddl=True``
(``--allow-ddl``), meant for dev, CI or a copy of production.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import time
import typing as t

from .exceptions import QueryWatchError
from .explain import Explainer
from .explain import Plan
from .explain import Session
from .explain.names import translate_error
from .fingerprint import Quoting
from .fingerprint import mask_literals
from .fingerprint import quoting_for
from .redact import error_line
from .sql import check_read_only
from .sql import filter_terms
from .sql import number_placeholders
from .sql import placeholder_values
from .sql import quiet_parse
from .sql import render_placeholders
from .sql import sqlglot_dialect

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy.engine import Engine

__all__ = [
    "Advice",
    "Advisor",
    "Candidate",
    "Hint",
    "PlanFinding",
    "QueryAdvice",
    "QueryInput",
    "Suggestion",
    "no_suggestion_reason",
    "queries_from_store",
    "record_advice",
]

#: An index must cut the estimated cost at least this much to be suggested.
MIN_COST_FALL = 0.5
#: Runs per timing (the best one counts).
TIMING_RUNS = 3
#: A column with at most this many distinct values may get partial indexes.
FEW_VALUES = 32
#: Rows read to find the value most rows of a column have.
MCV_SAMPLE = 5000
#: MariaDB/MySQL built-ins that change something or wait when called.
_MYSQL_EFFECTS = frozenset(
    {
        "nextval", "setval", "lastval", "get_lock", "release_lock", "release_all_locks",
        "sleep", "benchmark", "master_pos_wait", "master_gtid_wait", "load_file",
    }
)  # fmt: skip
#: The most common values of a column a shape's values are chosen among.
MCV_CHOICES = 8


@dataclasses.dataclass
class QueryInput:
    """One query to analyse: a stored shape (placeholders ``?``) or literal SQL."""

    sql: str
    fingerprint: str | None = None
    endpoints: tuple[str, ...] = ()
    calls: int = 0
    total_s: float = 0.0
    #: The statement's real parameters in the driver's paramstyle (held in memory only).
    params: t.Any = None
    label: str | None = None
    #: Where the app issues it (from the store), for people.
    site: t.Any = None
    #: Rows a call returned, on average, as the store counted them (no values): the
    #: advisor picks values for a shape's placeholders that match as many.
    rows: float | None = None

    @property
    def name(self) -> str:
        return self.label or self.fingerprint or _short_hash(self.sql)

    @property
    def shape(self) -> str:
        """The statement on one line, for people."""
        return self.label if self.fingerprint and self.label else " ".join(self.sql.split())

    def to_dict(self, dialect: str = "") -> dict[str, t.Any]:
        """For people: the statement's literals masked (it may be an app's own
        statement with values inline)."""
        shown = mask_literals(self.sql, quoting_for(dialect), numbers=False)
        return {
            "query": self.name,
            "fingerprint": self.fingerprint,
            "sql": shown,
            "shape": self.label if self.fingerprint and self.label else " ".join(shown.split()),
            "endpoints": list(self.endpoints),
        }


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A possible index: key parts (columns or expressions), optionally partial.

    ``table`` and ``schema`` are the names the database knows (an unquoted name folded as
    the database folds it); keys are SQL in the dialect's own quoting, a column optionally
    followed by ``DESC``. The DDL is built with SQLAlchemy's schema constructs, which
    quote what the dialect needs quoted (``"user"``, ``"order"``, ``"Email"``).
    """

    table: str
    keys: tuple[str, ...]
    where: str | None = None
    reason: str = ""
    schema: str | None = None

    @property
    def norm(self) -> tuple[str, tuple[str, ...], str | None]:
        return (self.qualified.lower(), tuple(_norm_key(k) for k in self.keys), self.where)

    @property
    def qualified(self) -> str:
        """``schema.table`` (or ``table``), as people read it."""
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def name(self, prefix: str = "ix") -> str:
        parts = [re.sub(r"\W+", "_", k.lower()).strip("_") for k in self.keys]
        table = re.sub(r"\W+", "_", self.table.lower()).strip("_")
        base = f"{prefix}_{table}_{'_'.join(parts)}"
        if self.where:
            base += "_partial"
        if len(base) > 60:
            base = base[:51] + "_" + _short_hash(base)[:8]
        return base

    def key_sql(self) -> str:
        return ", ".join(k if _IDENT_RE.fullmatch(k) else f"({k})" for k in self.keys)

    def index(self, dialect: str, *, name: str | None = None, migration: bool = False) -> t.Any:
        """The candidate as a SQLAlchemy :class:`~sqlalchemy.schema.Index` on a table of
        just its key columns (expressions are ``text``)."""
        from sqlalchemy import Column
        from sqlalchemy import Index
        from sqlalchemy import MetaData
        from sqlalchemy import Table
        from sqlalchemy import text
        from sqlalchemy.sql.elements import quoted_name
        from sqlalchemy.types import NullType

        table = Table(self.table, MetaData(), schema=self.schema)
        parts: list[t.Any] = []
        for key in self.keys:
            column = _key_column(key)
            if column is None:
                parts.append(text(f"({key})"))
                continue
            ident, quoted, desc = column
            if not quoted and dialect == "postgresql":
                ident = ident.lower()  # as PostgreSQL folds an unquoted name
            if ident not in table.c:
                table.append_column(
                    Column(quoted_name(ident, True if quoted else None), NullType())
                )
            col = table.c[ident]
            parts.append(col.desc() if desc else col)
        options: dict[str, t.Any] = {}
        if dialect == "postgresql":
            options["postgresql_concurrently"] = migration
            if self.where:
                options["postgresql_where"] = text(self.where)
        elif dialect == "sqlite" and self.where:
            options["sqlite_where"] = text(self.where)
        index = Index(name or self.name(), *parts, **options)
        table.append_constraint(index)  # an index of expressions only names no table
        return index

    def ddl(self, dialect: str, *, name: str | None = None, migration: bool = False) -> str:
        """``CREATE INDEX`` for ``dialect``; ``migration`` gives the form to ship
        (``CONCURRENTLY IF NOT EXISTS`` on PostgreSQL, ``IF NOT EXISTS`` on SQLite)."""
        from sqlalchemy.schema import CreateIndex

        index = self.index(dialect, name=name, migration=migration)
        # MySQL has no CREATE INDEX IF NOT EXISTS (MariaDB has): the plain form runs on both.
        create = CreateIndex(index, if_not_exists=migration and dialect != "mysql")
        return str(create.compile(dialect=_sa_dialect(dialect))).strip()

    def drop_ddl(self, dialect: str, name: str) -> str:
        """``DROP INDEX`` of the index ``name`` built from this candidate."""
        from sqlalchemy.schema import DropIndex

        drop = DropIndex(self.index(dialect, name=name))
        return str(drop.compile(dialect=_sa_dialect(dialect))).strip()

    def alembic(self, dialect: str) -> str:
        """The same index as an Alembic operation, inside ``autocommit_block()`` where it
        is built ``CONCURRENTLY`` (PostgreSQL refuses that in a transaction)."""
        cols = []
        for key in self.keys:
            column = _key_column(key)
            if column is None:
                cols.append(f"sa.text({key!r})")
            else:
                ident, quoted, desc = column
                if not quoted and dialect == "postgresql":
                    ident = ident.lower()
                cols.append(f"sa.text({key!r})" if desc else repr(ident))
        extra = ""
        if self.schema:
            extra += f", schema={self.schema!r}"
        if dialect == "postgresql":
            extra += ", postgresql_concurrently=True, if_not_exists=True"
            if self.where:
                extra += f", postgresql_where=sa.text({self.where!r})"
        elif dialect == "sqlite":
            extra += ", if_not_exists=True"
            if self.where:
                extra += f", sqlite_where=sa.text({self.where!r})"
        op = f"op.create_index({self.name()!r}, {self.table!r}, [{', '.join(cols)}]{extra})"
        if dialect == "postgresql":
            return f"with op.get_context().autocommit_block():\n    {op}"
        return op


def _sa_dialect(dialect: str) -> t.Any:
    from sqlalchemy.dialects import mysql
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.dialects import sqlite

    return {"postgresql": postgresql, "sqlite": sqlite, "mysql": mysql}[dialect].dialect()


#: A key that is one column: ``email``, ``"Email"``, ```group``` and ``created_at DESC``.
_KEY_COLUMN_RE = re.compile(
    r'(?:(?P<plain>[A-Za-z_][A-Za-z0-9_$]*)|"(?P<dq>(?:[^"]|"")+)"|`(?P<bq>(?:[^`]|``)+)`)'
    r"(?P<desc>\s+DESC)?(?:\s+ASC)?",
    re.I,
)


def _key_column(key: str) -> tuple[str, bool, bool] | None:
    """(column name, whether it was quoted, descending) of a key that is one column;
    None for an expression."""
    m = _KEY_COLUMN_RE.fullmatch(key.strip())
    if m is None:
        return None
    if m.group("plain"):
        return m.group("plain"), False, bool(m.group("desc"))
    quoted = m.group("dq")
    ident = quoted.replace('""', '"') if quoted is not None else m.group("bq").replace("``", "`")
    return ident, True, bool(m.group("desc"))


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _norm_key(key: str) -> str:
    k = key.lower().replace('"', "").replace("`", "")
    k = re.sub(r"::[a-z ]+(\([0-9, ]*\))?", "", k)
    return re.sub(r"\s+", "", k)


@dataclasses.dataclass
class PlanFinding:
    """What the plan shows is wrong, with the evidence."""

    kind: str  # full_scan, sort_without_index, function_on_column, leading_wildcard_like
    table: str | None
    evidence: str
    fix: str
    #: Rows in the table scanned (full scans).
    rows: float | None = None
    #: A full scan of a query with no filter on the table: it reads the whole table by
    #: design, and no index would serve it.
    by_design: bool = False


@dataclasses.dataclass
class Hint:
    """A rewrite where no index is the answer."""

    kind: str
    evidence: str
    fix: str
    #: The statement rewritten (placeholders as ``?``), where the hint can write it.
    rewrite: str | None = None
    #: The rewrite with the advisor's numbered placeholders, for timing it (not shown).
    _marked: str | None = dataclasses.field(default=None, repr=False)
    #: The table the rewrite reads once, and the columns it returns of it: the rewrite
    #: returns the same rows only where those hold a key (not shown).
    _keyed: tuple[str, str | None, frozenset[str]] | None = dataclasses.field(
        default=None, repr=False
    )
    #: A cartesian product: the statement (numbered placeholders), then (alias, table,
    #: schema) of the tables no condition joins, and of those joined (not shown).
    #: The rewrite stands only where it was run beside the statement and returned the
    #: same rows (not shown); unmeasured, the hint keeps its advice without it.
    _measured_only: bool = dataclasses.field(default=False, repr=False)
    _product: (
        tuple[str, tuple[tuple[str, str, str | None], ...], tuple[tuple[str, str, str | None], ...]]
        | None
    ) = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class Trial:
    """One candidate tried on one query."""

    candidate: Candidate
    cost_before: float | None
    cost_after: float | None
    plan_after: Plan | None
    used: bool
    improved: bool
    verified_by: str
    note: str = ""
    measured_before_ms: float | None = None
    measured_after_ms: float | None = None


@dataclasses.dataclass
class QueryAdvice:
    query: QueryInput
    plan: Plan | None = None
    findings: list[PlanFinding] = dataclasses.field(default_factory=list)
    hints: list[Hint] = dataclasses.field(default_factory=list)
    trials: list[Trial] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    measured_ms: float | None = None
    seconds: float = 0.0
    #: Values drawn for a shape's placeholders (in memory only).
    values: list[t.Any] | None = None
    #: The statement has a LIMIT (a scan in index order may stop early).
    has_limit: bool = False
    #: Why no candidate was tried: the plan already serves every filter by an index.
    settled: str | None = None
    #: Drawn values with each range at its widest (``amount > ?`` with the column's
    #: smallest value): a shape from the store keeps no values, and the app's may be it.
    widest: list[t.Any] | None = None
    #: Existing indexes that cover candidates (which were therefore not tried).
    covered: list[str] = dataclasses.field(default_factory=list)
    #: Why the statement is planned but never run (a function it calls may write).
    not_run: str | None = None


@dataclasses.dataclass
class Suggestion:
    """An index worth creating, with what it serves and the evidence."""

    candidate: Candidate
    dialect: str
    trials: list[tuple[QueryAdvice, Trial]]
    verified_by: str
    #: Existing indexes whose columns begin this one's: redundant once it exists.
    replaces: list[str] = dataclasses.field(default_factory=list)

    @property
    def estimated_only(self) -> bool:
        return all(tr.measured_after_ms is None for _, tr in self.trials)

    def to_dict(self) -> dict[str, t.Any]:
        c = self.candidate
        return {
            "table": c.table,
            "keys": list(c.keys),
            "where": c.where,
            "name": c.name(),
            "reason": c.reason,
            "ddl": c.ddl(self.dialect, migration=True) + ";",
            "alembic": c.alembic(self.dialect),
            "verified_by": self.verified_by,
            "estimated_only": self.estimated_only,
            "replaces": self.replaces,
            "queries": [
                {
                    **qa.query.to_dict(self.dialect),
                    "cost_before": tr.cost_before,
                    "cost_after": tr.cost_after,
                    "measured_before_ms": tr.measured_before_ms,
                    "measured_after_ms": tr.measured_after_ms,
                    "speedup": _ratio(tr.measured_before_ms, tr.measured_after_ms),
                    "plan_before": _plan_lines(qa.plan),
                    "plan_after": _plan_lines(tr.plan_after),
                }
                for qa, tr in self.trials
            ],
        }


def no_suggestion_reason(qa: QueryAdvice) -> str:
    """Why the advisor suggests no index for one query, in a sentence that starts with
    the reason: an error, each candidate that failed or did not improve the plan (with
    its figures), or a plan that no index would serve."""
    if qa.errors:
        return qa.errors[0]
    if qa.settled:
        return qa.settled
    failed = [tr for tr in qa.trials if tr.note.startswith("failed")]
    timed_out = [tr for tr in failed if tr.note.startswith("failed: timed out")]
    if timed_out:
        names = ", ".join(tr.candidate.name() for tr in timed_out)
        return (
            "Timed out: " + timed_out[0].note.removeprefix("failed: timed out: ") + (f" ({names}).")
        )
    if failed:
        parts = [f"{tr.candidate.name()} {tr.note.removeprefix('failed: ')}" for tr in failed]
        return "Candidate indexes could not be tried: " + "; ".join(parts)
    if qa.trials:
        parts = []
        for tr in qa.trials:
            costs = (
                f"cost {tr.cost_before:,.1f} -> {tr.cost_after:,.1f}"
                if tr.cost_before is not None and tr.cost_after is not None
                else "no cost"
            )
            parts.append(f"{tr.candidate.name()}: {costs}{f' ({tr.note})' if tr.note else ''}")
        return "No candidate index improved the plan enough: " + "; ".join(parts) + "."
    if qa.plan is None:
        return "The statement could not be planned."
    if qa.hints and not qa.trials:
        h = qa.hints[0]
        return f"No index is the answer here: {h.evidence}. {h.fix}"
    if qa.covered:
        return (
            "Every candidate is covered by an existing index ("
            + ", ".join(dict.fromkeys(qa.covered))
            + "), which the planner does not take for this plan: its statistics say a"
            " scan reads fewer pages (a filter most rows pass), or the value's type"
            " differs from the column's."
        )
    return "No index would serve this plan: it reads no table by a filter, join or sort key."


#: Plan findings whose usual remedy is an index.
_INDEX_REMEDIED = ("full_scan", "sort_without_index", "temp_table")


def _settle(results: list[QueryAdvice], suggestions: list[Suggestion], dialect: str) -> None:
    """One verdict a query, the same in every output: a finding whose usual remedy is an
    index names the verified index where there is one, and where the advisor tried
    candidates and none improved the plan, it says so with the figures, instead of
    sending people to index the columns anyway."""
    served: dict[int, Suggestion] = {}
    for chosen in suggestions:
        for qa, _ in chosen.trials:
            served.setdefault(id(qa), chosen)
    for qa in results:
        findings = [f for f in qa.findings if f.kind in _INDEX_REMEDIED and not f.by_design]
        if not findings:
            continue
        sug = served.get(id(qa))
        if sug is not None:
            fix = f"The verified index: {sug.candidate.ddl(dialect, migration=True)};"
        elif (
            qa.trials
            and not qa.errors
            and not any(tr.note.startswith("failed") for tr in qa.trials)
        ):
            fix = (
                f"No index helps. {no_suggestion_reason(qa)} Narrow the query, paginate it,"
                " or cache its result."
            )
        else:
            # Not verified either way (a timeout, no HypoPG, DDL not allowed, a table
            # missing): the reason first, then the usual remedy, marked as unverified.
            why = no_suggestion_reason(qa)
            for f in findings:
                f.fix = f"No verified index: {why} Unverified: {f.fix}"
            continue
        for f in findings:
            f.fix = fix


def _any_failed(qa: QueryAdvice) -> bool:
    return any(tr.note.startswith("failed") for tr in qa.trials)


def _shown_hint(h: Hint, quoting: Quoting) -> Hint:
    return dataclasses.replace(
        h,
        evidence=mask_literals(h.evidence, quoting, numbers=False),
        rewrite=mask_literals(h.rewrite, quoting, numbers=False) if h.rewrite else None,
    )


def _plan_lines(plan: Plan | None) -> list[str]:
    """The plan's lines (their literals masked when the plan was read)."""
    return plan.lines() if plan is not None else []


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 2)


@dataclasses.dataclass
class IndexNote:
    """An existing index that is redundant (a prefix of another) or never used."""

    kind: str  # redundant | unused
    table: str
    index: str
    detail: str
    ddl: str


@dataclasses.dataclass
class Advice:
    """The advisor's answer for a set of queries."""

    dialect: str
    queries: list[QueryAdvice]
    suggestions: list[Suggestion]
    index_notes: list[IndexNote]
    notes: list[str]

    def to_dict(self) -> dict[str, t.Any]:
        served = {id(qa) for s in self.suggestions for qa, _ in s.trials}
        return {
            "schema": "querywatch.advice/1",
            "dialect": self.dialect,
            "suggestions": [s.to_dict() for s in self.suggestions],
            "queries": [
                {
                    **qa.query.to_dict(self.dialect),
                    # Why no index is suggested for it (None when one is).
                    "no_suggestion": None if id(qa) in served else no_suggestion_reason(qa),
                    "plan": (
                        {
                            "dialect": qa.plan.dialect,
                            "cost": qa.plan.cost,
                            "flags": sorted(qa.plan.flags),
                            "generic": qa.plan.generic,
                            "tables": sorted({n.table for n in qa.plan.walk() if n.table}),
                            "indexes": sorted(qa.plan.indexes_used()),
                        }
                        if qa.plan
                        else None
                    ),
                    "plan_lines": _plan_lines(qa.plan),
                    "cost": qa.plan.cost if qa.plan else None,
                    "measured_ms": qa.measured_ms,
                    "not_run": qa.not_run,
                    "findings": [dataclasses.asdict(f) for f in qa.findings],
                    "hints": [
                        {k: v for k, v in dataclasses.asdict(h).items() if k[0] != "_"}
                        for h in qa.hints
                    ],
                    "candidates": [
                        {
                            "index": tr.candidate.key_sql(),
                            "table": tr.candidate.table,
                            "where": tr.candidate.where,
                            "cost_before": tr.cost_before,
                            "cost_after": tr.cost_after,
                            "used": tr.used,
                            "improved": tr.improved,
                            "verified_by": tr.verified_by,
                            "measured_before_ms": tr.measured_before_ms,
                            "measured_after_ms": tr.measured_after_ms,
                            "note": tr.note,
                        }
                        for tr in qa.trials
                    ],
                    "errors": qa.errors,
                    "seconds": round(qa.seconds, 4),
                }
                for qa in self.queries
            ],
            "index_notes": [dataclasses.asdict(n) for n in self.index_notes],
            "notes": self.notes,
        }


# --- reading the query ------------------------------------------------------------------


@dataclasses.dataclass
class _TableUse:
    table: str
    alias: str
    schema: str | None = None
    eq: list[str] = dataclasses.field(default_factory=list)
    rng: list[str] = dataclasses.field(default_factory=list)
    join: list[str] = dataclasses.field(default_factory=list)
    order: list[str] = dataclasses.field(default_factory=list)
    group: list[str] = dataclasses.field(default_factory=list)
    exprs: list[str] = dataclasses.field(default_factory=list)
    consts: list[str] = dataclasses.field(default_factory=list)
    #: Per equality column: the kinds of the literals it is compared with ("text",
    #: "number") and the numbers of the placeholders it is compared with.
    eq_kinds: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    eq_params: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def add(self, bucket: list[str], key: str) -> None:
        if key not in bucket:
            bucket.append(key)


_NO_USE = _TableUse("", "")


@dataclasses.dataclass
class _Analysis:
    tree: t.Any
    tables: dict[str, _TableUse]  # by real table name (lower)
    #: Per placeholder number: (table, column or expression sql, operator class).
    placeholders: dict[int, tuple[str, str, str] | None]
    hints: list[Hint]
    like_leading: list[tuple[str, str]]  # (table, column) with LIKE '%...'
    functions: list[tuple[str, str, str]]  # (table, column, expression)
    has_limit: bool
    offset: t.Any
    is_count_star: bool
    has_where: bool
    has_group: bool = False


def _bare_name(name: str) -> str:
    """An index name without its schema or quotes, lower case."""
    return name.rsplit(".", 1)[-1].strip('"`').lower()


def _strip_order(key: str) -> str:
    """A key part without its ``ASC``/``DESC``: the expression an index sorts by."""
    return re.sub(r"\s+(ASC|DESC)$", "", key.strip(), flags=re.I)


def _flatten_and(node: t.Any) -> list[t.Any]:
    from sqlglot import exp

    if node is None:
        return []
    if isinstance(node, exp.And):
        return _flatten_and(node.this) + _flatten_and(node.expression)
    if isinstance(node, exp.Paren):
        return _flatten_and(node.this)
    return [node]


def _db_name(identifier: t.Any, dialect: str) -> str:
    """The name the database knows: PostgreSQL folds an unquoted name to lower case."""
    if identifier is None:
        return ""
    name = str(identifier.name)
    if dialect == "postgresql" and not getattr(identifier, "quoted", False):
        return name.lower()
    return name


def _analyse(sql: str, dialect: str, columns_of: t.Callable[[str], set[str]]) -> _Analysis:
    from sqlglot import exp
    from sqlglot.optimizer.scope import traverse_scope

    marked, _ = number_placeholders(sql)
    tree = check_read_only(marked, dialect)
    out = _Analysis(
        tree=tree,
        tables={},
        placeholders={},
        hints=[],
        like_leading=[],
        functions=[],
        has_limit=False,
        offset=None,
        is_count_star=False,
        has_where=False,
    )
    gen = sqlglot_dialect(dialect)

    for scope in traverse_scope(tree):
        select = scope.expression
        if not isinstance(select, exp.Select):
            continue
        sources = {
            alias.lower(): src for alias, src in scope.sources.items() if isinstance(src, exp.Table)
        }
        uses: dict[str, _TableUse] = {}
        for alias, src in sources.items():
            key = src.name.lower()
            table, schema = _db_name(src.this, dialect), _db_name(src.args.get("db"), dialect)
            use = out.tables.setdefault(key, _TableUse(table, alias, schema or None))
            uses[alias] = use

        def resolve(col: t.Any, _uses: dict[str, _TableUse] = uses) -> _TableUse | None:
            if not isinstance(col, exp.Column):
                return None
            if col.table:
                return _uses.get(col.table.lower())
            if len(_uses) == 1:
                return next(iter(_uses.values()))
            owners = [u for u in _uses.values() if col.name.lower() in columns_of(u.table)]
            return owners[0] if len(owners) == 1 else None

        def expr_owner(e: t.Any, _uses: dict[str, _TableUse] = uses) -> _TableUse | None:
            cols = list(e.find_all(exp.Column))
            owners = {id(o): o for o in (resolve(c) for c in cols) if o is not None}
            if (
                len(cols) >= 1
                and len(owners) == 1
                and len(cols) == sum(1 for c in cols if resolve(c) is not None)
            ):
                return next(iter(owners.values()))
            return None

        def strip(e: t.Any) -> str:
            e2 = e.copy()
            for c in e2.find_all(exp.Column):
                c.set("table", None)
            return str(e2.sql(dialect=gen))

        def ident(col: t.Any) -> str:
            """A column as a key part: its name, quoted as the statement quoted it."""
            if isinstance(col, exp.Column):
                return str(col.this.sql(dialect=gen))
            return str(col.name)

        def note_placeholder(ph: t.Any, target: t.Any, op: str) -> None:
            if isinstance(ph, exp.Cast):  # psycopg's ``%(x)s::VARCHAR``
                ph = ph.this
            if not isinstance(ph, exp.Placeholder) or not ph.name.startswith("qwp"):
                return
            num = int(ph.name[3:])
            if op in ("limit", "offset"):  # a number, whatever the table
                out.placeholders[num] = ("", "", op)
                return
            owner = expr_owner(target)
            out.placeholders[num] = (owner.table, strip(target), op) if owner else None

        where = select.args.get("where")
        conds = _flatten_and(where.this) if where is not None else []
        if where is not None and scope.is_root:
            out.has_where = True
        for join in select.args.get("joins") or []:
            conds.extend(_flatten_and(join.args.get("on")))
        for cond in conds:
            if isinstance(cond, exp.Not) and isinstance(cond.this, exp.In):
                if cond.this.args.get("query") is not None:
                    out.hints.append(
                        Hint(
                            "not_in_subquery",
                            f"NOT IN (subquery): {cond.sql(dialect=gen)[:120]}",
                            "Use NOT EXISTS (SELECT 1 FROM ... WHERE ...): NOT IN with a"
                            " subquery cannot use an anti-join and returns nothing when the"
                            " subquery yields a NULL.",
                        )
                    )
                continue
            if isinstance(cond, exp.Or):
                cols = {strip(c) for c in cond.find_all(exp.Column)}
                if len(cols) > 1:
                    out.hints.append(
                        Hint(
                            "or_across_columns",
                            f"OR across {', '.join(sorted(cols))}: {cond.sql(dialect=gen)[:120]}",
                            "Split it into a UNION ALL of one query per column (each can"
                            " use its own index), or make sure each column has an index so"
                            " the planner can combine them (bitmap OR / index merge).",
                        )
                    )
                continue
            if isinstance(cond, (exp.Like, exp.ILike)):
                owner = resolve(cond.this)
                pattern = cond.expression
                if owner is not None and isinstance(pattern, exp.Literal) and pattern.is_string:
                    if pattern.this.startswith(("%", "_")):
                        out.like_leading.append((owner.table, cond.this.name))
                    else:
                        owner.add(owner.rng, ident(cond.this))
                note_placeholder(pattern, cond.this, "like")
                continue
            if isinstance(cond, exp.In):
                owner = resolve(cond.this)
                if owner is not None and cond.args.get("query") is None:
                    owner.add(owner.eq, ident(cond.this))
                for e in cond.expressions:
                    note_placeholder(e, cond.this, "eq")
                continue
            if isinstance(cond, exp.Between):
                owner = resolve(cond.this)
                if owner is not None:
                    owner.add(owner.rng, ident(cond.this))
                note_placeholder(cond.args.get("low"), cond.this, "ge")
                note_placeholder(cond.args.get("high"), cond.this, "le")
                continue
            if isinstance(cond, exp.Is) and isinstance(cond.expression, exp.Null):
                owner = resolve(cond.this)
                if owner is not None:
                    owner.add(owner.eq, ident(cond.this))
                continue
            if not isinstance(cond, (exp.EQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
                continue
            left, right = _uncast(cond.this), _uncast(cond.expression)
            if _is_value(left) and not _is_value(right):
                left, right = right, left
            lcol, rcol = resolve(left), resolve(right)
            op = "eq" if isinstance(cond, exp.EQ) else "range"
            if lcol is not None and rcol is not None and lcol is not rcol:
                # A join key: both sides may want an index.
                lcol.add(lcol.join, ident(left))
                rcol.add(rcol.join, ident(right))
                continue
            if lcol is not None:
                if isinstance(right, exp.Literal) and op == "eq":
                    lit = right.sql(dialect=gen)
                    lcol.add(lcol.consts, f"{ident(left)} = {lit}")
                    lcol.eq_kinds.setdefault(ident(left), set()).add(_literal_kind(right))
                if isinstance(right, exp.Placeholder) and right.name.startswith("qwp"):
                    lcol.eq_params.setdefault(ident(left), []).append(int(right.name[3:]))
                lcol.add(lcol.eq if op == "eq" else lcol.rng, ident(left))
                note_placeholder(right, left, "eq" if op == "eq" else _range_op(cond))
                continue
            owner = expr_owner(left) if not isinstance(left, exp.Column) else None
            if owner is not None and _is_value(right):
                text = strip(left)
                owner.add(owner.exprs, text)
                for c in left.find_all(exp.Column):
                    out.functions.append((owner.table, c.name, text))
                note_placeholder(right, left, "eq" if op == "eq" else _range_op(cond))
        for o in (select.args.get("order") or exp.Order()).expressions:
            owner = resolve(o.this)
            if owner is not None:
                key = ident(o.this) + (" DESC" if o.args.get("desc") else "")
                owner.add(owner.order, key)
        for g in (select.args.get("group") or exp.Group()).expressions:
            owner = resolve(g)
            if owner is not None:
                owner.add(owner.group, ident(g))
        # Placeholders under OR, CASE or a function: the column they meet, if any.
        for found in select.find_all(exp.Placeholder):
            if not found.name.startswith("qwp") or int(found.name[3:]) in out.placeholders:
                continue
            ph: t.Any = found
            parent = ph.parent
            if isinstance(parent, exp.Cast):
                ph, parent = parent, parent.parent
            if isinstance(parent, (exp.Tuple, exp.Paren)):
                parent = parent.parent
            if isinstance(parent, (exp.EQ, exp.NEQ, exp.Like, exp.ILike, exp.In)):
                other = parent.this if parent.this is not ph else parent.expression
                note_placeholder(ph, other, "eq")
            elif isinstance(parent, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
                other = parent.this if parent.this is not ph else parent.expression
                note_placeholder(ph, other, _range_op(parent))
        if scope.is_root:
            # sqlglot reads "FROM a, b" as a CROSS JOIN: only the text tells them apart.
            meant = re.search(r"\bCROSS\s+JOIN\b", marked, re.IGNORECASE) is not None
            out.hints.extend(_join_hints(select, sources, conds, resolve, gen, meant))
            limit = select.args.get("limit")
            offset = select.args.get("offset")
            out.has_limit = limit is not None
            out.has_group = select.args.get("group") is not None
            if offset is not None:
                out.offset = offset.expression
            if limit is not None:
                note_placeholder(limit.expression, limit, "limit")
            if offset is not None:
                note_placeholder(offset.expression, offset, "offset")
            projections = select.expressions
            only = projections[0].unalias() if len(projections) == 1 else None
            out.is_count_star = (
                isinstance(only, exp.Count)
                and not isinstance(only.this, exp.Distinct)
                and (isinstance(only.this, exp.Star) or isinstance(only.this, exp.Column))
            )
            for p in projections:
                sub = p.find(exp.Subquery)
                if sub is not None and any(
                    c.table and c.table.lower() in sources for c in sub.find_all(exp.Column)
                ):
                    out.hints.append(
                        Hint(
                            "correlated_subquery",
                            f"A subquery in the select list runs once per row:"
                            f" {sub.sql(dialect=gen)[:120]}",
                            "Join the table once (with GROUP BY, or a LATERAL join) instead"
                            " of a subquery per row.",
                        )
                    )
    return out


def _join_hints(
    select: t.Any,
    sources: dict[str, t.Any],
    conds: list[t.Any],
    resolve: t.Callable[[t.Any], _TableUse | None],
    gen: t.Any,
    cross_meant: bool = False,
) -> list[Hint]:
    """Two shapes an index does not fix: a cartesian product (a table that no condition
    joins to the others; SQLAlchemy's from-linting warns of the same), and a join whose
    ``GROUP BY`` (or ``DISTINCT``) over every selected column only removes the rows the
    join repeated: a semi-join, written as ``IN (subquery)``."""
    from sqlglot import exp

    if len(sources) < 2:
        return []

    def owners(e: t.Any) -> set[str]:
        found = set()
        for c in e.find_all(exp.Column):
            named = (c.table or "").lower()
            if named in sources:  # by alias: a table joined twice is two sources
                found.add(named)
                continue
            use = resolve(c)
            if use is None:
                return {"?"}
            found.add(use.alias)
        return found

    hints: list[Hint] = []
    group: dict[str, str] = {a: a for a in sources}

    def root(a: str) -> str:
        while group[a] != a:
            a = group[a]
        return a

    def join(xs: t.Iterable[str]) -> None:
        xs = [x for x in xs if x in group]
        for x in xs[1:]:
            group[root(x)] = root(xs[0])

    first = next(iter(sources))
    for j in select.args.get("joins") or []:
        alias = (j.alias_or_name or "").lower()
        if (cross_meant and (j.args.get("kind") or "").upper() == "CROSS") or j.args.get("using"):
            join([first, alias])  # meant, or joined by its USING columns
    for cond in conds:
        join(sorted(owners(cond) - {"?"}))
        if "?" in owners(cond):  # a column not placed: assume it joins what it can
            join(list(sources))
    alone = {root(a) for a in sources}
    if len(alone) > 1:
        apart = sorted(a for a in sources if root(a) != root(first))
        names = ", ".join(sources[a].name for a in apart)

        def placed(aliases: t.Iterable[str]) -> tuple[tuple[str, str, str | None], ...]:
            return tuple((a, sources[a].name, sources[a].db or None) for a in aliases)

        hints.append(
            Hint(
                "cartesian_product",
                f"No condition joins {names} to {sources[first].name}: every row of one is"
                " paired with every row of the other (a cartesian product)",
                "Add the missing join condition (JOIN ... ON child.parent_id = parent.id);"
                " if the product is meant, write CROSS JOIN so that it reads as meant.",
                _product=(
                    select.sql(dialect=gen),
                    placed(apart),
                    placed(a for a in sources if root(a) == root(first)),
                ),
            )
        )
        return hints

    # The semi-join written as a join plus GROUP BY/DISTINCT.
    found = _semi_join(select, sources, owners, resolve, gen)
    if found is None:
        found = _semi_join_by_classes(select, sources, owners, resolve, gen)
    if found is not None:
        hints.append(found)
    return hints


def _only_deduplicates(
    select: t.Any, main: str, owners: t.Callable[[t.Any], set[str]], gen: t.Any
) -> bool:
    """Every selected column is one of ``main``'s, and the ``GROUP BY`` (if any, else a
    ``DISTINCT``) is over ``main``'s columns and holds every selected one: it only
    removes the rows a join repeated."""
    from sqlglot import exp

    projected = select.expressions
    grouped = select.args.get("group")
    if not projected or any(
        not isinstance(p.unalias(), exp.Column) or owners(p) != {main} for p in projected
    ):
        return False
    return grouped is None or not (
        any(owners(g) != {main} for g in grouped.expressions)
        or not {p.unalias().sql(dialect=gen) for p in projected}
        <= {g.sql(dialect=gen) for g in grouped.expressions}
    )


def _without_joins(select: t.Any, where: t.Any, gen: t.Any) -> tuple[str, str]:
    """``select`` with no joins, ``GROUP BY`` or ``DISTINCT`` and ``where`` as its
    ``WHERE``: the text with numbered placeholders, and as shown (``?``)."""
    from sqlglot import exp

    rewritten = select.copy()
    rewritten.set("joins", None)
    rewritten.set("group", None)
    rewritten.set("distinct", None)
    rewritten.set("where", exp.Where(this=where))
    marked = rewritten.sql(dialect=gen)
    return marked, re.sub(r":qwp\d+\b", "?", marked)


def _semi_join(
    select: t.Any,
    sources: dict[str, t.Any],
    owners: t.Callable[[t.Any], set[str]],
    resolve: t.Callable[[t.Any], _TableUse | None],
    gen: t.Any,
) -> Hint | None:
    """One inner join whose ``GROUP BY`` (or ``DISTINCT``) over every selected column of
    the other table only removes the rows it repeated: ``IN (subquery)`` instead."""
    from sqlglot import exp

    joins = select.args.get("joins") or []
    grouped = select.args.get("group")
    if len(sources) != 2 or len(joins) != 1 or select.args.get("having") is not None:
        return None
    if grouped is None and not select.args.get("distinct"):
        return None
    other = (joins[0].alias_or_name or "").lower()
    main = next((a for a in sources if a != other), None)
    if main is None or other not in sources or (joins[0].args.get("kind") or "INNER") != "INNER":
        return None
    projected = select.expressions
    if not _only_deduplicates(select, main, owners, gen):
        return None
    on = _flatten_and(joins[0].args.get("on"))
    pairs = []
    for cond in on:
        if not isinstance(cond, exp.EQ) or owners(cond) != {main, other}:
            return None
        a, b = cond.this, cond.expression
        if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
            return None
        if owners(a) == {other}:
            a, b = b, a
        pairs.append((a, b))
    where = select.args.get("where")
    main_conds, other_conds = [], []
    for cond in _flatten_and(where.this) if where is not None else []:
        who = owners(cond)
        if who <= {main}:
            main_conds.append(cond.copy())
        elif who == {other}:
            other_conds.append(cond.copy())
        else:
            return None
    if len(pairs) != 1:
        return None
    ((a, b),) = pairs
    sub = exp.select(b.copy()).from_(sources[other].copy())
    if other_conds:
        sub = sub.where(exp.and_(*other_conds))
    marked, shown = _without_joins(select, exp.and_(*main_conds, a.copy().isin(query=sub)), gen)
    what = "GROUP BY over every selected column" if grouped is not None else "DISTINCT"
    return Hint(
        "join_to_filter",
        f"JOIN {sources[other].name} with {what} of {sources[main].name}: the join only"
        f" filters {sources[main].name}, and the {what.split(' ')[0]} removes the rows"
        " it repeated",
        "Filter with a semi-join instead (IN (subquery), or EXISTS): each row is read"
        f" once, with no sort or hash to de-duplicate. Rewritten: {shown}",
        rewrite=shown,
        _marked=marked,
        _keyed=(
            resolve(projected[0].unalias()).table,  # type: ignore[union-attr]
            resolve(projected[0].unalias()).schema,  # type: ignore[union-attr]
            frozenset(p.unalias().name.lower() for p in projected),
        ),
    )


def _semi_join_by_classes(
    select: t.Any,
    sources: dict[str, t.Any],
    owners: t.Callable[[t.Any], set[str]],
    resolve: t.Callable[[t.Any], _TableUse | None],
    gen: t.Any,
) -> Hint | None:
    """Joins (inner or left) that only filter the ``FROM`` table, whose ``GROUP BY``
    over every selected column removes the rows they repeated, with the filters on the
    joined tables in any AND/OR: the posts of the users someone follows, plus their own
    (``... LEFT JOIN followers ... LEFT JOIN user AS follower ... WHERE follower.id = ?
    OR author.id = ? GROUP BY post.*``). The ``ON`` equalities make classes of equal
    columns; a filter on a column equal to one of the main table's becomes a filter on
    that column, and one on a link table's other column an ``IN (subquery)`` of it.
    The rewrite reads each row once; it is offered only where it was run beside the
    statement and returned the same rows (:attr:`Hint._measured_only`)."""
    from sqlglot import exp

    joins = select.args.get("joins") or []
    grouped = select.args.get("group")
    if not joins or select.args.get("having") is not None:
        return None
    if grouped is None and not select.args.get("distinct"):
        return None
    frm = select.args.get("from_") or select.args.get("from")
    if frm is None or not isinstance(frm.this, exp.Table):
        return None
    main = (frm.this.alias_or_name or "").lower()
    projected = select.expressions
    if not _only_deduplicates(select, main, owners, gen):
        return None
    if any(owners(o.this) != {main} for o in (select.args.get("order") or exp.Order()).expressions):
        return None
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(k: tuple[str, str]) -> tuple[str, str]:
        while parent.get(k, k) != k:
            k = parent[k]
        return k

    def key(c: t.Any) -> tuple[str, str] | None:
        who = owners(c)
        return (next(iter(who)), c.name.lower()) if len(who) == 1 and "?" not in who else None

    columns: dict[tuple[str, str], t.Any] = {}
    for j in joins:
        kind, side = (j.args.get("kind") or "").upper(), (j.args.get("side") or "").upper()
        if kind not in ("", "INNER", "OUTER") or side not in ("", "LEFT") or j.args.get("using"):
            return None
        for cond in _flatten_and(j.args.get("on")):
            if not isinstance(cond, exp.EQ):
                return None
            a, b = cond.this, cond.expression
            if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
                return None
            ka, kb = key(a), key(b)
            if ka is None or kb is None:
                return None
            columns.setdefault(ka, a)
            columns.setdefault(kb, b)
            parent[find(ka)] = find(kb)

    def of_main(k: tuple[str, str]) -> t.Any:
        root = find(k)
        for other, col in columns.items():
            if other[0] == main and find(other) == root:
                return col.copy()
        return None

    def mapped(node: t.Any) -> t.Any:
        if isinstance(node, (exp.And, exp.Or)):
            left, right = mapped(node.this), mapped(node.expression)
            if left is None or right is None:
                return None
            return type(node)(this=left, expression=right)
        if isinstance(node, exp.Paren):
            inner = mapped(node.this)
            return None if inner is None else exp.Paren(this=inner)
        if not isinstance(node, (exp.EQ, exp.In)) or not isinstance(node.this, exp.Column):
            return None
        rest = [v for k, v in node.args.items() if k != "this" and v is not None]
        if any(
            not _is_value(v) for v in (x for r in rest for x in (r if isinstance(r, list) else [r]))
        ):
            return None
        k = key(node.this)
        if k is None:
            return None
        if k[0] == main:
            return node.copy()
        same = of_main(k)
        if same is not None:
            out = node.copy()
            out.set("this", same)
            return out
        # A link table: the filtered column's table holds another column equal to one of
        # the main table's (followers.follower_id = ?, followers.followed_id = post.user_id).
        for link in [m for m in columns if find(m) == find(k) and m[0] != main]:
            table = sources.get(link[0])
            if not isinstance(table, exp.Table):
                continue
            for other in columns:
                if other[0] != link[0] or other == link:
                    continue
                target = of_main(other)
                if target is None:
                    continue
                cond = node.copy()
                cond.set(
                    "this",
                    exp.Column(this=exp.to_identifier(link[1]), table=exp.to_identifier(link[0])),
                )
                sub = exp.select(columns[other].copy()).from_(table.copy()).where(cond)
                return target.isin(query=sub)
        return None

    where = select.args.get("where")
    if where is None:
        return None
    cond = mapped(where.this)
    if cond is None:
        return None
    marked, shown = _without_joins(select, cond, gen)
    names = ", ".join(sorted({sources[a].name for a in sources if a != main}))
    use = resolve(projected[0].unalias())
    assert use is not None
    return Hint(
        "join_to_filter",
        f"JOIN {names} with GROUP BY over every selected column of {sources[main].name}:"
        f" the joins only filter {sources[main].name}, and the GROUP BY removes the rows"
        " they repeated",
        "Filter with a semi-join instead (IN (subquery), or EXISTS): each row is read"
        f" once, with no sort or hash to de-duplicate. Rewritten: {shown}",
        rewrite=shown,
        _marked=marked,
        _keyed=(use.table, use.schema, frozenset(p.unalias().name.lower() for p in projected)),
        _measured_only=True,
    )


def _unmeasured(h: Hint) -> None:
    """A rewrite that stands only once run beside the statement, not run: the hint
    keeps its advice, without the statement it cannot vouch for."""
    h.fix = (
        h.fix.split(" Rewritten: ")[0] + " The rewritten statement is shown once"
        " 'querywatch advise' has run it beside this one and seen the same rows."
    )
    h.rewrite = None
    h._marked = None


def _is_value(node: t.Any) -> bool:
    """A side of a comparison that reads no column and runs no query: a parameter, a
    literal, or a function of them (``lower(?)``), the same for every row."""
    from sqlglot import exp

    if isinstance(node, (exp.Column, exp.Star)):
        return False
    return node.find(exp.Column, exp.Select) is None


def _reads_whole_table(node: t.Any, has_limit: bool) -> bool:
    """A full scan, or a scan of a whole index with no LIMIT to stop it (SQLite's
    ``SCAN t USING COVERING INDEX``, MariaDB's ``index`` access, a PostgreSQL index scan
    without a condition): every row is read either way."""
    return "full_scan" in node.flags or ("full_index_scan" in node.flags and not has_limit)


def _uncast(node: t.Any) -> t.Any:
    """A placeholder under the cast a driver adds (``%(x)s::VARCHAR``) is the
    placeholder."""
    from sqlglot import exp

    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Placeholder):
        return node.this
    return node


def _index_columns(c: Candidate) -> list[str] | None:
    """The columns whose terms a candidate reads its rows by (a partial index's own
    ``WHERE`` included); None where a key is an expression (then the whole ``WHERE``)."""
    columns = [kc[0] for k in c.keys if (kc := _key_column(k)) is not None]
    if len(columns) < len(c.keys):
        return None
    return columns + (_where_columns(c.where) if c.where else [])


def _share_note(share: tuple[float, int], note: str) -> str:
    return (
        f"the filter matches about {share[0]:.0%} of the rows (of {share[1]:,} counted):"
        " reading them by an index is slower than the scan; " + note
    )


def _widest_note(share: float, wide: float, note: str) -> str:
    return (
        f"the range's value is not known (the shape keeps none): the filter matches about"
        f" {share:.0%} of the rows with a value that keeps a tenth, {wide:.0%} at the"
        " range's widest, where reading them by the index is slower than the scan (the"
        " app's own values, as the background advisor has them, decide it); " + note
    )


def _where_columns(where: str) -> list[str]:
    """The columns a partial index's ``WHERE`` names."""
    import sqlglot
    from sqlglot import exp

    try:
        return [c.name for c in sqlglot.parse_one(where).find_all(exp.Column)]
    except Exception:
        return []


def _range_op(cond: t.Any) -> str:
    from sqlglot import exp

    return "ge" if isinstance(cond, (exp.GT, exp.GTE)) else "le"


def _candidates(
    an: _Analysis,
    dialect: str,
    few_values: t.Callable[[str, str], bool] | None = None,
) -> list[Candidate]:
    """Candidate indexes for the analysed query. ``few_values(table, column)`` says
    whether a column has few distinct values (a partial index on it is worth trying)."""
    out: list[Candidate] = []
    seen: set[t.Any] = set()

    schema: str | None = None

    def add(c: Candidate) -> None:
        if schema:
            c = dataclasses.replace(c, schema=schema)
        if c.keys and c.norm not in seen:
            seen.add(c.norm)
            out.append(c)

    for use in an.tables.values():
        tbl, schema = use.table, use.schema
        eq = list(use.eq)
        for col in eq:
            add(Candidate(tbl, (col,), reason=f"equality on {col}"))
        for col in use.join:
            add(Candidate(tbl, (col,), reason=f"join key {col}"))
            if eq:
                add(Candidate(tbl, (*eq, col), reason=f"equality on {', '.join(eq)}, join key"))
        for col in use.rng:
            add(Candidate(tbl, (col,), reason=f"range on {col}"))
            if eq:
                add(
                    Candidate(
                        tbl, (*eq, col), reason=f"equality on {', '.join(eq)}, then range {col}"
                    )
                )
        if use.order:
            plain = [k.split(" ")[0] for k in use.order]
            dirs = {k.endswith(" DESC") for k in use.order}
            keys = tuple(plain) if len(dirs) == 1 else tuple(use.order)
            add(Candidate(tbl, keys, reason=f"ORDER BY {', '.join(use.order)}"))
            if eq:
                add(
                    Candidate(
                        tbl,
                        (*eq, *[k for k in keys if k not in eq]),
                        reason=f"equality on {', '.join(eq)}, then ORDER BY",
                    )
                )
        if use.group:
            add(Candidate(tbl, tuple(use.group), reason=f"GROUP BY {', '.join(use.group)}"))
            if eq:
                add(
                    Candidate(
                        tbl,
                        (*eq, *[g for g in use.group if g not in eq]),
                        reason=f"equality on {', '.join(eq)}, then GROUP BY",
                    )
                )
        if dialect != "mysql":
            for e in use.exprs:
                add(Candidate(tbl, (e,), reason=f"expression {e}"))
            # Partial: the rest of the equality/order columns, for the rows a constant
            # selects (a low-cardinality column compared to a literal).
            for const in use.consts:
                col = const.split(" = ", 1)[0]
                rest = [k for k in (*eq, *use.rng) if k != col] or [
                    k.split(" ")[0] for k in use.order
                ]
                if rest and (few_values is None or few_values(tbl, col)):
                    add(Candidate(tbl, (rest[0],), where=const, reason=f"rows where {const}"))
    return out


# --- the database's indexes --------------------------------------------------------------


def _existing_indexes(
    session: Session, table: str, schema: str | None = None
) -> list[tuple[str, tuple[str, ...], bool]]:
    """(name, normalized keys, partial) of every index on ``table``, primary key included."""
    d = session.dialect
    out: list[tuple[str, tuple[str, ...], bool]] = []
    if d == "sqlite":
        q = '"' + table.replace('"', '""') + '"'
        pk = [(r[5], r[1]) for r in session.run(f"PRAGMA table_info({q})") if int(r[5] or 0) > 0]
        if pk:
            out.append(("PRIMARY KEY", tuple(_norm_key(c) for _, c in sorted(pk)), False))
        for row in session.run(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
        ):
            name, sql = row[0], row[1]
            if sql:
                keys, partial = _parse_index_sql(sql, d)
            else:
                cols = session.run(f'PRAGMA index_info("{name}")').all()
                keys, partial = tuple(_norm_key(str(c[2])) for c in cols), False
            out.append((name, keys, partial))
    elif d == "postgresql":
        for row in session.run(
            "SELECT i.indexrelid::regclass::text,"
            " array(SELECT pg_get_indexdef(i.indexrelid, k, true)"
            "       FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k),"
            " i.indpred IS NOT NULL"
            " FROM pg_index i WHERE i.indrelid = to_regclass(%(t)s)",
            {"t": _quoted_table(table, schema, d)},
        ):
            out.append((row[0], tuple(_norm_key(k) for k in row[1]), bool(row[2])))
    else:
        rows = session.run(
            "SELECT index_name, seq_in_index, column_name FROM information_schema.statistics"
            " WHERE table_schema = COALESCE(%(s)s, DATABASE()) AND table_name = %(t)s"
            " ORDER BY index_name, seq_in_index",
            {"t": table, "s": schema},
        ).all()
        by: dict[str, list[str]] = {}
        for name, _seq, col in rows:
            by.setdefault(name, []).append(_norm_key(str(col)))
        out.extend((n, tuple(cols), False) for n, cols in by.items())
    return out


#: Kinds of values, narrowest first: a comparison converts the narrower side, and a
#: column converted on every row (MariaDB: a text column against a number; PostgreSQL:
#: an integer column against a decimal) can no longer use its index.
_KIND_RANK = {"text": 0, "integer": 1, "decimal": 2}


#: Where each database keeps its estimate of a table's rows.
_ESTIMATED_COUNT = {
    "postgresql": "the planner's estimate (pg_class.reltuples)",
    "mysql": "InnoDB's estimate (information_schema.tables.table_rows)",
    "sqlite": "the estimate ANALYZE keeps (the first number of sqlite_stat1.stat)",
}


def _value_kind(value: t.Any) -> str | None:
    """The kind of a parameter's Python value; None for any other."""
    import decimal

    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return "integer"
    if isinstance(value, (float, decimal.Decimal)):
        return "decimal"
    return None


def _literal_kind(literal: t.Any) -> str:
    if literal.is_string:
        return "text"
    return "decimal" if re.search(r"[.eE]", str(literal.this)) else "integer"


def _converts_column(column_kind: str | None, value_kinds: set[str]) -> bool:
    """Whether comparing a column of ``column_kind`` with values of ``value_kinds``
    converts the column (not the value)."""
    if column_kind is None:
        return False
    rank = _KIND_RANK[column_kind]
    return any(_KIND_RANK[k] > rank for k in value_kinds)


def _column_kinds(session: Session, table: str, schema: str | None) -> dict[str, str]:
    """Per column of ``table`` (normalized name): "text" or "number" where its declared
    type is one of those (SQLAlchemy's reflection of the live table)."""
    from sqlalchemy import inspect
    from sqlalchemy import types

    out: dict[str, str] = {}
    try:
        columns = inspect(session.conn).get_columns(table, schema=schema)
    except Exception:
        return out
    for column in columns:
        kind = column["type"]
        if isinstance(kind, types.String):
            out[_norm_key(column["name"])] = "text"
        elif isinstance(kind, types.Integer):
            out[_norm_key(column["name"])] = "integer"
        elif isinstance(kind, types.Numeric):
            out[_norm_key(column["name"])] = "decimal"
    return out


def _quoted_table(table: str, schema: str | None, dialect: str) -> str:
    """``schema.table`` quoted where ``dialect`` needs it (``"user"``, ``app."Order"``)."""
    from sqlalchemy import MetaData
    from sqlalchemy import Table

    preparer = _sa_dialect(dialect).identifier_preparer
    return str(preparer.format_table(Table(table, MetaData(), schema=schema)))


def _parse_index_sql(sql: str, dialect: str) -> tuple[tuple[str, ...], bool]:
    m = re.search(r"\((.*)\)(\s+WHERE\s+(.*))?\s*$", sql, re.S | re.I)
    if not m:
        return (), False
    inner = m.group(1)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    keys = []
    for p in parts:
        p = re.sub(r"\s+(ASC|DESC)\s*$", "", p.strip(), flags=re.I)
        p = re.sub(r"\s+COLLATE\s+\S+$", "", p, flags=re.I)
        if p.startswith("(") and p.endswith(")"):
            p = p[1:-1]
        keys.append(_norm_key(p))
    return tuple(keys), bool(m.group(2))


def _covered(c: Candidate, existing: list[tuple[str, tuple[str, ...], bool]]) -> str | None:
    keys = tuple(_norm_key(k.split(" ")[0]) if " DESC" in k else _norm_key(k) for k in c.keys)
    for name, idx_keys, partial in existing:
        if partial and not c.where:
            continue
        if idx_keys[: len(keys)] == keys:
            return name
    return None


# --- the advisor -------------------------------------------------------------------------


class Advisor:
    """Analyse queries against one database and suggest verified indexes.

    :param database: the application's database (URL or engine).
    :param allow_ddl: build real candidate indexes in the live database (rolled back or
        dropped again) to verify them, and to time the query with each. Default: off;
        then PostgreSQL verifies with HypoPG, SQLite on an in-memory copy of the schema
        and its statistics, MariaDB/MySQL on temporary copies of the tables.
    :param scan_min_rows: a full scan of a table with at least this many rows is a finding.
    :param timeout: seconds any one statement may take.
    :param measure: time the queries where DDL is allowed.
    :param prefer_indexes: plan as if scanning a whole table were very expensive (see
        :class:`~querywatch.explain.Explainer`): on the few rows of a test database a
        full scan then means that no index can serve the query.
    :param unused_window_days: an index is called unused only once the database's usage
        statistics cover this many days (PostgreSQL: since ``stats_reset``, else since
        the server started): a freshly seeded or restarted database has used nothing.
    """

    def __init__(
        self,
        database: str | Engine,
        *,
        allow_ddl: bool | None = None,
        scan_min_rows: int = 10_000,
        timeout: float = 5.0,
        measure: bool = True,
        prefer_indexes: bool = False,
        unused_window_days: float = 7.0,
    ) -> None:
        self.unused_window_days = unused_window_days
        self.explainer = Explainer(
            database, timeout=timeout, prefer_indexes=prefer_indexes, writable=bool(allow_ddl)
        )
        self.dialect = self.explainer.dialect
        self.allow_ddl = bool(allow_ddl)
        self.scan_min_rows = scan_min_rows
        self.measure = measure
        self.notes: list[str] = []
        self._columns: dict[str, set[str]] = {}
        self._hypopg: bool | None = None
        self._existing: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {}
        self._generic_plans: bool | None = None
        #: The equality columns of each analysed query, by (id of its advice, table).
        self._equalities: dict[tuple[int, str], set[str]] = {}
        #: Their equality and range columns (filters an index can search by).
        self._filters: dict[tuple[int, str], set[str]] = {}
        #: SQLite: the in-memory schema copy candidates are planned in (made once).
        self._copy: t.Any = None
        self._stats: dict[t.Any, str | None] = {}
        #: MariaDB/MySQL: temporary copies of tables, on one connection (made once).
        self._temporary: t.Any = None

    def close(self) -> None:
        self.explainer.close()
        if self._copy is not None:
            self._copy.close()
            self._copy.connection.close()
        if self._temporary is not None:
            self._temporary.close()

    def __enter__(self) -> Advisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- entry point ---

    def advise(self, queries: Iterable[QueryInput], *, index_health: bool = True) -> Advice:
        """Analyse every query; a failure on one is reported on it and the rest go on."""
        results: list[QueryAdvice] = []
        for q in queries:
            qa = QueryAdvice(q)
            start = time.perf_counter()
            try:
                self._advise_one(qa)
            except QueryWatchError as e:
                qa.errors.append(str(e))
            except Exception as e:  # a database or parser surprise: say it, go on
                qa.errors.append(f"{type(e).__name__}: {error_line(e, 300)}")
            qa.seconds = time.perf_counter() - start
            results.append(qa)
        try:
            self._cross_trials(results)
        except Exception as e:
            self.notes.append(f"Candidates were not tried across queries: {e}")
        # A hint quotes the statement, which may be an app's own with values inline:
        # what is shown of it has its literals masked (its runnable form is not shown).
        quoting = quoting_for(self.dialect)
        for qa in results:
            qa.hints = [_shown_hint(h, quoting) for h in qa.hints]
        suggestions = self._choose(results)
        _settle(results, suggestions, self.dialect)
        notes_idx: list[IndexNote] = []
        if index_health and any(qa.plan is not None for qa in results):
            used = {
                _bare_name(name)
                for qa in results
                if qa.plan is not None
                for n in qa.plan.walk()
                if (name := n.index)
            }
            try:
                notes_idx = self._index_health(
                    {u for qa in results for u in self._tables(qa)}, used
                )
            except Exception as e:
                self.notes.append(f"Existing indexes could not be checked: {e}")
        return Advice(self.dialect, results, suggestions, notes_idx, list(self.notes))

    def _tables(self, qa: QueryAdvice) -> set[str]:
        if qa.plan is None:
            return set()
        return {n.table for n in qa.plan.walk() if n.table}

    # --- one query ---

    def _advise_one(self, qa: QueryAdvice) -> None:
        q = qa.query
        check_read_only(number_placeholders(q.sql)[0], self.dialect)  # before connecting
        with self.explainer.session() as s:
            an = _analyse(q.sql, self.dialect, lambda tbl: self._columns_of(s, tbl))
            values = self._values(s, q, an)
            if self._generic_plans is None:
                from .explain import postgresql as pg

                self._generic_plans = (
                    self.dialect == "postgresql" and pg.server_version(s) >= 160000
                )
            # Planned with the real parameters when the app kept some, generically on
            # PostgreSQL 16+, else with values drawn from the data (in memory only).
            qa.plan = s.explain(q.sql, q.params, values=self._plan_values(values))
            qa.hints.extend(an.hints)
            qa.hints = [h for h in qa.hints if self._keeps_rows(s, h)]
            if self.dialect != "sqlite":  # SQLite keeps no functions of its own
                qa.not_run = self._writes_by_function(s, an)
            for h in qa.hints:
                if h._product is not None:
                    self._join_by_foreign_key(s, h)
            if self.measure:
                qa.hints = [h for h in qa.hints if self._rewrite_holds(s, qa, h, values)]
            for h in qa.hints:
                if h._measured_only and h._marked is not None and "Measured " not in h.fix:
                    _unmeasured(h)
            qa.has_limit = an.has_limit
            self._plan_findings(s, qa, an, values)
            candidates = []
            for use in an.tables.values():
                self._equalities[(id(qa), use.table.lower())] = {_norm_key(k) for k in use.eq}
                self._filters[(id(qa), use.table.lower())] = {
                    _norm_key(k) for k in (*use.eq, *use.rng)
                }
            qa.settled = self._settled(s, qa, an)
            found = (
                []
                if qa.settled
                else _candidates(
                    an,
                    self.dialect,
                    lambda tbl, col: self._few_values(
                        s,
                        tbl,
                        col,
                        an.tables[tbl.lower()].schema if tbl.lower() in an.tables else None,
                    ),
                )
            )
            for c in found:
                existing = _existing_indexes(s, c.table, c.schema)
                self._existing[c.table.lower()] = existing
                covered = _covered(c, existing)
                if covered is None:
                    candidates.append(c)
                else:
                    qa.covered.append(covered)
            if self.dialect == "mysql":
                for tbl, _col, expr in an.functions:
                    qa.hints.append(
                        Hint(
                            "expression_needs_generated_column",
                            f"{expr} on {tbl}: MariaDB/MySQL before 8.0.13 cannot index an"
                            " expression",
                            f"Add a generated column (ALTER TABLE {tbl} ADD COLUMN"
                            f" <name> ... AS ({expr}) VIRTUAL, ADD INDEX (<name>)) and"
                            " compare that column in the query.",
                        )
                    )
            qa.values = values
            if values is not None and self.dialect in ("sqlite", "mysql") and q.rows is None:
                qa.widest = self._widest(s, an, values)
        if candidates:
            self._run_trials(qa, candidates)

    def _join_by_foreign_key(self, s: Session, h: Hint) -> None:
        """A cartesian product whose tables one foreign key links (and only one: two
        would be a guess): the hint names that condition and writes the statement
        with it, as ``JOIN … ON``. The rewrite returns fewer rows by design (the pairs
        the key links), so with timing on both are counted, not compared."""
        import sqlglot
        from sqlalchemy import inspect
        from sqlglot import exp

        assert h._product is not None
        marked, apart, joined = h._product
        edges = []
        try:
            with s.savepoint():
                insp = inspect(s.conn)
                for a_alias, a_table, a_schema in apart:
                    for j_alias, j_table, j_schema in joined:
                        for child, parent, fks in (
                            (a_alias, j_alias, insp.get_foreign_keys(a_table, schema=a_schema)),
                            (j_alias, a_alias, insp.get_foreign_keys(j_table, schema=j_schema)),
                        ):
                            other = j_table if child == a_alias else a_table
                            for fk in fks:
                                if str(fk.get("referred_table") or "").lower() == other.lower():
                                    edges.append((a_alias, child, parent, fk))
        except Exception:
            return
        if len(edges) != 1 or len(apart) != 1:
            return
        ((alias, child, parent, fk),) = edges
        gen = sqlglot_dialect(self.dialect)
        try:
            with quiet_parse():
                tree = sqlglot.parse_one(marked, read=gen)
        except Exception:
            return
        join = next(
            (j for j in tree.args.get("joins") or [] if (j.alias_or_name or "").lower() == alias),
            None,
        )
        if join is None or join.args.get("on") is not None or join.args.get("using"):
            return

        def ident(who: str) -> t.Any:
            for node in [tree.args.get("from_") or tree.args.get("from")] + list(
                tree.args.get("joins") or []
            ):
                tb = node.this if node is not None else None
                if isinstance(tb, exp.Table) and (tb.alias_or_name or "").lower() == who:
                    named = tb.args.get("alias")
                    return (named.this if named is not None else tb.this).copy()
            return exp.to_identifier(who)

        pairs = list(zip(fk["constrained_columns"], fk["referred_columns"], strict=False))
        if not pairs:
            return
        on = exp.and_(
            *(
                exp.EQ(
                    this=exp.Column(this=exp.to_identifier(c), table=ident(child)),
                    expression=exp.Column(this=exp.to_identifier(r), table=ident(parent)),
                )
                for c, r in pairs
            )
        )
        join.set("on", on)
        join.set("kind", None)
        h._marked = tree.sql(dialect=gen)
        shown = re.sub(r":qwp\d+\b", "?", h._marked)
        cond = on.sql(dialect=gen)
        h.rewrite = shown
        h.fix = (
            f"Add the missing join condition, {cond} (the one foreign key between them;"
            f" the rewrite returns only the pairs it links). Rewritten: {shown} If the"
            " product is meant, write CROSS JOIN so that it reads as meant."
        )

    def _writes_by_function(self, s: Session, an: _Analysis) -> str | None:
        """Why the statement must only be planned, never run: a function it calls may
        write (``nextval``, a function that inserts). PostgreSQL: any function whose
        ``pg_proc.provolatile`` is ``v`` (volatile; user functions are, unless declared
        otherwise). MariaDB/MySQL: a stored function of the database, or a built-in
        with effects (``NEXTVAL``, ``GET_LOCK``, ``SLEEP``…)."""
        from sqlglot import exp

        names = set()
        for node in an.tree.find_all(exp.Func):
            name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            if name:
                names.add(str(name).lower())
        if not names:
            return None
        try:
            with s.savepoint():
                if self.dialect == "postgresql":
                    rows = s.run(
                        "SELECT DISTINCT proname FROM pg_proc WHERE provolatile = 'v'"
                        " AND proname = ANY(%(n)s)",
                        {"n": sorted(names)},
                    ).all()
                    bad = sorted(str(r[0]) for r in rows)
                else:
                    rows = s.run(
                        "SELECT routine_name FROM information_schema.routines WHERE"
                        " routine_schema = DATABASE() AND routine_type = 'FUNCTION'"
                    ).all()
                    stored = {str(r[0]).lower() for r in rows}
                    bad = sorted(names & (stored | _MYSQL_EFFECTS))
        except Exception:
            return "the functions it calls could not be checked for writes"
        if not bad:
            return None
        return (
            f"it calls {', '.join(bad)}, which may write (not declared IMMUTABLE or STABLE,"
            " or a stored function): planned only, never run or timed"
            if self.dialect == "postgresql"
            else f"it calls {', '.join(bad)}, which may write: planned only, never run or timed"
        )

    def _keeps_rows(self, s: Session, h: Hint) -> bool:
        """Whether a rewrite returns the rows the statement did: the de-duplicated
        columns must hold the table's primary key (else GROUP BY merged rows that the
        rewrite keeps apart)."""
        if h._keyed is None:
            return True
        from sqlalchemy import inspect

        table, schema, columns = h._keyed
        try:
            with s.savepoint():
                pk = inspect(s.conn).get_pk_constraint(table, schema=schema)
        except Exception:
            return False
        keys = {str(c).lower() for c in pk.get("constrained_columns") or []}
        return bool(keys) and keys <= columns

    def _rewrite_holds(
        self, s: Session, qa: QueryAdvice, h: Hint, values: list[t.Any] | None
    ) -> bool:
        """Run a hint's rewrite beside the statement (both read-only SELECTs, with the
        same values): the hint stays only where both return the same rows and the
        rewrite is faster by :data:`MIN_MEASURED_SPEEDUP`, with the figures; a hint
        without a rewrite, or that cannot be run, stays as it is."""
        if h._marked is None or qa.not_run is not None:
            return True
        q = qa.query
        marked, n = number_placeholders(q.sql)
        vals = values
        if q.params is not None:
            vals = placeholder_values(q.sql, q.params)
        if n and (vals is None or len(vals) != n):
            return True
        style = "named" if self.dialect == "sqlite" else "pyformat"
        params = {f"qwp{i + 1}": vals[i] for i in range(n)} if n and vals else None

        def timed(sql: str) -> tuple[list[t.Any], float]:
            check_read_only(sql, self.dialect)
            text = render_placeholders(sql, style, escape_percent=style == "pyformat")
            return self._run_timed(s, text, params)

        if h.kind == "cartesian_product":
            # Fewer rows by design: both are counted, never fetched (the product of
            # two big tables would not fit in memory), and the counts are the figure.
            try:
                with s.savepoint():
                    before_rows, before_ms = timed(f"SELECT count(*) FROM ({marked}) AS qw")
                    after_rows, after_ms = timed(f"SELECT count(*) FROM ({h._marked}) AS qw")
            except Exception:
                return True
            n_before, n_after = int(before_rows[0][0]), int(after_rows[0][0])
            h.fix += (
                f" Measured {before_ms:,.2f} ms for {n_before:,} row{'s' * (n_before != 1)}"
                f" -> {after_ms:,.2f} ms for {n_after:,} row{'s' * (n_after != 1)} with"
                " the join."
            )
            return True
        try:
            with s.savepoint():
                before_rows, before_ms = timed(marked)
                after_rows, after_ms = timed(h._marked)
        except Exception:
            return True  # not measured: the hint says what to try, as before
        same = sorted(map(repr, before_rows)) == sorted(map(repr, after_rows))
        if not same:
            return False
        for _ in range(RETIMES):  # a busy moment slows a run; a slower rewrite stays slower
            if before_ms < MIN_TIMED_MS or after_ms * MIN_MEASURED_SPEEDUP <= before_ms:
                break
            try:
                with s.savepoint():
                    after_ms = min(after_ms, timed(h._marked)[1])
            except Exception:
                break
        if before_ms >= MIN_TIMED_MS and after_ms * MIN_MEASURED_SPEEDUP > before_ms:
            return False
        h.fix += f" Measured {before_ms:,.2f} ms -> {after_ms:,.2f} ms, the same rows."
        return True

    def _run_timed(self, s: Session, text: str, params: t.Any) -> tuple[list[t.Any], float]:
        """Run a read-only statement :data:`TIMING_RUNS` times: its rows, and its best
        time in ms."""
        best, rows = float("inf"), []
        for _ in range(TIMING_RUNS):
            t0 = time.perf_counter()
            rows = s.run(text, params).fetchall()
            best = min(best, time.perf_counter() - t0)
        return rows, best * 1000.0

    def _settled(self, s: Session, qa: QueryAdvice, an: _Analysis) -> str | None:
        """Why no index is tried, when the plan already finds every table's rows by an
        index that covers all its filters (or reads one row by a key), with no sort: a
        build there costs time and cannot help (primary-key lookups on a big table)."""
        plan = qa.plan
        if plan is None or plan.sorts() or not an.tables:
            return None
        nodes = [n for n in plan.walk() if n.table]
        used: list[str] = []
        for use in an.tables.values():
            mine = [n for n in nodes if n.table and n.table.lower() == use.table.lower()]
            if not mine:
                return None
            filters = {_norm_key(k) for k in (*use.eq, *use.rng)}
            for n in mine:
                # PostgreSQL's bitmap heap scan names its index on the child that reads it.
                index = n.index or next(
                    (c.index for c in n.walk() if c.index and "index_search" in c.flags), None
                )
                if index is None or "index_search" not in n.flags:
                    return None
                if n.rows is not None and n.rows <= 1:
                    used.append(index)
                    continue
                if not filters:
                    return None
                keys = next(
                    (
                        cols
                        for name, cols, _partial in _existing_indexes(s, use.table, use.schema)
                        if _bare_name(name) == _bare_name(index)
                    ),
                    None,
                )
                if keys is None or not filters <= set(keys[: len(filters)]):
                    return None
                used.append(index)
        names = ", ".join(dict.fromkeys(used))
        return (
            f"No index to add: the plan already finds its rows by an index that covers"
            f" every filter ({names}), with no sort."
        )

    def _verifier(self) -> str | None:
        """How candidates are verified here: ``hypopg``, ``ddl``, ``copy`` (SQLite: in an
        in-memory copy of the schema and its statistics; MariaDB/MySQL: on temporary
        copies of the tables), or None (PostgreSQL without HypoPG)."""
        if self.dialect == "postgresql":
            with self.explainer.session() as s:
                if self._has_hypopg(s):
                    return "hypopg"
        if self.allow_ddl:
            return "ddl"
        if self.dialect == "postgresql":
            return None
        return "copy"  # SQLite: a schema copy; MariaDB/MySQL: temporary tables

    def _run_trials(self, qa: QueryAdvice, candidates: list[Candidate]) -> None:
        how = self._verifier()
        values = qa.values
        if how is None:
            names = ", ".join(f"{c.table}({c.key_sql()})" for c in candidates[:5])
            why = (
                "HypoPG is not installed in this database (CREATE EXTENSION hypopg;"
                " Debian/Ubuntu package postgresql-<version>-hypopg)"
            )
            qa.errors.append(
                f"{why}: candidates not verified ({names}). Rerun with --allow-ddl on a dev"
                " or CI database or a copy to build each one and roll it back."
            )
            return
        if how == "ddl":
            for c in candidates:
                qa.trials.append(self._try_built(qa, c, values))
            return
        if how == "copy":
            for c in candidates:
                if self.dialect == "mysql":
                    qa.trials.append(self._try_temporary(qa, c, values))
                else:
                    qa.trials.append(self._try_copy(qa, c, values))
            return
        with self.explainer.session() as s:
            new = [self._try_hypopg(s, qa, c, values) for c in candidates]
        qa.trials.extend(new)
        if self.allow_ddl and self.measure:
            for tr in new:
                if tr.improved:
                    self._measure_built(qa, tr, values)

    def _cross_trials(self, results: list[QueryAdvice]) -> None:
        """Try each improving index on the other queries that a shorter index of its
        prefix already helps: one composite index may serve several queries."""
        improving = {
            tr.candidate.norm: tr.candidate for qa in results for tr in qa.trials if tr.improved
        }
        for qa in results:
            if qa.plan is None or not qa.trials:
                continue
            tried = {tr.candidate.norm for tr in qa.trials}
            mine = [tr.candidate.norm for tr in qa.trials if tr.improved]
            extra = [
                c
                for norm, c in improving.items()
                if norm not in tried
                and any(
                    m[0] == norm[0] and m[2] == norm[2] and norm[1][: len(m[1])] == m[1]
                    for m in mine
                )
            ]
            if extra:
                self._run_trials(qa, extra)

    def _columns_of(self, s: Session, table: str) -> set[str]:
        key = table.lower()
        if key not in self._columns:
            cols: set[str] = set()
            with contextlib.suppress(Exception), s.savepoint():
                if self.dialect == "sqlite":
                    q = '"' + table.replace('"', '""') + '"'
                    cols = {str(r[1]).lower() for r in s.run(f"PRAGMA table_info({q})")}
                elif self.dialect == "postgresql":
                    cols = {
                        str(r[0]).lower()
                        for r in s.run(
                            "SELECT attname FROM pg_attribute WHERE attrelid ="
                            " to_regclass(%(t)s) AND attnum > 0 AND NOT attisdropped",
                            {"t": table},
                        )
                    }
                else:
                    cols = {
                        str(r[0]).lower()
                        for r in s.run(
                            "SELECT column_name FROM information_schema.columns WHERE"
                            " table_schema = DATABASE() AND table_name = %(t)s",
                            {"t": table},
                        )
                    }
            self._columns[key] = cols
        return self._columns[key]

    def _values(self, s: Session, q: QueryInput, an: _Analysis) -> list[t.Any] | None:
        """Values for a shape's placeholders, drawn from the data: a value the column
        holds (middle of the table), 20 for a LIMIT, 0 for an OFFSET."""
        if q.params is not None:
            return None
        _, n = number_placeholders(q.sql)
        if n == 0:
            return None
        # The equalities on one table take their values from one row, so that together
        # they match rows (two values drawn apart may match none: "Impossible WHERE").
        eqs: dict[str, list[str]] = {}
        for i in range(1, n + 1):
            info = an.placeholders.get(i)
            if info is not None and info[2] not in ("limit", "offset", "ge", "le"):
                eqs.setdefault(info[0], [])
                if info[1] not in eqs[info[0]]:
                    eqs[info[0]].append(info[1])
        matched = self._values_for_rows(s, q, an, n)
        if matched is not None:
            return matched
        rows: dict[str, dict[str, t.Any]] = {}
        for table, targets in eqs.items():
            use = an.tables.get(table.lower())
            rows[table] = self._row(s, table, targets, use.schema if use else None)
        out: list[t.Any] = []
        for i in range(1, n + 1):
            info = an.placeholders.get(i)
            if info is None:
                # Unknown type: a string the database converts as the context needs.
                out.append("1")
                continue
            table, target, op = info
            if op == "limit":
                out.append(20)
            elif op == "offset":
                out.append(0)
            elif target in rows.get(table, {}):
                out.append(rows[table][target])
            else:
                use = an.tables.get(table.lower())
                out.append(self._sample(s, table, target, op, use.schema if use else None))
        return out

    def _values_for_rows(
        self, s: Session, q: QueryInput, an: _Analysis, n: int
    ) -> list[t.Any] | None:
        """Values for a one-table filter's placeholders that match about as many rows as
        the app's calls returned (the store counts rows, never values): among the most
        common values of each equality and a range's widest, tenth and hundredth, the
        combination whose share of the table (each value's share multiplied) is nearest.
        None where the rows returned are not the rows matched (a LIMIT, a join, a
        GROUP BY, an aggregate) or no placeholder has a choice."""
        if q.rows is None or an.has_limit or an.has_group or an.is_count_star:
            return None
        if len(an.tables) != 1 or filter_terms(number_placeholders(q.sql)[0], self.dialect) is None:
            return None
        use = next(iter(an.tables.values()))
        total = s.table_rows(use.table) or 0.0
        if total < 1:
            return None
        quoted = _quoted_table(use.table, use.schema, self.dialect)
        options: list[list[tuple[t.Any, float]]] = []
        for i in range(1, n + 1):
            info = an.placeholders.get(i)
            if info is None or info[2] not in ("eq", "ge", "le"):
                return None
            _, target, op = info
            try:
                with s.savepoint():
                    if op == "eq":
                        found = s.run(
                            f"SELECT v, count(*) FROM (SELECT {target} AS v FROM {quoted}"
                            f" WHERE {target} IS NOT NULL LIMIT {MCV_SAMPLE}) AS s"
                            f" GROUP BY v ORDER BY count(*) DESC LIMIT {MCV_CHOICES}"
                        ).all()
                        every = s.run(
                            f"SELECT count(*) FROM (SELECT {target} FROM {quoted}"
                            f" WHERE {target} IS NOT NULL LIMIT {MCV_SAMPLE}) AS s"
                        ).first()
                        sampled = int(every[0]) if every else 0
                        if not found or int(found[0][1]) < 2 or not sampled:
                            return None  # no value repeats: nothing to choose
                        options.append([(r[0], int(r[1]) / sampled) for r in found])
                    else:
                        edge = s.run(
                            f"SELECT {'min' if op == 'ge' else 'max'}({target}) FROM {quoted}"
                        ).first()
                        choice = [(edge[0], 1.0)] if edge and edge[0] is not None else []
                        order = " DESC" if op == "ge" else ""
                        for share in (0.1, 0.01):
                            row = s.run(
                                f"SELECT {target} FROM {quoted} WHERE {target} IS NOT NULL"
                                f" ORDER BY {target}{order} LIMIT 1 OFFSET {int(total * share)}"
                            ).first()
                            if row is not None:
                                choice.append((row[0], share))
                        if not choice:
                            return None
                        options.append(choice)
            except Exception:
                return None
        if not options or all(len(o) < 2 for o in options):
            return None
        import itertools
        import math

        want = max(q.rows, 0.5) / total
        best: tuple[float, list[t.Any]] | None = None
        for k, combo in enumerate(itertools.product(*options)):
            if k >= 256:
                break
            share = math.prod(sh for _, sh in combo)
            gap = abs(math.log(max(share, 1e-9)) - math.log(want))
            if best is None or gap < best[0]:
                best = (gap, [v for v, _ in combo])
        return best[1] if best is not None else None

    def _widest(self, s: Session, an: _Analysis, values: list[t.Any]) -> list[t.Any] | None:
        """``values`` with each range placeholder at the column's end that keeps every
        row (its smallest for ``>``, its largest for ``<``); None without a range."""
        out, changed = list(values), False
        for i in range(len(values)):
            info = an.placeholders.get(i + 1)
            if info is None or info[2] not in ("ge", "le"):
                continue
            table, target, op = info
            use = an.tables.get(table.lower())
            quoted = _quoted_table(table, use.schema if use else None, self.dialect)
            sql = f"SELECT {'min' if op == 'ge' else 'max'}({target}) FROM {quoted}"
            try:
                with s.savepoint():
                    row = s.run(sql).first()
            except Exception:
                return None
            if row is not None and row[0] is not None:
                out[i], changed = row[0], True
        return out if changed else None

    def _row(
        self, s: Session, table: str, targets: list[str], schema: str | None
    ) -> dict[str, t.Any]:
        """Values for the equalities ``targets`` on ``table``, from one row: one that has
        the value most rows have in the first target (see :meth:`_sample`), else one
        from the middle of the table. Empty when the table has no such row."""
        first = self._sample(s, table, targets[0], "eq", schema)
        if len(targets) == 1:
            return {targets[0]: first}
        quoted = _quoted_table(table, schema, self.dialect)
        style = "named" if self.dialect == "sqlite" else "pyformat"
        sql = render_placeholders(
            f"SELECT {', '.join(targets)} FROM {quoted} WHERE {targets[0]} = :qwp1",
            style,
            escape_percent=style == "pyformat",
        )
        try:
            with s.savepoint():
                row = s.run(sql + " LIMIT 1", {"qwp1": first}).first()
        except Exception as e:
            raise translate_error(e, s) from None
        return dict(zip(targets, row, strict=True)) if row is not None else {targets[0]: first}

    def _few_values(self, s: Session, table: str, column: str, schema: str | None = None) -> bool:
        """At most :data:`FEW_VALUES` distinct values in ``table.column`` (reading stops
        as soon as there are more)."""
        q = '"' if self.dialect != "mysql" else "`"
        if column[:1] not in ('"', "`"):  # a key part keeps the statement's own quotes
            column = f"{q}{column}{q}"
        quoted = _quoted_table(table, schema, self.dialect)
        sql = (
            f"SELECT count(*) FROM (SELECT DISTINCT {column} FROM {quoted}"
            f" LIMIT {FEW_VALUES + 1}) AS d"
        )
        try:
            with s.savepoint():
                row = s.run(sql).first()
        except Exception:
            return False
        return bool(row is not None and int(row[0]) <= FEW_VALUES)

    def _plan_values(self, values: list[t.Any] | None) -> list[t.Any] | None:
        """The values a shape is planned with: none on PostgreSQL 16+ (GENERIC_PLAN),
        else those drawn from the data. (Timing always uses them.)"""
        return None if self._generic_plans else values

    def _sample(
        self, s: Session, table: str, target: str, op: str, schema: str | None = None
    ) -> t.Any:
        """A value ``target`` holds: for an equality, the one most rows have (among the
        first :data:`MCV_SAMPLE` rows: the value most requests ask for is the one most
        rows hold far more often than one from the middle of the table), else, where
        no value repeats, one from the middle of the table; for a range, one that keeps
        the newest (or oldest) tenth, as ranges usually do."""
        rows = s.table_rows(table) or 0
        quoted = _quoted_table(table, schema, self.dialect)
        if op not in ("ge", "le"):
            common = (
                f"SELECT v, count(*) FROM (SELECT {target} AS v FROM {quoted}"
                f" WHERE {target} IS NOT NULL LIMIT {MCV_SAMPLE}) AS s"
                " GROUP BY v ORDER BY count(*) DESC LIMIT 1"
            )
            try:
                with s.savepoint():
                    row = s.run(common).first()
            except Exception as e:
                raise translate_error(e, s) from None
            if row is not None and int(row[1]) > 1:
                return row[0]
        order = ""
        offset = int(rows // 2)
        if op in ("ge", "le"):
            order = f" ORDER BY {target}" + (" DESC" if op == "ge" else "")
            offset = int(rows // 10)
        sql = (
            f"SELECT {target} FROM {quoted} WHERE {target} IS NOT NULL{order}"
            f" LIMIT 1 OFFSET {offset}"
        )
        try:
            with s.savepoint():
                row = s.run(sql).first()
                if row is None and offset:
                    row = s.run(sql.rsplit(" OFFSET", 1)[0]).first()
        except Exception as e:
            raise translate_error(e, s) from None
        return row[0] if row is not None else 1

    # --- findings ---

    def _plan_findings(
        self, s: Session, qa: QueryAdvice, an: _Analysis, values: list[t.Any] | None
    ) -> None:
        plan = qa.plan
        assert plan is not None
        big_scans = []
        for node in plan.walk():
            full = _reads_whole_table(node, an.has_limit)
            if not full or not node.table:
                continue
            if an.has_limit and not an.has_where and not an.has_group and not plan.sorts():
                # Read in index (or row id) order and stopped by the LIMIT: not a scan of
                # the whole table, whatever the plan's words.
                continue
            rows = node.table_rows if node.table_rows is not None else s.table_rows(node.table)
            if rows is not None and rows >= self.scan_min_rows:
                big_scans.append((node, rows))
                filtered = an.has_where or an.tables.get(node.table.lower(), _NO_USE).join
                fix = (
                    "An index on the filtered columns, or a narrower query."
                    if filtered
                    else "The query reads the whole table by design: paginate it, narrow it,"
                    " or cache its result."
                )
                qa.findings.append(
                    PlanFinding(
                        "full_scan",
                        node.table,
                        f"{node.detail}: reads all {rows:,.0f} rows of {node.table}",
                        fix,
                        rows=rows,
                        by_design=not filtered,
                    )
                )
        for node in plan.sorts():
            rows_in = max([c.rows or 0 for c in node.walk() if c is not node] + [node.rows or 0])
            if big_scans or rows_in >= self.scan_min_rows:
                qa.findings.append(
                    PlanFinding(
                        "sort_without_index",
                        None,
                        f"{node.detail}: rows are sorted after being read",
                        "An index whose columns follow the WHERE equality columns with the"
                        " ORDER BY/GROUP BY columns gives the rows in order.",
                    )
                )
        for node in plan.walk():
            if "temp_table" in node.flags and big_scans:
                qa.findings.append(
                    PlanFinding(
                        "temp_table",
                        node.table,
                        f"{node.detail}: an intermediate result is materialized",
                        "Index the grouping/join columns, or narrow the rows first.",
                    )
                )
        scanned = {n.table.lower() for n, _ in big_scans if n.table}
        for table, col, expr in an.functions:
            if table.lower() not in scanned:
                continue
            existing = _existing_indexes(s, table)
            plain = [n for n, keys, _ in existing if keys and keys[0] == _norm_key(col)]
            if plain and not any(keys and keys[0] == _norm_key(expr) for _, keys, _ in existing):
                qa.findings.append(
                    PlanFinding(
                        "function_on_column",
                        table,
                        f"{expr}: the index {plain[0]} on {col} cannot be used through the"
                        " function",
                        f"Compare the bare column ({col} = ...), or index the expression ({expr}).",
                    )
                )
        # An equality on a column that leads an index, and still a full scan: the value
        # is of another type and the database converts the column, row by row. Claimed
        # only where the value's type is known (a literal, or the app's own parameter)
        # and differs from the column's: a plan reads the whole table for other reasons
        # too (every row holds the same value).
        given = placeholder_values(qa.query.sql, qa.query.params) if qa.query.params else None
        for use in an.tables.values():
            if use.table.lower() not in scanned:
                continue
            # Reflected only where an equality could be a cast.
            column_kinds = _column_kinds(s, use.table, use.schema) if use.eq else {}
            # Indexes that narrow the rows; one read from end to end does not count.
            used = {
                n.index
                for n in plan.walk()
                if n.table == use.table and n.index is not None and "index_search" in n.flags
            }
            existing = _existing_indexes(s, use.table, use.schema)
            for col in use.eq:
                leading = [n for n, keys, partial in existing if keys and keys[0] == _norm_key(col)]
                kinds = set(use.eq_kinds.get(col, ()))
                for num in use.eq_params.get(col, ()):
                    kind = _value_kind(given[num - 1]) if given and num <= len(given) else None
                    if kind is not None:
                        kinds.add(kind)
                if (
                    _converts_column(column_kinds.get(_norm_key(col)), kinds)
                    and leading
                    and not used & set(leading)
                    and not any(
                        f.kind == "function_on_column" and f.table == use.table for f in qa.findings
                    )
                ):
                    qa.findings.append(
                        PlanFinding(
                            "implicit_cast",
                            use.table,
                            f"{use.table}.{col} = ...: the index {leading[0]} leads with"
                            f" {col}, yet the plan reads the whole table",
                            "The value's type differs from the column's, so the database"
                            " converts the column on every row: compare a value of the"
                            " column's own type (quote it for a text column), or cast the"
                            " value, never the column.",
                        )
                    )
        for table, col in an.like_leading:
            remedy = {
                "postgresql": (
                    f"CREATE EXTENSION pg_trgm; CREATE INDEX ... ON {table} USING gin"
                    f" ({col} gin_trgm_ops)"
                ),
                "sqlite": f"an FTS5 virtual table over {table}.{col}",
                "mysql": f"a FULLTEXT index on {table}({col}) with MATCH ... AGAINST",
            }[self.dialect]
            qa.findings.append(
                PlanFinding(
                    "leading_wildcard_like",
                    table,
                    f"LIKE '%...' on {table}.{col}: no b-tree index can serve a pattern that"
                    " starts with a wildcard",
                    f"No b-tree index helps. Use a trigram or full-text index: {remedy}; or"
                    " search by prefix (LIKE 'abc%').",
                )
            )
        # Rewrite hints that need the plan's evidence.
        offset = an.offset
        off_value = None
        if offset is not None:
            from sqlglot import exp

            if isinstance(offset, exp.Literal) and offset.is_int:
                off_value = int(offset.this)
        if off_value is not None and off_value >= 1000:
            qa.hints.append(
                Hint(
                    "deep_offset",
                    f"OFFSET {off_value:,}: the database reads and discards {off_value:,} rows",
                    "Paginate by key (WHERE id > :last_seen_id ORDER BY id LIMIT n).",
                )
            )
        root_scans = [(n, r) for n, r in big_scans]
        if root_scans and not an.has_limit and not an.is_count_star and not an.has_where:
            node, rows = root_scans[0]
            qa.hints.append(
                Hint(
                    "unbounded_select",
                    f"No WHERE and no LIMIT on {node.table} ({rows:,.0f} rows)",
                    "Paginate (LIMIT with keyset pagination) or select only what the page shows.",
                )
            )
        # Counting a whole large table: only where the plan reads all of it, and with no
        # filter anywhere (Flask-SQLAlchemy's ``query.filter(...).count()`` counts a
        # filtered subquery, which an index search answers).
        counted = [u.table for u in an.tables.values()]
        from sqlglot import exp

        if an.is_count_star and len(counted) == 1 and an.tree.find(exp.Where) is None:
            count_rows = s.table_rows(counted[0])
            reads_all = counted[0].lower() in {n.table.lower() for n, _ in big_scans if n.table}
            if reads_all and (count_rows or 0) >= self.scan_min_rows:
                assert count_rows is not None
                per = f", run {qa.query.calls:,} times" if qa.query.calls else ""
                qa.hints.append(
                    Hint(
                        "count_large_table",
                        f"COUNT(*) of {counted[0]} ({count_rows:,.0f} rows){per}",
                        "Cache the count (@qw.cached), keep a counter table, or use"
                        f" {_ESTIMATED_COUNT[self.dialect]} where exactness is not needed.",
                    )
                )

    # --- verification ---

    def _has_hypopg(self, s: Session) -> bool:
        if self._hypopg is None:
            row = s.run("SELECT count(*) FROM pg_extension WHERE extname = 'hypopg'").first()
            self._hypopg = bool(row and row[0])
            if not self._hypopg:
                self.notes.append(
                    "HypoPG is not installed in this database, so PostgreSQL candidates are"
                    " verified only with --allow-ddl (CREATE EXTENSION hypopg enables"
                    " hypothetical indexes; Debian/Ubuntu: postgresql-<version>-hypopg)."
                )
        return self._hypopg

    def _judge(
        self,
        qa: QueryAdvice,
        c: Candidate,
        after: Plan,
        index_used: t.Callable[[str], bool],
        *,
        before: Plan | None = None,
    ) -> tuple[bool, bool, str]:
        before = before or qa.plan
        assert before is not None
        used = any(index_used(n.index) for n in after.walk() if n.index)
        if not used:
            return False, False, "the planner did not use it"
        if self.dialect != "sqlite" and before.cost is not None and after.cost is not None:
            improved = after.cost <= before.cost * (1 - MIN_COST_FALL)
            note = f"estimated cost {before.cost:,.1f} -> {after.cost:,.1f}"
            if not improved:
                note += " (falls by less than half)"
            return used, improved, note
        # SQLite: no cost. A full scan of the table or a sort must give way to the index.
        tbl = c.table.lower()
        limited = qa.has_limit
        scan_before = any(
            n.table and n.table.lower() == tbl and _reads_whole_table(n, limited)
            for n in before.walk()
        )
        scan_after = any(
            n.table and n.table.lower() == tbl and _reads_whole_table(n, limited)
            for n in after.walk()
        )
        sorts_before, sorts_after = len(before.sorts()), len(after.sorts())
        searched = any(
            n.table
            and n.table.lower() == tbl
            and "index_search" in n.flags
            and index_used(n.index or "")
            for n in after.walk()
        )
        rows, fewer, as_many = "", False, False
        if before.cost is not None and after.cost is not None:
            rows = f" (estimated rows read {before.cost:,.0f} -> {after.cost:,.0f})"
            fewer = after.cost * MIN_MEASURED_SPEEDUP <= before.cost
            as_many = not fewer
        if sorts_after < sorts_before and not (scan_after and not scan_before):
            return used, True, "the sort is gone: the index gives the order" + rows
        if as_many:
            # A search that reads as many rows as the scan did (a table of one row, or
            # statistics that say so) is no gain to verify.
            return used, False, "the index reads as many rows as the plan without it" + rows
        if scan_before and not scan_after and searched:
            return used, True, "a full scan becomes an index search" + rows
        if searched and fewer and not scan_after:
            # A scan of a whole index (or a search on a worse one) becomes a search that
            # reads fewer rows: SEARCH … USING INDEX (followed_id=?) instead of a SCAN.
            return used, True, "an index search reads fewer rows" + rows
        return used, False, "the plan is no better (the scan or the sort remains)" + rows

    def _try_hypopg(
        self, s: Session, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None
    ) -> Trial:
        before = qa.plan
        assert before is not None
        try:
            row = s.run(
                "SELECT indexrelid FROM hypopg_create_index(%(d)s)", {"d": c.ddl("postgresql")}
            ).first()
            oid = int(row[0]) if row else -1
            try:
                after = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
            finally:
                s.run("SELECT hypopg_reset()")
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, "hypopg", self._failed(e))
        used, improved, note = self._judge(qa, c, after, lambda name: name.startswith(f"<{oid}>"))
        return Trial(c, before.cost, after.cost, after, used, improved, "hypopg", note)

    def _try_copy(self, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None) -> Trial:
        """SQLite: plan the query with the candidate in an in-memory copy of the schema
        and its statistics (the candidate's estimated from a sample of the live rows):
        the live file is only read, and no writer of the app waits."""
        from .explain import sqlite as lite

        before = qa.plan
        assert before is not None
        how = "planned on a schema copy"
        name = c.name("qw_candidate")
        try:
            with self.explainer.session() as live:
                if self._copy is None:
                    self._copy = lite.memory_copy(live, timeout=self.explainer.timeout)
                tables = self._tables(qa) | {c.table}
                counts = {tb: live.table_rows(tb) for tb in tables}
                lite.add_table_stats(self._copy, {k: v for k, v in counts.items() if v})
                key = c.norm
                if key not in self._stats:
                    self._stats[key] = lite.candidate_stat(
                        live, c.table, [_strip_order(k) for k in c.keys], c.where,
                        counts.get(c.table) or 0.0,
                    )  # fmt: skip
                stat = self._stats[key]
            with self._copy.session(writable=True) as s:
                base = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
                with s.savepoint():
                    s.run(c.ddl("sqlite", name=name))
                    if stat is not None:
                        s.run("INSERT INTO sqlite_stat1 VALUES (?, ?, ?)", (c.table, name, stat))
                    s.run("ANALYZE sqlite_master")
                    after = s.explain(
                        qa.query.sql, qa.query.params, values=self._plan_values(values)
                    )
                s.run("ANALYZE sqlite_master")
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, how, self._failed(e))
        used, improved, note = self._judge(
            qa, c, after, lambda n: n.lower() == name.lower(), before=base
        )
        share = None
        marked = number_placeholders(qa.query.sql)[0]
        rows = counts.get(c.table) or 0.0
        columns = _index_columns(c)
        if improved and not qa.has_limit:
            # Counted on the live rows (a sample of a big table, by rowid).
            vals = values
            if qa.query.params is not None:
                vals = placeholder_values(qa.query.sql, qa.query.params)
            with contextlib.suppress(Exception), self.explainer.session() as live:
                share = lite.matching_share(live, marked, vals, rows, columns)
        if improved and share is not None and share[0] >= MAX_INDEXED_SHARE:
            # SQLite takes a range for a quarter of the rows, whatever it matches.
            improved, note = False, _share_note(share, note)
        elif improved and share is not None and qa.widest is not None:
            # A shape from the store keeps no values: the app's range may be the
            # widest (``amount > 0``), and SQLite would read it all by the index.
            with contextlib.suppress(Exception), self.explainer.session() as live:
                wide = lite.matching_share(live, marked, qa.widest, rows, columns)
                if wide is not None and wide[0] >= MAX_INDEXED_SHARE:
                    improved, note = False, _widest_note(share[0], wide[0], note)
        return Trial(c, base.cost, after.cost, after, used, improved, how, note)

    def _try_temporary(self, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None) -> Trial:
        """MariaDB/MySQL, without DDL on the live tables: the candidate is built on a
        temporary copy of its table (one connection's own, read once without row locks)
        and the query planned (and, with ``measure``, timed) there, with and without it."""
        from .explain import mysql as my

        before = qa.plan
        assert before is not None
        how = "built on a temporary copy"
        try:
            if self._temporary is None:
                self._temporary = my.TemporaryCopy(self.explainer, max_rows=my.COPY_MAX_ROWS)
            self._temporary.shadow(c.table, c.schema)
            s = self._temporary.session
            base = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
            before_ms = self._time(s, qa, values) if self.measure else None
            after_ms = None
            with self._built(s, c) as name:
                after = s.explain(qa.query.sql, qa.query.params, values=self._plan_values(values))
                used, improved, note = self._judge(
                    qa, c, after, lambda n: n.lower() == name.lower(), before=base
                )
                text = note
                if improved and self.measure:
                    after_ms, improved, note = self._timed_verdict(
                        s, qa, values, improved, note, before_ms
                    )
            before_ms, improved, note = self._second_look(
                s, qa, values, improved, note, text, before_ms, after_ms
            )
            if improved and not qa.has_limit and qa.not_run is None:
                # As on SQLite: MariaDB takes a covering index for a filter most rows
                # pass (amount > 0: 0.9x measured), and a range whose value the shape
                # does not keep may be the widest.
                marked = number_placeholders(qa.query.sql)[0]
                vals = values
                if qa.query.params is not None:
                    vals = placeholder_values(qa.query.sql, qa.query.params)
                share = self._temporary.matching_share(marked, vals, _index_columns(c))
                wide = None
                if qa.widest is not None:
                    wide = self._temporary.matching_share(marked, qa.widest, _index_columns(c))
                if share is not None and share[0] >= MAX_INDEXED_SHARE:
                    improved, note = False, _share_note(share, note)
                elif share is not None and wide is not None and wide[0] >= MAX_INDEXED_SHARE:
                    improved, note = False, _widest_note(share[0], wide[0], note)
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, how, self._failed(e))
        return Trial(
            c, base.cost, after.cost, after, used, improved, how, note, before_ms, after_ms
        )

    def _failed(self, e: Exception) -> str:
        """A trial's note for an error: a statement stopped by the timeout says the
        figure and how to raise it."""
        orig = getattr(e, "orig", e)
        first = str(orig).strip().splitlines()[0][:200] if str(orig).strip() else ""
        low = first.lower()
        if "interrupted" in low or "statement timeout" in low or "max_statement_time" in low:
            return (
                f"failed: timed out: the build took longer than the"
                f" {self.explainer.timeout:g} s statement timeout and was stopped; raise it"
                " with 'querywatch advise --timeout' or QUERYWATCH_ADVISE_TIMEOUT"
            )
        return f"failed: {first or type(e).__name__}"

    @contextlib.contextmanager
    def _built(self, s: Session, c: Candidate) -> t.Iterator[str]:
        """The candidate as a real index, gone again when the block ends."""
        name = c.name("qw_candidate")
        if self.dialect == "mysql":
            with contextlib.suppress(Exception):
                s.run(c.drop_ddl("mysql", name))
            s.run(c.ddl("mysql", name=name))
            try:
                yield name
            finally:
                s.run(c.drop_ddl("mysql", name))
        else:
            with s.savepoint():
                s.run(c.ddl(self.dialect, name=name))
                if self.dialect == "sqlite":
                    s.run(f'ANALYZE "{name}"')
                yield name

    def _time(self, s: Session, qa: QueryAdvice, values: list[t.Any] | None) -> float | None:
        if qa.not_run is not None:
            return None  # planned only: a function it calls may write
        q = qa.query
        if q.params is not None:
            sql, params = q.sql, q.params
        else:
            marked, n = number_placeholders(q.sql)
            if n and values is None:
                return None
            if n:
                assert values is not None
                style = "named" if self.dialect == "sqlite" else "pyformat"
                sql = render_placeholders(marked, style, escape_percent=style == "pyformat")
                params = {f"qwp{i + 1}": values[i] for i in range(n)}
            else:
                sql, params = q.sql, None
        check_read_only(q.sql, self.dialect)
        best = None
        for _ in range(TIMING_RUNS):
            t0 = time.perf_counter()
            s.run(sql, params).fetchall()
            dt_ = time.perf_counter() - t0
            best = dt_ if best is None else min(best, dt_)
        return None if best is None else round(best * 1000.0, 3)

    def _round_trip(self, s: Session) -> float | None:
        """The median time of a statement that reads nothing, in ms: what this machine
        adds to any statement's timing now (the processor's queue, the connection)."""
        try:
            runs = []
            for _ in range(TIMING_RUNS):
                t0 = time.perf_counter()
                s.run("SELECT 1", None).fetchall()
                runs.append(time.perf_counter() - t0)
        except Exception:  # a timing aid only: without it the clock judges as before
            return None
        return round(sorted(runs)[len(runs) // 2] * 1000.0, 3)

    def _try_built(self, qa: QueryAdvice, c: Candidate, values: list[t.Any] | None) -> Trial:
        before = qa.plan
        assert before is not None
        how = "built and dropped" if self.dialect == "mysql" else "built and rolled back"
        try:
            with self.explainer.session(writable=True) as s:
                measured_before = None
                if self.measure:
                    measured_before = qa.measured_ms = qa.measured_ms or self._time(s, qa, values)
                with self._built(s, c) as name:
                    after = s.explain(
                        qa.query.sql, qa.query.params, values=self._plan_values(values)
                    )
                    used, improved, base = self._judge(
                        qa, c, after, lambda n: n.lower() == name.lower()
                    )
                    note = base
                    measured_after = None
                    if improved and self.measure:
                        measured_after, improved, note = self._timed_verdict(
                            s, qa, values, improved, note, measured_before
                        )
                measured_before, improved, note = self._second_look(
                    s, qa, values, improved, note, base, measured_before, measured_after
                )
        except Exception as e:
            return Trial(c, before.cost, None, None, False, False, how, self._failed(e))
        return Trial(
            c,
            before.cost,
            after.cost,
            after,
            used,
            improved,
            how,
            note,
            measured_before,
            measured_after,
        )

    def _timed_verdict(
        self,
        s: Session,
        qa: QueryAdvice,
        values: list[t.Any] | None,
        improved: bool,
        note: str,
        before_ms: float | None,
    ) -> tuple[float | None, bool, str]:
        """Time the query with the index present and let the clock confirm the plan's
        verdict. When the clock is about to veto what the plan shows, it is timed again
        (:data:`RETIMES` times, the best run counting): a busy moment only slows a run,
        and an index that is slower stays slower however often it runs."""
        if qa.not_run is not None:
            return None, improved, f"{note}; not timed: {qa.not_run}"
        after_ms = self._time(s, qa, values)
        round_trip = self._round_trip(s)
        for _ in range(RETIMES):
            if not improved or after_ms is None:
                break
            if _confirm(improved, note, before_ms, after_ms, round_trip)[0]:
                break
            again = self._time(s, qa, values)
            if again is None:
                break
            after_ms = min(after_ms, again)
        confirmed, note = _confirm(improved, note, before_ms, after_ms, round_trip)
        return after_ms, confirmed, note

    def _second_look(
        self,
        s: Session,
        qa: QueryAdvice,
        values: list[t.Any] | None,
        improved: bool,
        note: str,
        base: str,
        before_ms: float | None,
        after_ms: float | None,
    ) -> tuple[float | None, bool, str]:
        """A gain the clock passed by less than :data:`MARGINAL_SPEEDUP` is timed again
        without the index (dropped by now), as the run with it was before a veto: the
        best run counts on both sides, so one slow moment before the build cannot pass
        an index that is no faster (``status = 'done'``, nine rows in ten: measured
        1.3x once, 1.0x when built)."""
        if not improved or before_ms is None or after_ms is None or before_ms < MIN_TIMED_MS:
            return before_ms, improved, note
        for _ in range(RETIMES):
            if after_ms * MARGINAL_SPEEDUP <= before_ms:
                break
            again = self._time(s, qa, values)
            if again is None or again >= before_ms:
                break
            before_ms = qa.measured_ms = again
            improved, note = _confirm(True, base, before_ms, after_ms, self._round_trip(s))
            if not improved:
                break
        return before_ms, improved, note

    def _measure_built(self, qa: QueryAdvice, tr: Trial, values: list[t.Any] | None) -> None:
        try:
            with self.explainer.session(writable=True) as s:
                if qa.measured_ms is None:
                    qa.measured_ms = self._time(s, qa, values)
                tr.measured_before_ms = qa.measured_ms
                base = tr.note
                with self._built(s, tr.candidate):
                    tr.measured_after_ms, tr.improved, tr.note = self._timed_verdict(
                        s, qa, values, tr.improved, tr.note, tr.measured_before_ms
                    )
                tr.measured_before_ms, tr.improved, tr.note = self._second_look(
                    s, qa, values, tr.improved, tr.note, base, tr.measured_before_ms,
                    tr.measured_after_ms,
                )  # fmt: skip
        except Exception as e:
            tr.note += f"; not timed: {error_line(e)}"

    # --- choosing ---

    def _choose(self, results: list[QueryAdvice]) -> list[Suggestion]:
        """The smallest set of verified candidates that serves every improved query,
        taken greedily: most queries served first; among those, the fewest columns,
        unless a longer index clearly beats it (see :func:`_beats`)."""
        serves: dict[t.Any, list[tuple[QueryAdvice, Trial]]] = {}
        cands: dict[t.Any, Candidate] = {}
        for qa in results:
            improved = [tr for tr in qa.trials if tr.improved]
            holding = [
                tr for tr in improved if self._serves_every_equality(tr.candidate, {id(qa): tr})
            ]
            for tr in improved:
                # Where an index holds every equality of the query, one that leaves an
                # equality to a filter does not serve it (slower for a rare value),
                # however many other queries it serves.
                if holding and all(tr is not h for h in holding):
                    continue
                key = tr.candidate.norm
                serves.setdefault(key, []).append((qa, tr))
                cands.setdefault(key, tr.candidate)
        uncovered = {id(qa) for items in serves.values() for qa, _ in items}
        chosen: list[Suggestion] = []
        while uncovered:
            live = {
                k: {id(qa): tr for qa, tr in items if id(qa) in uncovered}
                for k, items in serves.items()
            }
            most = max((len(v) for v in live.values()), default=0)
            if most == 0:
                break
            # A measured index comes before one only estimated, whatever its columns.
            top = sorted(
                (k for k, v in live.items() if len(v) == most),
                key=lambda k: (
                    any(tr.measured_after_ms is None for tr in live[k].values()),
                    len(cands[k].keys),
                    cands[k].key_sql(),
                ),
            )
            best = top[0]
            for k in top[1:]:
                if _beats(live[k], live[best]):
                    best = k
            if not self._serves_every_equality(cands[best], live[best]):
                # An index that leaves an equality of the query as a filter is fast for
                # the values most rows have and can be slower than no index for a rare
                # one (status = 'late' walking due_date): one that holds every equality
                # column first serves any value, and wins unless clearly slower.
                for k in top:
                    if self._serves_every_equality(cands[k], live[k]) and _no_worse(
                        live[k], live[best], MIN_MEASURED_SPEEDUP
                    ):
                        best = k
                        break
            # Equality columns, then the range: where the estimate cannot tell (kind)
            # from (kind, amount) for "kind = ? AND amount > ?", the one that also
            # searches by the range reads only the rows it returns.
            for k in top:
                if self._extends_by_filters(cands[k], cands[best], live[k]) and _no_worse(
                    live[k], live[best], WIDER_INDEX_MARGIN
                ):
                    best = k
            items = [(qa, tr) for qa, tr in serves.pop(best) if id(qa) in uncovered]
            c = cands[best]
            keys = tuple(_norm_key(k.split(" ")[0]) for k in c.keys)
            replaces = [
                name
                for name, idx_keys, partial in self._existing.get(c.table.lower(), [])
                if not partial
                and name not in ("PRIMARY KEY", "PRIMARY")
                and 0 < len(idx_keys) < len(keys)
                and keys[: len(idx_keys)] == idx_keys
            ]
            chosen.append(Suggestion(c, self.dialect, items, items[0][1].verified_by, replaces))
            uncovered -= {id(qa) for qa, _ in items}
        return chosen

    def _extends_by_filters(
        self, longer: Candidate, shorter: Candidate, served: dict[int, Trial]
    ) -> bool:
        """Whether ``longer`` is ``shorter`` plus columns that every query it serves
        filters by (an equality or a range), on the same table, neither partial."""
        a = [_norm_key(_strip_order(k)) for k in longer.keys]
        b = [_norm_key(_strip_order(k)) for k in shorter.keys]
        if (
            longer.table.lower() != shorter.table.lower()
            or longer.where
            or shorter.where
            or len(a) <= len(b)
            or a[: len(b)] != b
        ):
            return False
        extra = set(a[len(b) :])
        table = longer.table.lower()
        return all(extra <= self._filters.get((q, table), set()) for q in served)

    def _serves_every_equality(self, c: Candidate, served: dict[int, Trial]) -> bool:
        """Whether ``c`` holds every column that the queries it serves compare with ``=``
        on its table (so no value of theirs is left to a filter after the index)."""
        keys = {_norm_key(_strip_order(k)) for k in c.keys}
        if c.where:  # a partial index's predicate holds its constant equalities
            keys |= {_norm_key(m) for m in re.findall(r"([\w\"`]+)\s*=", c.where)}
        return all(
            self._equalities.get((qa_id, c.table.lower()), set()) <= keys for qa_id in served
        )

    # --- existing indexes ---

    def _index_health(
        self, tables: set[str], used: t.AbstractSet[str] = frozenset()
    ) -> list[IndexNote]:
        """Redundant indexes (a prefix of another), and on PostgreSQL unused ones: only
        once the statistics cover :attr:`unused_window_days`, never one that a plan of
        the analysed queries uses, and never so that the notes together drop every
        index on a leading column."""
        notes: list[IndexNote] = []
        leading: dict[tuple[str, str], str] = {}
        with self.explainer.session() as s:
            for table in sorted(tables):
                existing = _existing_indexes(s, table)
                for name, keys, _partial in existing:
                    if keys:
                        leading[(table, _bare_name(name))] = keys[0]
                for name, keys, partial in existing:
                    if partial or name in ("PRIMARY KEY", "PRIMARY") or not keys:
                        continue
                    for other, okeys, opartial in existing:
                        if other == name or opartial or len(okeys) <= len(keys):
                            continue
                        if okeys[: len(keys)] == keys and not _is_unique(s, name):
                            drop = (
                                f"DROP INDEX {name} ON {table}"
                                if self.dialect == "mysql"
                                else f"DROP INDEX {name}"
                            )
                            notes.append(
                                IndexNote(
                                    "redundant",
                                    table,
                                    name,
                                    f"{name} ({', '.join(keys)}) is a prefix of {other}"
                                    f" ({', '.join(okeys)}), which serves the same lookups.",
                                    drop,
                                )
                            )
                            break
            if self.dialect == "postgresql" and self._stats_cover_window(s):
                for row in s.run(
                    "SELECT s.relname, s.indexrelname, s.idx_scan"
                    " FROM pg_stat_user_indexes s JOIN pg_index i USING (indexrelid)"
                    " WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary"
                    " ORDER BY s.relname, s.indexrelname"
                ):
                    if row[0] in tables and _bare_name(row[1]) not in used:
                        notes.append(
                            IndexNote(
                                "unused",
                                row[0],
                                row[1],
                                f"{row[1]} has not been used since the statistics were last"
                                " reset (pg_stat_user_indexes.idx_scan = 0): check replicas,"
                                " then drop it to speed up writes.",
                                f"DROP INDEX CONCURRENTLY IF EXISTS {row[1]}",
                            )
                        )
        return _keep_a_leading_index(notes, leading)

    def _stats_cover_window(self, s: Session) -> bool:
        """Whether PostgreSQL's usage statistics cover the window; when not, a note says
        since when they count and that no index is called unused before the window."""
        row = s.run(
            "SELECT extract(epoch FROM now() - coalesce(d.stats_reset,"
            " pg_postmaster_start_time())) / 86400.0, d.stats_reset IS NOT NULL"
            " FROM pg_stat_database d WHERE d.datname = current_database()"
        ).first()
        days = float(row[0]) if row and row[0] is not None else 0.0
        if days >= self.unused_window_days:
            return True
        since = "were last reset" if row and row[1] else "the server started"
        self.notes.append(
            f"No index is called unused yet: usage statistics count since {since},"
            f" {days:.1f} days ago, less than the {self.unused_window_days:g}-day window"
            " (unused_window_days, --unused-window-days): an index a weekly job uses"
            " would look unused."
        )
        return False


def _keep_a_leading_index(
    notes: list[IndexNote], leading: dict[tuple[str, str], str]
) -> list[IndexNote]:
    """The notes, less any that would, with those kept before it, drop every index that
    a column leads (a redundant index and the unused one that made it redundant)."""
    kept: list[IndexNote] = []
    gone: set[tuple[str, str]] = set()
    for note in sorted(notes, key=lambda n: n.kind != "redundant"):
        key = (note.table, _bare_name(note.index))
        col = leading.get(key)
        if col is not None:
            same = {k for k, c in leading.items() if k[0] == note.table and c == col}
            if len(same) > 1 and same <= gone | {key}:
                continue
        kept.append(note)
        gone.add(key)
    return kept


def _beats(longer: dict[int, Trial], shorter: dict[int, Trial]) -> bool:
    """Whether an index with more columns is worth them over one with fewer, serving the
    same queries: no worse on any query and clearly better on one, by the clock where
    both were timed past :data:`MIN_TIMED_MS` (10% faster), else by the estimate (half
    the cost)."""
    if longer.keys() != shorter.keys():
        return False
    clearly = False
    for q, a in longer.items():
        b = shorter[q]
        if (
            a.measured_after_ms is not None
            and b.measured_after_ms is not None
            and max(a.measured_after_ms, b.measured_after_ms) >= MIN_TIMED_MS
        ):
            x, y, margin = a.measured_after_ms, b.measured_after_ms, 1.1
        elif a.cost_after is not None and b.cost_after is not None:
            x, y, margin = a.cost_after, b.cost_after, 2.0
        else:
            return False
        if x > y * 1.05:
            return False
        if x * margin <= y:
            clearly = True
    return clearly


def _no_worse(a: dict[int, Trial], b: dict[int, Trial], margin: float) -> bool:
    """Whether index ``a`` is within ``margin`` of index ``b`` on every query both serve:
    by the clock where both were timed, else by the estimate."""
    if a.keys() != b.keys():
        return False
    for q, x in a.items():
        y = b[q]
        if x.measured_after_ms is not None and y.measured_after_ms is not None:
            if x.measured_after_ms > max(y.measured_after_ms, MIN_TIMED_MS / 2) * margin:
                return False
        elif x.cost_after is not None and y.cost_after is not None:
            if x.cost_after > y.cost_after * margin:
                return False
        else:
            return False
    return True


#: An estimated index is not suggested for a filter that matches this share of the rows
#: or more (SQLite's planner takes a range for a quarter, whatever it matches).
MAX_INDEXED_SHARE = 0.2

#: An index that adds a column the query filters by is preferred unless its estimate
#: (or timing) is this much worse: a wider index costs the planner a little more to
#: read (PostgreSQL put (kind, amount) at 142.6 against 103.0 for (kind)), where reading
#: only the rows the range keeps is the larger gain.
WIDER_INDEX_MARGIN = 1.5

#: Where the query could be timed, an index must make it at least this much faster.
MIN_MEASURED_SPEEDUP = 1.25
#: Times an index's timing is taken again before the clock vetoes what the plan shows.
RETIMES = 3
#: A measured gain under this is timed again without the index before it stands.
MARGINAL_SPEEDUP = 2.0
#: Queries faster than this are not judged by the clock.
MIN_TIMED_MS = 2.0
#: Nor are queries within this many times a bare round trip (``SELECT 1``, timed beside
#: them): on a busy machine, waiting for the processor takes milliseconds of every
#: statement, and a scan of 3 ms "measured" slower than an index lookup of 0.1 ms.
NOISE_TIMES = 4.0


def _confirm(
    improved: bool,
    note: str,
    before_ms: float | None,
    after_ms: float | None,
    round_trip_ms: float | None = None,
) -> tuple[bool, str]:
    """An estimate that the clock contradicts does not stand."""
    if not improved or before_ms is None or after_ms is None or before_ms < MIN_TIMED_MS:
        # Below a couple of milliseconds the clock measures the machine, not the plan.
        return improved, note
    if round_trip_ms is not None and before_ms < NOISE_TIMES * round_trip_ms:
        return improved, (
            f"{note}; measured {before_ms:.2f} -> {after_ms:.2f} ms, too close to a bare"
            f" round trip on this machine now ({round_trip_ms:.2f} ms) for the clock to"
            " judge: judged by the plan"
        )
    if after_ms * MIN_MEASURED_SPEEDUP > before_ms:
        return False, (
            f"{note}; but measured {before_ms:.2f} -> {after_ms:.2f} ms, not faster enough"
        )
    return True, f"{note}; measured {before_ms:.2f} -> {after_ms:.2f} ms"


def _is_unique(s: Session, name: str) -> bool:
    with contextlib.suppress(Exception):
        if s.dialect == "sqlite":
            row = s.run("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).first()
            return bool(row and row[0] and "UNIQUE" in str(row[0]).upper())
        if s.dialect == "postgresql":
            row = s.run(
                "SELECT indisunique FROM pg_index WHERE indexrelid = to_regclass(%(n)s)",
                {"n": name},
            ).first()
            return bool(row and row[0])
        row = s.run(
            "SELECT min(non_unique) FROM information_schema.statistics"
            " WHERE table_schema = DATABASE() AND index_name = %(n)s",
            {"n": name},
        ).first()
        return bool(row and row[0] == 0)
    return False


# --- the store and the command line ------------------------------------------------------


def queries_from_store(
    store: t.Any,
    *,
    since: float,
    until: float | None = None,
    limit: int = 10,
    fingerprints: t.Sequence[str] | None = None,
) -> list[QueryInput]:
    """The costliest read shapes of a window (of ``fingerprints`` only, when given), as
    the advisor's input: each with its runnable sample, endpoints (costliest first),
    calls and total time."""
    until = time.time() if until is None else until
    # Ranked by the store's database with a limit: a window of 80,000 shapes is not
    # loaded to return 20.
    return [
        QueryInput(
            sql=shape.sample or "",
            fingerprint=shape.fingerprint,
            endpoints=tuple(ep for ep, _ in endpoints),
            calls=agg.calls,
            total_s=agg.total,
            label=shape.shape,
            site=shape.site,
            rows=agg.rows / agg.calls if agg.calls else None,
        )
        for shape, agg, endpoints in store.costliest_reads(
            since, until, limit, fingerprints=fingerprints
        )
    ]


def record_advice(store: t.Any, advice: Advice, when: float | None = None) -> None:
    """Write the suggestions and plan findings of queries that came from the store."""
    from .store import PlanFindingRow
    from .store import StoredAdvice

    when = time.time() if when is None else when
    rows = []
    for sug in advice.suggestions:
        c = sug.candidate
        for qa, tr in sug.trials:
            if not qa.query.fingerprint:
                continue
            rows.append(
                StoredAdvice(
                    qa.query.fingerprint,
                    advice.dialect,
                    c.table,
                    c.name(),
                    c.keys,
                    c.ddl(advice.dialect, migration=True) + ";",
                    c.alembic(advice.dialect),
                    c.reason,
                    sug.verified_by,
                    tr.cost_before,
                    tr.cost_after,
                    tr.measured_before_ms,
                    tr.measured_after_ms,
                    when,
                    when,
                )
            )
    findings = []
    for qa in advice.queries:
        q = qa.query
        if not q.fingerprint:
            continue
        suggestion = next(
            (s for s in advice.suggestions if any(x is qa for x, _ in s.trials)), None
        )
        for f in qa.findings:
            fix = f"{f.evidence}. {f.fix}"
            if suggestion is not None and f.kind in ("full_scan", "sort_without_index"):
                ddl = suggestion.candidate.ddl(advice.dialect, migration=True)
                fix = f"{f.evidence}. Verified fix: {ddl}"
            for ep in q.endpoints or ("",):
                findings.append(
                    PlanFindingRow(f.kind, ep, q.fingerprint, q.calls, q.total_s, q.site, fix)
                )
    if rows:
        store.record_advice(rows)
    if findings:
        store.record_plan_findings(findings, when)
