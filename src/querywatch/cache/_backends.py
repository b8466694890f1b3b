"""Where entries and table versions live: in the process (:class:`MemoryBackend`, LRU,
bounded) or in Redis (:class:`RedisBackend`, shared, behind a circuit breaker)."""

from __future__ import annotations

import collections
import json
import json.scanner
import threading
import time
import typing as t
import uuid

from .._failopen import log_limited
from .._sql import ALL_TABLES
from ..exceptions import BackendUnavailableError

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable


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
