"""Notices of tasks' ends: each attempt's end that a ``[notify.webhooks.NAME]`` wants is
POSTed there, and one a ``[notify.email.NAME]`` wants is mailed (SMTP, the local MTA by
default; ``Message-ID: <ID@hostctl>``), by a sender process the queue's runners start,
never by the task and never in its way.

The deliveries wait in this host's spool (also in a cluster: a host sends what its
workers ended)::

    spool/notify/
        DUE.ID.N.json      one delivery: DUE = 13 hex digits of Unix ms when it is due,
                           ID its delivery id, N the attempts made so far; its content
                           (hook name and body) never changes
        .sender.lock       flock'ed by the one sender at work
        failed/            deliveries given up after MAX_ATTEMPTS, or whose hook is gone

A delivery is written (fsynced) when the attempt's end has been recorded, before anything
is sent. The runners send nothing themselves: a runner that finds a delivery due and no
sender at work starts one, the hidden ``hostctl --home HOME notify-send``, in a session of
its own (:func:`start_sender`; nothing but the home on its command line, stdin from
/dev/null, stderr the runner's, its log lines in hostctl.log). The daemon does so from a
thread of its own and waits for it, one at a time; ``dispatch`` and ``wait-queue --once``
before they exit, waiting for it FLUSH_WAIT seconds at most and leaving it at work after
that. So a runner killed, even with ``kill -9``, never cuts a delivery off half way: its
sender, re-parented, finishes the request it is in (the hook's timeout bounds it) and the
others that are due, records them, and exits. When the daemon itself stops, it asks its
sender to stop (TERM: the sender finishes the delivery it is in and starts no other) and
waits for that, so a service manager that kills what is left of the service (systemd's
``KillMode=mixed``) finds no request in flight.

A sender (:class:`Sender`) holds ``.sender.lock`` while it sends: one that finds it held
exits at once (the holder sends what is due), and the holder, once it lets the lock go,
looks again for a delivery that came due meanwhile (a runner that saw the lock held left it
to the holder). It starts no delivery after SEND_FOR seconds, nor after a TERM or INT;
what is left waits for the next sender. It also holds an flock on each file while it sends
it (two senders never send one delivery at once, whatever their version). A 2xx answer
removes the file; anything else renames it to its next try (backoff, doubled each time, up
to an hour).

Each delivery is sent once, with one exception: a sender that is itself killed (``kill
-9``, the OOM killer, a power cut, or systemd killing what is left of the unit after
wait-queue died without its stop) after the receiver got the request but before the file
went leaves the file, and the next sender sends it again, with the same
``X-Hostctl-Delivery`` id. A receiver that must act once keeps the ids it has seen (as
with GitHub's and Stripe's webhooks).

A request: ``POST`` of the JSON ``{"event": "task.ended", "delivery", "hook", "host",
"outcome", "task"}`` (the task as ``task show --json`` gives it, secrets masked), with
``X-Hostctl-Event: task.ended``, ``X-Hostctl-Delivery: ID`` and, with a secret,
``X-Hostctl-Signature: sha256=HEX`` (HMAC-SHA256 of the body, as GitHub's
``X-Hub-Signature-256``).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import hmac
import http.client
import json
import logging
import os
import secrets
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from hostctl.config import Config, Email, Webhook
from hostctl.files import flocked, lock_held, write_atomic
from hostctl.paths import Paths
from hostctl.process import host_name, hostctl_command

log = logging.getLogger("hostctl")

MAX_ATTEMPTS = 10
BACKOFF_BASE = 1.0  # seconds before the second try; doubled each time
BACKOFF_MAX = 3600.0
USER_AGENT = "hostctl-webhook"
#: the hidden command a runner starts to send (cli/runners.py)
SENDER_COMMAND = "notify-send"
SENDER_LOCK = ".sender.lock"
SEND_FOR = 60.0  # a sender starts no delivery after this many seconds
FLUSH_WAIT = 10.0  # how long dispatch and wait-queue --once wait for their sender
STOP_MARGIN = 5.0  # the daemon's stop waits for its sender's request this much longer

Post = Callable[[Webhook | Email, bytes, str], int]


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


class Tried(enum.Enum):
    """What became of one delivery a sender took up."""

    DELIVERED = "delivered"  # the receiver took it: its file is gone
    KEPT = "kept"  # refused or not reached: renamed to its next try, or set aside
    SKIPPED = "skipped"  # gone meanwhile, or another process holds it


@dataclass(frozen=True)
class Pass:
    """One look through the deliveries due."""

    delivered: int = 0
    tried: int = 0  # taken up (delivered, or kept for a next try, or set aside)
    skipped: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Sent:
    """What one sender did."""

    delivered: int = 0
    tried: int = 0
    busy: bool = False  # another sender held the lock: it sends what is due
    left: int = 0  # due and not taken up when it stopped (time up, asked to stop)


class Deliveries:
    """This host's webhook deliveries (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def lock_path(self) -> Path:
        return self.folder / SENDER_LOCK

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

    def due(self, now: float | None = None) -> list[str]:
        """The names of the deliveries due at ``now``, in their order."""
        when = time.time() if now is None else now
        found = []
        for name in self.pending():
            parsed = _parse(name)
            assert parsed is not None
            if parsed[0] > when:
                break  # the names sort by when they are due
            found.append(name)
        return found

    def sending(self) -> bool:
        """Whether a sender is at work (it holds the sender lock)."""
        return lock_held(self.lock_path)

    def send_due(self, config: Config, now: float | None = None, post: Post | None = None,
                 until: float | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> int:
        """Send every delivery due now (``until``: stop starting new ones after this
        time.monotonic(); ``should_stop``: asked before each one); how many were
        delivered. Only a :class:`Sender` calls it: it holds the sender lock."""
        return self.send_pass(config, now, post, until, should_stop).delivered

    def send_pass(self, config: Config, now: float | None = None, post: Post | None = None,
                  until: float | None = None,
                  should_stop: Callable[[], bool] = lambda: False) -> Pass:
        """:meth:`send_due`, and what it did with each delivery."""
        post = post or _deliver
        delivered = tried = 0
        skipped = set()
        for name in self.due(now):
            if (until is not None and time.monotonic() > until) or should_stop():
                break
            parsed = _parse(name)
            assert parsed is not None
            done = self._send_one(name, parsed[1], parsed[2], config, post)
            if done is Tried.SKIPPED:
                skipped.add(name)
                continue
            tried += 1
            delivered += done is Tried.DELIVERED
        return Pass(delivered, tried, frozenset(skipped))

    def flush(self, home: Path, within: float = FLUSH_WAIT) -> None:
        """A runner that ends (``wait-queue --once``, dispatch): if a delivery is due and
        no sender is at work, start one and wait ``within`` seconds at most; a sender not
        done by then goes on alone."""
        if not self.due() or self.sending():
            return
        try:
            sender = start_sender(home)
        except OSError as exc:
            log.error("notices: no sender started: %s", exc)
            return
        try:
            sender.wait(within)
        except subprocess.TimeoutExpired:
            log.info("notices: sender %d goes on after this runner", sender.pid)

    def _send_one(self, name: str, delivery: str, attempts: int, config: Config,
                  post: Post) -> Tried:
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return Tried.SKIPPED  # sent or moved by another sender meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Tried.SKIPPED  # another sender sends it now
            if not path.exists():
                return Tried.SKIPPED  # done by the sender that held it before us
            try:
                doc = json.loads(os.read(fd, 16 << 20))
                found: Mapping[str, Webhook | Email] = (
                    config.emails if doc.get("kind") == "email" else config.webhooks)
                hook, body = found.get(str(doc["hook"])), str(doc["body"]).encode()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._give_up(name, f"unreadable: {exc}")
                return Tried.KEPT
            if hook is None:
                self._give_up(name, f"no {doc.get('kind', 'webhook')} notice "
                                    f"{doc['hook']!r} in config.toml any more")
                return Tried.KEPT
            try:
                status = post(hook, body, delivery)
                why = "" if 200 <= status < 300 else f"answered {status}"
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # refused, timed out, a bad address, an answer that is not HTTP
                why = str(getattr(exc, "reason", exc)) or type(exc).__name__
            if not why:
                path.unlink()
                return Tried.DELIVERED
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                self._give_up(name, f"{attempts} attempts, the last {why}")
                return Tried.KEPT
            wait = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempts - 1))
            os.rename(path, self.folder / _name(time.time() + wait, delivery, attempts))
            log.warning("webhook %s: delivery %s not delivered (%s): again in %g s",
                        hook.name, delivery, why, wait)
            return Tried.KEPT
        finally:
            os.close(fd)

    def _give_up(self, name: str, why: str) -> None:
        failed = self.folder / "failed"
        failed.mkdir(mode=0o700, exist_ok=True)
        with suppress(FileNotFoundError):
            os.rename(self.folder / name, failed / name)
            (failed / f"{name}.reason").write_text(why + "\n")
        log.error("webhook delivery %s given up: %s", name, why)


def send_notices(paths: Paths, config: Config) -> Sent:
    """``hostctl notify-send``: this process is the sender (see :class:`Sender`)."""
    return Sender(Deliveries(paths.spool / "notify"), config).run()


def start_sender(home: Path) -> subprocess.Popen[bytes]:
    """Start ``hostctl notify-send`` for ``home`` in a session of its own: a runner's
    end, even by kill -9, does not reach it. Its stderr is the runner's."""
    return subprocess.Popen(hostctl_command("--home", str(home), SENDER_COMMAND),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def longest_request(config: Config) -> float:
    """The most one request may take under ``config`` (the longest hook's timeout)."""
    hooks: list[Webhook | Email] = [*config.webhooks.values(), *config.emails.values()]
    return max((h.timeout for h in hooks), default=0.0)


class Sender:
    """The process that sends this host's deliveries (``hostctl notify-send``, which the
    runners start: see the module docstring). Signals only set a flag: the delivery in
    flight is finished, none is started after it."""

    def __init__(self, deliveries: Deliveries, config: Config, within: float = SEND_FOR,
                 post: Post | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deliveries = deliveries
        self.config = config
        self.within = within
        self.post = post
        self.clock = clock
        self.stop_requested = False

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def run(self) -> Sent:
        """As a process of its own: TERM and INT stop it after the delivery in flight."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        sent = self.send()
        if sent.busy:
            log.info("notices: another sender is at work")
        elif sent.tried:
            log.info("notices: %d delivered, %d not delivered", sent.delivered,
                     sent.tried - sent.delivered)
        if sent.left:
            log.info("notices: %d due wait for the next sender", sent.left)
        return sent

    def send(self) -> Sent:
        """Hold the sender lock and send what is due until nothing is, the time is up or
        a stop is asked; nothing if another sender holds the lock."""
        if not self.deliveries.folder.is_dir():
            return Sent()
        until = self.clock() + self.within
        delivered = tried = 0
        first = True
        while True:
            with flocked(self.deliveries.lock_path, wait=False, follow=False) as mine:
                if not mine:  # another sender took it: it sends what is due
                    return Sent(delivered, tried, busy=first)
                first = False
                last = Pass()
                while not self._over(until):
                    last = self.deliveries.send_pass(
                        self.config, post=self.post, should_stop=lambda: self._over(until))
                    delivered, tried = delivered + last.delivered, tried + last.tried
                    if not last.tried:
                        break
            # a runner that saw the lock held while a delivery came due left it to us
            if self._over(until) or not [n for n in self.deliveries.due()
                                         if n not in last.skipped]:
                return Sent(delivered, tried, left=len(self.deliveries.due()))

    def _over(self, until: float) -> bool:
        return self.stop_requested or self.clock() > until


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
