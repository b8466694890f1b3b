"""Notifiers: one small interface, ``send(target, message)``, raising on failure.

- ``webhook``: the message as JSON, with ``Idempotency-Key`` and, when the target has a
  ``secret``, ``X-Querywatch-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
  "<t>.<body>">`` (the receiver recomputes it and rejects old timestamps);
- ``slack``: an incoming webhook with a text fallback and blocks (title, summary,
  hypothesis, owner);
- ``email``: SMTP, with STARTTLS or TLS and authentication when configured; the
  ``Message-ID`` derives from the idempotency key, so a resent mail is the same mail;
- ``pagerduty``: Events API v2, ``trigger``/``acknowledge``/``resolve`` with the
  incident's ``dedup_key``;
- ``log``: the ``querywatch.incidents`` logger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import typing as t
import urllib.error
import urllib.request

from ..exceptions import DeliveryError

if t.TYPE_CHECKING:
    from .policy import Target

__all__ = ["DeliveryError", "send", "signature", "verify_signature"]

logger = logging.getLogger("querywatch.incidents")
USER_AGENT = "querywatch-incidents/1"


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The webhook signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance: float = 300
) -> bool:
    """Whether ``header`` (``X-Querywatch-Signature``) signs ``body`` with ``secret`` and
    was made within ``tolerance`` seconds of ``now``: what a webhook receiver checks."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).rsplit("v1=", 1)[1]
    return hmac.compare_digest(parts.get("v1", ""), expected)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("User-Agent", USER_AGENT)
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (configured URL)
            resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:200].decode("utf-8", "replace")
        raise DeliveryError(f"{url} answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DeliveryError(f"{url} is unreachable: {reason}") from None


def _subject(m: dict[str, t.Any]) -> str:
    inc = m["incident"]
    verb = {
        "trigger": "Triggered",
        "escalate": "Escalated",
        "acknowledge": "Acknowledged",
        "resolve": "Resolved",
        "update": "Update",
        "reminder": "Reminder",
    }.get(m["action"], m["action"])
    return f"[querywatch {inc['severity']}] {verb} #{inc['id']}: {inc['title']}"


def send(target: Target, message: dict[str, t.Any]) -> None:
    """Deliver ``message`` (an outbox message) to ``target``; raises
    :class:`DeliveryError`."""
    opts = target.options
    timeout = float(opts.get("timeout", 10))
    key = message["idempotency_key"]
    if target.kind == "log":
        logger.warning("%s\n%s", _subject(message), message["text"])
        return
    if target.kind == "webhook":
        body = json.dumps(message, sort_keys=True).encode()
        headers = {"Idempotency-Key": key, "X-Querywatch-Action": message["action"]}
        if opts.get("secret"):
            headers["X-Querywatch-Signature"] = signature(opts["secret"], body, int(time.time()))
        _post(opts["url"], body, headers, timeout)
        return
    if target.kind == "slack":
        inc = message["incident"]
        fields = [f"*Severity* {inc['severity']}", f"*Status* {inc['status']}"]
        if inc.get("owner"):
            fields.append(f"*Owner* {inc['owner']}")
        blocks: list[dict[str, t.Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _subject(message)[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": message["text"][:2900]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(fields)}]},
        ]
        if inc.get("hypothesis"):
            blocks.insert(
                2,
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"*Evidence* {inc['hypothesis']}"[:2900]},
                },
            )
        body = json.dumps({"text": _subject(message), "blocks": blocks}).encode()
        _post(opts["url"], body, {}, timeout)
        return
    if target.kind == "pagerduty":
        inc = message["incident"]
        action = {"acknowledge": "acknowledge", "resolve": "resolve"}.get(
            message["action"], "trigger"
        )
        event: dict[str, t.Any] = {
            "routing_key": opts["routing_key"],
            "event_action": action,
            "dedup_key": f"querywatch-{inc['id']}",
        }
        if action == "trigger":
            event["payload"] = {
                "summary": _subject(message)[:1024],
                "source": "querywatch",
                "severity": {"SEV1": "critical", "SEV2": "error"}.get(inc["severity"], "warning"),
                "custom_details": {
                    "text": message["text"],
                    "hypothesis": inc.get("hypothesis"),
                    "idempotency_key": key,
                },
            }
        _post(opts["url"], json.dumps(event).encode(), {}, timeout)
        return
    if target.kind == "email":
        _send_mail(opts, message, timeout)
        return
    raise DeliveryError(f"Unknown target type {target.kind!r}.")


def _send_mail(opts: dict[str, t.Any], message: dict[str, t.Any], timeout: float) -> None:
    import smtplib
    import ssl
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["Subject"] = _subject(message)
    mail["From"] = opts.get("from", "querywatch@localhost")
    mail["To"] = ", ".join(opts["to"])
    mail["Message-ID"] = f"<{message['idempotency_key']}@querywatch>"
    mail["X-Querywatch-Idempotency-Key"] = message["idempotency_key"]
    inc = message["incident"]
    body = message["text"]
    if inc.get("hypothesis"):
        body += f"\n\nEvidence: {inc['hypothesis']}"
    mail.set_content(body)
    host, port = opts["host"], int(opts.get("port", 25))
    try:
        # Certificates are verified, against the system's CAs or ``cafile`` (a private CA).
        context = ssl.create_default_context(cafile=opts.get("cafile"))
        if opts.get("ssl"):
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout)
        with smtp:
            if opts.get("starttls"):
                smtp.starttls(context=context)
            if opts.get("username"):
                smtp.login(opts["username"], opts["password"])
            smtp.send_message(mail)
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryError(f"SMTP {host}:{port}: {type(e).__name__}: {e}") from None
