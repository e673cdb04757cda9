"""The runners and their installers: ``dispatch``, ``wait-queue``, ``cron``, ``service``,
``queue list|pause|resume``.

``dispatch`` and ``wait-queue`` also write what they do to ``HOME/logs/hostctl.log``;
on stderr they say only warnings and errors (more with ``-v``), so cron mails nothing
when all is well.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Annotated

import typer

from hostctl.cli.common import JsonFlag, State, say, state, table
from hostctl.cli.output import emit_json
from hostctl.queues import tasks as ops

cron_app = typer.Typer(help="The crontab entry that runs dispatch every minute.",
                       no_args_is_help=True)
service_app = typer.Typer(help="Print a configuration that keeps wait-queue running.",
                          no_args_is_help=True)


class _LogFile(logging.FileHandler):
    """A FileHandler that, when a line cannot be written (a full disk), says so in one
    line on stderr, once until writing works again, instead of logging's traceback."""

    failing = False

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.failing and self.stream is not None:
            try:
                self.flush()
            except OSError:
                return
            self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        import sys

        if self.failing:
            return
        self.failing = True
        exc = sys.exc_info()[1]
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        with suppress(OSError, ValueError):
            sys.stderr.write(f"hostctl: cannot write {self.baseFilename}: {reason}\n")


def _file_log(st: State) -> None:
    """Also log to HOME/logs/hostctl.log (created 0600)."""
    import os

    st.paths.ensure_dir(st.paths.logs)
    path = st.paths.logs / "hostctl.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.close(fd)
    handler = _LogFile(path)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [{os.getpid()}] %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("hostctl")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if st.verbose > 1 else logging.INFO)
    for h in logging.getLogger().handlers:  # stderr keeps the level -v/-q chose
        h.setLevel(logging.getLogger().level)


def dispatch(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Run every queue, due or not.")] = False,
    queue: Annotated[str | None, typer.Option(
        "--queue", metavar="NAME", help="Only this queue (tasks, cron, backup, task_gc).")
    ] = None,
) -> None:
    """One pass from cron: sweep lost tasks, run every queue that is due, wait, exit."""
    from hostctl.queues.dispatcher import Dispatcher

    st = state(ctx)
    _file_log(st)
    report = Dispatcher(ops.Home(st.paths)).run(force=force, only=queue)  # logs each queue
    if report.failed:
        raise typer.Exit(1)


def wait_queue(
    ctx: typer.Context,
    max_runtime: Annotated[float, typer.Option(
        "--max-runtime", min=0, metavar="SECONDS",
        help="Exit 0 after this long, so the supervisor starts a fresh one.")] = 3600.0,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, max=256, help="Tasks at once (default: from config).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Drain what is due, then exit.")] = False,
    housekeeping_every: Annotated[float, typer.Option(
        "--housekeeping-every", min=0.1, metavar="SECONDS",
        help="How often to sweep lost tasks, rescan the spool (the safety net for what "
             "inotify does not report), run due periodic queues and record liveness.")
    ] = 60.0,
) -> None:
    """The daemon: run each task as soon as it is queued (under Supervisor or systemd)."""
    from hostctl.queues.daemon import WaitQueue, drain_once

    st = state(ctx)
    _file_log(st)
    home = ops.Home(st.paths)
    if once:
        summary = drain_once(home, concurrency)
        logging.getLogger("hostctl").info("wait-queue --once ran %d task(s)", summary.started)
        return
    raise typer.Exit(WaitQueue(home, max_runtime, concurrency,
                               housekeeping_every=housekeeping_every).run())


@cron_app.command("install")
def cron_install(ctx: typer.Context) -> None:
    """Add (or update) the dispatch line, keeping every other crontab line."""
    from hostctl.queues import crontab

    st = state(ctx)
    change = crontab.install(st.paths)
    say(st, "Installed the hostctl crontab entry" if change.changed
        else "The hostctl crontab entry is already installed")


@cron_app.command("remove")
def cron_remove(ctx: typer.Context) -> None:
    """Remove hostctl's block from the crontab, and nothing else."""
    from hostctl.queues import crontab

    st = state(ctx)
    change = crontab.remove(st.paths)
    say(st, "Removed the hostctl crontab entry" if change.changed
        else "No hostctl crontab entry to remove")


@cron_app.command("show")
def cron_show(ctx: typer.Context) -> None:
    """Print hostctl's crontab block (exit 1 if it is not installed)."""
    from hostctl.queues import crontab

    current = crontab.show()
    if current is None:
        typer.echo("hostctl has no crontab entry; install one with: hostctl cron install",
                   err=True)
        raise typer.Exit(1)
    typer.echo(current, nl=False)


def _service(ctx: typer.Context, kind: str, user: str | None, max_runtime: float) -> None:
    from hostctl.queues import service

    home = ops.Home(state(ctx).paths)
    registry = home.registry
    longest = max([registry.timeout(t) for t in registry.types.values()] or [0.0])
    make = service.supervisor if kind == "supervisor" else service.systemd
    typer.echo(make(home.paths, longest, home.config.worker.kill_grace, max_runtime, user),
               nl=False)


UserOpt = Annotated[str | None, typer.Option(
    "--user", help="The backend user (default: the user running this).")]
RuntimeOpt = Annotated[float, typer.Option(
    "--max-runtime", min=1, metavar="SECONDS", help="wait-queue's --max-runtime.")]


@service_app.command("supervisor")
def service_supervisor(ctx: typer.Context, user: UserOpt = None,
                       max_runtime: RuntimeOpt = 3600.0) -> None:
    """A [program:hostctl-wait-queue] section for Supervisor."""
    _service(ctx, "supervisor", user, max_runtime)


@service_app.command("systemd")
def service_systemd(ctx: typer.Context, user: UserOpt = None,
                    max_runtime: RuntimeOpt = 3600.0) -> None:
    """A systemd unit (hostctl-wait-queue.service)."""
    _service(ctx, "systemd", user, max_runtime)


def queue_list(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Each periodic queue: type, frequency, items, enabled, pending, last and next run."""
    from hostctl.queues.dispatcher import Dispatcher

    infos = Dispatcher(ops.Home(state(ctx).paths)).info()
    if json_:
        emit_json([i.to_json() for i in infos])
        return
    rows = []
    for i in infos:
        d = i.to_json()
        rows.append((str(d["name"]), str(d["type"]), f"{i.computed.frequency:g}s",
                     str(i.computed.items), "yes" if i.computed.settings.enabled else "no",
                     str(i.pending), str(d["last_run"] or "never"),
                     str(d["next_run"] or "-")))
    typer.echo(table(rows, ("QUEUE", "TYPE", "EVERY", "ITEMS", "ENABLED", "PENDING",
                            "LAST RUN", "NEXT RUN")))


def queue_pause(
    ctx: typer.Context,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Do not wait for the running tasks to finish.")] = False,
) -> None:
    """Stop starting tasks (runners keep sweeping); wait for the running ones to finish."""
    from hostctl.queues.dispatcher import pause

    st = state(ctx)
    result = pause(ops.Home(st.paths), wait=not no_wait)
    for note in result.recovered:
        typer.echo(f"hostctl: {note}", err=True)
    if result.waited_for:
        say(st, f"{result.waited_for} running task(s) still run to their end" if no_wait
            else f"Waited for {result.waited_for} running task(s) to finish")
    say(st, "Paused: no task will start until 'hostctl queue resume'")


def queue_resume(ctx: typer.Context) -> None:
    """Start running tasks again."""
    from hostctl.queues.dispatcher import resume

    st = state(ctx)
    resume(ops.Home(st.paths))
    say(st, "Resumed")
