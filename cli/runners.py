"""The runners and their installers: ``dispatch``, ``wait-queue``, ``cron``, ``service``,
``queue list|pause|resume``, ``upgrade-home``; and ``notify-send`` (hidden), the sender
of notices the runners start (runners/notify.py).

``dispatch``, ``wait-queue`` and ``notify-send`` also write what they do to
``HOME/logs/hostctl.log``; on stderr they say only warnings and errors (more with ``-v``),
so cron mails nothing when all is well.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hostctl.cli import grammar as g
from hostctl.cli.common import JsonFlag, say, state, table
from hostctl.cli.output import emit_json
from hostctl.errors import ExitStatus, HostctlError
from hostctl.runners import crontab
from hostctl.runners.home import Home

cron_app = typer.Typer(help="The crontab entry that runs dispatch every minute.",
                       no_args_is_help=True)
service_app = typer.Typer(help="Print a configuration that keeps wait-queue running.",
                          no_args_is_help=True)


def dispatch(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option(*g.FORCE.names, help=g.FORCE.help)] = False,
    queue: Annotated[str | None, typer.Option(
        *g.QUEUE.names, metavar=g.QUEUE.metavar, help=g.QUEUE.help)] = None,
    server: Annotated[str | None, typer.Option(
        *g.SERVER.names, metavar=g.SERVER.metavar, help=g.SERVER.help)] = None,
) -> int:
    """One pass from cron: sweep lost tasks, run every queue that is due, wait, exit."""
    from hostctl.cli import runs  # the worker's code: not for every command

    return runs.dispatch(state(ctx), force, queue, server)


def wait_queue(
    ctx: typer.Context,
    max_runtime: Annotated[float, typer.Option(
        *g.MAX_RUNTIME.names, min=g.MAX_RUNTIME.low, metavar=g.MAX_RUNTIME.metavar,
        help=g.MAX_RUNTIME.help)] = 3600.0,
    concurrency: Annotated[int | None, typer.Option(
        *g.CONCURRENCY.names, min=g.CONCURRENCY.low, max=g.CONCURRENCY.high,
        help=g.CONCURRENCY.help)] = None,
    once: Annotated[bool, typer.Option(*g.ONCE.names, help=g.ONCE.help)] = False,
    housekeeping_every: Annotated[float, typer.Option(
        *g.HOUSEKEEPING_EVERY.names, min=g.HOUSEKEEPING_EVERY.low,
        metavar=g.HOUSEKEEPING_EVERY.metavar, help=g.HOUSEKEEPING_EVERY.help)] = 60.0,
    server: Annotated[str | None, typer.Option(
        *g.SERVER.names, metavar=g.SERVER.metavar, help=g.SERVER.help)] = None,
) -> int:
    """The daemon: run each task as soon as it is queued (under Supervisor or systemd)."""
    from hostctl.cli import runs  # the worker's code: not for every command

    return runs.wait_queue(state(ctx), max_runtime, concurrency, once, housekeeping_every,
                           server)


def notify_send(ctx: typer.Context) -> int:
    """Send the notices of task ends that are due, then exit (the runners start it):
    75 if some were due and another process held each one."""
    import logging

    from hostctl.cli.begin import file_log
    from hostctl.config import wait_if_emptied
    from hostctl.runners.notify import send_notices

    st = state(ctx)
    # first: a sender that dispatch left at work writes to /dev/null, and to hostctl.log
    file_log(st)
    try:
        wait_if_emptied(st.paths.config_file)  # not an editor's write caught halfway
        sent = send_notices(st.paths, Home(st.paths).config)
    except Exception as exc:
        why = exc.message if isinstance(exc, HostctlError) else f"{type(exc).__name__}: {exc}"
        logging.getLogger("hostctl").error("notices: the sender stops: %s", why)
        raise
    return ExitStatus.TEMPFAIL if sent.blocked else ExitStatus.OK


@cron_app.command("install")
def cron_install(ctx: typer.Context) -> None:
    """Add (or update) the dispatch line, keeping every other crontab line."""
    st = state(ctx)
    change = crontab.install(st.paths)
    say(st, "Installed the hostctl crontab entry" if change.changed
        else "The hostctl crontab entry is already installed")


@cron_app.command("remove")
def cron_remove(ctx: typer.Context) -> None:
    """Remove hostctl's block from the crontab, and nothing else."""
    st = state(ctx)
    change = crontab.remove(st.paths)
    say(st, "Removed the hostctl crontab entry" if change.changed
        else "No hostctl crontab entry to remove")


@cron_app.command("show")
def cron_show(ctx: typer.Context) -> int:
    """Print hostctl's crontab block (exit 1 if it is not installed)."""
    current = crontab.show()
    if current is None:
        typer.echo("hostctl has no crontab entry; install one with: hostctl cron install",
                   err=True)
        return ExitStatus.ERROR
    typer.echo(current, nl=False)
    return ExitStatus.OK


def _service(ctx: typer.Context, kind: str, user: str | None, max_runtime: float) -> None:
    from hostctl.runners import service  # (and the notices' code it reads the waits of)

    typer.echo(service.render(Home(state(ctx).paths), kind, user, max_runtime), nl=False)


UserOpt = Annotated[str | None, typer.Option(
    "--user", help="The backend user (default: the home's owner, else the user running "
    "this; root only when named).")]
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


@service_app.command("logrotate")
def service_logrotate(ctx: typer.Context, user: UserOpt = None) -> None:
    """A logrotate stanza for HOME/logs/hostctl.log (/etc/logrotate.d/hostctl)."""
    from hostctl.runners import service

    typer.echo(service.logrotate(state(ctx).paths, user), nl=False)


def queue_list(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Each periodic queue: type, frequency, items, enabled, pending, last and next run."""
    from hostctl.runners.dispatcher import Dispatcher

    infos = Dispatcher(Home(state(ctx).paths)).info()
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
    from hostctl.runners.dispatcher import pause

    st = state(ctx)
    result = pause(Home(st.paths), wait=not no_wait)
    for note in result.recovered:
        typer.echo(f"hostctl: {note}", err=True)
    if result.waited_for:
        say(st, f"{result.waited_for} running task(s) still run to their end" if no_wait
            else f"Waited for {result.waited_for} running task(s) to finish")
    say(st, "Paused: no task will start until 'hostctl queue resume'")


def queue_resume(ctx: typer.Context) -> None:
    """Start running tasks again."""
    from hostctl.runners.dispatcher import resume

    st = state(ctx)
    resume(Home(st.paths))
    say(st, "Resumed")


def upgrade_home(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what the upgrade would do; write nothing.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Bring a home an older hostctl wrote up to this one's format (docs/upgrade.md)."""
    from hostctl.runners.upgrade import report_lines, upgrade

    report = upgrade(Home(state(ctx).paths), dry_run=dry_run)
    if json_:
        emit_json(report.to_json())
        return
    for line in report_lines(report):
        typer.echo(line)


def setup_backend(
    ctx: typer.Context,
    user: Annotated[str, typer.Option(
        "--user", metavar="NAME",
        help="The back-end user, made a system user if it is missing.")] = "hostctl",
    front_end_group: Annotated[str | None, typer.Option(
        "--front-end-group", metavar="GROUP",
        help="The web front end's group (for example www-data): it gets the drop box.")
    ] = None,
    home: Annotated[str | None, typer.Option(
        "--home", metavar="PATH",
        help="The hostctl home and the user's home directory (default: an existing "
             "user's, else /var/lib/hostctl).")] = None,
    runner: Annotated[str | None, typer.Option(
        "--runner", metavar="cron|systemd|supervisor|none",
        help="What runs the queue (default: systemd where it runs the machine, else "
             "cron).")] = None,
    config_dir: Annotated[str | None, typer.Option(
        "--config-dir", metavar="DIR",
        help="Where the unit or the Supervisor section goes (default: "
             "/etc/systemd/system, /etc/supervisor/conf.d).")] = None,
    max_runtime: RuntimeOpt = 3600.0,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what setup would do; change nothing.")] = False,
    json_: JsonFlag = False,
) -> int:
    """As root: the back-end user, its home, the drop box, the runner, then doctor."""
    from pathlib import Path

    from hostctl.runners.setup import SetupRequest, setup

    given = home or ctx.find_root().params.get("home")
    report = setup(SetupRequest(
        user=user, group=front_end_group, home=Path(given) if given else None,
        runner=runner, config_dir=Path(config_dir) if config_dir else None,
        max_runtime=max_runtime, dry_run=dry_run))
    if json_:
        emit_json(report.to_json())
    else:
        for step in report.steps:
            typer.echo(f"{step.name}: {step.outcome.value}: {step.detail}")
        for line in report.doctor:
            typer.echo(f"  doctor: {line}")
    if not report.ok:
        failed = report.steps[-1]
        typer.echo(f"hostctl: setup stopped at the {failed.name} step: {failed.detail}",
                   err=True)
        return ExitStatus.ERROR
    return ExitStatus.OK
