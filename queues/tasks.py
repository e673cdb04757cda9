"""Task lifecycle operations: what ``task add|list|show|log|retry|cancel``, ``queue status``
and ``provision-TYPE`` do, returning values for the CLI to render.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, TextIO

from hostctl import config as config_mod
from hostctl.contexts.names import display, parse_name
from hostctl.contexts.store import ContextStore
from hostctl.errors import Conflict, InvalidInput
from hostctl.files import tail
from hostctl.paths import Paths
from hostctl.provision.registry import Registry
from hostctl.provision.registry import load as load_registry
from hostctl.queues.process import is_task_group, signal_session
from hostctl.queues.spool import Spool
from hostctl.queues.task import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Envelope,
    Status,
    Task,
    new_id,
    parse_iso,
    utc_iso,
)

if TYPE_CHECKING:  # the worker is loaded only by what runs tasks
    from hostctl.queues.worker import Summary, Worker

MAX_DELAY = 366 * 86400


class Home:
    """Everything under one home, loaded on first use."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    @cached_property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.paths.config_file)

    @cached_property
    def registry(self) -> Registry:
        return load_registry(self.config)

    @cached_property
    def store(self) -> ContextStore:
        return ContextStore(self.paths)

    @cached_property
    def spool(self) -> Spool:
        return Spool(self.paths.spool, self.paths.logs,
                     self.config.spool.allow_network_filesystem)

    def writable(self) -> Spool:
        self.paths.ensure_home()
        self.spool.ensure()
        return self.spool

    def worker(self, concurrency: int | None = None, echo: TextIO | None = None) -> Worker:
        from hostctl.queues.worker import Worker

        self.paths.ensure_home()
        return Worker(self.paths, self.config, self.registry, concurrency=concurrency,
                      echo=echo)


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
    return Added(home.spool.get(task_id), created)


def run_now(home: Home, type_name: str, context: str, options: Mapping[str, str],
            echo: TextIO | None = None) -> tuple[Task, Summary]:
    """Run a task in the foreground (provision-TYPE), through the same spool and runner."""
    env = build(home, type_name, context, options, {}, 9)
    spool = home.writable()
    if spool.context_busy(env.context):
        print(f"hostctl: waiting for the task running on {env.context}", file=sys.stderr)
    claim = spool.publish_claimed(env, wait=True)
    summary = home.worker(echo=echo).run_claim(claim)
    return spool.get(env.id), summary


def get(home: Home, task_id: str) -> Task:
    return home.spool.get(task_id)


def list_tasks(home: Home, status: str | None = None, context: str | None = None) -> list[Task]:
    wanted = Status.parse(status) if status is not None else None
    ctx = display(parse_name(context)) if context is not None else None
    states = {  # a task set aside in quarantine/ is shown as an error, with its reason
        Status.QUEUED: ("new", "deferred"),
        Status.PROCESSING: ("active",),
    }.get(wanted, ("done", "quarantine")) if wanted else ("new", "deferred", "active",
                                                          "done", "quarantine")
    return [t for t in home.spool.tasks_in(states)
            if (wanted is None or t.status is wanted)
            and (ctx is None or t.envelope.context == ctx)]


def retry(home: Home, task_id: str) -> Task:
    home.paths.ensure_home()
    return home.spool.retry(task_id)


def cancel(home: Home, task_id: str, grace: float | None = None) -> Task:
    """Cancel a queued task (it never runs) or stop a running one (TERM, then KILL)."""
    home.paths.ensure_home()
    spool = home.spool
    task = spool.get(task_id)
    if task.status.finished:
        raise Conflict(f"task {task_id} has already ended ({task.status.label})")
    done = spool.cancel_queued(task_id)
    if done is not None:
        return done
    task = spool.get(task_id)
    if task.status.finished:
        return task
    task = spool.request_cancel(task_id)
    started = task.last("start") or {}
    found = started.get("pgid")
    pgid = found if isinstance(found, int) else 0
    same = pgid > 0 and is_task_group(started)
    if same:
        signal_session(pgid, signal.SIGTERM)  # all of the run, not only its group
    grace = home.config.worker.kill_grace if grace is None else grace
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline + 5:
        task = spool.get(task_id)
        if task.status.finished:
            return task
        if same and time.monotonic() >= deadline:
            if is_task_group(started):  # still the task's (its leader may be reaped now)
                signal_session(pgid, signal.SIGKILL)
            same = False
        time.sleep(0.05)
    return spool.get(task_id)


def follow_log(home: Home, task_id: str, follow: bool,
               poll: float = 0.1) -> Iterator[bytes]:
    """The task's log; with ``follow``, new output until the task has ended."""
    task = home.spool.get(task_id)
    return tail(home.spool.log_path(task.id), follow,
                lambda: home.spool.get(task_id).status.finished, poll)


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
    spool = home.spool
    tasks = spool.tasks_in(("new", "deferred", "active", "done"))
    counts = {s.label: 0 for s in Status}
    for t in tasks:
        counts[t.status.label] += 1
    raw = spool.counts()
    counts["deferred"] = raw["deferred"]
    counts["incoming"] = raw["incoming"]
    counts["quarantined"] = raw["quarantine"]
    counts["rejected"] = raw["rejected"]
    queued = [t for t in tasks if t.status is Status.QUEUED]
    oldest = None
    if queued:
        oldest = max(0.0, time.time() - min(parse_iso(t.envelope.created) for t in queued))
    return QueueStatus(counts, oldest, spool.quarantined(), spool.quarantined("rejected"))
