"""querywatch's signals, with blinker (as Flask's own): what a finished unit of work
announces to whoever listens.

.. code-block:: python

    from querywatch.signals import record_finished

    @record_finished.connect
    def on_record(app, record, findings):
        ...

A receiver runs in the request's thread, after the response is built; what it raises is
swallowed and counted (querywatch fails open).
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["record_finished"]

_signals = Namespace()

#: Sent by an app running querywatch (the Flask app is the sender) for every unit of work
#: it finishes, with ``record`` (:class:`querywatch.capture.Record`) and ``findings``
#: (a list of :class:`querywatch.detectors.Finding`).
record_finished = _signals.signal("querywatch.record-finished")
