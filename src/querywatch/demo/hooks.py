"""The demo's on-call inboxes: a webhook receiver on 127.0.0.1 that takes querywatch's
signed notifications, one path per team (``/backend``, ``/devops``), as a chat or paging
service would."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
import typing as t

from ..incidents.notifiers import verify_signature

__all__ = ["Inbox", "Received"]

#: Messages kept at most (the demo's receive a handful).
KEEP = 1000


@dataclasses.dataclass(frozen=True)
class Received:
    at: float
    team: str
    message: dict[str, t.Any]

    @property
    def action(self) -> str:
        return str(self.message.get("action"))


class Inbox:
    """Receives webhooks at ``{url}/<team>``; rejects a missing or wrong signature (401)."""

    def __init__(self, secret: str, on_message: t.Callable[[Received], None] | None = None) -> None:
        self.secret = secret
        self.on_message = on_message
        self.messages: list[Received] = []
        self.rejected = 0
        self.lock = threading.Lock()
        inbox = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                team = self.path.strip("/") or "default"
                sig = self.headers.get("X-Querywatch-Signature", "")
                if not verify_signature(inbox.secret, body, sig):
                    with inbox.lock:
                        inbox.rejected += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                try:
                    message = json.loads(body)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                got = Received(time.time(), team, message)
                with inbox.lock:
                    if len(inbox.messages) < KEEP:
                        inbox.messages.append(got)
                self.send_response(200)
                self.end_headers()
                if inbox.on_message is not None:
                    inbox.on_message(got)

            def log_message(self, *args: t.Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="demo-inbox", daemon=True
        )
        self.thread.start()

    def received(self, team: str | None = None, action: str | None = None) -> list[Received]:
        with self.lock:
            return [
                m
                for m in self.messages
                if (team is None or m.team == team) and (action is None or m.action == action)
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
