"""Reading a query with sqlglot: the tables it uses, its filters, joins, order and
groups, as the candidates need them, and the rewrite hints (joins, semi-joins and
deduplicating joins that a rewrite serves better than an index)."""

from __future__ import annotations

import dataclasses
import re
import typing as t

from .._sql import check_read_only
from .._sql import number_placeholders
from .._sql import sqlglot_dialect
from ._indexes import _literal_kind
from ._model import Hint

if t.TYPE_CHECKING:
    pass


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


def _range_op(cond: t.Any) -> str:
    from sqlglot import exp

    return "ge" if isinstance(cond, (exp.GT, exp.GTE)) else "le"


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
