"""Notices of tasks' ends: each attempt's end that a ``[notify.webhooks.NAME]`` wants is
POSTed there, and one a ``[notify.email.NAME]`` wants is mailed (SMTP, the local MTA by
default; ``Message-ID: <ID@hostctl>``), by the queue's own runners, never by the task
and never in its way.

The deliveries wait in this host's spool (also in a cluster: a host sends what its
workers ended)::

    spool/notify/
        DUE.ID.N.json      one delivery: DUE = 13 hex digits of Unix ms when it is due,
                           ID its delivery id, N the attempts made so far; its content
                           (hook name and body) never changes
        failed/            deliveries given up after MAX_ATTEMPTS, or whose hook is gone

A delivery is written (fsynced) when the attempt's end has been recorded, before anything
is sent. A sender holds an flock on the file while it sends: two runners never send one
delivery at once. A 2xx answer removes it; anything else renames it to its next try
(backoff, doubled each time, up to an hour). A sender killed after the receiver answered
but before the file went sends it again, with the same ``X-Hostctl-Delivery`` id (at
least once, as GitHub's and Stripe's webhooks: a receiver that must act once keeps the
ids it has seen).

A request: ``POST`` of the JSON ``{"event": "task.ended", "delivery", "hook", "host",
"outcome", "task"}`` (the task as ``task show --json`` gives it, secrets masked), with
``X-Hostctl-Event: task.ended``, ``X-Hostctl-Delivery: ID`` and, with a secret,
``X-Hostctl-Signature: sha256=HEX`` (HMAC-SHA256 of the body, as GitHub's
``X-Hub-Signature-256``).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import http.client
import json
import logging
import os
import secrets
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import suppress
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from hostctl.config import Config, Email, Webhook
from hostctl.files import write_atomic
from hostctl.process import host_name

log = logging.getLogger("hostctl")

MAX_ATTEMPTS = 10
BACKOFF_BASE = 1.0  # seconds before the second try; doubled each time
BACKOFF_MAX = 3600.0
USER_AGENT = "hostctl-webhook"


def _name(due: float, delivery: str, attempts: int) -> str:
    return f"{int(due * 1000):013x}.{delivery}.{attempts}.json"


def _parse(name: str) -> tuple[float, str, int] | None:
    parts = name.split(".")
    if len(parts) != 4 or parts[3] != "json" or not parts[2].isdigit():
        return None
    try:
        return int(parts[0], 16) / 1000, parts[1], int(parts[2])
    except ValueError:
        return None


class Deliveries:
    """This host's webhook deliveries (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def add(self, hook: Webhook | Email, outcome: str, task: Mapping[str, Any]) -> str:
        """Queue one delivery of ``task``'s end to ``hook``; its id."""
        delivery = secrets.token_hex(10)
        body = json.dumps({"event": "task.ended", "delivery": delivery, "hook": hook.name,
                           "host": host_name(), "outcome": outcome, "task": dict(task)},
                          ensure_ascii=False)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        kind = "email" if isinstance(hook, Email) else "webhook"
        write_atomic(self.folder / _name(time.time(), delivery, 0),
                     json.dumps({"kind": kind, "hook": hook.name, "body": body}).encode())
        return delivery

    def pending(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.folder) if _parse(n))
        except FileNotFoundError:
            return []

    def next_due(self) -> float | None:
        names = self.pending()
        return _parse(names[0])[0] if names else None  # type: ignore[index]

    def send_due(self, config: Config, now: float | None = None,
                 post: Callable[[Webhook | Email, bytes, str], int] | None = None,
                 until: float | None = None) -> int:
        """Send every delivery due now (``until``: stop starting new ones after this
        time.monotonic()); how many were delivered."""
        post = post or _deliver
        sent = 0
        for name in self.pending():
            parsed = _parse(name)
            assert parsed is not None
            due, delivery, attempts = parsed
            if due > (time.time() if now is None else now):
                break  # the names sort by when they are due
            if until is not None and time.monotonic() > until:
                break
            sent += self._send_one(name, delivery, attempts, config, post)
        return sent

    def flush(self, config: Config, within: float = 10.0) -> None:
        """A runner that ends (``wait-queue --once``, dispatch): send what is due, for
        ``within`` seconds at most; what is left waits for the next runner."""
        try:
            self.send_due(config, until=time.monotonic() + within)
        except OSError as exc:
            log.error("webhooks: %s", exc)

    def _send_one(self, name: str, delivery: str, attempts: int, config: Config,
                  post: Callable[[Webhook | Email, bytes, str], int]) -> int:
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return 0  # sent or moved by another runner meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another runner sends it now
            if not path.exists():
                return 0  # done by the runner that held it before us
            try:
                doc = json.loads(os.read(fd, 16 << 20))
                found: Mapping[str, Webhook | Email] = (
                    config.emails if doc.get("kind") == "email" else config.webhooks)
                hook, body = found.get(str(doc["hook"])), str(doc["body"]).encode()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._give_up(name, f"unreadable: {exc}")
                return 0
            if hook is None:
                self._give_up(name, f"no {doc.get('kind', 'webhook')} notice "
                                    f"{doc['hook']!r} in config.toml any more")
                return 0
            try:
                status = post(hook, body, delivery)
                why = "" if 200 <= status < 300 else f"answered {status}"
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # refused, timed out, a bad address, an answer that is not HTTP
                why = str(getattr(exc, "reason", exc)) or type(exc).__name__
            if not why:
                path.unlink()
                return 1
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                self._give_up(name, f"{attempts} attempts, the last {why}")
                return 0
            wait = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempts - 1))
            os.rename(path, self.folder / _name(time.time() + wait, delivery, attempts))
            log.warning("webhook %s: delivery %s not delivered (%s): again in %g s",
                        hook.name, delivery, why, wait)
            return 0
        finally:
            os.close(fd)

    def _give_up(self, name: str, why: str) -> None:
        failed = self.folder / "failed"
        failed.mkdir(mode=0o700, exist_ok=True)
        with suppress(FileNotFoundError):
            os.rename(self.folder / name, failed / name)
            (failed / f"{name}.reason").write_text(why + "\n")
        log.error("webhook delivery %s given up: %s", name, why)


def _secret(hook: Webhook) -> bytes:
    if not hook.secret_file:
        return b""
    st = os.stat(hook.secret_file)
    if st.st_mode & 0o077:
        raise ValueError(f"{hook.secret_file} can be read by others: chmod 600 it")
    with open(hook.secret_file, "rb") as fh:
        return fh.read().strip()


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _deliver(hook: Webhook | Email, body: bytes, delivery: str) -> int:
    """Send one delivery: an HTTP status, 250 for a mail the server took (an error
    raises)."""
    if isinstance(hook, Email):
        _mail(hook, body, delivery)
        return 250
    return _post(hook, body, delivery)


def _mail(hook: Email, body: bytes, delivery: str) -> None:
    doc = json.loads(body)
    task = doc["task"]
    message = EmailMessage()
    message["Subject"] = (f"hostctl: {task.get('type')} on {task.get('context')}: "
                          f"{doc['outcome']}")
    message["From"] = hook.sender
    message["To"] = ", ".join(hook.to)
    message["Message-ID"] = f"<{delivery}@hostctl>"  # the same on a repeat
    message["X-Hostctl-Delivery"] = delivery
    lines = [f"{k}: {task.get(k)}" for k in ("id", "type", "context", "status", "reason",
                                              "created", "started", "finished")]
    message.set_content("\n".join([*lines, f"host: {doc['host']}", "",
                                    "The task, as hostctl task show --json gives it:",
                                    json.dumps(task, indent=2, ensure_ascii=False)]) + "\n")
    host, _, port = hook.smtp.rpartition(":")
    with smtplib.SMTP(host.strip("[]"), int(port), timeout=hook.timeout) as smtp:
        smtp.send_message(message)


def _post(hook: Webhook, body: bytes, delivery: str) -> int:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Hostctl-Event": "task.ended", "X-Hostctl-Delivery": delivery}
    key = _secret(hook)
    if key:
        headers["X-Hostctl-Signature"] = signature(key, body)
    request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=hook.timeout) as res:  # noqa: S310
            res.read(65536)
            return int(res.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
