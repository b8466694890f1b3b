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

import typing as t

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
