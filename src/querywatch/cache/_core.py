"""The cache: entries kept with the versions of the tables they read, one computation a
key at a time, counters per function, and the decorator behind ``@qw.cached``."""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import functools
import hashlib
import threading
import time
import typing as t

from .._failopen import record_internal_error
from .._sql import ALL_TABLES
from ..exceptions import BackendUnavailableError
from ..exceptions import CacheValueError
from ._backends import MemoryBackend
from ._backends import RedisBackend
from ._codec import _KEY_ENCODER
from ._codec import dumps
from ._codec import loads

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable

    from typing_extensions import Unpack


#: How long a caller waits for another's computation of the same key.
WAIT_SECONDS = 5.0
#: Names with counters of their own, at most (functions, or ``get_or_compute`` names).
MAX_NAMES = 200
OTHER_NAME = "other"


# --- the cache ----------------------------------------------------------------------------


@dataclasses.dataclass
class FunctionStats:
    """What the cache did for one cached function (or ``get_or_compute`` name)."""

    hits: int = 0
    misses: int = 0
    #: Entries found but no longer valid (a table they read was written, or they expired).
    invalidations: int = 0
    #: Computations whose result was not stored because a table they read was written
    #: while they ran.
    races: int = 0
    #: Callers that waited for another's computation of the same key.
    coalesced: int = 0
    #: Callers given the previous value while another recomputed it
    #: (``stale_while_revalidate``).
    stale: int = 0
    bypassed: int = 0
    errors: int = 0


class _Flight:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


_MISSING = object()

#: The tables the innermost computation in progress depends on through cache hits.
_reading: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "querywatch_cache_reading", default=None
)


def _note_read(tables: t.Any) -> None:
    """A hit inside another cached computation: its tables are the outer's too."""
    collecting = _reading.get()
    if collecting is not None and tables is not None:
        collecting.update(tables)


class _Job(t.NamedTuple):
    """One computation of a key, as the leader runs it."""

    key: str
    fn: Callable[[], t.Any]
    ttl: float | None
    tables: Iterable[str]
    name: str
    st: FunctionStats
    pickle: bool
    previous: _Stale | None
    invalidate: bool = True


class _Stale(t.NamedTuple):
    """An entry no longer valid, kept for ``stale_while_revalidate``."""

    data: bytes


class Cache:
    """Results of query-backed computations, valid until a table they read is written.

    :param backend: where entries and table versions live (default: a
        :class:`MemoryBackend`; :class:`RedisBackend` shares them between processes).
    :param default_ttl: seconds an entry lives at most when a call gives no ``ttl``.
    :param track: ``track(fn)`` runs ``fn`` and returns ``(value, tables read)``; the
        extension passes capture's (see :func:`querywatch.capture.tables_read_by`).
    """

    def __init__(
        self,
        backend: MemoryBackend | RedisBackend | None = None,
        *,
        default_ttl: float = 60.0,
        track: Callable[[Callable[[], t.Any]], tuple[t.Any, frozenset[str]]] | None = None,
        secret: bytes | None = None,
    ) -> None:
        #: Signs pickled values (``pickle=True``); the extension passes the app's
        #: ``SECRET_KEY``.
        self.secret = secret
        self.backend: t.Any = backend or MemoryBackend()
        self.default_ttl = default_ttl
        self._track = track
        self.stats: dict[str, FunctionStats] = collections.defaultdict(FunctionStats)
        self._flushed: dict[str, dict[str, int]] = {}
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()

    # --- reading ---

    def get_or_compute(
        self,
        key: str,
        fn: Callable[[], t.Any],
        *,
        ttl: float | None = None,
        tables: Iterable[str] = (),
        bypass: bool = False,
        name: str | None = None,
        pickle: bool = False,
        stale_while_revalidate: bool = False,
        invalidate: bool = True,
    ) -> t.Any:
        """The cached value of ``key``, or ``fn()`` computed once, stored and returned.

        :param tables: tables the value depends on besides those its statements read.
        :param bypass: compute and return without reading or writing the cache.
        :param pickle: store a pickle signed with the app's secret instead of JSON.
        :param stale_while_revalidate: while another caller recomputes a value that a
            write (or its TTL) made stale, return the previous value instead of waiting.
            This gives up read-your-writes for the callers that overlap the
            recomputation; off by default.
        :param invalidate: False: a write does not drop the entry, which lives its TTL
            (as Flask-Caching's ``memoize``): for reads that may be that stale.
        """
        if pickle and not self.secret:
            msg = (
                f"pickle=True for {name or key} needs a secret to sign the values with: set"
                " the app's SECRET_KEY."
            )
            raise CacheValueError(msg)
        name = name or key.split(":", 1)[0]
        st = self.stats.get(name) or self._stats_for(name)
        available = getattr(self.backend, "available", None)
        if bypass or (available is not None and not available()):
            # Asked to, or the backend's breaker is open (a hung Redis): compute
            # directly, without a round trip that would time out.
            st.bypassed += 1
            return fn()
        value = self._lookup(key, st)
        previous = None
        if type(value) is _Stale:
            previous, value = value, _MISSING
        if value is not _MISSING:
            return value
        if not stale_while_revalidate:
            previous = None
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            if previous is not None:
                served = self._serve_previous(previous, st)
                if served is not _MISSING:
                    return served
            if flight.done.wait(WAIT_SECONDS) and flight.ok:
                # Take what the leader *stored*, checked against the versions now: its
                # computation may have begun before a commit this caller must see, and
                # then it kept nothing.
                value = self._stored(key, st)
                if value is not _MISSING:
                    return value
            # The leader kept nothing, failed or is stuck: compute here.
            return self._lead(_Job(key, fn, ttl, tables, name, st, pickle, None, invalidate))
        try:
            if getattr(self.backend, "acquire", None) is None:
                # In this process's memory (no round trip): a caller that missed just
                # before another leader stored its value and left finds it now, or the
                # key is computed twice (a busy machine's thread, descheduled between
                # its miss and this flight, did).
                again = self._stored(key, st, counted=True)
                if again is not _MISSING:
                    flight.ok = True
                    return again
            value = self._lead(_Job(key, fn, ttl, tables, name, st, pickle, previous, invalidate))
            flight.ok = True
            return value
        finally:
            flight.done.set()
            with self._flights_lock:
                self._flights.pop(key, None)

    def _lead(self, job: _Job) -> t.Any:
        """This process's one computation of ``key``; with a shared backend, the one of
        every process: the others wait for its entry (or compute, if it keeps none), or
        take the previous value when ``previous`` is given."""
        key, st, previous = job.key, job.st, job.previous
        acquire = getattr(self.backend, "acquire", None)
        if acquire is None:
            return self._compute(job)
        try:
            token = acquire(key, WAIT_SECONDS)
        except Exception as e:
            st.errors += 1
            record_internal_error("cache.lock", e)
            return self._compute(job)
        if token is None:
            if previous is not None:
                served = self._serve_previous(previous, st)
                if served is not _MISSING:
                    return served
            deadline = time.monotonic() + WAIT_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.01)
                try:
                    free = not self.backend.locked(key)
                    # Looked up after the lock check: a holder stores before it releases.
                    status, data, deps = self.backend.lookup(key)
                    if status == "hit" and data is not None:
                        st.coalesced += 1
                        _note_read(deps)
                        return loads(data, secret=self.secret)
                    if free:
                        break  # the other computation kept nothing: compute here
                except Exception as e:
                    st.errors += 1
                    record_internal_error("cache.wait", e)
                    break
            return self._compute(job)
        try:
            return self._compute(job)
        finally:
            try:
                self.backend.release(key, token)
            except Exception as e:
                record_internal_error("cache.unlock", e)

    def _stored(self, key: str, st: FunctionStats, *, counted: bool = False) -> t.Any:
        """What another caller stored for ``key`` since this one missed (coalesced), or
        :data:`_MISSING`. ``counted``: a failure here is the same entry's as the lookup
        that just missed, which counted it already."""
        try:
            status, data, deps = self.backend.lookup(key)
            if status == "hit" and data is not None:
                value = loads(data, secret=self.secret)
                _note_read(deps)
                st.coalesced += 1
                return value
        except Exception as e:
            if not counted:
                st.errors += 1
                record_internal_error("cache.coalesce", e)
        return _MISSING

    def _serve_previous(self, previous: _Stale, st: FunctionStats) -> t.Any:
        try:
            value = loads(previous.data, secret=self.secret)
        except Exception as e:
            st.errors += 1
            record_internal_error("cache.stale", e)
            return _MISSING
        st.stale += 1
        return value

    def _lookup(self, key: str, st: FunctionStats) -> t.Any:
        try:
            status, data, deps = self.backend.lookup(key)
            if status != "hit" or data is None:
                st.misses += 1
                if status == "stale":
                    st.invalidations += 1
                    if data is not None:
                        return _Stale(data)
                return _MISSING
            value = loads(data, secret=self.secret)
            _note_read(deps)
        except Exception as e:
            # A corrupted or foreign value, a backend failure: a miss, never an error.
            st.errors += 1
            st.misses += 1
            record_internal_error("cache.get", e)
            return _MISSING
        st.hits += 1
        return value

    def _compute(self, job: _Job) -> t.Any:
        key, fn, ttl, tables, name, st, pickle = job[:7]
        try:
            since = self.backend.epoch()
        except Exception as e:  # the backend is down: compute, keep nothing
            st.errors += 1
            record_internal_error("cache.epoch", e)
            return fn()
        # Cached values this computation takes from the cache ran no statement here:
        # their dependencies are collected on the side.
        inner: set[str] = set()
        token = _reading.set(inner)
        try:
            if self._track is not None:
                value, read = self._track(fn)
            else:
                value, read = fn(), frozenset({ALL_TABLES})
        finally:
            _reading.reset(token)
        if inner:
            read = frozenset(read) | inner
        parent = _reading.get()
        if parent is not None:
            parent.update(read)
        data = dumps(value, name=name, sign_with=self.secret if pickle else None)
        # Without invalidation the entry depends on nothing: it lives its TTL.
        deps = frozenset(read) | {tb.lower() for tb in tables} if job.invalidate else frozenset()
        try:
            if not self.backend.store(
                key, data, deps, since, self.default_ttl if ttl is None else ttl
            ):
                st.races += 1  # a table it read was written meanwhile: not kept
        except Exception as e:
            st.errors += 1
            record_internal_error("cache.set", e)
        return value

    def _stats_for(self, name: str) -> FunctionStats:
        """The counters of ``name``; past :data:`MAX_NAMES` names, those of ``other``
        (the names become metric labels: they must stay few)."""
        if len(self.stats) >= MAX_NAMES:
            name = OTHER_NAME
        return self.stats[name]

    def take_counts(self) -> dict[str, dict[str, int]]:
        """The counters that grew since the last call, per function (for the store)."""
        out: dict[str, dict[str, int]] = {}
        for name, st in list(self.stats.items()):
            now = dataclasses.asdict(st)
            before = self._flushed.get(name, {})
            delta = {k: v - before.get(k, 0) for k, v in now.items()}
            if any(delta.values()):
                out[name] = delta
                self._flushed[name] = now
        return out

    def give_back(self, counts: dict[str, dict[str, int]]) -> None:
        """Counters :meth:`take_counts` returned that could not be written."""
        for name, delta in counts.items():
            before = self._flushed.get(name)
            if before is not None:
                self._flushed[name] = {k: v - delta.get(k, 0) for k, v in before.items()}

    # --- writing ---

    def invalidate(self, key: str | None = None, *, table: str | None = None) -> None:
        """Drop one entry (``key``), or every entry that read ``table``."""
        if key is not None:
            self.backend.delete(key)
        if table is not None:
            self.backend.bump([table.lower()])

    def bump(self, tables: Iterable[str]) -> None:
        """A commit wrote ``tables``: entries that read them are stale from now on.
        While the backend is bypassed the bump is not sent: the backend drops every
        entry when it is back, so nothing stale is served."""
        try:
            self.backend.bump(tables)
        except BackendUnavailableError:
            pass


class CacheOptions(t.TypedDict, total=False):
    """What a cached function may set, besides its TTL (``@qw.cached``,
    ``@cached_query``):

    ``key``: makes the key from the arguments (default: the function's name and a digest
    of its arguments); ``tables``: tables it depends on besides those its statements
    read; ``name``: its name in keys and counters (default: ``module.qualname``);
    ``pickle``: store a signed pickle instead of JSON; ``stale_while_revalidate``: serve
    the previous value while one caller recomputes; ``invalidate``: ``False`` keeps an
    entry its whole TTL whatever is written.
    """

    key: Callable[..., str] | None
    tables: Iterable[str]
    name: str | None
    pickle: bool
    stale_while_revalidate: bool
    invalidate: bool


_OPTIONS = frozenset(CacheOptions.__annotations__)


def cached_with(
    get_cache: Callable[[], Cache | None],
    ttl: float | None = None,
    **options: Unpack[CacheOptions],
) -> Callable[[Callable[..., t.Any]], Callable[..., t.Any]]:
    """The decorator behind ``qw.cached`` and ``cached_query``: ``get_cache()`` is asked
    for the cache at each call; None (querywatch off) runs the function uncached."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        msg = f"Unknown cache option(s) {', '.join(unknown)}; the options are {sorted(_OPTIONS)}."
        raise TypeError(msg)
    key = options.get("key")
    tables = options.get("tables", ())
    name = options.get("name")
    pickle = options.get("pickle", False)
    stale_while_revalidate = options.get("stale_while_revalidate", False)
    invalidate = options.get("invalidate", True)
    extra = tuple(tables)

    def decorate(fn: Callable[..., t.Any]) -> Callable[..., t.Any]:
        fname = name or f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args: t.Any, cache_bypass: bool = False, **kwargs: t.Any) -> t.Any:
            cache = get_cache()
            if cache is None:  # querywatch is off for this app: no caching at all
                return fn(*args, **kwargs)
            k = key(*args, **kwargs) if key is not None else make_key(fname, args, kwargs)
            return cache.get_or_compute(
                k,
                lambda: fn(*args, **kwargs),
                ttl=ttl,
                tables=extra,
                bypass=cache_bypass,
                name=fname,
                pickle=pickle,
                stale_while_revalidate=stale_while_revalidate,
                invalidate=invalidate,
            )

        wrapper.cache_name = fname  # type: ignore[attr-defined]
        return wrapper

    return decorate


_SIMPLE = frozenset({str, int, float, bool, type(None)})


def make_key(name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> str:
    """``"<module.qualname>:<hash>"``: the function's name, then a digest of its
    arguments: their ``repr`` when they are all strings, numbers, booleans or None, else
    their JSON form (``repr`` for what JSON cannot hold), keyword order ignored."""
    if not kwargs and all(type(a) in _SIMPLE for a in args):
        text = repr(args)  # str, int, float, bool, None: repr is exact and quick
    else:
        try:
            text = _KEY_ENCODER.encode([args, kwargs])
        except (TypeError, ValueError):
            text = repr((args, sorted(kwargs.items())))
    return f"{name}:{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"
