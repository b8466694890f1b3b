"""Fail open: querywatch's own errors never reach the user's request.

Modelled on sentry-sdk's ``capture_internal_exceptions()``: a context manager that
swallows the exception, counts it by where it happened, and logs at a limited rate.
Tests flip :data:`RAISE_INTERNAL_ERRORS` so that our own bugs fail loudly there.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

if t.TYPE_CHECKING:
    from types import TracebackType

logger = logging.getLogger("querywatch")

#: Set by the test-suite to re-raise instead of swallowing.
RAISE_INTERNAL_ERRORS = False

#: Minimum seconds between two log lines for the same place.
LOG_INTERVAL = 60.0

_lock = threading.Lock()
_counts: dict[str, int] = {}
_last_logged: dict[str, float] = {}
#: Keys :func:`log_limited` remembers at most.
_LAST_LOGGED_CAP = 4096


def internal_error_counts() -> dict[str, int]:
    """A copy of the count of swallowed internal errors, by place."""
    with _lock:
        return dict(_counts)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says a database, a file or a server is not there (down,
    unreachable, read-only, full), rather than that querywatch has a bug: such an error
    is worth one line with its cause, not a traceback."""
    from sqlalchemy.exc import DisconnectionError
    from sqlalchemy.exc import InterfaceError
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from .exceptions import StoreError

    kinds = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, StoreError)
    return isinstance(exc, (*kinds, OSError))


def record_internal_error(where: str, exc: BaseException, *, log: bool = True) -> None:
    """Count ``exc`` under ``where`` and log it with its traceback, at most once per
    :data:`LOG_INTERVAL` (``log=False``: count it only; the caller says it in a line)."""
    now = time.monotonic()
    with _lock:
        _counts[where] = _counts.get(where, 0) + 1
        count = _counts[where]
        if not log:
            return
        last = _last_logged.get(where)
        if last is not None and now - last < LOG_INTERVAL:
            return
        _last_logged[where] = now
    logger.warning(
        "Internal error in querywatch at %s (%d so far); the application is not affected.",
        where,
        count,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def swallow(where: str, exc: Exception) -> None:
    """Count and log ``exc`` (a bug of ours) and carry on; re-raise under the test-suite.

    The hot path calls this from a plain ``try``/``except``, which costs nothing until
    something raises; elsewhere :func:`fail_open` wraps a block."""
    record_internal_error(where, exc)
    if RAISE_INTERNAL_ERRORS:
        raise exc


class _FailOpen:
    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        record_internal_error(self.where, exc)
        return not RAISE_INTERNAL_ERRORS


def fail_open(where: str) -> _FailOpen:
    """``with fail_open("capture.after_cursor_execute"): ...`` swallows, counts, logs."""
    return _FailOpen(where)


def log_limited(where: str, message: str, *args: object) -> bool:
    """Log ``message`` at WARNING at most once per :data:`LOG_INTERVAL` for ``where``.
    Returns whether it was logged."""
    now = time.monotonic()
    with _lock:
        last = _last_logged.get(where)
        if last is not None and now - last < LOG_INTERVAL:
            return False
        _last_logged.pop(where, None)
        _last_logged[where] = now
        if len(_last_logged) > _LAST_LOGGED_CAP:
            # Keys name shapes and URLs, so they can be many: those older than the
            # interval suppress nothing any more, and the oldest go first.
            for key in [k for k, at in _last_logged.items() if now - at >= LOG_INTERVAL]:
                del _last_logged[key]
            while len(_last_logged) > _LAST_LOGGED_CAP:
                del _last_logged[next(iter(_last_logged))]
    logger.warning(message, *args)
    return True
