"""``record_finished`` reaches exactly the receivers blinker would call, though an app
keeps its list of receivers between requests instead of asking blinker on every one."""

from __future__ import annotations

import gc
import typing as t

from querywatch.signals import record_finished


def _get(app: t.Any, n: int = 1) -> None:
    client = app.test_client()
    for _ in range(n):
        assert client.get("/api/products/3").status_code == 200


def _kept(app: t.Any) -> int:
    return len(app.extensions["querywatch"].receivers.current())


def test_a_receiver_connected_or_disconnected_between_requests_is_heard_at_once(
    app: t.Any, tmp_path: t.Any
) -> None:
    from querywatch.demo import shop

    _get(app)  # the app's list is built with what is connected now
    before = _kept(app)
    heard: list[str] = []

    def mine(sender: t.Any, record: t.Any, findings: t.Any) -> None:
        heard.append(record.name)

    def other_apps(sender: t.Any, record: t.Any, findings: t.Any) -> None:
        heard.append("other app")

    other = shop.create_app(f"sqlite:///{tmp_path}/other.db", instance_path=str(tmp_path / "other"))
    record_finished.connect(mine, sender=app)
    record_finished.connect(other_apps, sender=other)
    _get(app, 2)
    assert heard == ["GET /api/products/<int:product_id>"] * 2
    assert _kept(app) == before + 1
    record_finished.disconnect(mine)
    _get(app)
    assert heard == ["GET /api/products/<int:product_id>"] * 2
    assert _kept(app) == before
    record_finished.disconnect(other_apps)


def test_a_weak_receiver_that_died_is_dropped_and_the_others_still_hear(app: t.Any) -> None:
    """The app's list holds receivers weakly, as blinker does: it keeps none alive."""
    heard: list[str] = []

    class Listener:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def on_record(self, sender: t.Any, record: t.Any, findings: t.Any) -> None:
            heard.append(self.tag)

    def weak(sender: t.Any, record: t.Any, findings: t.Any) -> None:
        heard.append("function")

    listener = Listener("method")
    kept = Listener("kept")
    record_finished.connect(weak, sender=app)  # weakly, blinker's default
    record_finished.connect(listener.on_record, sender=app)  # a weak method
    record_finished.connect(kept.on_record, sender=app, weak=False)
    _get(app)
    assert sorted(heard) == ["function", "kept", "method"]
    entries = _kept(app)
    del weak, listener
    gc.collect()
    heard.clear()
    _get(app, 2)
    assert heard == ["kept", "kept"]
    assert _kept(app) == entries - 2
    record_finished.disconnect(kept.on_record)


def test_a_receiver_that_cannot_be_weakly_referenced_is_still_called(app: t.Any) -> None:
    heard: list[int] = []

    class Counter:
        __slots__ = ()  # no __weakref__: blinker must hold it strongly

        def __call__(self, sender: t.Any, record: t.Any, findings: t.Any) -> None:
            heard.append(record.query_count)

    counter = Counter()
    record_finished.connect(counter, sender=app, weak=False)
    _get(app, 2)
    assert heard == [1, 1]
    record_finished.disconnect(counter)
    _get(app)
    assert heard == [1, 1]


def test_a_muted_signal_calls_no_receiver(app: t.Any) -> None:
    """blinker's ``muted()`` holds for querywatch's sends too (the app's metrics, which
    listen on the same signal, are muted with it)."""
    heard: list[str] = []

    def receiver(sender: t.Any, record: t.Any, findings: t.Any) -> None:
        heard.append(record.name)

    record_finished.connect(receiver, sender=app)
    with record_finished.muted():
        _get(app)
    assert heard == []
    _get(app)
    assert len(heard) == 1
    record_finished.disconnect(receiver)
