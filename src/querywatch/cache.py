"""Query result caching that is never stale after a write.

.. code-block:: python

    @qw.cached(ttl=60)
    def top_products(category: str) -> list[dict]:
        return [...]  # queries through SQLAlchemy

    qw.cache.get_or_compute("stats", compute_stats, ttl=30)
    qw.cache.invalidate(table="orders")

How an entry stays correct:

* **Dependencies** are the tables the computation read, taken from the statements capture
  recorded while it ran (``tables=`` adds more). A statement that cannot be read makes the
  entry depend on every table.
* **Versions**: every commit that wrote a table bumps a process-wide *epoch* and records
  it as that table's version. An entry keeps the versions of its tables; it is served only
  while they are unchanged.
* **The race**: the versions are read *after* the computation, and the entry is stored only
  if none of its tables was bumped since the computation *began* (the epoch then). So a
  value computed from rows that a concurrent commit changed is returned to its caller but
  never stored, and one stored just before a commit is invalid as soon as the commit's bump
  lands, which happens before ``commit()`` returns (capture wraps the dialect's
  ``do_commit``). A rollback bumps nothing.
* **Stampede**: one computation per key at a time in a process, and with Redis in all
  processes (a lock that expires); the others wait for its entry.

Values are stored as JSON (dicts, lists, rows, dataclasses, dates, times, decimals, UUIDs,
tagged so they come back as the same types); a value JSON cannot hold raises
:class:`~querywatch.exceptions.CacheValueError` naming the function and the type.

The memory backend (the default) is bounded by entries and bytes (LRU) and invalidates
only within its own process.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import datetime as dt
import decimal
import functools
import hashlib
import hmac
import json
import json.scanner
import pickle
import threading
import time
import typing as t
import uuid

from ._failopen import log_limited
from ._failopen import record_internal_error
from .exceptions import BackendUnavailableError
from .exceptions import CacheValueError
from .sql import ALL_TABLES

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable

__all__ = [
    "Cache",
    "FunctionStats",
    "LocalVersions",
    "MemoryBackend",
    "RedisBackend",
    "dumps",
    "loads",
]

#: How long a caller waits for another's computation of the same key.
WAIT_SECONDS = 5.0
#: Names with counters of their own, at most (functions, or ``get_or_compute`` names).
MAX_NAMES = 200
OTHER_NAME = "other"


# --- versions -----------------------------------------------------------------------------


class LocalVersions:
    """Table versions in this process: each bump takes the next epoch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = 0
        self._tables: dict[str, int] = {}
        self._all = 0  # the epoch of the last bump of every table

    def epoch(self) -> int:
        return self._epoch

    def get(self, tables: Iterable[str]) -> dict[str, int]:
        all_ = self._all
        got = self._tables.get
        if ALL_TABLES in tables:
            return {ALL_TABLES: self._epoch}
        return {tb: max(got(tb, 0), all_) for tb in tables}

    def valid(self, deps: dict[str, int]) -> bool:
        if ALL_TABLES in deps:
            return deps[ALL_TABLES] == self._epoch
        all_ = self._all
        got = self._tables.get
        for tb, v in deps.items():
            if max(got(tb, 0), all_) != v:
                return False
        return True

    def bump(self, tables: Iterable[str]) -> int:
        with self._lock:
            self._epoch += 1
            e = self._epoch
            for tb in tables:
                if tb == ALL_TABLES:
                    self._all = e
                else:
                    self._tables[tb] = e
            return e


# --- values -------------------------------------------------------------------------------

#: Dataclass types this process has stored, by ``module:qualname``: only these are rebuilt
#: from a stored value (a foreign tag never names a class to instantiate).
_dataclasses: dict[str, type] = {}


def _default(o: t.Any) -> t.Any:
    if isinstance(o, dt.datetime):
        return {"__qw__": "datetime", "v": o.isoformat()}
    if isinstance(o, dt.date):
        return {"__qw__": "date", "v": o.isoformat()}
    if isinstance(o, dt.time):
        return {"__qw__": "time", "v": o.isoformat()}
    if isinstance(o, decimal.Decimal):
        return {"__qw__": "decimal", "v": str(o)}
    if isinstance(o, uuid.UUID):
        return {"__qw__": "uuid", "v": str(o)}
    if isinstance(o, (set, frozenset)):
        return {"__qw__": "set", "v": sorted(o, key=repr)}
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        cls = type(o)
        name = f"{cls.__module__}:{cls.__qualname__}"
        _dataclasses[name] = cls
        return {
            "__qw__": "dataclass",
            "t": name,
            "v": {f.name: getattr(o, f.name) for f in dataclasses.fields(o)},
        }
    mapping = getattr(o, "_mapping", None)  # a SQLAlchemy Row
    if mapping is not None and hasattr(o, "_fields"):
        return {"__qw__": "row", "v": dict(mapping)}
    if hasattr(o, "keys") and hasattr(o, "__getitem__"):  # RowMapping and friends
        return {k: o[k] for k in o.keys()}
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__qualname__)


def _hook(d: dict[str, t.Any]) -> t.Any:
    tag = d.get("__qw__")
    if tag is None:
        return d
    v = d["v"]
    if tag == "datetime":
        return dt.datetime.fromisoformat(v)
    if tag == "date":
        return dt.date.fromisoformat(v)
    if tag == "time":
        return dt.time.fromisoformat(v)
    if tag == "decimal":
        return decimal.Decimal(v)
    if tag == "uuid":
        return uuid.UUID(v)
    if tag == "set":
        return set(v)
    if tag == "row":
        return v
    if tag == "dataclass":
        cls = _dataclasses.get(d.get("t", ""))
        if cls is None:
            msg = f"stored dataclass {d.get('t')!r} is not one this process stores"
            raise ValueError(msg)
        return cls(**v)
    msg = f"unknown tag {tag!r}"
    raise ValueError(msg)


# One encoder and one decoder for the process: ``json.dumps(..., default=...)`` builds a
# new one at every call, which costs more than decoding a small value.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"))
_KEY_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), sort_keys=True)
_DECODER = json.JSONDecoder(object_hook=_hook)
# The C scanners behind those decoders: what they decode is ours, so the checks around
# them (encoding detection, trailing white space) are skipped.
_scan_plain: t.Any = json.scanner.make_scanner(t.cast("t.Any", json.JSONDecoder()))
_scan_tagged: t.Any = json.scanner.make_scanner(t.cast("t.Any", _DECODER))


def dumps(value: t.Any, *, name: str = "?", sign_with: bytes | None = None) -> bytes:
    """``value`` as JSON bytes; :class:`CacheValueError` names ``name`` and the type that
    JSON cannot hold. With ``sign_with``, a pickle signed with HMAC-SHA256 under that key
    instead (for values JSON cannot hold; never read back without a valid signature)."""
    if sign_with is not None:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            msg = f"The result of {name} cannot be pickled: {type(e).__name__}: {e}"
            raise CacheValueError(msg) from None
        return b"S" + hmac.new(sign_with, data, hashlib.sha256).digest() + data
    try:
        text = _ENCODER.encode(value)
        # "P": plain JSON, decoded at C speed; "T": holds tagged values (dates, ...).
        return (b"T" if '"__qw__"' in text else b"P") + text.encode()
    except (TypeError, ValueError) as e:
        kind = str(e) if isinstance(e, TypeError) and str(e) else type(value).__qualname__
        msg = (
            f"The result of {name} cannot be cached: a value of type {kind} has no JSON form."
            " Return dicts, lists, rows, dataclasses, dates or decimals, or convert it first."
        )
        raise CacheValueError(msg) from None


def loads(data: bytes, *, secret: bytes | None = None) -> t.Any:
    """A stored value back; raises ``ValueError`` on anything that is not one of ours (a
    pickle is unpickled only when its signature verifies under ``secret``)."""
    kind = data[:1]
    if kind == b"P":
        return _scan_plain(data[1:].decode(), 0)[0]
    if kind == b"T":
        return _scan_tagged(data[1:].decode(), 0)[0]
    if kind == b"S":
        mac, body = data[1:33], data[33:]
        if secret is None or not hmac.compare_digest(
            mac, hmac.new(secret, body, hashlib.sha256).digest()
        ):
            msg = "a pickled value whose signature does not verify"
            raise ValueError(msg)
        return pickle.loads(body)  # its signature verified above
    msg = "not a value this cache stored"
    raise ValueError(msg)


# --- the memory backend -------------------------------------------------------------------


class _Entry(t.NamedTuple):
    data: bytes
    deps: dict[str, int]
    expires: float


class MemoryBackend:
    """Entries in this process, least recently used evicted past ``max_entries`` or
    ``max_bytes``."""

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 64 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.versions = LocalVersions()
        self._data: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: str) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None:
            try:
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile
                pass
        return entry

    def set(self, key: str, data: bytes, deps: dict[str, int], ttl: float) -> None:
        size = len(data) + len(key)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old.data) + len(key)
            self._data[key] = _Entry(data, deps, time.monotonic() + ttl)
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                k, e = self._data.popitem(last=False)
                self._bytes -= len(e.data) + len(k)
                self.evictions += 1

    def delete(self, key: str) -> bool:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old.data) + len(key)
            return old is not None

    # --- the backend protocol (what Cache calls) ---

    def epoch(self) -> t.Any:
        return self.versions.epoch()

    def lookup(self, key: str) -> tuple[str, bytes | None, t.Any]:
        """("hit", data, tables it depends on), ("stale", previous data, None) or
        ("miss", None, None)."""
        entry = self.get(key)
        if entry is None:
            return "miss", None, None
        if entry.expires < time.monotonic() or not self.versions.valid(entry.deps):
            return "stale", entry.data, None
        return "hit", entry.data, entry.deps.keys()

    def store(
        self, key: str, data: bytes, tables: frozenset[str], since: t.Any, ttl: float
    ) -> bool:
        """Keep ``data`` unless a table in ``tables`` was bumped after epoch ``since``."""
        deps = self.versions.get(tables)
        if any(v > since for v in deps.values()):
            return False
        self.set(key, data, deps, ttl)
        return True

    def bump(self, tables: Iterable[str]) -> None:
        self.versions.bump(tables)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        return self._bytes


# --- the Redis backend --------------------------------------------------------------------

# Entries are ``<deps JSON>\n<value JSON>`` under ``<prefix>c:<key>`` with an expiry; the
# table versions are one hash (``<prefix>versions``), the epoch one counter
# (``<prefix>epoch``), and ``<prefix>inc`` names this incarnation of the data (a Redis that
# restarted empty has a new one). Each call is one script: one round trip.

_LOOKUP = r"""
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local nl = string.find(v, '\n', 1, true)
if not nl then return {1} end
local ok, deps = pcall(cjson.decode, string.sub(v, 1, nl - 1))
if not ok or type(deps) ~= 'table' then return {1} end
local all = tonumber(redis.call('HGET', KEYS[2], '*') or '0')
for t, ver in pairs(deps) do
  local cur
  if t == '*' then
    cur = tonumber(redis.call('GET', KEYS[3]) or '0')
  else
    cur = math.max(tonumber(redis.call('HGET', KEYS[2], t) or '0'), all)
  end
  if cur ~= ver then return {1, string.sub(v, nl + 1)} end
end
return {2, string.sub(v, nl + 1), string.sub(v, 1, nl - 1)}
"""

_STORE = r"""
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
local since = tonumber(ARGV[2])
local epoch = tonumber(redis.call('GET', KEYS[3]) or '0')
local all = tonumber(redis.call('HGET', KEYS[2], '*') or '0')
local deps = {}
local n = 0
for i = 5, #ARGV do
  local t = ARGV[i]
  local cur
  if t == '*' then cur = epoch else
    cur = math.max(tonumber(redis.call('HGET', KEYS[2], t) or '0'), all)
  end
  if cur > since then return 0 end
  deps[t] = cur
  n = n + 1
end
local head = '{}'
if n > 0 then head = cjson.encode(deps) end
redis.call('SET', KEYS[1], head .. '\n' .. ARGV[4], 'PX', ARGV[3])
return 1
"""

_BUMP = r"""
local e = redis.call('INCR', KEYS[2])
for i = 1, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], e) end
return e
"""

_EPOCH = r"""
local inc = redis.call('GET', KEYS[1])
if not inc then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
  inc = redis.call('GET', KEYS[1])
end
return {inc, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""


_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Breaker:
    """A circuit breaker for a backend that can hang: after ``failures`` failures in a
    row it opens, and calls are refused at once for ``backoff`` seconds (doubling up to
    ``max_backoff`` while it keeps failing); then one call probes it (half-open), and
    its success closes it. A frozen Redis (SIGSTOP) then costs a cached call nothing
    instead of a socket timeout per Redis command."""

    def __init__(
        self, *, failures: int = 3, backoff: float = 1.0, max_backoff: float = 30.0
    ) -> None:
        self.threshold = failures
        self.base = backoff
        self.max_backoff = max_backoff
        self._lock = threading.Lock()
        self._failures = 0
        self._backoff = backoff
        self._open_until = 0.0
        self._opened_at = 0.0
        self._probing = False
        #: Times the circuit opened, and calls refused while it was open.
        self.trips = 0
        self.refused = 0

    @property
    def is_open(self) -> bool:
        return self._open_until > 0.0

    def allow_peek(self) -> bool:
        """Whether :meth:`allow` would let a call through now, without taking the probe."""
        return self._open_until == 0.0 or (
            time.monotonic() >= self._open_until and not self._probing
        )

    def allow(self) -> bool:
        """Whether a call may go to the backend now (False: refuse it at once)."""
        if self._open_until == 0.0:
            return True
        with self._lock:
            if self._open_until == 0.0:
                return True
            if time.monotonic() < self._open_until or self._probing:
                self.refused += 1
                return False
            self._probing = True  # one caller probes; the others are refused
            return True

    def success(self) -> None:
        if self._open_until == 0.0 and self._failures == 0:
            return
        with self._lock:
            was_open = self._open_until > 0.0
            self._failures = 0
            self._backoff = self.base
            self._open_until = 0.0
            self._probing = False
            down = time.monotonic() - self._opened_at
        if was_open:
            log_limited(
                "cache.breaker.closed",
                "querywatch's result cache: Redis answers again after %.0f s; entries from"
                " before the outage are dropped.",
                down,
            )

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            probing, self._probing = self._probing, False
            if not probing and self._failures < self.threshold:
                return
            now = time.monotonic()
            if self._open_until == 0.0:
                self.trips += 1
                self._opened_at = now
                backoff = self._backoff
            elif probing:  # the probe failed: wait longer
                self._backoff = min(self.max_backoff, self._backoff * 2)
                backoff = self._backoff
            else:  # a call begun before it opened: the open period stands
                return
            self._open_until = now + backoff
        log_limited(
            "cache.breaker.open",
            "querywatch's result cache: Redis failed %d times in a row; it is bypassed"
            " (calls compute directly) and probed again after %.0f s.",
            self.threshold,
            backoff,
        )


class RedisBackend:
    """Entries and table versions in Redis, shared by every process and host: a commit
    in one invalidates the entries of all.

    Fails open: a Redis error reaches the cache, which computes directly and keeps
    nothing. After a few failures in a row (a Redis that hangs costs a socket timeout a
    command) the :class:`Breaker` opens: the cache is bypassed without asking Redis
    until a probe succeeds. Versions are not trusted across an outage: the first call
    that succeeds after one bumps every table (so a write committed meanwhile, whose
    invalidation could not be sent, leaves nothing stale), and a Redis that came back
    empty (a new incarnation) refuses entries computed before it.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "qw:",
        timeout: float = 0.25,
        breaker: Breaker | None = None,
    ) -> None:
        import redis

        self.breaker = breaker or Breaker()
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.prefix = prefix
        self._versions = prefix + "versions"
        self._epoch = prefix + "epoch"
        self._inc = prefix + "inc"
        self._lookup = self.client.register_script(_LOOKUP)
        self._store = self.client.register_script(_STORE)
        self._bump = self.client.register_script(_BUMP)
        self._epoch_script = self.client.register_script(_EPOCH)
        self._release = self.client.register_script(_RELEASE)
        self._outage = False
        self._last_inc: bytes | None = None

    def _key(self, key: str) -> str:
        return f"{self.prefix}c:{key}"

    def available(self) -> bool:
        """False while the breaker refuses calls (counted as refused): the cache then
        computes directly, without a round trip."""
        if self.breaker.allow_peek():
            return True
        self.breaker.refused += 1
        return False

    def _run(self, script: t.Any, keys: list[str], args: list[t.Any]) -> t.Any:
        return self._call(lambda: script(keys=keys, args=args))

    def _call(self, call: Callable[[], t.Any]) -> t.Any:
        if not self.breaker.allow():
            self._outage = True
            raise BackendUnavailableError("Redis is bypassed after repeated failures")
        try:
            if self._outage:
                # Writes may have committed unseen: nothing cached before is trusted.
                self._bump(keys=[self._versions, self._epoch], args=[ALL_TABLES])
                self._outage = False
            out = call()
        except Exception:
            self._outage = True
            self.breaker.failure()
            raise
        self.breaker.success()
        return out

    def epoch(self) -> t.Any:
        inc, epoch = self._run(self._epoch_script, [self._inc, self._epoch], [uuid.uuid4().hex])
        if self._last_inc is not None and inc != self._last_inc:
            self._outage = True  # Redis came back empty: bump everything next call
        self._last_inc = inc
        return (inc, int(epoch))

    def lookup(self, key: str) -> tuple[str, bytes | None, t.Any]:
        res = self._run(self._lookup, [self._key(key), self._versions, self._epoch], [])
        if res[0] == 0:
            return "miss", None, None
        if res[0] == 1:
            return "stale", res[1] if len(res) > 1 else None, None
        return "hit", res[1], json.loads(res[2]).keys()

    def store(
        self, key: str, data: bytes, tables: frozenset[str], since: t.Any, ttl: float
    ) -> bool:
        inc, epoch = since
        args = [inc, epoch, max(1, int(ttl * 1000)), data, *sorted(tables)]
        keys = [self._key(key), self._versions, self._epoch, self._inc]
        return bool(self._run(self._store, keys, args))

    def bump(self, tables: Iterable[str]) -> None:
        self._run(self._bump, [self._versions, self._epoch], list(tables))

    def delete(self, key: str) -> bool:
        return bool(self._call(lambda: self.client.delete(self._key(key))))

    # --- one computation per key across processes ---

    def acquire(self, key: str, seconds: float) -> str | None:
        """A token if this process may compute ``key`` now (a lock that expires after
        ``seconds``, so a crashed holder blocks no one for long); None if another holds
        it."""
        token = uuid.uuid4().hex
        ok = self._run_plain(
            lambda: self.client.set(
                f"{self.prefix}l:{key}", token, nx=True, px=max(1, int(seconds * 1000))
            )
        )
        return token if ok else None

    def locked(self, key: str) -> bool:
        return bool(self._run_plain(lambda: self.client.exists(f"{self.prefix}l:{key}")))

    def release(self, key: str, token: str) -> None:
        self._run(self._release, [f"{self.prefix}l:{key}"], [token])

    def _run_plain(self, call: Callable[[], t.Any]) -> t.Any:
        return self._call(call)


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
                try:
                    status, data, deps = self.backend.lookup(key)
                    if status == "hit" and data is not None:
                        value = loads(data, secret=self.secret)
                        _note_read(deps)
                        st.coalesced += 1
                        return value
                except Exception as e:
                    st.errors += 1
                    record_internal_error("cache.coalesce", e)
            # The leader kept nothing, failed or is stuck: compute here.
            return self._lead(_Job(key, fn, ttl, tables, name, st, pickle, None, invalidate))
        try:
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

    # --- decorating ---

    def cached(
        self,
        ttl: float | None = None,
        *,
        key: Callable[..., str] | None = None,
        tables: Iterable[str] = (),
        name: str | None = None,
        pickle: bool = False,
        stale_while_revalidate: bool = False,
        invalidate: bool = True,
    ) -> Callable[[Callable[..., t.Any]], Callable[..., t.Any]]:
        """Cache a function's result per arguments in this cache (see
        :meth:`querywatch.QueryWatch.cached`, which uses the current app's)."""
        return cached_with(
            lambda: self,
            ttl,
            key=key,
            tables=tables,
            name=name,
            pickle=pickle,
            stale_while_revalidate=stale_while_revalidate,
            invalidate=invalidate,
        )


def cached_with(
    get_cache: Callable[[], Cache | None],
    ttl: float | None = None,
    *,
    key: Callable[..., str] | None = None,
    tables: Iterable[str] = (),
    name: str | None = None,
    pickle: bool = False,
    stale_while_revalidate: bool = False,
    invalidate: bool = True,
) -> Callable[[Callable[..., t.Any]], Callable[..., t.Any]]:
    """The decorator behind :meth:`Cache.cached` and ``qw.cached``: ``get_cache()`` is
    asked for the cache at each call; None (querywatch off) runs the function uncached."""
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
