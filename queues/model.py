"""A task: an immutable submission plus an append-only history of what happened to it.

A task file holds JSON lines. The first line is the submission (the envelope)::

    {"format": 1, "id": "...", "type": "verify", "context": "@example.com",
     "options": {}, "context_options": {}, "priority": 5, "created": "...Z"}

Every later line is an event, appended (never rewritten) by the process that holds the
task's lock::

    {"event": "start", "attempt": 1, "at": "...", "pid": 123, "pgid": 123, "host": "..."}
    {"event": "end", "attempt": 1, "at": "...", "outcome": "success", "exit": 0,
     "reason": "", "result": {...}}
    {"event": "defer", "at": "...", "until": "...", "reason": "..."}
    {"event": "retry", "at": "..."}            # queued again by hand
    {"event": "cancel", "at": "..."}           # asked to stop

Where the file lies says whether the task is queued, processing or finished (see
``spool.py``); the last ``end`` event says how a finished task ended. A torn last line (a
crash in the middle of an append) is ignored.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from hostctl.contexts.schema import secret_field_names
from hostctl.contexts.store import SECRET_MASK
from hostctl.errors import InvalidInput
from hostctl.formats import check_format
from hostctl.process import host_name
from hostctl.times import utc_iso

FORMAT = 1
MAX_TASK_BYTES = 64 * 1024  # a submission larger than this is garbage
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5


class Status(Enum):
    """Task statuses with Aegir's numeric codes."""

    QUEUED = ("queued", 0)
    PROCESSING = ("processing", -1)
    SUCCESS = ("success", 1)
    ERROR = ("error", 2)
    WARNING = ("warning", 3)
    CANCELLED = ("cancelled", 4)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def code(self) -> int:
        return self.value[1]

    @property
    def finished(self) -> bool:
        return self.code > 0

    @classmethod
    def parse(cls, text: str) -> Status:
        for s in cls:
            if s.label == text:
                return s
        raise InvalidInput(
            f"unknown status {text!r}; known: {', '.join(s.label for s in cls)}"
        )


# outcomes an ``end`` event records; ``retry`` and ``lost`` are not final on their own
OUTCOMES = {"success", "warning", "error", "cancelled", "retry", "lost"}


@dataclass(frozen=True)
class Policy:
    """What the spool needs to know of a task type to recover and retry it."""

    max_attempts: int = 3
    rerun_on_loss: bool = True  # may a run whose worker died simply run again?
    backoff_base: float = 10.0
    backoff_max: float = 3600.0


def backoff(policy: Policy, attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half fixed, half random (never zero)."""
    ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** max(attempts - 1, 0))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))


_last_id = [0, 0]  # (ms, random part) of this process's last id from the clock
_last_lock = threading.Lock()


def _after_fork() -> None:
    """A forked child starts its own sequence: counting on from the parent's last id
    could repeat the parent's next one."""
    global _last_lock
    _last_id[:] = [0, 0]
    _last_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def new_id(now: float | None = None) -> str:
    """A unique, sortable id: 12 hex digits of milliseconds, then 8 random hex digits.

    Ids one process makes within one millisecond count up from the first one's random
    part (as monotonic ULIDs do), so they sort in the order they were made.
    """
    if now is not None:
        return f"{int(now * 1000):012x}{secrets.token_hex(4)}"
    with _last_lock:
        ms, rand = int(time.time() * 1000), secrets.randbits(31)
        if ms <= _last_id[0]:
            ms, rand = _last_id[0], _last_id[1] + 1
            if rand >= 1 << 32:
                ms, rand = ms + 1, 0
        _last_id[:] = [ms, rand]
    return f"{ms:012x}{rand:08x}"


def valid_id(text: str) -> bool:
    return len(text) == 20 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Envelope:
    """What was asked for: written once when the task is queued, never changed."""

    id: str
    type: str
    context: str  # '@name'
    options: Mapping[str, str] = field(default_factory=dict)
    context_options: Mapping[str, str] = field(default_factory=dict)
    priority: int = DEFAULT_PRIORITY
    created: str = ""
    submitter: int | None = None  # uid of whoever dropped it into incoming/, if anyone
    receipt: str = ""  # the dropper's token for its outbox status file (see dropbox.py)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "id": self.id,
            "type": self.type,
            "context": self.context,
            "options": dict(self.options),
            "context_options": dict(self.context_options),
            "priority": self.priority,
            "created": self.created,
        }
        if self.submitter is not None:
            doc["submitter"] = self.submitter
        if self.receipt:
            doc["receipt"] = self.receipt
        return doc

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), separators=(",", ":")) + "\n").encode()

    def dedup_key(self) -> tuple[str, str, str, str]:
        return (self.type, self.context, json.dumps(dict(self.options), sort_keys=True),
                json.dumps(dict(self.context_options), sort_keys=True))


def _str_map(doc: Mapping[str, Any], key: str) -> dict[str, str]:
    value = doc.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInput(f"{key!r} must be an object of strings")
    return dict(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_strict(data: bytes | str) -> Any:
    """JSON from a file hostctl did not write itself (a drop, a task file); whatever the
    bytes are, the one error is InvalidInput: not JSON, not UTF-8, nested too deep for
    the parser's stack, NaN or Infinity, a number of too many digits."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInput(f"not JSON: {why}"[:300]) from None


def decode_envelope(line: bytes, where: object = None) -> Envelope:
    """Parse and check a submission line; raise InvalidInput saying what is wrong, or
    NewerFormat (naming ``where``, the task's file) for a task a newer hostctl wrote."""
    doc = loads_strict(line)
    if not isinstance(doc, dict):
        raise InvalidInput("not a JSON object")
    problem = check_format(doc.get("format", FORMAT), FORMAT,
                           where or f"task {str(doc.get('id'))[:20]}")
    if problem:
        raise InvalidInput(problem)
    task_id = doc.get("id")
    if not isinstance(task_id, str) or not valid_id(task_id):
        raise InvalidInput("missing or malformed 'id' (20 lower-case hex digits)")
    for key in ("type", "context"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise InvalidInput(f"missing {key!r}")
    priority = doc.get("priority", DEFAULT_PRIORITY)
    if (not isinstance(priority, int) or isinstance(priority, bool)
            or not MIN_PRIORITY <= priority <= MAX_PRIORITY):
        raise InvalidInput("'priority' must be a whole number from 0 to 9")
    created = doc.get("created") or utc_iso(int(task_id[:12], 16) / 1000)
    if not isinstance(created, str):
        raise InvalidInput("'created' must be a string")
    submitter = doc.get("submitter")
    if submitter is not None and not isinstance(submitter, int):
        raise InvalidInput("'submitter' must be a uid")
    receipt = doc.get("receipt", "")
    if not isinstance(receipt, str) or (receipt and (len(receipt) != 32 or not all(
            c in "0123456789abcdef" for c in receipt))):
        raise InvalidInput("'receipt' must be 32 lower-case hex digits")
    return Envelope(
        id=task_id,
        type=doc["type"],
        context=doc["context"],
        options=_str_map(doc, "options"),
        context_options=_str_map(doc, "context_options"),
        priority=priority,
        created=created,
        submitter=submitter,
        receipt=receipt,
    )


@dataclass(frozen=True)
class Attempt:
    number: int
    started: str
    finished: str | None = None
    outcome: str | None = None
    exit: int | None = None
    reason: str = ""
    pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "started": self.started,
            "finished": self.finished,
            "outcome": self.outcome,
            "exit_code": self.exit,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Task:
    """A task as read from the spool: the envelope, its events and where it lies."""

    envelope: Envelope
    events: tuple[Mapping[str, Any], ...]
    state: str  # the spool folder: new, deferred, active, done (or quarantine)
    log_path: str = ""
    due: float | None = None  # for deferred tasks
    set_aside: str = ""  # for a task in quarantine/: why it was put there

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def quarantined(self) -> bool:
        """Set aside as garbage: shown as an error, it runs again only when retried."""
        return self.state == "quarantine"

    @property
    def attempts(self) -> list[Attempt]:
        out: list[Attempt] = []
        for ev in self.events:
            if ev.get("event") == "start":
                out.append(Attempt(int(ev.get("attempt", len(out) + 1)), str(ev.get("at")),
                                   pid=ev.get("pid")))
            elif ev.get("event") == "end" and out and out[-1].finished is None:
                last = out[-1]
                out[-1] = Attempt(last.number, last.started, str(ev.get("at")),
                                  str(ev.get("outcome")), ev.get("exit"),
                                  str(ev.get("reason", "")), last.pid)
        return out

    @property
    def attempt_count(self) -> int:
        """Attempts that count against max_attempts (since the last manual retry)."""
        n = 0
        for ev in self.events:
            if ev.get("event") == "start":
                n += 1
            elif ev.get("event") == "retry":
                n = 0
        return n

    def last_index(self, kind: str) -> int:
        """The index in :attr:`events` of the last event of ``kind``, or -1."""
        for i in range(len(self.events) - 1, -1, -1):
            if self.events[i].get("event") == kind:
                return i
        return -1

    def last(self, kind: str) -> Mapping[str, Any] | None:
        for ev in reversed(self.events):
            if ev.get("event") == kind:
                found: Mapping[str, Any] = ev
                return found
        return None

    @property
    def cancel_requested(self) -> bool:
        """A cancel event not yet honoured: none since, an end as ``cancelled`` or a
        ``task retry``. A start after it does not hide it (a cancel written as a
        handed or claimed task was being started), nor does an attempt that ended
        otherwise (it ended as the cancel came: the task is not to run again)."""
        for ev in reversed(self.events):
            kind = ev.get("event")
            if kind == "cancel":
                return True
            if kind == "retry" or (kind == "end" and ev.get("outcome") == "cancelled"):
                return False
        return False

    @property
    def ended_unmoved(self) -> bool:
        """Its last event is an end as cancelled: a task found queued so was cancelled by
        a process that died before it moved the file on (the end is written; only the
        move is left)."""
        return bool(self.events) and self.events[-1].get("event") == "end" and \
            self.events[-1].get("outcome") == "cancelled"

    @property
    def status(self) -> Status:
        if self.state in ("new", "deferred"):
            return Status.QUEUED
        if self.state == "active":
            return Status.PROCESSING
        if self.state == "quarantine":
            return Status.ERROR
        end = self.last("end")
        outcome = end.get("outcome") if end else None
        return {
            "success": Status.SUCCESS,
            "warning": Status.WARNING,
            "cancelled": Status.CANCELLED,
        }.get(str(outcome), Status.ERROR)

    @property
    def started(self) -> str | None:
        attempts = self.attempts
        return attempts[-1].started if attempts else None

    @property
    def finished(self) -> str | None:
        if not self.status.finished:
            return None
        end = self.last("end")
        return str(end.get("at")) if end else None

    @property
    def result(self) -> Mapping[str, Any]:
        end = self.last("end")
        value = end.get("result") if end and self.status.finished else None
        return value if isinstance(value, dict) else {}

    @property
    def reason(self) -> str:
        if self.state == "quarantine":  # it will not run as it is: an error, until retried
            return f"quarantined: {self.set_aside or 'no reason recorded'}"
        end = self.last("end")
        return str(end.get("reason", "")) if end else ""

    def to_json(self) -> dict[str, Any]:
        env = self.envelope
        return {
            "id": env.id,
            "type": env.type,
            "context": env.context,
            "status": self.status.label,
            "status_code": self.status.code,
            "options": masked(env.options),
            "context_options": masked(env.context_options),
            "priority": env.priority,
            "created": env.created,
            "started": self.started,
            "finished": self.finished,
            "attempts": [a.to_json() for a in self.attempts],
            "due": utc_iso(self.due) if self.due is not None and self.state == "deferred"
            else None,
            "reason": self.reason,
            "result": dict(self.result),
            "log": self.log_path,
            "submitter": env.submitter,
        }


def masked(values: Mapping[str, str]) -> dict[str, str]:
    """``values`` as shown to anyone (task show, task list, a receipt): the value of a key
    that names a secret field (``cron_key``, ``db-passwd``...) is masked, as `context show`
    masks it. The task file keeps it: the run needs it."""
    secret = _secret_names()
    return {k: SECRET_MASK if v and k.replace("-", "_") in secret else v
            for k, v in values.items()}


@functools.cache
def _secret_names() -> frozenset[str]:
    return secret_field_names()


def decode_task(data: bytes, state: str, log_path: str = "", due: float | None = None,
                where: object = None) -> Task:
    """Parse a task file; a torn final line is ignored, a bad first line is an error
    (NewerFormat, naming ``where``, for a task a newer hostctl wrote)."""
    if len(data) > MAX_TASK_BYTES * 16:
        raise InvalidInput(f"task file of {len(data)} bytes is too large")
    lines = data.split(b"\n")
    first = lines[0]
    if len(first) > MAX_TASK_BYTES:
        raise InvalidInput(f"submission of {len(first)} bytes is larger than {MAX_TASK_BYTES}")
    if not first.strip():
        raise InvalidInput("empty task file")
    if len(lines) == 1:
        # no newline at all: the writer may have been cut off; accept only whole JSON
        pass
    env = decode_envelope(first, where)
    events = []
    for raw in lines[1:]:
        if not raw.strip():
            continue
        try:
            ev = loads_strict(raw)
        except InvalidInput:
            continue  # a torn append
        if isinstance(ev, dict) and isinstance(ev.get("event"), str):
            events.append(ev)
    return Task(env, tuple(events), state, log_path, due)


def record_name(name: str) -> str:
    """A runner's record name (the periodic queues' state): an identifier, so that it can
    name a file or a row and nothing else."""
    if not name.isidentifier():
        raise InvalidInput(f"malformed record name {name!r}")
    return name


def encode_task(task: Task) -> bytes:
    """A task as its file holds it: the submission, then each event, one line each."""
    return task.envelope.encode() + b"".join(
        (json.dumps(dict(ev), separators=(",", ":"), default=str) + "\n").encode()
        for ev in task.events)


def encode_event(kind: str, **fields: Any) -> bytes:
    doc = {"event": kind, "at": utc_iso(), **fields}
    return (json.dumps(doc, separators=(",", ":"), default=str) + "\n").encode()


def pid_host() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": host_name()}


class Counts(NamedTuple):
    """How many tasks are where."""

    queued: int  # ready to run
    deferred: int  # waiting for their time
    processing: int  # claimed by a worker
    finished: int
    incoming: int  # dropped by front ends, not yet admitted
    quarantined: int  # garbage set aside
    rejected: int  # refused submissions


class StatusCounts(NamedTuple):
    """``queue status``: how many tasks each status has (garbage set aside apart: see
    :class:`Counts`), and when the oldest queued one was queued (Unix time; None: none
    is queued)."""

    by_status: Mapping[Status, int]
    oldest_queued: float | None


#: the queue of tasks routed to no server in particular (and the spool's one queue)
DEFAULT_QUEUE = "hostctl"
#: the upper bounds (seconds) of the histogram of attempts' durations (``hostctl metrics``)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
                    math.inf)


class Tally(NamedTuple):
    """The ``attempts`` of one task type that ended with one outcome, counted since the
    queue began: ``timed`` of them with a known duration, ``seconds`` in all, ``buckets`` the
    histogram's cumulative counts (one per DURATION_BUCKETS bound)."""

    type: str
    outcome: str
    attempts: int = 0
    timed: int = 0
    seconds: float = 0.0
    buckets: tuple[int, ...] = (0,) * len(DURATION_BUCKETS)


class TaskQuery(NamedTuple):
    """Which tasks ``recent`` lists, newest first (by id: when they were made)."""

    statuses: frozenset[Status] | None = None
    context: str | None = None  # a display name (@a.example)
    type: str | None = None
    since: float | None = None  # made at or after (Unix time)
    limit: int | None = None  # at most this many (None: all)

    def id_floor(self) -> str | None:
        """The smallest id a task made at ``since`` can have (ids sort by time)."""
        return None if self.since is None else f"{max(0, int(self.since * 1000)):012x}" + \
            "0" * 8

    def wants(self, task: Task) -> bool:
        return ((self.statuses is None or task.status in self.statuses)
                and (self.context is None or task.envelope.context == self.context)
                and (self.type is None or task.envelope.type == self.type)
                and (self.since is None or task.id >= (self.id_floor() or "")))


class Depth(NamedTuple):
    """One queue's waiting tasks (a cluster: one per server)."""

    queue: str
    ready: int
    deferred: int
    oldest_age: float | None  # seconds since the oldest ready task was queued


class WorkerInfo(NamedTuple):
    """A registered worker (``wait-queue``)."""

    pid: int
    host: str
    started: str
    last_seen: str
    tasks_run: int
    alive: bool

    def to_json(self) -> dict[str, Any]:
        return self._asdict()
