"""``hostctl task add|list|show|log|wait|retry|cancel`` and ``hostctl queue status``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from hostctl.cli import grammar as g
from hostctl.cli.common import JsonFlag, complete_context, say, state, table
from hostctl.cli.output import emit_json
from hostctl.cli.submit import add_task
from hostctl.errors import ExitStatus, InvalidInput
from hostctl.queues import dropbox
from hostctl.queues.model import Status, TaskQuery
from hostctl.runners import lifecycle as ops
from hostctl.runners.home import Home
from hostctl.text import printable

app = typer.Typer(help="Queue tasks and follow them.", no_args_is_help=True)
queue_app = typer.Typer(help="The queue as a whole.", no_args_is_help=True)


def _home(ctx: typer.Context) -> Home:
    return Home(state(ctx).paths)


def _complete_type(ctx: typer.Context, incomplete: str) -> list[str]:
    try:
        home = Home(state(ctx).paths)
        return [n for n in home.registry.names() if n.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


def _complete_status(incomplete: str) -> list[str]:
    return [s.label for s in Status if s.label.startswith(incomplete)]


TaskId = Annotated[str, typer.Argument(metavar="ID", help="The task's id.")]
ReceiptOpt = Annotated[str | None, typer.Option(
    "--receipt", metavar="TOKEN",
    help="A front end: the receipt printed by `task add --json` (default: the one kept).")]


@app.command("add")
def add(
    ctx: typer.Context,
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="The task type.",
                                         autocompletion=_complete_type)],
    context: Annotated[str, typer.Argument(metavar="@NAME", help="The context.",
                                           autocompletion=complete_context)],
    option: Annotated[list[str] | None, typer.Option(
        *g.OPTION.names, metavar=g.OPTION.metavar, help=g.OPTION.help)] = None,
    context_option: Annotated[list[str] | None, typer.Option(
        *g.CONTEXT_OPTION.names, metavar=g.CONTEXT_OPTION.metavar,
        help=g.CONTEXT_OPTION.help)] = None,
    priority: Annotated[int, typer.Option(
        *g.PRIORITY.names, min=g.MIN_PRIORITY, max=g.MAX_PRIORITY,
        help=g.PRIORITY.help)] = g.DEFAULT_PRIORITY,
    delay: Annotated[float, typer.Option(
        *g.DELAY.names, min=0, metavar=g.DELAY.metavar, help=g.DELAY.help)] = 0.0,
    json_: JsonFlag = False,
) -> None:
    """Validate and queue a task; print its id (an identical queued task's, if any).

    Run by a front-end user who does not own the home, the task goes through the spool's
    drop box: it is checked when the back end admits it, and its receipt lets this user
    follow it with `task show` and `task log`.
    """
    st = state(ctx)
    add_task(st.paths, type_, context, option or [], context_option or [],
             priority, delay, json_, st.quiet)


#: how many tasks ``task list`` shows unless told
LIST_LIMIT = 100


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        "--status", help="Only tasks with this status.", autocompletion=_complete_status)] = None,
    context: Annotated[str | None, typer.Option(
        "--context", metavar="@NAME", help="Only tasks on this context.",
        autocompletion=complete_context)] = None,
    type_: Annotated[str | None, typer.Option(
        "--type", metavar="TYPE", help="Only tasks of this type.",
        autocompletion=_complete_type)] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN",
        help="Only tasks made since: an age (30m, 2h, 7d) or an ISO 8601 date or time.")]
        = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", "-n", metavar="N",
        help=f"At most N tasks, the newest (0: every one; default {LIST_LIMIT}, and every "
             "one with --json).")] = None,
    json_: JsonFlag = False,
) -> None:
    """List tasks, newest first (a front-end user: the tasks it submitted)."""
    st = state(ctx)
    # a person reads the newest; a script given no limit gets every task it asks for
    query = ops.task_query(status, context, type_, since,
                           limit if limit is not None else 0 if json_ else LIST_LIMIT)
    # one more than shown: whether there are more to say so
    asked = query._replace(limit=query.limit + 1 if query.limit else None)
    if dropbox.is_frontend(st.paths):
        docs = sorted((d for d in dropbox.frontend_list(st.paths) if _wanted(asked, d)),
                      key=lambda d: str(d.get("id")), reverse=True)[:asked.limit]
    else:
        docs = [t.to_json() for t in ops.list_tasks(_home(ctx), asked)]
    more = query.limit is not None and len(docs) > query.limit
    docs = docs[:query.limit]
    if json_:
        emit_json(docs)
    elif docs:
        rows = [(str(d["id"]), str(d.get("type") or ""), str(d.get("context") or ""),
                 str(d["status"]), str(d.get("priority") or ""),
                 str(len(d.get("attempts") or [])), str(d.get("created") or ""),
                 _short(printable(str(d.get("reason") or ""))))
                for d in docs]
        typer.echo(table(rows, ("ID", "TYPE", "CONTEXT", "STATUS", "PRIO", "RUNS",
                                "CREATED", "REASON")))
    if more and not st.quiet:
        typer.echo(f"hostctl: the newest {query.limit} shown; --limit 0 lists every one",
                   err=True)


def _wanted(query: TaskQuery, doc: Mapping[str, Any]) -> bool:
    """``query`` on a front end's receipt (what it can see of a task)."""
    return ((query.statuses is None or doc.get("status") in {s.label for s in query.statuses})
            and (query.context is None or doc.get("context") == query.context)
            and (query.type is None or doc.get("type") == query.type)
            and (query.since is None or str(doc.get("id")) >= (query.id_floor() or "")))


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _show(doc: dict[str, Any]) -> None:
    typer.echo(f"task {doc['id']}: {doc.get('type') or '?'} on {doc.get('context') or '?'}")
    for key in ("status", "priority", "created", "started", "finished", "due", "reason",
                "log"):
        if doc.get(key) not in (None, ""):
            typer.echo(f"  {key + ':':10} {doc[key]}")
    for label, mapping in (("option", doc.get("options") or {}),
                           ("context option", doc.get("context_options") or {})):
        for k, v in mapping.items():
            typer.echo(f"  {label}: {k}={v}")
    for a in doc.get("attempts") or []:
        typer.echo(f"  attempt {a['attempt']}: {a['started']} -> {a['finished'] or '...'} "
                   f"{a['outcome'] or 'running'}"
                   + (f" (exit {a['exit_code']})" if a["exit_code"] is not None else "")
                   + (f": {a['reason']}" if a["reason"] else ""))
    if doc.get("result"):
        typer.echo("  result:")
        for k, v in doc["result"].items():
            # as JSON when it is not text: never as Python writes its values
            shown = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            typer.echo(f"    {printable(str(k))}: {printable(shown)}")


@app.command("show")
def show(ctx: typer.Context, task_id: TaskId, receipt: ReceiptOpt = None,
         json_: JsonFlag = False) -> None:
    """Show one task with its attempts and result."""
    paths = state(ctx).paths
    if dropbox.is_frontend(paths):
        doc = dropbox.frontend_show(paths, task_id, receipt)
    else:
        doc = ops.get(_home(ctx), task_id).to_json()
    if json_:
        emit_json(doc)
    else:
        _show(doc)


@app.command("log")
def log_(
    ctx: typer.Context,
    task_id: TaskId,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing until the task ends.")] = False,
    receipt: ReceiptOpt = None,
) -> int:
    """Print a task's log; with --follow, until the task ends, then exit with its
    outcome (as task wait does)."""
    out = sys.stdout.buffer
    paths = state(ctx).paths
    frontend = dropbox.is_frontend(paths)
    chunks = (dropbox.frontend_log(paths, task_id, follow, receipt)
              if frontend else ops.follow_log(_home(ctx), task_id, follow))
    for chunk in chunks:
        out.write(chunk)
        out.flush()
    if not follow:
        return ExitStatus.OK
    doc = (dropbox.frontend_show(paths, task_id, receipt) if frontend
           else ops.get(_home(ctx), task_id).to_json())
    return ExitStatus.of_outcome(str(doc.get("status")))


@app.command("wait")
def wait(
    ctx: typer.Context,
    task_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="The tasks' ids.")],
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, metavar="SECONDS",
        help="Give up after this long (exit 124).")] = None,
    receipt: ReceiptOpt = None,
    json_: JsonFlag = False,
) -> int:
    """Wait until the tasks end; exit with their outcome (0 success or warning, 1 an
    error, 130 a cancel; the worst of them), or 124 if --timeout ran out first."""
    st = state(ctx)
    paths = st.paths
    if receipt is not None and len(task_ids) > 1:
        raise InvalidInput("--receipt names one task's receipt: wait for one task with it")
    if dropbox.is_frontend(paths):
        def look(task_id: str) -> dict[str, Any]:
            return dropbox.frontend_show(paths, task_id, receipt)
    else:
        home = _home(ctx)

        def look(task_id: str) -> dict[str, Any]:
            return ops.get(home, task_id).to_json()

    def ended(doc: Mapping[str, Any]) -> None:
        if not json_:
            reason = doc.get("reason") or ""
            say(st, f"task {doc['id']}: {doc['status']}"
                    + (f": {printable(str(reason))}" if reason and
                       doc["status"] != "success" else ""))

    waited = ops.wait_tasks(look, task_ids, timeout, ended)
    if json_:
        emit_json(waited.ended + [dict(look(i)) for i in waited.pending])
    if waited.pending:
        typer.echo(f"hostctl: still not ended after {timeout:g} s: "
                   + " ".join(waited.pending), err=True)
        return ExitStatus.TIMED_OUT
    return ExitStatus.of_outcomes([str(d["status"]) for d in waited.ended])


@app.command("retry")
def retry(ctx: typer.Context, task_id: TaskId, json_: JsonFlag = False) -> None:
    """Queue a finished or quarantined task again under the same id (its history stays)."""
    dropbox.refuse_frontend(state(ctx).paths, "task retry")
    task = ops.retry(_home(ctx), task_id)
    if json_:
        emit_json(task.to_json())
    else:
        say(state(ctx), f"Queued task {task.id} again")


@app.command("cancel")
def cancel(ctx: typer.Context, task_id: TaskId, json_: JsonFlag = False) -> None:
    """Cancel a queued task, or stop a running one (TERM, then KILL after a grace period)."""
    dropbox.refuse_frontend(state(ctx).paths, "task cancel")
    task = ops.cancel(_home(ctx), task_id)
    if json_:
        emit_json(task.to_json())
    else:
        say(state(ctx), f"Task {task.id}: {task.status.label}")


@queue_app.command("status")
def status(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Tasks per status, the oldest queued task's age, quarantined and rejected files."""
    home = _home(ctx)
    st = ops.queue_status(home)
    workers = home.queue.workers()
    paused = home.queue.paused()
    if json_:
        emit_json({**st.to_json(), "paused": paused,
                   "daemons": [d.to_json() for d in workers]})
        return
    if paused:
        typer.echo("the queue is PAUSED (hostctl queue resume)")
    for d in workers:
        typer.echo(f"wait-queue pid {d.pid}: {'alive' if d.alive else 'dead'}, started "
                   f"{d.started}, last seen {d.last_seen}, {d.tasks_run} task(s) run")
    if not any(d.alive for d in workers):
        typer.echo("no wait-queue daemon is alive")
    typer.echo(table([(k, str(v)) for k, v in st.counts.items()], ("STATUS", "TASKS")))
    if st.oldest_queued_age is not None:
        typer.echo(f"oldest queued task: {st.oldest_queued_age:.1f} s old")
    for name, reason in st.quarantined:  # names a front end chose: one line each
        typer.echo(f"quarantined: {printable(name)}: {printable(reason)}")
    for name, reason in st.rejected:
        typer.echo(f"rejected submission: {printable(name)}: {printable(reason)}")
