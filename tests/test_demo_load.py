"""The demo's clients retry as urllib3's ``Retry(total=3, backoff_factor=0.3,
status_forcelist=(500, 502, 503, 504))`` does: failed GETs again, up to three times, a
503's ``Retry-After`` waited, never a POST. Against a real local HTTP server."""

from __future__ import annotations

import http.server
import io
import threading
import time
import typing as t

import pytest

from querywatch.demo.load import Load


class _Script(http.server.BaseHTTPRequestHandler):
    """Answers by path: ``/fails/N`` fails N times then succeeds, ``/shed`` is shed once
    with ``Retry-After: 1``, anything else always fails. Each try is recorded."""

    tries: t.ClassVar[list[tuple[str, str, float]]] = []

    def _answer(self) -> None:
        self.tries.append((self.command, self.path, time.monotonic()))
        seen = sum(1 for _, p, _ in self.tries if p == self.path)
        status, headers = 500, {}
        if self.path.startswith("/fails/") and seen > int(self.path.rsplit("/", 1)[1]):
            status = 200
        elif self.path == "/shed":
            status, headers = (503, {"Retry-After": "1"}) if seen == 1 else (200, {})
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: t.Any) -> None:
        pass


@pytest.fixture
def server() -> t.Iterator[int]:
    _Script.tries = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def _load(port: int, retries: int = 3) -> Load:
    return Load(
        port, rate=1, customers=10, products=10, timeout=5, retries=retries, out=io.StringIO()
    )


def test_a_failed_get_is_retried_until_it_succeeds(server: int) -> None:
    assert _load(server)._tries("GET", "/fails/2", None, "customer1") == 200
    assert [p for _, p, _ in _Script.tries] == ["/fails/2"] * 3


def test_a_get_that_keeps_failing_is_tried_four_times_and_its_last_answer_counts(
    server: int,
) -> None:
    assert _load(server)._tries("GET", "/always", None, "customer1") == 500
    assert len(_Script.tries) == 4
    # urllib3's backoff: the first retry at once, the next ones after 0.6 s and 1.2 s.
    gaps = [b[2] - a[2] for a, b in zip(_Script.tries, _Script.tries[1:], strict=False)]
    assert gaps[1] >= 0.6
    assert gaps[2] >= 1.2


def test_a_post_is_never_retried_and_no_retries_means_one_try(server: int) -> None:
    assert _load(server)._tries("POST", "/always", {"x": 1}, "customer1") == 500
    assert _load(server, retries=0)._tries("GET", "/always", None, "customer1") == 500
    assert [m for m, _, _ in _Script.tries] == ["POST", "GET"]


def test_a_shed_get_waits_its_retry_after_before_it_tries_again(server: int) -> None:
    assert _load(server)._tries("GET", "/shed", None, "customer1") == 200
    (_, _, first), (_, _, second) = _Script.tries
    assert second - first >= 1.0


def test_retries_out_of_range_are_refused_with_the_option_named(tmp_path: t.Any) -> None:
    from click.testing import CliRunner

    from querywatch.cli import cli

    result = CliRunner().invoke(cli, ["demo", "--retries", "-1", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--retries" in result.output


class _Settling(http.server.BaseHTTPRequestHandler):
    """Fails its first ``failing`` requests (a shop whose first seconds are slower than
    it is: the pool's connections, a database server still busy), then answers each."""

    failing: t.ClassVar[int] = 0
    seen: t.ClassVar[int] = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            type(self).seen += 1
            status = 500 if self.seen <= self.failing else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: t.Any) -> None:
        pass


@pytest.mark.parametrize("failing", [30, 10**9])
def test_the_replay_clock_waits_for_a_window_that_met_the_objectives(failing: int) -> None:
    """After the warm-up the replay's clock waits for a window of the load in which the
    shop met its objectives; one that never does is said after the patience, and the
    replay goes on (its calm page says why)."""
    from querywatch.demo.traffic import Traffic

    _Settling.failing, _Settling.seen = failing, 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Settling)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    traffic = Traffic(
        srv.server_address[1], {"customers": 10, "products": 10}, 20, timeout=5, retries=0
    )
    try:
        patience = 60.0 if failing < 10**9 else 3.0
        _, settled = traffic.settle(20, lambda route: 1000.0, 1.0, patience)
        assert settled is (failing < 10**9)
        if settled:
            # The failures came first, and the window that settled it held none.
            assert _Settling.seen > failing
            assert any(s.failed for s in traffic.samples)
    finally:
        traffic.stop()
        srv.shutdown()
        srv.server_close()
