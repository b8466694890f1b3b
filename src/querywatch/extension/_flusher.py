"""The flusher: an app's aggregates folded off the request path and written to the store
every few seconds, with the alerts evaluated after each write."""

from __future__ import annotations

import atexit
import time
import typing as t
import weakref

from .._failopen import fail_open
from .._failopen import log_limited
from .._failopen import record_internal_error
from .._failopen import unavailable
from .._stats import FOLD_INTERVAL
from .._worker import Periodic

if t.TYPE_CHECKING:
    from ._state import AppState


class Flusher(Periodic):
    """Folds an app's finished requests into its aggregates a few times a second, off the
    request path, and writes them to the store every ``QUERYWATCH_FLUSH_INTERVAL``
    seconds (and at exit), evaluating the alerts after each write."""

    thread_name = "querywatch-flusher"
    where = "flusher.run"

    def __init__(self, state: AppState) -> None:
        self.flush_interval = state.settings.flush_interval
        super().__init__(min(FOLD_INTERVAL, self.flush_interval))
        self._state = weakref.ref(state)
        self._last_prune = 0.0
        self._next_eval = 0.0
        self._next_flush = 0.0
        #: Flushes that failed because the store was unreachable, read-only or full.
        self.failures = 0
        self._atexit = False

    def _start(self) -> None:
        self._next_flush = time.monotonic() + self.flush_interval
        super()._start()
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def run_once(self) -> None:
        state = self._state()
        if state is not None:
            state.stats.fold()
            if state.metrics is not None:
                state.metrics.fold()
        if time.monotonic() >= self._next_flush:
            self._next_flush = time.monotonic() + self.flush_interval
            self.flush()
            self.evaluate_alerts()

    def defer_alerts(self, seconds: float) -> None:
        """Evaluate no alert for the next ``seconds`` (0: at the next flush), as during
        a warm-up whose slow first requests should page nobody."""
        self._next_eval = time.monotonic() + seconds

    def evaluate_alerts(self, *, force: bool = False) -> list[t.Any] | None:
        """Evaluate the alerts if it is time (every ``QUERYWATCH_ALERT_INTERVAL``
        seconds) and this process holds the store's lease. Never raises: a failure is
        counted and logged."""
        state = self._state()
        if state is None or not state.settings.alerts:
            return None
        now = time.monotonic()
        if not force and now < self._next_eval:
            return None
        interval = state.settings.alert_interval
        self._next_eval = now + interval
        try:
            changes = state.evaluator.run(lease_seconds=max(3 * interval, 2 * self.flush_interval))
            if state.guard is not None:
                # The lease holder decides containment; every process applies it.
                with fail_open("guard.contain"):
                    state.guard.contain(
                        state.store,
                        leader=changes is not None,
                        now=time.time(),
                        width=state.settings.bucket_seconds,
                    )
            return changes
        except Exception as e:
            record_internal_error("alerts.evaluate", e, log=not unavailable(e))
            log_limited(
                "alerts.evaluate",
                "querywatch could not evaluate its alerts (%s: %s); the application is not"
                " affected.",
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
            )
            return None

    def flush(self) -> bool:
        """Write what is pending now. Returns False when the store could not be written
        (the data is kept, bounded, and retried)."""
        state = self._state()
        if state is None:
            return True
        snap = state.stats.drain()
        cache = state._cache
        counts = cache.take_counts() if cache is not None else {}
        pools = state.metrics.take_pool_counts() if state.metrics is not None else {}
        if snap.is_empty() and not counts and not pools:
            return True
        written = counted = False
        try:
            store = state.store
            store.write(snap)
            written = True
            width = state.settings.bucket_seconds
            bucket = int(time.time() // width) * width
            if counts:
                store.write_cache_stats(bucket, counts)
            counted = True
            if pools:
                store.write_pool_stats(bucket, pools)
                pools = {}
            now = time.time()
            if now - self._last_prune > 3600:
                self._last_prune = now
                store.prune(now - state.settings.retention_days * 86400)
            return True
        except Exception as e:
            # Give back only what was not written, so nothing is counted twice.
            if not written:
                state.stats.restore(snap)
            if not counted and counts and cache is not None:
                cache.give_back(counts)
            if pools and state.metrics is not None:
                state.metrics.give_back_pool_counts(pools)
            self.failures += 1
            log_limited(
                "store.flush",
                "querywatch could not write to its store (%s: %s); %d flushes failed so far."
                " Aggregates stay in memory (bounded) and are retried; the application is"
                " not affected.",
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
                self.failures,
            )
            return False

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, flush one last time, and give up the store's leases this
        process holds, so another process takes over at once (a rolling deploy)."""
        super().stop(2 * self.flush_interval + 1 if timeout is None else timeout)
        with fail_open("flusher.stop"):
            self.flush()
        with fail_open("flusher.release"):
            state = self._state()
            if state is not None:
                state.release_leases()
