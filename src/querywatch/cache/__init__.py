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

The package: :mod:`._core` (:class:`Cache` and the ``cached`` decorator),
:mod:`._backends` (memory and Redis) and :mod:`._codec` (how values are stored).
"""

from __future__ import annotations

from ._backends import Breaker
from ._backends import LocalVersions
from ._backends import MemoryBackend
from ._backends import RedisBackend
from ._codec import dumps
from ._codec import loads
from ._core import Cache
from ._core import CacheOptions
from ._core import FunctionStats
from ._core import cached_with
from ._core import make_key

__all__ = [
    "Breaker",
    "Cache",
    "CacheOptions",
    "FunctionStats",
    "LocalVersions",
    "MemoryBackend",
    "RedisBackend",
    "cached_with",
    "dumps",
    "loads",
    "make_key",
]
