"""Notifiers: a registry of classes, one a kind of target, each validating its options at
start-up and delivering a message, raising :class:`DeliveryError` on failure.

- ``webhook``: the message as JSON, with ``Idempotency-Key`` and, when the target has a
  ``secret``, ``X-Querywatch-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
  "<t>.<body>">`` (the receiver recomputes it and rejects old timestamps);
- ``slack``: an incoming webhook with a text fallback and blocks (title, summary,
  hypothesis, owner);
- ``email``: SMTP, with STARTTLS or TLS and authentication when configured; the
  ``Message-ID`` derives from the idempotency key, so a resent mail is the same mail;
- ``pagerduty``: Events API v2, ``trigger``/``acknowledge``/``resolve`` with the
  incident's ``dedup_key``;
- ``opsgenie``: the Alert API v2 with an integration's API key: an alert created with
  the incident's ``alias`` (Opsgenie keeps one open alert an alias, so a message sent
  again adds to it), acknowledged and closed by that alias;
- ``teams``: a Microsoft Teams workflow ("When a Teams webhook request is received"),
  an Adaptive Card with the summary, the facts and the evidence;
- ``apprise``: any of the services Apprise reaches, by its URLs (``pip install
  'querywatch[apprise]'``): the long tail (Discord, Mattermost, Telegram, ntfy, ...);
- ``log``: the ``querywatch.incidents`` logger.

A new kind is a :class:`Notifier` subclass with a ``kind``, its options and ``deliver``,
added with :func:`register`; the escalation policy accepts it from then on.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import json
import logging
import time
import typing as t
import urllib.error
import urllib.request

from ..exceptions import DeliveryError
from ..exceptions import PolicyError

if t.TYPE_CHECKING:
    from .policy import Target

__all__ = [
    "NOTIFIERS",
    "DeliveryError",
    "Notifier",
    "register",
    "send",
    "signature",
    "verify_signature",
]

logger = logging.getLogger("querywatch.incidents")
USER_AGENT = "querywatch-incidents/1"
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
#: Opsgenie's API (``https://api.eu.opsgenie.com`` for an account in the EU).
OPSGENIE_URL = "https://api.opsgenie.com"

_N = t.TypeVar("_N", bound="type[Notifier]")

#: The notifier class of each kind of target, by kind.
NOTIFIERS: dict[str, type[Notifier]] = {}


def register(cls: _N) -> _N:
    """Add a notifier class under its ``kind`` (a class decorator); a kind is taken once."""
    kind = cls.kind
    if kind in NOTIFIERS and NOTIFIERS[kind] is not cls:
        msg = f"A notifier of kind {kind!r} is registered already ({NOTIFIERS[kind]!r})."
        raise ValueError(msg)
    NOTIFIERS[kind] = cls
    return cls


class Notifier(abc.ABC):
    """One kind of target: the options it takes, how they are checked, how a message is
    delivered. Made for each delivery, with the target's validated options."""

    #: The ``type`` of the policy's targets of this kind.
    kind: t.ClassVar[str]
    #: Options a target must set, and those it may.
    required: t.ClassVar[tuple[str, ...]] = ()
    optional: t.ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: dict[str, t.Any]) -> None:
        self.options = options
        self.timeout = float(options.get("timeout", 10))

    @classmethod
    def validate(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        """The target's options, checked (a :class:`PolicyError` names the field) and
        completed with defaults."""
        a = "an" if cls.kind[:1] in ("a", "e", "i", "o", "u") else "a"
        for key in cls.required:
            if options.get(key) in (None, "", []):
                raise PolicyError(f"{field}.{key}", f"{a} {cls.kind} target needs '{key}'.")
        unknown = sorted(set(options) - set(cls.required) - set(cls.optional))
        if unknown:
            raise PolicyError(
                f"{field}.{unknown[0]}",
                f"{a} {cls.kind} target takes"
                f" {', '.join(cls.required + cls.optional) or 'no options'}.",
            )
        options = cls.check(field, dict(options))
        if "timeout" in options:
            timeout = options["timeout"]
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise PolicyError(f"{field}.timeout", f"expected seconds, got {timeout!r}.")
        return options

    @classmethod
    def check(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        """What this kind checks beyond required and unknown options."""
        return options

    @abc.abstractmethod
    def deliver(self, message: dict[str, t.Any]) -> None:
        """Deliver ``message`` (an outbox message); raise :class:`DeliveryError`."""


def _evidence(inc: t.Mapping[str, t.Any], *, slack: bool = False) -> str:
    """The evidence in words, with the link to the culprit's slowest traced call
    (``QUERYWATCH_TRACE_URL``) when there is one."""
    text = str(inc.get("hypothesis") or "")
    url = inc.get("trace_url")
    if url:
        text += f" <{url}|Trace of its slowest call>" if slack else f" Trace: {url}"
    return text


def send(target: Target, message: dict[str, t.Any]) -> None:
    """Deliver ``message`` (an outbox message) to ``target``; raises
    :class:`DeliveryError`."""
    cls = NOTIFIERS.get(target.kind)
    if cls is None:
        raise DeliveryError(f"Unknown target type {target.kind!r}.")
    cls(target.options).deliver(message)


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


def _check_url(field: str, options: dict[str, t.Any]) -> None:
    if "url" in options:
        url = options["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PolicyError(f"{field}.url", f"expected an http(s) URL, got {url!r}.")


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


@register
class WebhookNotifier(Notifier):
    kind = "webhook"
    required = ("url",)
    optional = ("secret", "timeout")

    @classmethod
    def check(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        _check_url(field, options)
        if "secret" in options:
            secret = options["secret"]
            if not isinstance(secret, str) or len(secret) < 16:
                raise PolicyError(f"{field}.secret", "expected a secret of 16 characters or more.")
        return options

    def deliver(self, message: dict[str, t.Any]) -> None:
        opts = self.options
        body = json.dumps(message, sort_keys=True).encode()
        headers = {
            "Idempotency-Key": message["idempotency_key"],
            "X-Querywatch-Action": message["action"],
        }
        if opts.get("secret"):
            headers["X-Querywatch-Signature"] = signature(opts["secret"], body, int(time.time()))
        _post(opts["url"], body, headers, self.timeout)


class _UrlNotifier(Notifier):
    """A kind that posts to one configured URL (a chat's incoming webhook)."""

    required = ("url",)
    optional = ("timeout",)

    @classmethod
    def check(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        _check_url(field, options)
        return options


@register
class SlackNotifier(_UrlNotifier):
    kind = "slack"

    def deliver(self, message: dict[str, t.Any]) -> None:
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
                    "text": {
                        "type": "mrkdwn",
                        "text": f"*Evidence* {_evidence(inc, slack=True)}"[:2900],
                    },
                },
            )
        body = json.dumps({"text": _subject(message), "blocks": blocks}).encode()
        _post(self.options["url"], body, {}, self.timeout)


@register
class EmailNotifier(Notifier):
    kind = "email"
    required = ("to", "host")
    optional = ("port", "from", "starttls", "ssl", "username", "password", "cafile", "timeout")

    @classmethod
    def check(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        to = options["to"]
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not all(isinstance(a, str) and "@" in a for a in to):
            raise PolicyError(f"{field}.to", f"expected e-mail addresses, got {options['to']!r}.")
        options["to"] = to
        port = options.get("port", 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise PolicyError(f"{field}.port", f"expected a port number, got {port!r}.")
        if bool(options.get("username")) != bool(options.get("password")):
            raise PolicyError(f"{field}.password", "'username' and 'password' go together.")
        return options

    def deliver(self, message: dict[str, t.Any]) -> None:
        import smtplib
        import ssl
        from email.message import EmailMessage

        opts = self.options
        mail = EmailMessage()
        mail["Subject"] = _subject(message)
        mail["From"] = opts.get("from", "querywatch@localhost")
        mail["To"] = ", ".join(opts["to"])
        mail["Message-ID"] = f"<{message['idempotency_key']}@querywatch>"
        mail["X-Querywatch-Idempotency-Key"] = message["idempotency_key"]
        inc = message["incident"]
        body = message["text"]
        if inc.get("hypothesis"):
            body += f"\n\nEvidence: {_evidence(inc)}"
        mail.set_content(body)
        host, port = opts["host"], int(opts.get("port", 25))
        try:
            # Certificates are verified, against the system's CAs or ``cafile`` (a private
            # CA).
            context = ssl.create_default_context(cafile=opts.get("cafile"))
            if opts.get("ssl"):
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    host, port, timeout=self.timeout, context=context
                )
            else:
                smtp = smtplib.SMTP(host, port, timeout=self.timeout)
            with smtp:
                if opts.get("starttls"):
                    smtp.starttls(context=context)
                if opts.get("username"):
                    smtp.login(opts["username"], opts["password"])
                smtp.send_message(mail)
        except (smtplib.SMTPException, OSError) as e:
            raise DeliveryError(f"SMTP {host}:{port}: {type(e).__name__}: {e}") from None


@register
class PagerDutyNotifier(Notifier):
    kind = "pagerduty"
    required = ("routing_key",)
    optional = ("url", "timeout")

    @classmethod
    def check(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        _check_url(field, options)
        options.setdefault("url", PAGERDUTY_URL)
        return options

    def deliver(self, message: dict[str, t.Any]) -> None:
        inc = message["incident"]
        action = {"acknowledge": "acknowledge", "resolve": "resolve"}.get(
            message["action"], "trigger"
        )
        event: dict[str, t.Any] = {
            "routing_key": self.options["routing_key"],
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
                    "trace_url": inc.get("trace_url"),
                    "idempotency_key": message["idempotency_key"],
                },
            }
        _post(self.options["url"], json.dumps(event).encode(), {}, self.timeout)


#: What each severity pages as in Opsgenie (P1 the highest).
_OPSGENIE_PRIORITY = {"SEV1": "P1", "SEV2": "P2", "SEV3": "P3"}
_RESPONDER_TYPES = ("team", "user", "escalation", "schedule")


@register
class OpsgenieNotifier(Notifier):
    kind = "opsgenie"
    required = ("api_key",)
    optional = ("url", "responders", "tags", "timeout")

    @classmethod
    def check(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        _check_url(field, options)
        options["url"] = options.get("url", OPSGENIE_URL).rstrip("/")
        responders = options.get("responders", [])
        if isinstance(responders, str):
            responders = [responders]
        parsed = []
        for r in responders if isinstance(responders, list) else [responders]:
            kind, _, name = r.partition(":") if isinstance(r, str) else ("", "", "")
            if kind not in _RESPONDER_TYPES or not name:
                raise PolicyError(
                    f"{field}.responders",
                    f"expected 'team:NAME', 'user:EMAIL', 'escalation:NAME' or"
                    f" 'schedule:NAME', got {r!r}.",
                )
            key = "username" if kind == "user" else "name"
            parsed.append({"type": kind, key: name})
        options["responders"] = parsed
        tags = options.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
            raise PolicyError(f"{field}.tags", f"expected a list of strings, got {tags!r}.")
        return options

    def deliver(self, message: dict[str, t.Any]) -> None:
        opts = self.options
        inc = message["incident"]
        alias = f"querywatch-{inc['id']}"
        headers = {"Authorization": f"GenieKey {opts['api_key']}"}
        action = message["action"]
        if action in ("acknowledge", "resolve"):
            verb = "acknowledge" if action == "acknowledge" else "close"
            body = {"source": "querywatch", "note": message["text"][:25000]}
            if inc.get("owner"):
                body["user"] = str(inc["owner"])[:100]
            url = f"{opts['url']}/v2/alerts/{alias}/{verb}?identifierType=alias"
            _post(url, json.dumps(body).encode(), headers, self.timeout)
            return
        description = message["text"]
        if inc.get("hypothesis"):
            description += f"\n\nEvidence: {_evidence(inc)}"
        alert: dict[str, t.Any] = {
            "message": _subject(message)[:130],
            "alias": alias,
            "description": description[:15000],
            "source": "querywatch",
            "priority": _OPSGENIE_PRIORITY.get(inc["severity"], "P4"),
            "tags": ["querywatch", str(inc["severity"]), *opts.get("tags", [])][:20],
            "details": {
                "incident": str(inc["id"]),
                "status": str(inc["status"]),
                "owner": str(inc.get("owner") or ""),
                "idempotency_key": message["idempotency_key"],
            },
        }
        if opts.get("responders"):
            alert["responders"] = opts["responders"]
        _post(f"{opts['url']}/v2/alerts", json.dumps(alert).encode(), headers, self.timeout)


@register
class TeamsNotifier(_UrlNotifier):
    kind = "teams"

    def deliver(self, message: dict[str, t.Any]) -> None:
        inc = message["incident"]
        facts = [
            {"title": "Severity", "value": str(inc["severity"])},
            {"title": "Status", "value": str(inc["status"])},
        ]
        if inc.get("owner"):
            facts.append({"title": "Owner", "value": str(inc["owner"])})
        body: list[dict[str, t.Any]] = [
            {
                "type": "TextBlock",
                "text": _subject(message),
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
            },
            {"type": "TextBlock", "text": message["text"][:10000], "wrap": True},
            {"type": "FactSet", "facts": facts},
        ]
        if inc.get("hypothesis"):
            body.append(
                {
                    "type": "TextBlock",
                    "text": f"Evidence: {_evidence(inc)}"[:10000],
                    "wrap": True,
                    "isSubtle": True,
                }
            )
        card = {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": body,
                    },
                }
            ],
        }
        _post(self.options["url"], json.dumps(card).encode(), {}, self.timeout)


@register
class AppriseNotifier(Notifier):
    """The long tail of services through Apprise, configured by its URLs
    (``discord://...``, ``mmost://...``, ``ntfy://...``)."""

    kind = "apprise"
    required = ("urls",)
    optional = ()

    @classmethod
    def check(cls, field: str, options: dict[str, t.Any]) -> dict[str, t.Any]:
        try:
            import apprise
        except ImportError:
            raise PolicyError(
                f"{field}.type",
                "an apprise target needs Apprise: pip install 'querywatch[apprise]'.",
            ) from None
        urls = options["urls"]
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise PolicyError(f"{field}.urls", f"expected Apprise URLs, got {urls!r}.")
        for url in urls:
            if not apprise.Apprise().add(url):
                scheme = url.split("://", 1)[0] if "://" in url else url[:20]
                raise PolicyError(
                    f"{field}.urls",
                    f"Apprise does not take {scheme!r}:// URLs of that form"
                    " (see https://github.com/caronc/apprise/wiki for each service's).",
                )
        options["urls"] = urls
        return options

    def deliver(self, message: dict[str, t.Any]) -> None:
        import apprise

        inc = message["incident"]
        body = message["text"]
        if inc.get("hypothesis"):
            body += f"\n\nEvidence: {_evidence(inc)}"
        kind = {
            "trigger": apprise.NotifyType.FAILURE,
            "escalate": apprise.NotifyType.FAILURE,
            "resolve": apprise.NotifyType.SUCCESS,
        }.get(message["action"], apprise.NotifyType.INFO)
        sender = apprise.Apprise()
        for url in self.options["urls"]:
            sender.add(url)
        if not sender.notify(title=_subject(message), body=body, notify_type=kind):
            services = ", ".join(u.split("://", 1)[0] for u in self.options["urls"])
            raise DeliveryError(f"Apprise could not deliver to every service ({services}).")


@register
class LogNotifier(Notifier):
    kind = "log"

    def deliver(self, message: dict[str, t.Any]) -> None:
        logger.warning("%s\n%s", _subject(message), message["text"])
