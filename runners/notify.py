"""Notices of tasks' ends: each attempt's end that a ``[notify.webhooks.NAME]`` wants is
POSTed there, and one a ``[notify.email.NAME]`` wants is mailed (SMTP, the local MTA by
default; ``Message-ID: <ID@hostctl>``), by a sender process the queue's runners start,
never by the task and never in its way.

The deliveries wait in this host's spool (also in a cluster: a host sends what its
workers ended, and what its sweeps ended)::

    spool/notify/
        hold.ID.json       a hold: the notice of an attempt's end that is being recorded,
                           flock'ed by the process that records it
        .hold.ID.R.tmp     a hold being made (R random), flock'ed by its maker
        DUE.ID.N.json      one delivery: DUE = 13 hex digits of Unix ms when it is due,
                           ID its delivery id, N the attempts made so far; its content
                           (hook name and body) never changes
        .sender.lock       flock'ed by the one sender at work
        failed/            deliveries given up after MAX_ATTEMPTS, or whose hook is gone,
                           holds and deliveries that cannot be read (NAME.reason: why)

Holds: a notice is promised before the end it tells of is recorded (:class:`Notices`).
Before a worker records an attempt's end as O, it makes, for each notice that wants
(type, O), a hold: the line ``{"task", "attempt", "outcome", "kind", "hook"}`` written to
``.hold.ID.R.tmp``, flock'ed, fsynced, renamed to ``hold.ID.json`` (never over another
file) and the folder fsynced; it keeps the lock until the hold is done, so no other
process sees it unlocked while its maker lives. ID is the delivery id, the first 20 hex
digits of sha256(task id, attempt, kind, hook name): whoever writes the notice of one
attempt's end to one hook writes the same id (the attempt is the serial number of its
``start`` among the task's, which a manual retry does not reset). Once the end is
recorded, the maker reads the task and appends the delivery (the line a due delivery
holds) to the same file, fsyncs it and renames it to ``DUE.ID.0.json``: one inode, a hold
or a due delivery, never both. The queues' own recovery of a dead worker's task (its
sweep: a loss, a retry, a cancel) records ends too: it tells them to the runner first
(``QueueBackend.sweep``'s ``ends``), which makes the same holds around them. So does
``task cancel`` of a task that has not started (runners/lifecycle.py): its hold has
attempt 0 and the task's life (:func:`life`: how many times it was queued again by hand;
``cancel.N`` stands for the attempt in its delivery id), and is withdrawn if the task
was no longer queued: its end is then a worker's to tell, also when the worker finds
the cancel before it starts the task (taken up ahead, or handed to it in a cluster: the
queue's claim, or the worker, records that end inside :meth:`Notices.ending`, which
makes the same kind of hold).

Recovery (:meth:`Notices.recover`, after the queue's sweep, which every runner makes
when it starts and the daemon at each housekeeping pass): each hold whose lock can be
taken (its maker is gone) is settled. One that holds its delivery becomes due. Else the
task is read: the attempt's end recorded as the hold's outcome makes the delivery (the
task as the record says; dropped if the hook is gone or wants that outcome no more);
recorded as another outcome, it was a recovery's end, which made its own holds: dropped
(a cancel's hold: made due if that life of the task ended in a cancel before a start,
else dropped as not recorded); no end recorded, dropped (the queue's recovery ends that
attempt, and makes its own hold); the task gone (retention), dropped once no look has
found it for GONE_AFTER seconds (a task moving between the spool's folders may be missed
by one). A task that cannot be read now (the cluster's database away) keeps its hold for
the next sweep. A worker whose claim was taken over (the cluster: it did not record that
end; whoever took it did, with its own notices) removes its holds. Anything under a
hold's name that cannot be one (not a regular file, not its line) goes to failed/; a
name that is not a delivery's exactly (13 and 20 hex digits) is passed over by the
senders. A hold of the same id that is in the way of a new one (its maker died before
its end was recorded) is dropped under its lock (made due if it holds a delivery). Stale
``.hold.*.tmp`` files go after STALE_TMP seconds.

So a kill -9 of a worker or a sweep at any moment loses no notice of an end it recorded:
the hold is on disk before the end is. What is lost is what is lost with the host: a
machine that is gone for good with its spool takes its holds and due deliveries with it
(in a cluster, a sweep on another host then ends the attempts it was running, with
notices from there). A failure to write a hold or a delivery (a full disk) is logged and
the task goes on: a notice is never worth a task.

The runners send nothing themselves: a runner that finds a delivery due and no sender at
work starts one, the hidden ``hostctl --home HOME notify-send``, in a session of its own
(:func:`start_sender`; nothing but the home on its command line, stdin and stdout
/dev/null, its log lines in hostctl.log, which it opens before anything else, so that
its failures are written there too). The daemon does so from a thread of its own and
waits for it, one at a time (its stderr is the daemon's); ``dispatch`` and ``wait-queue
--once`` before they exit (on a paused queue too), and ``queue pause`` for the ends it
waited for or recorded, waiting for it FLUSH_WAIT seconds at most and leaving it at
work after that, its stderr /dev/null (whoever reads the runner's output to its end,
cron's mail or a front end, is not kept waiting for it); a runner that waited for its
sender's end logs a failed exit. So a runner killed, even with ``kill -9``, never cuts a
delivery off half way: its sender, re-parented, finishes the request it is in and the
others that are due, records them, and exits. When the daemon itself stops, it asks its
sender to stop (TERM: the sender finishes the delivery it is in and starts no other) and
waits for that (:func:`stop_wait`; the service files leave it that long), so a service
manager that kills what is left of the service (systemd's ``KillMode=mixed``) finds no
request in flight. Each sender reads config.toml afresh: while the daemon's last reload
of it failed, the daemon starts none (the notices wait for a config.toml that reads,
said once in hostctl.log), and starts them again once it reads.

A request ends REQUEST_MARGIN seconds after its hook's timeout at the latest, whatever
the receiver does (the timeout bounds each read and write on the socket; a SIGALRM in
the sender, a process of its own with one thread, bounds the request: connection, a
secret file, an answer trickled in byte by byte). A request cut off counts as a failed
try, as a receiver that cannot be reached does.

A sender (:class:`Sender`) holds ``.sender.lock`` while it sends: one that finds it held
(for LOCK_PATIENCE seconds: a runner's look at whether a sender is at work holds it for
an instant) exits at once (the holder sends what is due), and the holder, once it lets the
lock go, looks again for a delivery that came due meanwhile (a runner that saw the lock
held left it to the holder). It starts no delivery after SEND_FOR seconds, nor after a
TERM or INT; what is left waits for the next sender. It also holds an flock on each file
while it sends it (two senders never send one delivery at once, whatever their version);
one that found deliveries due and another process holding each of them exits with
SENDER_BLOCKED (75, EX_TEMPFAIL), and the daemon starts the next one later, not at once.
A 2xx answer removes the file; anything else renames it to its next try (backoff, doubled
each time, up to an hour). A file named like a delivery that is not one (a link, a
folder, a FIFO, a file that cannot be opened or is not a delivery's JSON) is set aside in
failed/ with its reason: it never holds the others back.

Each delivery is sent once, with two exceptions: a sender that is itself killed (``kill
-9``, the OOM killer, a power cut, or systemd killing what is left of the unit after
wait-queue died without its stop) after the receiver got the request but before the file
went leaves the file, and a request cut off at its deadline may have reached its
receiver; the next sender sends it again, with the same ``X-Hostctl-Delivery`` id. (In a
cluster, a worker on one host that dies as it ends an attempt as lost or cancelled, and a
sweep on another host that takes the task over once its lease has run out and records
the same end, may both send it, with the same id too.) A receiver that must act once
keeps the ids it has seen (as with GitHub's and Stripe's webhooks).

A request: ``POST`` of the JSON ``{"event": "task.ended", "delivery", "hook", "host",
"outcome", "task"}`` (the task as ``task show --json`` gives it, secrets masked), with
``X-Hostctl-Event: task.ended``, ``X-Hostctl-Delivery: ID`` and, with a secret,
``X-Hostctl-Signature: sha256=HEX`` (HMAC-SHA256 of the body, as GitHub's
``X-Hub-Signature-256``).
"""

from __future__ import annotations

import enum
import errno
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
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from hostctl.config import Config, Email, Webhook, settled
from hostctl.contexts.schema import field_names
from hostctl.errors import ExitStatus, HostctlError, InvalidInput, NotFound
from hostctl.files import (
    flocked,
    fsync_dir,
    lock_held,
    write_all,
    write_atomic,
    write_private,
)
from hostctl.libc import rename_noreplace
from hostctl.paths import Paths
from hostctl.process import host_name, hostctl_command
from hostctl.queues.backend import LeaseLost
from hostctl.queues.model import Task

log = logging.getLogger("hostctl")

MAX_ATTEMPTS = 10
BACKOFF_BASE = 1.0  # seconds before the second try; doubled each time
BACKOFF_MAX = 3600.0
USER_AGENT = "hostctl-webhook"
#: the hidden command a runner starts to send (cli/runners.py)
SENDER_COMMAND = "notify-send"
#: its exit status when deliveries were due and another process held each one
SENDER_BLOCKED = int(ExitStatus.TEMPFAIL)
SENDER_LOCK = ".sender.lock"
SEND_FOR = 60.0  # a sender starts no delivery after this many seconds
FLUSH_WAIT = 10.0  # how long dispatch and wait-queue --once wait for their sender
#: a request ends, whatever the receiver does, this long after its hook's timeout (which
#: bounds each socket operation, not the request)
REQUEST_MARGIN = 2.0
STOP_MARGIN = 5.0  # the daemon's stop waits for its sender's request this much longer
LOCK_PATIENCE = 0.05  # a sender takes the sender lock held this long as another's
HOLD_WAIT = 5.0  # a hold of the same id in the way, locked: wait this long for it
STALE_TMP = 60.0  # a hold being made whose maker is gone: removed after this many seconds
GONE_AFTER = 600.0  # a hold whose task no look finds: dropped once this old (seconds)
MAX_READ = 16 << 20
#: tests only: a process that recorded an end with notices dies before they are due
#: (a worker or a sweep), or once a hold holds its delivery, before it is due
_DIE_AFTER_END = os.environ.get("HOSTCTL_TEST_DIE_AFTER_END") == "1"
_DIE_BEFORE_DUE = os.environ.get("HOSTCTL_TEST_DIE_BEFORE_DUE") == "1"

Post = Callable[[Webhook | Email, bytes, str], int]


def _name(due: float, delivery: str, attempts: int) -> str:
    return f"{int(due * 1000):013x}.{delivery}.{attempts}.json"


_HEX = frozenset("0123456789abcdef")


def _parse(name: str) -> tuple[float, str, int] | None:
    """A delivery's name, read (:func:`_name`: 13 hex digits, 20 hex digits, a count);
    None for any other name, which no sender looks at (one that sorted before the
    deliveries and read as due in years would hold every notice back)."""
    parts = name.split(".")
    if (len(parts) != 4 or parts[3] != "json" or len(parts[0]) != 13
            or len(parts[1]) != 20 or not set(parts[0] + parts[1]) <= _HEX
            or not parts[2].isascii() or not parts[2].isdigit() or len(parts[2]) > 6):
        return None
    return int(parts[0], 16) / 1000, parts[1], int(parts[2])


def delivery_id(task_id: str, attempt: int | str, kind: str, hook: str) -> str:
    """The id of the notice of one attempt's end to one hook: the same whoever writes it
    (``attempt``: the serial number of the attempt's ``start`` among the task's; for a
    cancel before any start, ``cancel.N``, N its :func:`life`)."""
    key = "\0".join((task_id, str(attempt), kind, hook))
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def life(task: Task) -> int:
    """How many times the task was queued again by hand (``task retry``): a task is
    cancelled before it starts at most once in each of its lives."""
    return sum(1 for ev in task.events if ev.get("event") == "retry")


def attempt_open(task: Task) -> bool:
    """Whether an attempt of the task has started and not ended (nor been let go by a
    ``task retry``)."""
    start = task.last_index("start")
    return start >= 0 and start > max(task.last_index("end"), task.last_index("retry"))


def cancelled_queued(task: Task, number: int) -> bool:
    """Whether the task's life ``number`` (:func:`life`) ended in a cancel before any
    attempt of it started: its last ``end`` is a cancel with no ``start`` since the end
    before it (every attempt's end follows its start)."""
    lives = 0
    started = ended_cancelled = False
    for ev in task.events:
        kind = ev.get("event")
        if kind == "retry":
            if lives == number:
                break
            lives += 1
            started = ended_cancelled = False
        elif lives != number:
            continue
        elif kind == "start":
            started, ended_cancelled = True, False
        elif kind == "end":
            ended_cancelled = not started and ev.get("outcome") == "cancelled"
            started = False
    return lives == number and ended_cancelled


def _kind(hook: Webhook | Email) -> str:
    return "email" if isinstance(hook, Email) else "webhook"


def _hooks(config: Config) -> list[Webhook | Email]:
    """Every notice ``config`` has, webhooks and mail."""
    return [*config.webhooks.values(), *config.emails.values()]


def recheck(config_file: Path | None, wait: bool = False) -> tuple[Config | None, float]:
    """config.toml as it stands once settled (hostctl.config.settled; ``wait``: waited
    for), read again before a delivery or a hold is given up for a notice the config in
    hand lacks (it may have been read from an editor's write caught halfway): (it, 0);
    (None, seconds) while it does not settle or read; (None, 0) without a file to read
    (the config in hand stands)."""
    if config_file is None:
        return None, 0.0
    return settled(config_file, field_names(), wait=wait)


def _hook(config: Config, kind: str, name: str) -> Webhook | Email | None:
    """The notice of that kind and name in ``config``, if it has one."""
    found: Mapping[str, Webhook | Email] = config.emails if kind == "email" else config.webhooks
    return found.get(name)


def _delivery(delivery: str, hook: Webhook | Email, outcome: str,
              task: Mapping[str, Any]) -> bytes:
    """A due delivery's line: the hook and the body it is sent."""
    body = json.dumps({"event": "task.ended", "delivery": delivery, "hook": hook.name,
                       "host": host_name(), "outcome": outcome, "task": dict(task)},
                      ensure_ascii=False)
    return json.dumps({"kind": _kind(hook), "hook": hook.name, "body": body}).encode()


def task_doc(task: Task) -> dict[str, Any]:
    """The task as a notice tells it (its log's path is this host's: not sent)."""
    doc = task.to_json()
    doc.pop("log", None)
    return doc


def _hold_name(delivery: str) -> str:
    return f"hold.{delivery}.json"


def _is_hold(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and parts[0] == "hold" and parts[2] == "json" and len(parts[1]) == 20


def _read_hold(data: bytes) -> tuple[dict[str, Any] | None, bool]:
    """A hold's intent (its first line; None if it cannot be read), and whether its
    delivery follows it whole (a torn one, its maker killed as it wrote it, counts as
    none)."""
    first, newline, rest = data.partition(b"\n")
    try:
        intent = json.loads(first)
        if not newline or not isinstance(intent, dict) or not all(
                isinstance(intent.get(k), str) for k in ("task", "outcome", "kind", "hook")) \
                or not isinstance(intent.get("attempt"), int) \
                or type(intent.get("life", 0)) is not int:
            return None, False
    except (ValueError, RecursionError):  # not JSON; nested past the parser's depth
        return None, False
    try:
        doc = json.loads(rest) if rest.strip() else None
    except (ValueError, RecursionError):
        doc = None
    return intent, isinstance(doc, dict) and "body" in doc


def _read_delivery(fd: int) -> tuple[str, str, bytes]:
    """A delivery file's kind, hook name and body (its last line: a delivery made from a
    hold follows the hold's line). ValueError if it is not one."""
    doc = json.loads(os.read(fd, MAX_READ).rstrip(b"\n").rpartition(b"\n")[2])
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not a delivery")
    kind, hook, body = doc.get("kind", "webhook"), doc.get("hook"), doc.get("body")
    if kind not in ("webhook", "email") or not isinstance(hook, str) \
            or not isinstance(body, str):
        raise ValueError("no kind, hook and body")
    return kind, hook, body.encode()


class NotAHold(ValueError):
    """A file under a hold's name that cannot be one (set aside in failed/)."""


def _lock(path: Path, until: float | None = None) -> int | None:
    """``path`` open and flock'ed, still the file of that name; None once there is no
    such file. BlockingIOError when another process holds it (``until``: tried again till
    then, time.monotonic())."""
    while True:
        try:
            # O_NONBLOCK: a FIFO of that name must not hold the runner in its open
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotAHold(f"{path.name} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if until is None or time.monotonic() > until:
                    raise
                time.sleep(0.05)
                continue
            with suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                    mine, fd = fd, -1
                    return mine
            # renamed or removed by its holder before we had the lock: look again
        finally:
            if fd >= 0:
                os.close(fd)


@dataclass
class Hold:
    """One hold made by this process: open and locked until it is done."""

    path: Path
    fd: int
    delivery: str
    hook: Webhook | Email
    size: int  # its intent's line


@dataclass
class Held:
    """The holds of one attempt's end (:meth:`Notices.hold`)."""

    task: str
    outcome: str
    holds: list[Hold] = field(default_factory=list)


class Notices:
    """The notices of attempts' ends, each written through a hold (see the module
    docstring): ``config`` gives the notices configured now, ``read`` a task by id as the
    queue has it, ``on_due`` is called once deliveries came due (to wake a sender)."""

    def __init__(self, deliveries: Deliveries, config: Callable[[], Config],
                 read: Callable[[str], Task],
                 on_due: Callable[[], object] = lambda: None,
                 config_file: Path | None = None) -> None:
        self.deliveries = deliveries
        self.config = config
        self.read = read
        self.on_due = on_due
        #: config.toml, read afresh before a hold is dropped for a notice it lacks
        self.config_file = config_file

    @property
    def folder(self) -> Path:
        return self.deliveries.folder

    def hold(self, task_id: str, type_name: str, attempt: int, outcome: str,
             cancel_of_life: int | None = None) -> Held:
        """Before attempt ``attempt`` of a task ends as ``outcome``: a hold for each
        notice that wants that end; with ``cancel_of_life`` (and ``attempt`` 0), before
        the task is cancelled without a start, in that life of it (:func:`life`). One
        that cannot be made is logged and left out."""
        held = Held(task_id, outcome)
        config = self.config()
        for hook in _hooks(config):
            if not hook.wants(type_name, outcome):
                continue
            doc: dict[str, Any] = {"task": task_id, "attempt": attempt, "outcome": outcome,
                                   "kind": _kind(hook), "hook": hook.name}
            key: int | str = attempt
            if cancel_of_life is not None:
                doc["life"] = cancel_of_life
                key = f"cancel.{cancel_of_life}"
            delivery = delivery_id(task_id, key, _kind(hook), hook.name)
            intent = json.dumps(doc).encode() + b"\n"
            try:
                held.holds.append(self._make(delivery, hook, intent))
            except (OSError, ValueError) as exc:  # a notice is never worth a task
                log.error("task %s: its notice %s is not written: %s", task_id, hook.name,
                          exc)
        return held

    def complete(self, held: Held) -> int:
        """The end is recorded: each hold gets its delivery and comes due; how many did.
        Those that cannot be completed now are left to :meth:`recover`."""
        if not held.holds:
            return 0
        if _DIE_AFTER_END:  # tests only: the worst moment: recorded, nothing due
            os.kill(os.getpid(), signal.SIGKILL)
        made = 0
        try:
            doc = task_doc(self.read(held.task))
        except (OSError, HostctlError) as exc:
            log.error("task %s: its notices wait for the next sweep: %s", held.task, exc)
            self.release(held)
            return 0
        while held.holds:
            hold = held.holds.pop(0)
            try:
                self._fill(hold, held.outcome, doc)
                made += 1
            except OSError as exc:
                log.error("task %s: its notice %s waits for the next sweep: %s", held.task,
                          hold.hook.name, exc)
            finally:
                os.close(hold.fd)
        if made:
            self.on_due()
        return made

    def withdraw(self, held: Held) -> None:
        """The end was certainly not recorded by this process (its claim was taken over:
        another records that end, with its own notices): the holds go, under their
        locks, so that no recovery sends the notice a second time."""
        while held.holds:
            hold = held.holds.pop()
            try:
                with suppress(FileNotFoundError):
                    os.unlink(hold.path)
            finally:
                os.close(hold.fd)

    def release(self, held: Held) -> None:
        """Let the holds go as they are (whether the end was recorded is not known):
        :meth:`recover` finds out."""
        while held.holds:
            os.close(held.holds.pop().fd)

    def hold_end(self, task: Task, outcome: str) -> Held:
        """:meth:`hold` for the end of ``task`` (as read now) as ``outcome``: of its last
        attempt, or a cancel before any attempt of this life of it started."""
        if outcome == "cancelled" and not attempt_open(task):
            return self.hold(task.id, task.envelope.type, 0, outcome,
                             cancel_of_life=life(task))
        return self.hold(task.id, task.envelope.type, len(task.attempts), outcome)

    @contextmanager
    def ending(self, task: Task, outcome: str) -> Iterator[None]:
        """A queue records an end of ``task`` as ``outcome`` inside this block: of its
        last attempt (a sweep), or a cancel before its start (a claim that finds one
        asked for): ``QueueBackend``'s ``ends``. Its holds around it."""
        held = self.hold_end(task, outcome)
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, LeaseLost) or (isinstance(exc, OSError)
                                              and exc.errno == errno.ESTALE):
                self.withdraw(held)  # taken over: whoever took it records that end
            else:
                self.release(held)  # recorded or not: the recovery finds out
            raise
        self.complete(held)

    def recover(self) -> int:
        """Settle the holds whose makers are gone (see the module docstring); how many
        deliveries came due. A failure is logged: that hold waits for the next sweep."""
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return 0
        made = 0
        for name in names:
            try:
                if name.startswith(".hold.") and name.endswith(".tmp"):
                    self._drop_stale_tmp(self.folder / name)
                elif _is_hold(name):
                    made += self._settle(self.folder / name)
            except (NotAHold, IsADirectoryError, RecursionError, UnicodeError) as exc:
                # of the file's own making: it never will be read; out of everyone's way
                self.deliveries.give_up(name, f"not a hold: {exc}")
            except (OSError, HostctlError) as exc:  # the disk, the database: next sweep
                message = exc.message if isinstance(exc, HostctlError) else str(exc)
                log.error("notices: hold %s waits for the next sweep: %s", name, message)
        if made:
            self.on_due()
        return made

    # -- one hold -----------------------------------------------------------------------

    def _make(self, delivery: str, hook: Webhook | Email, intent: bytes) -> Hold:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.folder / f".hold.{delivery}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a name no one else knows yet: at once
            write_all(fd, intent)
            os.fsync(fd)
            path = self.folder / _hold_name(delivery)
            until = time.monotonic() + HOLD_WAIT
            while True:
                try:
                    rename_noreplace(tmp, path)
                    break
                except FileExistsError:
                    if time.monotonic() > until:
                        raise
                    self._clear(path, until)
            fsync_dir(self.folder)
        except BaseException:
            os.close(fd)
            with suppress(OSError):
                os.unlink(tmp)
            raise
        return Hold(path, fd, delivery, hook, len(intent))

    def _clear(self, path: Path, until: float) -> None:
        """A hold of the same id is in the way: its maker died before the end it told of
        was recorded (it is being recorded now, by this process). Dropped under its lock,
        or made due if it holds a delivery."""
        try:
            fd = _lock(path, until)
        except (NotAHold, IsADirectoryError) as exc:  # out of the way, kept for a person
            self.deliveries.give_up(path.name, f"not a hold: {exc}")
            return
        if fd is None:
            return
        try:
            _intent, whole = _read_hold(os.read(fd, MAX_READ))
            if whole:
                self._due(path)
            else:
                os.unlink(path)
        finally:
            os.close(fd)

    def _settle(self, path: Path) -> int:
        try:
            fd = _lock(path)
        except BlockingIOError:
            return 0  # its maker is at work
        if fd is None:
            return 0
        try:
            data = os.read(fd, MAX_READ)
            intent, whole = _read_hold(data)
            if intent is None:
                self.deliveries.give_up(path.name, "a hold that cannot be read")
                return 0
            if whole:
                self._due(path)
                return 1
            try:
                task = self.read(intent["task"])
            except NotFound:
                # a task moving between folders may be missed by one look: gone only
                # when it stays so
                if time.time() - os.fstat(fd).st_mtime < GONE_AFTER:
                    return 0
                return self._drop(path, intent, "the task is gone")
            except InvalidInput as exc:
                self.deliveries.give_up(path.name, f"its task cannot be read: {exc}")
                return 0
            attempts = task.attempts
            number = intent["attempt"]
            if "life" in intent:  # a cancel before any start (hold's cancel_of_life)
                ended = "cancelled" if cancelled_queued(task, intent["life"]) else None
            else:
                ended = attempts[number - 1].outcome if 0 < number <= len(attempts) else None
            if ended is None:
                return self._drop(path, intent, "the end was not recorded")
            if ended != intent["outcome"]:
                return self._drop(path, intent, f"ended as {ended} by a recovery")
            hook = _hook(self.config(), intent["kind"], intent["hook"])
            if hook is None or not hook.wants(task.envelope.type, ended):
                fresh, wait = recheck(self.config_file)
                if wait > 0:
                    return 0  # config.toml changes this moment: looked at again later
                hook = _hook(fresh, intent["kind"], intent["hook"]) if fresh else None
                if hook is None or not hook.wants(task.envelope.type, ended):
                    return self._drop(path, intent, "no notice wants it any more")
            size = data.find(b"\n") + 1  # its intent's line (_read_hold: it has one)
            self._fill(Hold(path, fd, path.name.split(".")[1], hook, size), ended,
                       task_doc(task))
            log.info("notices: the notice of task %s's end to %s, left by a process that "
                     "is gone, is due", intent["task"], intent["hook"])
            return 1
        finally:
            os.close(fd)

    def _drop(self, path: Path, intent: Mapping[str, Any], why: str) -> int:
        os.unlink(path)
        log.info("notices: a hold of task %s's notice to %s dropped: %s", intent["task"],
                 intent["hook"], why)
        return 0

    def _fill(self, hold: Hold, outcome: str, doc: Mapping[str, Any]) -> None:
        """Append the delivery to ``hold`` (over a torn one), fsync, make it due."""
        os.ftruncate(hold.fd, hold.size)
        os.lseek(hold.fd, hold.size, os.SEEK_SET)
        write_all(hold.fd, _delivery(hold.delivery, hold.hook, outcome, doc) + b"\n")
        os.fsync(hold.fd)
        if _DIE_BEFORE_DUE:  # tests only: a delivery whole in its hold, not due yet
            os.kill(os.getpid(), signal.SIGKILL)
        # not fsynced: a power cut that takes the rename back leaves the hold, whole,
        # which the recovery makes due
        self._due(hold.path)

    def _due(self, path: Path) -> None:
        os.rename(path, self.folder / _name(time.time(), path.name.split(".")[1], 0))

    def _drop_stale_tmp(self, path: Path) -> None:
        with suppress(FileNotFoundError):
            if time.time() - os.lstat(path).st_mtime < STALE_TMP:
                return  # its maker may not have locked it yet
            try:
                fd = _lock(path)
            except BlockingIOError:
                return
            if fd is not None:
                try:
                    os.unlink(path)
                finally:
                    os.close(fd)


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
    #: it took up nothing though deliveries were due: another process held each one
    blocked: bool = False


class Deliveries:
    """This host's webhook deliveries (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def lock_path(self) -> Path:
        return self.folder / SENDER_LOCK

    def add(self, hook: Webhook | Email, outcome: str, task: Mapping[str, Any]) -> str:
        """Queue one delivery of ``task``'s end to ``hook`` at once, with an id of its own
        (a runner's notices go through :class:`Notices`); its id."""
        delivery = secrets.token_hex(10)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.folder / _name(time.time(), delivery, 0),
                     _delivery(delivery, hook, outcome, task))
        return delivery

    def pending(self) -> list[str]:
        """The deliveries' names (not the holds: they are not due), in their order."""
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

    def send_pass(self, config: Config, now: float | None = None, post: Post | None = None,
                  until: float | None = None,
                  should_stop: Callable[[], bool] = lambda: False,
                  config_file: Path | None = None) -> Pass:
        """Send every delivery due now (``until``: stop starting new ones after this
        time.monotonic(); ``should_stop``: asked before each one); what it did with each.
        A delivery whose notice ``config`` lacks is set aside once ``config_file`` lacks
        it too, settled (:func:`recheck`). Only a :class:`Sender` calls it: it holds the
        sender lock."""
        post = post or _deliver
        delivered = tried = 0
        skipped = set()
        for name in self.due(now):
            if (until is not None and time.monotonic() > until) or should_stop():
                break
            parsed = _parse(name)
            assert parsed is not None
            done = self._send_one(name, parsed[1], parsed[2], config, post, config_file)
            if done is Tried.SKIPPED:
                skipped.add(name)
                continue
            tried += 1
            delivered += done is Tried.DELIVERED
        return Pass(delivered, tried, frozenset(skipped))

    def flush(self, home: Path, within: float = FLUSH_WAIT) -> None:
        """A runner that ends (``wait-queue --once``, dispatch): if a delivery is due and
        no sender is at work, start one and wait ``within`` seconds at most; a sender not
        done by then goes on alone. Its stderr is /dev/null (its lines are in
        hostctl.log): whoever reads this runner's output to its end (cron's mail, a
        front end) is not kept waiting for a sender that goes on."""
        if not self.due() or self.sending():
            return
        try:
            sender = start_sender(home, stderr=False)
        except OSError as exc:
            log.error("notices: no sender started: %s", exc)
            return
        try:
            code = sender.wait(within)
        except subprocess.TimeoutExpired:
            log.info("notices: sender %d goes on after this runner", sender.pid)
            return
        if code not in (0, SENDER_BLOCKED):
            log.error("notices: the sender exited with status %d (see hostctl.log)", code)

    def _send_one(self, name: str, delivery: str, attempts: int, config: Config,
                  post: Post, config_file: Path | None = None) -> Tried:
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return Tried.SKIPPED  # sent or moved by another sender meanwhile
        except OSError as exc:  # a symbolic link, a file this user may not read, ...
            return self._set_aside(name, f"cannot be opened: {exc.strerror or exc}")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Tried.SKIPPED  # another sender sends it now
            except OSError as exc:
                return self._set_aside(name, f"cannot be locked: {exc.strerror or exc}")
            if not path.exists():
                return Tried.SKIPPED  # done by the sender that held it before us
            try:
                kind, name_of_hook, body = _read_delivery(fd)
            except (OSError, ValueError, RecursionError) as exc:
                # whatever the file holds, it is set aside: it never stops the others
                return self._set_aside(name, f"unreadable: {exc}")
            hook = _hook(config, kind, name_of_hook)
            if hook is None:
                fresh, wait = recheck(config_file, wait=True)
                if wait > 0:  # config.toml keeps changing: the next sender looks again
                    log.info("notices: delivery %s waits for config.toml to settle",
                             delivery)
                    return Tried.SKIPPED
                hook = _hook(fresh, kind, name_of_hook) if fresh else None
            if hook is None:
                return self._set_aside(name, f"no {kind} notice {name_of_hook!r} in "
                                             "config.toml any more")
            try:
                status = post(hook, body, delivery)
                why = "" if 200 <= status < 300 else f"answered {status}"
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # refused, timed out (TimeoutError: also the request's deadline), a bad
                # address, an answer that is not HTTP
                why = str(getattr(exc, "reason", exc)) or type(exc).__name__
            if not why:
                path.unlink()
                return Tried.DELIVERED
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                return self._set_aside(name, f"{attempts} attempts, the last {why}")
            wait = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempts - 1))
            os.rename(path, self.folder / _name(time.time() + wait, delivery, attempts))
            log.warning("webhook %s: delivery %s not delivered (%s): again in %g s",
                        hook.name, delivery, why, wait)
            return Tried.KEPT
        finally:
            os.close(fd)

    def _set_aside(self, name: str, why: str) -> Tried:
        """:meth:`give_up`; KEPT once the file is out of the way, else SKIPPED (it is not
        taken up again in this sender's passes)."""
        return Tried.KEPT if self.give_up(name, why) else Tried.SKIPPED

    def give_up(self, name: str, why: str) -> bool:
        """Set ``name`` aside in failed/, with the reason beside it; whether it is out of
        the way (moved, or gone meanwhile). A failure is logged."""
        failed = self.folder / "failed"
        try:
            failed.mkdir(mode=0o700, exist_ok=True)
            os.rename(self.folder / name, failed / name)
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.error("notices: %s cannot be set aside in failed/ (%s): %s", name,
                      exc.strerror or exc, why)
            return False
        try:
            write_private(failed / f"{name}.reason", (why + "\n").encode())
        except OSError as exc:
            log.error("notices: the reason of %s cannot be written: %s", name,
                      exc.strerror or exc)
        log.error("webhook delivery %s given up: %s", name, why)
        return True


def send_notices(paths: Paths, config: Config) -> Sent:
    """``hostctl notify-send``: this process is the sender (see :class:`Sender`)."""
    return Sender(Deliveries(paths.spool / "notify"), config,
                  config_file=paths.config_file).run()


def start_sender(home: Path, *, stderr: bool) -> subprocess.Popen[bytes]:
    """Start ``hostctl notify-send`` for ``home`` in a session of its own: a runner's
    end, even by kill -9, does not reach it. Its stderr is the runner's (``stderr``: a
    runner that waits for it to its end), else /dev/null; its lines are in hostctl.log
    either way."""
    return subprocess.Popen(hostctl_command("--home", str(home), SENDER_COMMAND),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=None if stderr else subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def longest_request(config: Config) -> float:
    """The most one request may take under ``config``: the longest hook's timeout and
    REQUEST_MARGIN (0 without notices)."""
    return max((h.timeout + REQUEST_MARGIN for h in _hooks(config)), default=0.0)


def stop_wait(config: Config) -> float:
    """How long the daemon's stop waits at most for its sender's request in flight (a
    service manager's stop timeout must leave it that long)."""
    return longest_request(config) + STOP_MARGIN


def _within(seconds: float, call: Callable[[], int]) -> int:
    """``call()``, or TimeoutError once ``seconds`` have passed (SIGALRM: the sender is a
    process of its own, single-threaded; armed from its main thread alone). An alarm
    that comes once ``call`` has returned is ignored: an answer had is never undone."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    answered = False

    def expired(signum: int, frame: object) -> None:
        if not answered:
            raise TimeoutError(f"no answer within {seconds:g} s")

    before = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        status = call()
        answered = True
        return status
    finally:
        answered = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if before is None else before)


class Sender:
    """The process that sends this host's deliveries (``hostctl notify-send``, which the
    runners start: see the module docstring). Signals only set a flag: the delivery in
    flight is finished, none is started after it."""

    def __init__(self, deliveries: Deliveries, config: Config, within: float = SEND_FOR,
                 post: Post | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 config_file: Path | None = None) -> None:
        self.deliveries = deliveries
        self.config = config
        self.config_file = config_file  # read again before a delivery is set aside
        self.within = within
        self.post = post
        self.clock = clock
        self.stop_requested = False
        self.deadlines = False  # each request cut off at its deadline (run() sets it)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def run(self) -> Sent:
        """As a process of its own: TERM and INT stop it after the delivery in flight,
        and a request is cut off REQUEST_MARGIN seconds after its hook's timeout (an
        answer that trickles in byte by byte keeps each read within the timeout)."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        self.deadlines = True
        sent = self.send()
        if sent.busy:
            log.info("notices: another sender is at work")
        elif sent.tried:
            log.info("notices: %d delivered, %d not delivered", sent.delivered,
                     sent.tried - sent.delivered)
        if sent.blocked:
            log.info("notices: every delivery due is held by another process")
        if sent.left:
            log.info("notices: %d due wait for the next sender", sent.left)
        return sent

    def _post(self, hook: Webhook | Email, body: bytes, delivery: str) -> int:
        post = self.post or _deliver
        if not self.deadlines:
            return post(hook, body, delivery)
        return _within(hook.timeout + REQUEST_MARGIN, lambda: post(hook, body, delivery))

    def send(self) -> Sent:
        """Hold the sender lock and send what is due until nothing is, the time is up or
        a stop is asked; nothing if another sender holds the lock."""
        if not self.deliveries.folder.is_dir():
            return Sent()
        until = self.clock() + self.within
        delivered = tried = 0
        first = True
        while True:
            with flocked(self.deliveries.lock_path, wait=False, follow=False,
                         patience=LOCK_PATIENCE) as mine:
                if not mine:  # another sender took it: it sends what is due
                    return Sent(delivered, tried, busy=first)
                first = False
                last = Pass()
                while not self._over(until):
                    last = self.deliveries.send_pass(
                        self.config, post=self._post, should_stop=lambda: self._over(until),
                        config_file=self.config_file)
                    delivered, tried = delivered + last.delivered, tried + last.tried
                    if not last.tried:
                        break
            # a runner that saw the lock held while a delivery came due left it to us
            due = self.deliveries.due()
            if self._over(until) or not [n for n in due if n not in last.skipped]:
                blocked = not tried and any(n in last.skipped for n in due)
                return Sent(delivered, tried, left=len(due), blocked=blocked)

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
    task = doc.get("task") if isinstance(doc, dict) else None
    if not isinstance(task, dict):
        raise ValueError("the delivery's body is not a notice of a task's end")
    message = EmailMessage()
    message["Subject"] = (f"hostctl: {task.get('type')} on {task.get('context')}: "
                          f"{doc.get('outcome')}")
    message["From"] = hook.sender
    message["To"] = ", ".join(hook.to)
    message["Message-ID"] = f"<{delivery}@hostctl>"  # the same on a repeat
    message["X-Hostctl-Delivery"] = delivery
    lines = [f"{k}: {task.get(k)}" for k in ("id", "type", "context", "status", "reason",
                                              "created", "started", "finished")]
    message.set_content("\n".join([*lines, f"host: {doc.get('host')}", "",
                                    "The task, as hostctl task show --json gives it:",
                                    json.dumps(task, indent=2, ensure_ascii=False)]) + "\n")
    host, _, port = hook.smtp.rpartition(":")
    smtp = smtplib.SMTP(host.strip("[]"), int(port), timeout=hook.timeout)
    try:
        smtp.send_message(message)
        smtp.quit()
    finally:
        smtp.close()  # no QUIT after a failure: nothing more to wait for


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
