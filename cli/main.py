"""The root command: global options, sub-commands, and the one place errors become exits.

Every user error is a :class:`~hostctl.errors.HostctlError` (or a usage error from the
argument parser); :func:`main` prints it as one line on stderr and returns its exit code.
Anything else is a bug: one line too, exit 70, and ``--traceback`` shows the trace.
"""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer
import typer.core

from hostctl import __version__
from hostctl.cli import (
    cluster,
    contexts,
    importer,
    observe,
    provision,
    runners,
    save,
    security,
    tasks,
)
from hostctl.cli import grammar as g
from hostctl.cli.begin import begin
from hostctl.cli.output import exit_process, guarded, prepare_streams
from hostctl.errors import HostctlError
from hostctl.paths import Paths, resolve_home
from hostctl.runners.home import Home


class RootGroup(typer.core.TyperGroup):
    """The root command: static commands plus one provision-TYPE per known task type."""

    def _types(self, ctx: Any) -> dict[str, Any]:
        home = ctx.params.get("home") if ctx is not None else None
        try:
            registry = Home(Paths(resolve_home(home))).registry
        except HostctlError:
            return {}
        return {n: registry.get(n) for n in registry.names()}

    def invoke(self, ctx: Any) -> Any:
        # the root callback runs after the parser has taken the sub-command's arguments
        ctx.meta["hostctl.args"] = [*getattr(ctx, "protected_args", ()), *ctx.args]
        return super().invoke(ctx)

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        extra = [provision.PREFIX + n for n in self._types(ctx)]
        return names + sorted(n for n in extra if n not in names)

    def get_command(self, ctx: Any, name: str) -> Any:
        found = super().get_command(ctx, name)
        if found is not None or not name.startswith(provision.PREFIX):
            return found
        ttype = self._types(ctx).get(name.removeprefix(provision.PREFIX))
        if ttype is None:
            return None
        applies = ", ".join(ttype.context_types)
        return provision.make_command(
            ttype.name, f"Run {ttype.name} now, in the foreground ({applies}): {ttype.help}.",
            dict(ttype.options))


app = typer.Typer(
    name="hostctl",
    cls=RootGroup,
    help="Backend of a hosting control panel: contexts, a task queue, provision commands.",
    no_args_is_help=True,
    add_completion=True,  # typer's --install-completion and --show-completion SHELL
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(contexts.app, name="context")
app.add_typer(tasks.app, name="task")
app.add_typer(tasks.queue_app, name="queue")
app.command("dispatch")(runners.dispatch)
app.command("wait-queue")(runners.wait_queue)
app.command("notify-send", hidden=True)(runners.notify_send)
app.add_typer(runners.cron_app, name="cron")
app.add_typer(runners.service_app, name="service")
app.add_typer(security.frontend_app, name="frontend")
app.add_typer(cluster.app, name="cluster")
app.add_typer(importer.app, name="import")
app.command("doctor")(security.doctor)
app.command("setup")(runners.setup_backend)
app.command("upgrade-home")(runners.upgrade_home)
app.command("metrics")(observe.metrics)
app.command("serve")(observe.serve)
tasks.queue_app.command("list")(runners.queue_list)
tasks.queue_app.command("pause")(runners.queue_pause)
tasks.queue_app.command("resume")(runners.queue_resume)
app.command(
    "provision-save",
    context_settings=save.HELP_SETTINGS,
    epilog=save.HELP_EPILOG,
)(save.provision_save)

_debug = {"traceback": False}
COMPLETE_VAR = "_HOSTCTL_COMPLETE"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hostctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[str | None, typer.Option(
        *g.HOME.names, metavar=g.HOME.metavar, help=g.HOME.help)] = None,
    verbose: Annotated[int, typer.Option(
        *g.VERBOSE.names, count=True, show_default=False, help=g.VERBOSE.help)] = 0,
    quiet: Annotated[bool, typer.Option(*g.QUIET.names, help=g.QUIET.help)] = False,
    traceback: Annotated[bool, typer.Option(
        *g.TRACEBACK.names, help=g.TRACEBACK.help)] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    _debug["traceback"] = traceback
    asks_help = any(a in ("--help", "-h") for a in ctx.meta.get("hostctl.args", ()))
    ctx.obj = begin(home, verbose, quiet, ctx.invoked_subcommand,
                    asks_help or ctx.resilient_parsing)


def main(argv: list[str] | None = None) -> int:
    """Run hostctl with ``argv`` (default: sys.argv[1:]); return the exit code."""
    _debug["traceback"] = False
    prepare_streams()
    def invoke() -> int | None:
        rv = typer.main.get_command(app).main(
            args=argv, prog_name="hostctl", complete_var=COMPLETE_VAR, standalone_mode=False)
        return rv if isinstance(rv, int) else None

    return guarded(invoke, lambda: _debug["traceback"])


def run() -> NoReturn:
    """The whole command line (cli/entry.py sends here what its fast path does not take)."""
    exit_process(main())
