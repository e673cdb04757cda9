"""``hostctl task add|list|show|log|retry|cancel`` and ``hostctl queue status``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hostctl.cli.common import JsonFlag, complete_context, emit_json, say, state, table
from hostctl.queues import tasks as ops
from hostctl.queues.task import Status, Task

app = typer.Typer(help="Queue tasks and follow them.", no_args_is_help=True)
queue_app = typer.Typer(help="The queue as a whole.", no_args_is_help=True)


def _home(ctx: typer.Context) -> ops.Home:
    return ops.Home(state(ctx).paths)


def _complete_type(ctx: typer.Context, incomplete: str) -> list[str]:
    try:
        home = ops.Home(state(ctx).paths)
        return [n for n in home.registry.names() if n.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


def _complete_status(incomplete: str) -> list[str]:
    return [s.label for s in Status if s.label.startswith(incomplete)]


TaskId = Annotated[str, typer.Argument(metavar="ID", help="The task's id.")]


@app.command("add")
def add(
    ctx: typer.Context,
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="The task type.",
                                         autocompletion=_complete_type)],
    context: Annotated[str, typer.Argument(metavar="@NAME", help="The context.",
                                           autocompletion=complete_context)],
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", metavar="KEY=VALUE",
        help="A one-time option for this run (repeatable).")] = None,
    context_option: Annotated[list[str] | None, typer.Option(
        "--context-option", "--context_option", "-c", metavar="FIELD=VALUE",
        help="Saved into the context before the task runs (repeatable).")] = None,
    priority: Annotated[int, typer.Option(
        "--priority", "-p", min=0, max=9, help="0 to 9; higher runs sooner.")] = 5,
    delay: Annotated[float, typer.Option(
        "--delay", min=0, metavar="SECONDS", help="Run no sooner than this.")] = 0.0,
    json_: JsonFlag = False,
) -> None:
    """Validate and queue a task; print its id (an identical queued task's, if any)."""
    home = _home(ctx)
    added = ops.add(
        home, type_, context,
        ops.parse_pairs(option or [], "--option"),
        ops.parse_pairs(context_option or [], "--context-option"),
        priority, delay,
    )
    if json_:
        emit_json(added.task.to_json())
    else:
        typer.echo(added.task.id)
        if not added.created:
            print(f"hostctl: an identical task is already queued: {added.task.id}",
                  file=sys.stderr)


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        "--status", help="Only tasks with this status.", autocompletion=_complete_status)] = None,
    context: Annotated[str | None, typer.Option(
        "--context", metavar="@NAME", help="Only tasks on this context.",
        autocompletion=complete_context)] = None,
    json_: JsonFlag = False,
) -> None:
    """List tasks, oldest first."""
    found = ops.list_tasks(_home(ctx), status, context)
    if json_:
        emit_json([t.to_json() for t in found])
    elif found:
        rows = [(t.id, t.envelope.type, t.envelope.context, t.status.label,
                 str(t.envelope.priority), str(len(t.attempts)), t.envelope.created)
                for t in found]
        typer.echo(table(rows, ("ID", "TYPE", "CONTEXT", "STATUS", "PRIO", "RUNS",
                                "CREATED")))


def _show(task: Task) -> None:
    doc = task.to_json()
    typer.echo(f"task {task.id}: {task.envelope.type} on {task.envelope.context}")
    for key in ("status", "priority", "created", "started", "finished", "due", "reason",
                "log"):
        if doc.get(key) not in (None, ""):
            typer.echo(f"  {key + ':':10} {doc[key]}")
    for label, mapping in (("option", doc["options"]), ("context option",
                                                          doc["context_options"])):
        for k, v in mapping.items():
            typer.echo(f"  {label}: {k}={v}")
    for a in task.attempts:
        typer.echo(f"  attempt {a.number}: {a.started} -> {a.finished or '...'} "
                   f"{a.outcome or 'running'}"
                   + (f" (exit {a.exit})" if a.exit is not None else "")
                   + (f": {a.reason}" if a.reason else ""))
    if doc["result"]:
        typer.echo("  result:")
        for k, v in doc["result"].items():
            typer.echo(f"    {k}: {v}")


@app.command("show")
def show(ctx: typer.Context, task_id: TaskId, json_: JsonFlag = False) -> None:
    """Show one task with its attempts and result."""
    task = ops.get(_home(ctx), task_id)
    if json_:
        emit_json(task.to_json())
    else:
        _show(task)


@app.command("log")
def log_(
    ctx: typer.Context,
    task_id: TaskId,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing until the task ends.")] = False,
) -> None:
    """Print a task's log."""
    out = sys.stdout.buffer
    for chunk in ops.follow_log(_home(ctx), task_id, follow):
        out.write(chunk)
        out.flush()


@app.command("retry")
def retry(ctx: typer.Context, task_id: TaskId, json_: JsonFlag = False) -> None:
    """Queue a finished task again under the same id (its history stays)."""
    task = ops.retry(_home(ctx), task_id)
    if json_:
        emit_json(task.to_json())
    else:
        say(state(ctx), f"Queued task {task.id} again")


@app.command("cancel")
def cancel(ctx: typer.Context, task_id: TaskId, json_: JsonFlag = False) -> None:
    """Cancel a queued task, or stop a running one (TERM, then KILL after a grace period)."""
    task = ops.cancel(_home(ctx), task_id)
    if json_:
        emit_json(task.to_json())
    else:
        say(state(ctx), f"Task {task.id}: {task.status.label}")


@queue_app.command("status")
def status(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Tasks per status, the oldest queued task's age, and quarantined files."""
    from hostctl.queues.daemon import daemons
    from hostctl.queues.dispatcher import paused

    home = _home(ctx)
    st = ops.queue_status(home)
    workers = daemons(home)
    if json_:
        emit_json({**st.to_json(), "paused": paused(home),
                   "daemons": [d.to_json() for d in workers]})
        return
    if paused(home):
        typer.echo("the queue is PAUSED (hostctl queue resume)")
    for d in workers:
        typer.echo(f"wait-queue pid {d.pid}: {'alive' if d.alive else 'dead'}, started "
                   f"{d.started}, last seen {d.last_seen}, {d.tasks_run} task(s) run")
    if not any(d.alive for d in workers):
        typer.echo("no wait-queue daemon is alive")
    typer.echo(table([(k, str(v)) for k, v in st.counts.items()], ("STATUS", "TASKS")))
    if st.oldest_queued_age is not None:
        typer.echo(f"oldest queued task: {st.oldest_queued_age:.1f} s old")
    for name, reason in st.quarantined:
        typer.echo(f"quarantined: {name}: {reason}")
