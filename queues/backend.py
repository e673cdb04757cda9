"""The queue seam: everything the runners, the command line and the front end's admission
ask of a queue, typed with the task model's own types (queues/model.py).

The local spool (``spool.py``) is one implementation; a backend on a distributed engine
implements the same calls and passes the same tests (``tests/test_queue_contract.py`` runs
them on every implementation, through a proxy that refuses any call outside this
interface), and the runners (``runners/``) stay as they are. Nothing here names a folder,
a file descriptor or a lock file: those are the spool's own business.

Semantics: at least once. A claimed task is owned by one live worker; when the owner
dies, ``sweep`` counts the run as an attempt and queues the task again or ends it. The
spool knows an owner is alive by the claim's file lock, so its ``heartbeat`` is only a
touch; a backend that cannot lock calls it a lease and renews it on ``heartbeat``.

The words of a task queue map onto these calls: publish = ``publish``; claim = ``claim``;
heartbeat = ``heartbeat``; complete and fail = ``finish`` (with the outcome); retry =
``defer`` (this attempt ended, run again later) and ``retry`` (a finished task, again);
cancel = ``cancel_queued`` and ``request_cancel``; list and show = ``tasks``/``get``;
follow a log = ``read_log``; recover = ``sweep`` (which tells its caller of the ends it
records, for their notices); pause = ``pause``/``resume``; the leader of the periodic
queues = ``leader``; their stored state = ``read_record`` and ``write_record``; liveness
of workers = ``register_worker``/``workers``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from hostctl.errors import OperationFailed
from hostctl.queues.model import (
    Counts,
    Depth,
    Envelope,
    Policy,
    Status,
    StatusCounts,
    Tally,
    Task,
    TaskQuery,
    WorkerInfo,
)


class LeaseLost(OperationFailed):
    """``heartbeat``: the claim is no longer this process's (another took it over, or it
    could not be renewed for so long that another may now): whatever runs of the task
    here must stop at once."""


@runtime_checkable
class TaskClaim(Protocol):
    """A task held by this worker until it is finished, deferred, requeued or released."""

    @property
    def task(self) -> Task: ...

    def append(self, kind: str, **fields: Any) -> None:
        """Record one event of the task (start, cancel, ...), whole or not at all."""

    def reload(self) -> Task:
        """The task as recorded now (a cancel asked for meanwhile, say)."""

    def grew(self) -> bool:
        """Whether anyone else may have recorded something since this claim last read or
        wrote the task (when False, :meth:`reload` would say nothing new)."""

    def release(self) -> None:
        """Let go without recording anything: a sweep finds the task later."""


class TaskLog(Protocol):
    """Where a running task's output goes, while its worker holds it."""

    def write(self, data: bytes) -> None:
        """Append all of ``data`` (OSError when it cannot: a full disk, say)."""

    def close(self) -> None: ...


class Watch(Protocol):
    """Something to sleep on (``select``) until the queue may have changed: a task
    published, a submission dropped, a deferred task coming due, the queue resumed."""

    def fileno(self) -> int: ...

    def drain(self) -> object:
        """Forget what woke the sleeper (until the next change)."""

    def close(self) -> None: ...


class Ends(Protocol):
    """Who hears of each end that the queue records of its own accord (the runners write
    its notices around it: runners/notify.py): an attempt's end that a
    :meth:`QueueBackend.sweep` records, and the cancel of a task that a claim finds
    asked for before the task started. Given to ``sweep`` and ``recovery``; a queue
    keeps the last one it was given for its claims."""

    def ending(self, task: Task, outcome: str) -> AbstractContextManager[object]:
        """Entered just before the end of ``task`` is recorded as ``outcome`` (``task``
        as read then: its last attempt's ``start`` in it, or none since its last end),
        left once it is recorded; left by an exception when it may not be."""


class Registration(Protocol):
    """A worker's entry in the queue's list of live workers, held while it lives."""

    def update(self, tasks_run: int) -> None:
        """Say the worker is still there (and how many tasks it has run)."""

    def close(self) -> None:
        """Leave the list."""


@runtime_checkable
class QueueBackend(Protocol):
    # -- where tasks come from -------------------------------------------------------
    def ensure(self) -> None:
        """Make the queue usable (create it, check where it lives)."""

    def publish(self, env: Envelope, delay: float = 0.0,
                dedup: bool = True) -> tuple[str, bool]:
        """Queue a task durably; return its id (an identical queued task's, if any) and
        whether it is new."""

    def publish_claimed(self, env: Envelope, wait: bool = True) -> TaskClaim:
        """Queue a task already claimed by the caller (``provision-TYPE`` runs it in the
        foreground); with ``wait``, once the task running on its context has ended."""

    def context_busy(self, context: str) -> bool:
        """Whether a task runs on ``context`` now."""

    def admit(self, check: Callable[[Envelope], None]) -> list[str]:
        """Take in what front ends submitted, after ``check``; one note per submission."""

    def has_submissions(self) -> bool:
        """Whether front ends' submissions wait for :meth:`admit`."""

    # -- what is in it ---------------------------------------------------------------
    def get(self, task_id: str) -> Task:
        """One task by id (NotFound, InvalidInput for a malformed id)."""

    def tasks(self, statuses: Collection[Status] | None = None,
              strict: bool = False) -> list[Task]:
        """Every task (of these statuses), in id order; a task set aside as garbage is
        shown as an error, with its reason. A task a newer hostctl wrote is passed over
        and said once in the log, or, ``strict``, refused (NewerFormat: upgrade-home)."""

    def recent(self, query: TaskQuery) -> list[Task]:
        """The tasks ``query`` wants, newest first, at most ``query.limit``: read in that
        order, so a short listing of a long history reads only what it shows."""

    def counts(self) -> Counts: ...

    def status_counts(self) -> StatusCounts:
        """How many tasks each status has, garbage set aside apart, and when the oldest
        queued one was queued (``queue status``), reading no more of the tasks than the
        backend needs to."""

    def set_aside(self, rejected: bool = False) -> list[tuple[str, str]]:
        """(entry, reason) of the garbage set aside (``rejected``: of the refused
        submissions)."""

    def read_log(self, task_id: str, follow: bool, poll: float = 0.1) -> Iterator[bytes]:
        """The task's log; with ``follow``, new output until the task has ended."""

    # -- what a user does to a task --------------------------------------------------
    def retry(self, task_id: str) -> Task:
        """Queue a finished task again under the same id."""

    def cancel_queued(self, task_id: str) -> Task | None:
        """End a task that has not started (it never runs); None when it has started."""

    def request_cancel(self, task_id: str) -> Task:
        """Ask the worker that runs the task to stop it (recorded on the task)."""

    # -- what a worker does ----------------------------------------------------------
    def sweep(self, policy: Callable[[Envelope], Policy], now: float | None = None,
              ends: Ends | None = None) -> list[str]:
        """Recover the tasks of dead owners; return one note per task recovered. Each end
        of an attempt it records (a loss, a retry, a cancel) is recorded inside
        ``ends.ending(task, outcome)``; a backend that recovers such a task elsewhere
        too (a claim that finds its context held by a dead owner's task) does the same,
        with the ``ends`` of its last sweep."""

    def recovery(self, policy: Callable[[Envelope], Policy], ends: Ends | None) -> None:
        """The retry rules and the ``ends`` a recovery outside a sweep goes by (a claim
        that finds its context held by a dead owner's task: a foreground run started
        before any sweep of this process); a sweep sets them too."""

    def promote_due(self, now: float | None = None) -> int:
        """Make the deferred tasks whose time has come ready; return how many."""

    def next_due(self) -> float | None:
        """When the next deferred task comes due (epoch seconds), if any."""

    def claim(self, check: Callable[[Envelope], None] | None = None, limit: int = 1,
              skip_contexts: set[str] | None = None,
              ahead: bool = False) -> list[TaskClaim]:
        """Take up to ``limit`` ready tasks, at most one per context and none on
        ``skip_contexts``; a task ``check`` refuses is set aside with the reason.
        ``ahead``: taken while every slot is busy, to start once one frees (a queue
        may hand tasks to a process whose claim found none: not to this one)."""

    def hold(self) -> None:
        """This process takes nothing for now (it stops, the queue is paused, the disk is
        full): what the queue set aside for it alone goes back, for another worker."""

    def open_log(self, env: Envelope) -> TaskLog:
        """Where the task's output goes."""

    def result_path(self, env: Envelope) -> str:
        """Where the task's child writes its structured result (``$HOSTCTL_RESULT``):
        a file on the worker's machine, read back by the worker."""

    def started(self, claim: TaskClaim) -> None:
        """The claimed task's child runs (its ``start`` event is recorded): tell whoever
        follows the task."""

    def heartbeat(self, claim: TaskClaim) -> None:
        """The owner of ``claim`` is alive; LeaseLost when the claim is no longer its
        own (the run must stop now), another HostctlError when the queue cannot be told
        this time."""

    def finish(self, claim: TaskClaim, outcome: str, **fields: Any) -> None:
        """End the task with ``outcome`` (success, warning, error, cancelled, lost)."""

    def defer(self, claim: TaskClaim, delay: float, outcome: str = "retry",
              **fields: Any) -> None:
        """End this attempt and queue the task again after ``delay`` seconds."""

    def requeue(self, claim: TaskClaim) -> None:
        """Give back a claimed task that never started (no attempt counted)."""

    def watch(self) -> Watch | None:
        """Something to sleep on until the queue changes; None where there is none (the
        caller then looks again now and then)."""

    # -- the queue as a whole --------------------------------------------------------
    def pause(self) -> None:
        """No worker starts a task until :meth:`resume` (they keep sweeping and
        admitting)."""

    def resume(self) -> None: ...

    def paused(self) -> bool: ...

    def running(self) -> list[str]:
        """The ids of the tasks that run now."""

    def leader(self) -> AbstractContextManager[bool]:
        """Try to become the one runner that runs the periodic queues now: True inside
        the block if this caller is it (the others get False at once)."""

    def read_record(self, name: str) -> bytes | None:
        """A runner's stored record (the periodic queues' state), or None."""

    def write_record(self, name: str, data: bytes) -> None:
        """Store a runner's record durably, whole or not at all."""

    def register_worker(self, pid: int, started: str, max_runtime: float) -> Registration:
        """Enter a long-lived worker in the list of live workers."""

    def workers(self) -> list[WorkerInfo]:
        """The registered workers; the dead ones are reported once, then forgotten."""

    def collect(self, retention_days: float, now: float, limit: int) -> int:
        """Forget up to ``limit`` finished tasks (and refused submissions) older than
        ``retention_days``; return how many finished tasks went."""

    def collectable(self, retention_days: float, now: float) -> int:
        """How many finished tasks :meth:`collect` would forget."""

    # -- the figures (``hostctl metrics``) --------------------------------------------
    def tally(self, type_name: str, outcome: str, seconds: float | None) -> None:
        """Count one attempt's end for good (kept across restarts and :meth:`collect`,
        summed over every process); OSError or HostctlError when it cannot be written:
        the caller goes on (a count is never worth a task)."""

    def tallies(self) -> list[Tally]:
        """The attempts counted so far, by task type and outcome."""

    def depths(self) -> list[Depth]:
        """Each queue's waiting tasks."""
