"""The advisor in the running app: a background thread explains the app's slow or hot
read shapes and stores the plan findings and verified suggestions, so ``querywatch
report`` (and later the dashboard and alerts) can cite them.

A shape is planned with the real parameters of one of its slow executions when one was
kept (in memory only, dropped once used); otherwise generically on PostgreSQL 16 and
later, or with values drawn from the data.

Never on a request thread, and bounded every way: one round every
``QUERYWATCH_ADVISE_INTERVAL`` seconds (30), at most ``QUERYWATCH_ADVISE_PER_ROUND`` shapes
a round (2), each shape at most once per ``QUERYWATCH_ADVISE_TTL`` (an hour) across every
process and host (a claim in the store), a statement timeout
(``QUERYWATCH_ADVISE_TIMEOUT``, 2 s), and no timing runs of the app's queries. Candidate
indexes are verified with HypoPG on PostgreSQL, in a rolled-back transaction on SQLite,
and on MariaDB not at all unless ``QUERYWATCH_ADVISE_ALLOW_DDL`` says so.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import typing as t
import weakref

from sqlalchemy.engine import make_url

from ._failopen import log_limited
from ._worker import Periodic

if t.TYPE_CHECKING:
    from .advisor import Advice
    from .advisor import QueryInput
    from .extension._state import AppState

__all__ = ["AdviceWorker", "queries_from_store", "record_advice"]

#: Shapes among the costliest of the window that count as hot.
HOT_RANK = 5
#: The window the worker looks at, at least.
WINDOW_SECONDS = 15 * 60
#: Fingerprints remembered as recently analysed, at most.
_RECENT_CAP = 10_000
#: Slow reads whose real parameters are kept for the next round, at most.
_SAMPLES_CAP = 256
#: Why the last analysis of a shape suggested nothing, for this many shapes at most.
_REASONS_CAP = 1000


class AdviceWorker(Periodic):
    """Runs the advisor over an app's costliest read shapes, off the request path."""

    thread_name = "querywatch-advisor"
    where = "advisor.worker"

    def __init__(self, state: AppState) -> None:
        super().__init__(state.settings.advise_interval)
        self._state = weakref.ref(state)
        self._recent: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: Real parameters of slow reads, by fingerprint: (statement, parameters, URL).
        #: In memory only, bounded, and dropped once used.
        self._samples: collections.OrderedDict[str, tuple[str, t.Any, t.Any, t.Any]] = (
            collections.OrderedDict()
        )
        #: Why the last analysis of a shape gave no suggestion, by fingerprint (bounded).
        self.reasons: collections.OrderedDict[str, str] = collections.OrderedDict()
        #: Rounds run, shapes analysed, and why the worker stopped (if it did).
        self.rounds = 0
        self.analysed = 0
        self.disabled: str | None = None

    def offer(self, slow: t.Iterable[t.Any]) -> None:
        """Keep the real parameters of these slow statements (reads only) for the next
        round. Called when a unit of work ends; costs a dict store per slow read."""
        for q in slow:
            sample = getattr(q, "sample", None)
            if sample is None or not q.fingerprint.is_read:
                continue
            fp = q.fingerprint.id
            self._samples[fp] = sample
            self._samples.move_to_end(fp)
            if len(self._samples) > _SAMPLES_CAP:
                self._samples.popitem(last=False)

    def _with_sample(self, q: t.Any, url: str) -> t.Any:
        """``q`` with the real statement and parameters of a slow execution, when one
        was kept from the database the advisor asks."""
        sample = self._samples.pop(q.fingerprint, None)
        if sample is None:
            return q
        statement, params, engine_url = sample[:3]
        try:
            target = make_url(url)
            same = (
                engine_url.get_backend_name() == target.get_backend_name()
                and engine_url.host == target.host
                and engine_url.port == target.port
                and engine_url.database == target.database
            )
        except Exception:
            same = False
        if not same or params is None:
            return q
        return dataclasses.replace(q, sql=statement, params=params)

    def finished(self) -> bool:
        return self.disabled is not None

    def run_once(self, now: float | None = None) -> int:
        """One round: pick the slow or hot read shapes not analysed lately, claim them
        in the store, analyse and record. Returns how many shapes were analysed."""

        state = self._state()
        if state is None or self.disabled:
            return 0
        settings = state.settings
        if not state.advise_database_url():
            return 0
        now = time.time() if now is None else now
        self.rounds += 1
        store = state.store
        since = now - max(WINDOW_SECONDS, 2 * self.interval)
        queries = queries_from_store(store, since=since, until=now + 60, limit=20)
        picked = []
        for rank, q in enumerate(queries):
            fp = q.fingerprint
            assert fp is not None
            slow = q.calls > 0 and q.total_s / q.calls >= settings.slow_query_seconds
            if rank >= HOT_RANK and not slow:
                continue
            seen = self._recent.get(fp)
            if seen is not None and seen > now - settings.advise_ttl:
                continue
            self._remember(fp, now)
            if store.claim_for_advice(fp, now, settings.advise_ttl):
                url = state.advise_database_url(fp)
                if url:
                    picked.append((url, self._with_sample(q, url)))
                if len(picked) >= settings.advise_per_round:
                    break
        # Each shape on the database that ran it (an app with binds has several).
        by_url: dict[str, list[t.Any]] = {}
        for url, q in picked:
            by_url.setdefault(url, []).append(q)
        return sum(self._analyse(qs, url, now) for url, qs in by_url.items())

    def analyse_now(
        self, fingerprint: str, now: float | None = None, *, timeout: float | None = None
    ) -> int:
        """Analyse one read shape at once (the dashboard's "Analyse now"), whatever its
        rank or claim; returns how many suggestions the store holds for it then (when
        none, :attr:`reasons` says why). ``timeout`` replaces
        ``QUERYWATCH_ADVISE_TIMEOUT`` for this analysis. Raises :class:`ExplainError`
        when there is nothing to analyse it with."""
        from .exceptions import ExplainError

        state = self._state()
        url = state.advise_database_url(fingerprint) if state is not None else None
        if state is None or not url:
            msg = "No database to ask for plans: set QUERYWATCH_ADVISE_DATABASE_URL."
            raise ExplainError(msg)
        now = time.time() if now is None else now
        found = queries_from_store(
            state.store, since=now - 86400, until=now + 60, limit=1, fingerprints=[fingerprint]
        )
        if not found:
            msg = (
                f"No read shape {fingerprint!r} with a runnable sample in the last day: only"
                " SELECT shapes seen by this app can be analysed."
            )
            raise ExplainError(msg)
        self._remember(fingerprint, now)
        self._analyse(found, url, now, timeout=timeout)
        return len(state.store.advice([fingerprint]))

    def _analyse(
        self, picked: list[t.Any], url: str, now: float, *, timeout: float | None = None
    ) -> int:
        from .advisor import Advisor
        from .advisor import no_suggestion_reason
        from .exceptions import ExplainError

        state = self._state()
        if state is None:
            return 0
        settings = state.settings
        store = state.store
        try:
            advisor = Advisor(
                url,
                allow_ddl=settings.advise_allow_ddl,
                scan_min_rows=settings.scan_min_rows,
                timeout=settings.advise_timeout if timeout is None else timeout,
                measure=False,
            )
        except ExplainError as e:
            # An in-memory SQLite database, a file that is not there, an unsupported
            # dialect: each shape's "no suggestion" says so; the app's own database
            # failing stops the worker, said once.
            for q in picked:
                if q.fingerprint is not None:
                    self._reason(q.fingerprint, str(e))
            if url == state.advise_database_url():
                self.disabled = str(e)
                log_limited(
                    "advisor.disabled",
                    "querywatch's background advisor is off for this app: %s",
                    self.disabled,
                )
            else:
                log_limited(f"advisor.url.{url}", "querywatch's advisor cannot plan: %s", e)
            return 0
        with advisor:
            advice = advisor.advise(picked, index_health=False)
        record_advice(store, advice, when=now)
        self.analysed += len(picked)
        suggested = {qa.query.fingerprint for s in advice.suggestions for qa, _ in s.trials}
        for qa in advice.queries:
            fp = qa.query.fingerprint
            if fp is not None:
                if fp in suggested:
                    self.reasons.pop(fp, None)
                else:
                    self._reason(fp, no_suggestion_reason(qa))
        for qa in advice.queries:
            for err in qa.errors:
                log_limited(
                    f"advisor.query.{qa.query.fingerprint}",
                    "querywatch's background advisor could not analyse %s: %s",
                    qa.query.fingerprint,
                    err,
                )
        return len(picked)

    def _reason(self, fp: str, why: str) -> None:
        self.reasons[fp] = why
        self.reasons.move_to_end(fp)
        while len(self.reasons) > _REASONS_CAP:
            self.reasons.popitem(last=False)

    def _remember(self, fp: str, now: float) -> None:
        self._recent[fp] = now
        self._recent.move_to_end(fp)
        while len(self._recent) > _RECENT_CAP:
            self._recent.popitem(last=False)


# --- the store and the advisor (the worker and the command line) -----------------------


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
    from .advisor import QueryInput

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
