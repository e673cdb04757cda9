"""The seam between how a task runs and where it is queued.

hostctl's runners (dispatch, wait-queue, provision-TYPE) talk to a queue only through
this interface. The local spool (``spool.py``) implements it; a backend on a distributed
engine implements the same calls and passes the same reliability tests.
Semantics: at-least-once. A claimed task is owned by one live worker; when the owner
dies, ``sweep`` counts the run as an attempt and queues the task again or ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hostctl.queues.spool import Claim, Policy
from hostctl.queues.task import Envelope, Task


class QueueBackend(Protocol):
    def publish(self, env: Envelope, delay: float = 0.0,
                dedup: bool = True) -> tuple[str, bool]:
        """Queue a task durably; return its id (an identical queued task's, if any)."""

    def claim(self, check: Callable[[Envelope], None] | None = None, limit: int = 1,
              skip_contexts: set[str] | None = None) -> list[Claim]:
        """Take up to ``limit`` ready tasks, at most one per context, for this process."""

    def heartbeat(self, claim: Claim) -> None:
        """Say that the owner of ``claim`` is alive."""

    def finish(self, claim: Claim, outcome: str, **fields: Any) -> None:
        """Complete (or fail) the claimed task with ``outcome``."""

    def defer(self, claim: Claim, delay: float, outcome: str = "retry",
              **fields: Any) -> None:
        """End this attempt and queue the task again after ``delay`` seconds."""

    def retry(self, task_id: str) -> Task:
        """Queue a finished task again under the same id."""

    def list(self, states: tuple[str, ...] = ...) -> list[Task]:
        """Every task, in id order."""

    def get(self, task_id: str) -> Task:
        """One task by id."""

    def sweep(self, policy: Callable[[Envelope], Policy],
              now: float | None = None) -> list[str]:
        """Recover the tasks of dead owners; make due tasks ready."""
