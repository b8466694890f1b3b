"""A background worker thread: ``run_once`` every ``interval`` seconds, off the request
path, started on first use, started again in a forked child, never killed by an error
(counted and logged instead)."""

from __future__ import annotations

import abc
import os
import threading
import typing as t

from ._failopen import log_limited
from ._failopen import record_internal_error
from ._failopen import unavailable

__all__ = ["Periodic"]

#: This process's id, refreshed in a forked child: :meth:`Periodic.ensure_started` runs
#: on every request, and asks the operating system nothing.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Periodic(abc.ABC):
    """Subclasses define :meth:`run_once`; ``thread_name`` and ``where`` (how failures
    are counted) name them."""

    thread_name = "querywatch-worker"
    where = "worker"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @abc.abstractmethod
    def run_once(self) -> t.Any:
        """One round of work."""

    def finished(self) -> bool:
        """True when the worker has nothing more to do ever (the thread ends)."""
        return False

    def ensure_started(self) -> None:
        if self._thread is not None and self._pid == _pid:
            return
        self._start()

    def _start(self) -> None:
        with self._lock:
            thread = self._thread
            if thread is not None and self._pid == _pid and thread.is_alive():
                return
            self._pid = _pid
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread does not exist here."""
        self._thread = None
        self._lock = threading.Lock()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, waiting up to ``timeout`` seconds for its round to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.finished():
                return
            try:
                self.run_once()
            except Exception as e:  # keep the thread alive whatever happens
                record_internal_error(self.where, e, log=not unavailable(e))
                log_limited(
                    self.where,
                    "querywatch's %s failed (%s: %s); it carries on, and the application is"
                    " not affected.",
                    self.thread_name,
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
