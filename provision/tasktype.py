"""What a task type is, what its code receives, and what it may read of its context.

The vocabulary shared by the registry (which types exist), the runner (how one runs) and
every task's code (builtin.py, site.py, plugins). A request to run a task reaches this
floor as plain data (:class:`TaskRequest`): the queue's envelope has that shape, and
nothing here knows the queue.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hostctl.config import CommandTask
from hostctl.contexts.names import display, parse_name
from hostctl.contexts.store import Context, ContextStore
from hostctl.errors import InvalidInput, NotFound
from hostctl.paths import Paths

if TYPE_CHECKING:  # a shape for the type checker: nothing builds one
    from hostctl.provision.secrets import SecretStore

    class TaskRequest(Protocol):
        """A request to run one task, as plain data (the queue's Envelope is one)."""

        @property
        def id(self) -> str: ...

        @property
        def type(self) -> str: ...

        @property
        def context(self) -> str: ...

        @property
        def options(self) -> Mapping[str, str]: ...

        @property
        def context_options(self) -> Mapping[str, str]: ...

        @property
        def submitter(self) -> int | None:
            """The uid of the front end that dropped it; None when the back end queued it."""
            ...


@dataclass
class RunContext:
    """What a task function gets, in the child process that runs it."""

    task_id: str
    type: str
    context: Context
    options: Mapping[str, str]
    paths: Paths
    store: ContextStore
    result: dict[str, Any] = field(default_factory=dict)

    def say(self, message: str) -> None:
        print(message, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", flush=True)
        self.result.setdefault("warnings", []).append(message)


TaskFunction = Callable[[RunContext], int | None]
#: for the periodic queues: does this context want a run of this type now? (a site that
#: is not installed needs no backup, a platform without a cron command no cron)
Wanted = Callable[[Context, ContextStore, "SecretStore"], bool]


@dataclass(frozen=True)
class TaskType:
    name: str
    context_types: tuple[str, ...]
    help: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    function: TaskFunction | None = None
    command: CommandTask | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    rerun_on_loss: bool = True  # a run cut off by a dead worker may simply run again
    source: str = "builtin"
    wanted: Wanted | None = None  # None: every enabled site (see Wanted)


def write_result(path: str, result: Mapping[str, Any]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, default=str)
    except OSError as exc:
        print(f"hostctl: cannot write the task's result: {exc}", file=sys.stderr)


def context_values(ctx: Context, store: ContextStore) -> dict[str, str]:
    """A context's fields as strings (lists comma-joined), plus derived ones."""
    out: dict[str, str] = {"name": ctx.name, "context": display(ctx.name), "type": ctx.type}
    for key, value in ctx.effective(show_secrets=True).items():
        out[key] = _as_text(value)
    if ctx.type == "site" and isinstance(ctx.get("platform"), str):
        try:
            platform = store.get(parse_name(str(ctx.get("platform"))))
            out.setdefault("root", _as_text(platform.get("root")))
            out["root"] = _as_text(platform.get("root"))
        except (NotFound, InvalidInput):
            pass
    return out


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)
