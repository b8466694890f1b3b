"""What the advisor takes and gives: queries, candidates, trials, hints, findings and the
advice, with why a query got no suggestion."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import typing as t

from ..explain import Plan
from ..fingerprint import Quoting
from ..fingerprint import mask_literals
from ..fingerprint import quoting_for

if t.TYPE_CHECKING:
    pass


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

    def alembic_drop(self, dialect: str) -> str:
        """The Alembic operation that drops the index :meth:`alembic` creates (a
        revision's ``downgrade``)."""
        extra = f", table_name={self.table!r}"
        if self.schema:
            extra += f", schema={self.schema!r}"
        if dialect == "postgresql":
            extra += ", postgresql_concurrently=True, if_exists=True"
        elif dialect == "sqlite":
            extra += ", if_exists=True"
        op = f"op.drop_index({self.name()!r}{extra})"
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
