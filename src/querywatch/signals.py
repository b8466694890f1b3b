"""querywatch's signals, with blinker (as Flask's own): what a finished unit of work
announces to whoever listens.

.. code-block:: python

    from querywatch.signals import record_finished

    @record_finished.connect
    def on_record(app, record, findings):
        ...

A receiver runs in the request's thread, after the response is built, and is handed
read-only views: ``record`` is a :class:`querywatch.RecordView` and ``findings`` a tuple
of frozen :class:`querywatch.Finding`. What it raises is swallowed and counted (querywatch
fails open), and does not keep the record from the other receivers.
"""

from __future__ import annotations

import itertools
import types
import typing as t
import weakref

from blinker import Namespace

__all__ = ["record_finished"]

_signals = Namespace()

#: Sent by an app running querywatch (the Flask app is the sender) for every unit of work
#: it finishes, with ``record`` (a :class:`querywatch.RecordView`) and ``findings`` (a
#: tuple of :class:`querywatch.Finding`).
record_finished = _signals.signal("querywatch.record-finished")

_F = t.TypeVar("_F", bound=t.Callable[..., t.Any])

#: The attribute that marks one of querywatch's own receivers (:func:`takes_live_record`).
LIVE_RECORD = "_querywatch_live_record"


def takes_live_record(fn: _F) -> _F:
    """Mark one of querywatch's own receivers (the app's metrics, the CI gate) to be
    handed querywatch's working record and findings list rather than the views: they read
    its internals on the hot path, and building views for them would cost every request."""
    setattr(fn, LIVE_RECORD, True)
    return fn


#: Bumped each time a receiver connects to or disconnects from :data:`record_finished`.
_generation = 0


def _changed(signal: t.Any, **kwargs: t.Any) -> None:
    global _generation
    _generation += 1


record_finished.receiver_connected.connect(_changed, sender=record_finished)
record_finished.receiver_disconnected.connect(_changed, sender=record_finished)

#: One receiver as :class:`Receivers` keeps it: a callable that returns the receiver, or
#: for a method its object (``None`` once it is gone); the method's function, or ``None``;
#: and whether it takes the live record.
Entry = tuple[t.Callable[[], t.Any], t.Callable[..., t.Any] | None, bool]


class Receivers:
    """The receivers of :data:`record_finished` for one sender, as blinker would call
    them, kept between sends.

    Blinker looks them up on every send (an id of the sender, a set union, a generator, a
    weak reference and an ``inspect.ismethod`` a receiver): on a one-query request that
    costs more than the rest of the dispatch. The list is built with blinker's own
    :meth:`~blinker.Signal.receivers_for` and built again after any receiver connects or
    disconnects, or when one held weakly has died. It holds each receiver weakly (blinker
    holds the strong references of those connected with ``weak=False``), so caching keeps
    no receiver alive that blinker would let go. A method is kept as a weak reference to
    its object and its function (:class:`weakref.WeakMethod` would cost a Python call a
    send): the sender binds them.
    """

    __slots__ = ("_sender", "_cache")

    def __init__(self, sender: weakref.ref[t.Any]) -> None:
        self._sender = sender
        self._cache: tuple[int, tuple[Entry, ...]] = (-1, ())

    def current(self) -> tuple[Entry, ...]:
        """The entries as of the last connect or disconnect."""
        generation, entries = self._cache
        if generation != _generation:
            generation = _generation
            sender = self._sender()
            entries = () if sender is None else self._build(sender)
            self._cache = (generation, entries)
        return entries

    def stale(self) -> None:
        """A receiver held weakly has died: build the list again on the next send."""
        self._cache = (-1, ())

    @staticmethod
    def _build(sender: t.Any) -> tuple[Entry, ...]:
        entries: list[Entry] = []
        for receiver in record_finished.receivers_for(sender):
            live = bool(getattr(receiver, LIVE_RECORD, False))
            if isinstance(receiver, types.MethodType):
                target, func = receiver.__self__, receiver.__func__
            else:
                target, func = receiver, None
            try:
                ref: t.Callable[[], t.Any] = weakref.ref(target)
            except TypeError:
                # Not weakly referenceable, so blinker holds it strongly: so may we.
                ref = itertools.repeat(target).__next__
            entries.append((ref, func, live))
        return tuple(entries)
