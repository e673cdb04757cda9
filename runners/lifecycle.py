"""Task lifecycle operations: what ``task add|list|show|log|retry|cancel``, ``queue status``
and ``provision-TYPE`` do, returning values for the CLI to render.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hostctl.contexts.names import display, parse_name
from hostctl.errors import Conflict, InvalidInput
from hostctl.process import host_name, is_task_group, signal_session
from hostctl.queues.model import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Envelope,
    Status,
    Task,
    TaskQuery,
    new_id,
)
from hostctl.runners.home import Home
from hostctl.runners.notify import Deliveries, Notices, life
from hostctl.times import utc_iso

MAX_DELAY = 366 * 86400
_DIE_BEFORE_CANCEL = os.environ.get("HOSTCTL_TEST_DIE_BEFORE_CANCEL") == "1"


@dataclass(frozen=True)
class Added:
    task: Task
    created: bool


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` items into a dict; a key given twice is refused."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_") if what == "--context-option" else key.strip()
        if not eq or not key:
            raise InvalidInput(f"{what} takes KEY=VALUE, not {item!r}")
        if key in out:
            raise InvalidInput(f"{what} {key} is given twice")
        out[key] = value
    return out


def build(home: Home, type_name: str, context: str, options: Mapping[str, str],
          context_options: Mapping[str, str], priority: int) -> Envelope:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidInput(f"--priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}")
    env = Envelope(
        id=new_id(), type=type_name, context=display(parse_name(context)),
        options=dict(options), context_options=dict(context_options), priority=priority,
        created=utc_iso(),
    )
    home.registry.validate(env, home.store)
    return env


def add(home: Home, type_name: str, context: str, options: Mapping[str, str],
        context_options: Mapping[str, str], priority: int = 5, delay: float = 0) -> Added:
    """Validate and queue a task; an identical queued task is returned instead."""
    if not 0 <= delay <= MAX_DELAY:
        raise InvalidInput(f"--delay must be from 0 to {MAX_DELAY} seconds")
    env = build(home, type_name, context, options, context_options, priority)
    task_id, created = home.writable().publish(env, delay=delay)
    return Added(home.queue.get(task_id), created)


def get(home: Home, task_id: str) -> Task:
    return home.queue.get(task_id)


_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: an age (``90s``, ``30m``, ``2h``, ``7d``, ``1w``) or an ISO 8601 date or
    time (UTC unless it says otherwise); Unix time."""
    found = _AGO.fullmatch(text.strip())
    if found:
        return (time.time() if now is None else now) - float(found[1]) * _UNITS[found[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"--since takes an age (30m, 2h, 7d) or an ISO 8601 date or "
                           f"time, not {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def task_query(status: str | None = None, context: str | None = None,
               type_name: str | None = None, since: str | None = None,
               limit: int | None = None) -> TaskQuery:
    """The filters of ``task list``, checked (InvalidInput)."""
    if limit is not None and limit < 0:
        raise InvalidInput("--limit takes 0 (every task) or more")
    return TaskQuery(
        statuses=frozenset([Status.parse(status)]) if status is not None else None,
        context=display(parse_name(context)) if context is not None else None,
        type=type_name, since=parse_since(since) if since is not None else None,
        limit=limit or None)


def list_tasks(home: Home, query: TaskQuery) -> list[Task]:
    """The tasks ``query`` wants, newest first."""
    return home.queue.recent(query)


def retry(home: Home, task_id: str) -> Task:
    home.paths.ensure_home()
    return home.queue.retry(task_id)


def home_notices(home: Home) -> Notices:
    """The notices of ``home``'s task ends, for a command that records ends itself
    (a cancel, a pause's sweep), outside a worker."""
    return Notices(Deliveries(home.paths.spool / "notify"), lambda: home.config,
                   home.queue.get, config_file=home.paths.config_file)


def cancel(home: Home, task_id: str, grace: float | None = None) -> Task:
    """Cancel a queued task (it never runs) or stop a running one (TERM, then KILL)."""
    home.paths.ensure_home()
    queue = home.queue
    task = queue.get(task_id)
    if task.status.finished:
        raise Conflict(f"task {task_id} has already ended ({task.status.label})")
    # a cancel before the task started ends it: its notices are held first, as a
    # worker's are before it records an end (runners/notify.py)
    notices = home_notices(home)
    held = notices.hold(task.id, task.envelope.type, 0, "cancelled", cancel_of_life=life(task))
    if _DIE_BEFORE_CANCEL:  # tests only: held, the cancel not recorded
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        done = queue.cancel_queued(task_id)
    except BaseException:
        notices.release(held)  # recorded or not: the next sweep's recovery finds out
        raise
    if done is not None:
        if notices.complete(held):
            notices.deliveries.flush(home.paths.home, within=0.0)  # it goes on alone
        return done
    notices.withdraw(held)  # not queued any more: its end is a worker's to tell
    task = queue.get(task_id)
    if task.status.finished:
        return task
    task = queue.request_cancel(task_id)
    started = task.last("start") or {}
    found = started.get("pgid")
    pgid = found if isinstance(found, int) else 0
    # the run's session is signalled from here only on the host it runs on; elsewhere (a
    # cluster) its worker sees the request and stops it
    here = started.get("host") in (None, host_name())
    same = pgid > 0 and here and is_task_group(started)
    if same:
        signal_session(pgid, signal.SIGTERM)  # all of the run, not only its group
    grace = home.config.worker.kill_grace if grace is None else grace
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline + 5:
        task = queue.get(task_id)
        if task.status.finished:
            return task
        if same and time.monotonic() >= deadline:
            if is_task_group(started):  # still the task's (its leader may be reaped now)
                signal_session(pgid, signal.SIGKILL)
            same = False
        time.sleep(0.05)
    return queue.get(task_id)


def follow_log(home: Home, task_id: str, follow: bool,
               poll: float = 0.1) -> Iterator[bytes]:
    """The task's log; with ``follow``, new output until the task has ended."""
    return home.queue.read_log(task_id, follow, poll)


@dataclass(frozen=True)
class Waited:
    """What ``task wait`` saw: the tasks that ended (as ``task show --json`` gives
    them), in the order they ended, and the ids still unfinished when it gave up."""

    ended: list[dict[str, Any]]
    pending: list[str]


def wait_tasks(look: Callable[[str], Mapping[str, Any]], ids: list[str],
               timeout: float | None = None, on_end: Callable[[Mapping[str, Any]], None]
               = lambda _doc: None, poll: float = 0.1,
               clock: Callable[[], float] = time.monotonic) -> Waited:
    """Wait until every task of ``ids`` has ended (``look(id)``: the task as ``task show
    --json`` gives it; a status code > 0 is an end), or ``timeout`` seconds. Each id is
    looked up once first, so a wrong one is refused before anything is waited for."""
    pending = list(dict.fromkeys(ids))
    ended: list[dict[str, Any]] = []
    deadline = None if timeout is None else clock() + timeout
    while True:
        still = []
        for task_id in pending:
            doc = dict(look(task_id))
            if int(doc.get("status_code") or 0) > 0:
                ended.append(doc)
                on_end(doc)
            else:
                still.append(task_id)
        pending = still
        if not pending or (deadline is not None and clock() >= deadline):
            return Waited(ended, pending)
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - clock())))


@dataclass(frozen=True)
class QueueStatus:
    counts: Mapping[str, int]
    oldest_queued_age: float | None
    quarantined: list[tuple[str, str]]
    rejected: list[tuple[str, str]]

    def to_json(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "oldest_queued_age": self.oldest_queued_age,
            "quarantined": [{"file": f, "reason": r} for f, r in self.quarantined],
            "rejected": [{"file": f, "reason": r} for f, r in self.rejected],
        }


def queue_status(home: Home) -> QueueStatus:
    queue = home.queue
    found = queue.status_counts()
    counts = {s.label: found.by_status.get(s, 0) for s in Status}
    raw = queue.counts()
    counts["deferred"] = raw.deferred
    counts["incoming"] = raw.incoming
    counts["quarantined"] = raw.quarantined
    counts["rejected"] = raw.rejected
    oldest = None
    if found.oldest_queued is not None:
        oldest = max(0.0, time.time() - found.oldest_queued)
    return QueueStatus(counts, oldest, queue.set_aside(), queue.set_aside(rejected=True))
