"""The seam between how a task runs and where it is queued.

The worker (``worker.py``: what ``dispatch``, ``wait-queue`` and ``provision-TYPE`` use to
run tasks) talks to its queue only through :class:`QueueBackend`, and to a task it holds
only through :class:`TaskClaim`; ``tests/test_backend.py`` runs a worker on a queue that
offers nothing else. The local spool (``spool.py``) implements both; a backend on a
distributed engine implements the same calls and passes the same reliability tests,
and the way a task runs (``provision/runner.py``, ``worker.py``) stays as it is.

Semantics: at least once. A claimed task is owned by one live worker; when the owner
dies, ``sweep`` counts the run as an attempt and queues the task again or ends it. The
spool knows an owner is alive by the claim's file lock, so its ``heartbeat`` is only a
touch; a backend that cannot lock calls it a lease and renews it on ``heartbeat``.

The issue's words map onto these calls: publish = ``publish``; claim = ``claim``;
heartbeat = ``heartbeat``; complete and fail = ``finish`` (with the outcome); retry =
``defer`` (this attempt ended, run again later) and ``retry`` (a finished task, again);
list = ``list``/``get``; sweep = ``sweep``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from hostctl.queues.spool import Policy
from hostctl.queues.task import Envelope, Task


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


@runtime_checkable
class QueueBackend(Protocol):
    # -- where tasks come from -------------------------------------------------------
    def publish(self, env: Envelope, delay: float = 0.0,
                dedup: bool = True) -> tuple[str, bool]:
        """Queue a task durably; return its id (an identical queued task's, if any) and
        whether it is new."""

    def get(self, task_id: str) -> Task:
        """One task by id."""

    def tasks_in(self, states: tuple[str, ...] = ...) -> list[Task]:
        """Every task, in id order."""

    def retry(self, task_id: str) -> Task:
        """Queue a finished task again under the same id."""

    # -- what a worker does ------------------------------------------------------------
    def ensure(self) -> None:
        """Make the queue usable (create it, check where it lives)."""

    def sweep(self, policy: Callable[[Envelope], Policy],
              now: float | None = None) -> list[str]:
        """Recover the tasks of dead owners; return one note per task recovered."""

    def admit(self, check: Callable[[Envelope], None]) -> list[str]:
        """Take in what front ends submitted, after ``check``; one note per submission."""

    def promote_due(self, now: float | None = None) -> int:
        """Make the deferred tasks whose time has come ready; return how many."""

    def next_due(self) -> float | None:
        """When the next deferred task comes due (epoch seconds), if any."""

    def claim(self, check: Callable[[Envelope], None] | None = None, limit: int = 1,
              skip_contexts: set[str] | None = None) -> list[Any]:
        """Take up to ``limit`` ready tasks (:class:`TaskClaim`), at most one per context
        and none on ``skip_contexts``; a task ``check`` refuses is set aside with the
        reason."""

    def open_log(self, env: Envelope) -> int:
        """A file descriptor to append the task's log to."""

    def result_path(self, env: Envelope) -> str:
        """Where the task's child writes its structured result (``$HOSTCTL_RESULT``)."""

    def started(self, claim: Any) -> None:
        """The claimed task's child runs (its ``start`` event is recorded): tell whoever
        follows the task."""

    def heartbeat(self, claim: Any) -> None:
        """The owner of ``claim`` is alive."""

    def finish(self, claim: Any, outcome: str, **fields: Any) -> None:
        """End the task with ``outcome`` (success, warning, error, cancelled, lost)."""

    def defer(self, claim: Any, delay: float, outcome: str = "retry",
              **fields: Any) -> None:
        """End this attempt and queue the task again after ``delay`` seconds."""

    def requeue(self, claim: Any) -> None:
        """Give back a claimed task that never started (no attempt counted)."""
