"""The root command: global options, sub-commands, and the one place errors become exits.

Every user error is a :class:`~hostctl.errors.HostctlError` (or a usage error from the
argument parser); :func:`main` prints it as one line on stderr and returns its exit code.
Anything else is a bug: one line too, exit 70, and ``--traceback`` shows the trace.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any, NoReturn

import typer
import typer.core

# typer ships its own copy of click; its exceptions are the parser's usage errors.
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from hostctl import __version__
from hostctl.cli import contexts, provision, runners, save, security, tasks
from hostctl.cli.common import State
from hostctl.cli.output import (
    exit_process,
    fail,
    internal_error,
    logging_level,
    prepare_streams,
)
from hostctl.errors import ExitStatus, HostctlError
from hostctl.paths import Paths, resolve_home


class RootGroup(typer.core.TyperGroup):
    """The root command: static commands plus one provision-TYPE per known task type."""

    def _types(self, ctx: Any) -> dict[str, Any]:
        from hostctl.queues.tasks import Home

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
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(contexts.app, name="context")
app.add_typer(tasks.app, name="task")
app.add_typer(tasks.queue_app, name="queue")
app.command("dispatch")(runners.dispatch)
app.command("wait-queue")(runners.wait_queue)
app.add_typer(runners.cron_app, name="cron")
app.add_typer(runners.service_app, name="service")
app.add_typer(security.frontend_app, name="frontend")
app.command("doctor")(security.doctor)
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


def _plain_coercion() -> None:
    """Coerce plain parameters (str, int, float, bool, list[str]) without pydantic.

    typer builds a pydantic ``TypeAdapter`` for each parameter it processes, and the
    first one imports pydantic: about 100 ms of every command. Every parameter of
    hostctl's is plain, and a plain value (a str, digits, a default) converts exactly as
    pydantic would convert it; anything else (a malformed or out-of-range number, a
    value of another type) is handed to typer's own coercion, so its messages are
    unchanged. Nothing is changed if typer's internals are not the expected ones.
    """
    from dataclasses import dataclass

    try:
        from typer import _coercion, core
        base = _coercion.RuntimeParam
        original = core.build_runtime_param
    except (ImportError, AttributeError):
        return
    if getattr(original, "hostctl_plain", False):
        return
    unsure = object()

    def plain(annotation: Any, info: Any, value: Any) -> Any:
        if annotation is str:
            return value if isinstance(value, str) else unsure
        if annotation is bool:
            return value if isinstance(value, bool) else unsure
        if annotation in (int, float):
            if isinstance(value, str) and value.isascii() and (
                    value.isdigit() if annotation is int else
                    value.replace(".", "", 1).isdigit() and value[0] != "."):
                number = annotation(value)
            elif type(value) in (int, float) and (annotation is float or type(value) is int):
                number = annotation(value)
            else:
                return unsure
            if (info.min is not None and number < info.min) or (
                    info.max is not None and number > info.max):
                return unsure  # typer's coercion says why
            return number
        if annotation == list[str] and isinstance(value, list | tuple) and all(
                isinstance(item, str) for item in value):
            return list(value)
        return unsure

    @dataclass(frozen=True)
    class PlainParam(base):  # type: ignore[misc, valid-type]
        descriptor: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            done = plain(self.annotation, self.parameter_info, value)
            if done is not unsure:
                return done
            return original(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

    def build(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        try:
            simple = (descriptor.file_annotation is None and info.parser is None
                      and not info.clamp and not descriptor.is_path
                      and not descriptor.is_choice
                      and (descriptor.annotation in (str, int, float, bool)
                           or descriptor.annotation == list[str]))
        except AttributeError:
            simple = False
        if not simple:
            return original(descriptor)
        return PlainParam(parameter_info=info, annotation=descriptor.annotation,
                          descriptor=descriptor)

    build.hostctl_plain = True  # type: ignore[attr-defined]
    core.build_runtime_param = build


_plain_coercion()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hostctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[str | None, typer.Option(
        "--home", metavar="PATH",
        help="hostctl's home (default: $HOSTCTL_HOME, else the user data folder).")] = None,
    verbose: Annotated[int, typer.Option(
        "-v", "--verbose", count=True, show_default=False,
        help="Say more on stderr (repeat for debug).")] = 0,
    quiet: Annotated[bool, typer.Option(
        "-q", "--quiet", help="Print only results and errors.")] = False,
    traceback: Annotated[bool, typer.Option(
        "--traceback", help="On an unexpected error, print the Python traceback.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    _debug["traceback"] = traceback
    logging.basicConfig(level=logging_level(verbose, quiet), format="hostctl: %(message)s",
                        stream=sys.stderr)
    ctx.obj = State(paths=Paths(resolve_home(home)), verbose=verbose, quiet=quiet)
    sub = ctx.invoked_subcommand
    asks_help = any(a in ("--help", "-h") for a in ctx.meta.get("hostctl.args", ()))
    if sub and sub != "task" and not ctx.resilient_parsing and not asks_help:
        from hostctl.queues.dropbox import refuse_frontend

        refuse_frontend(ctx.obj.paths, sub)


def main(argv: list[str] | None = None) -> int:
    """Run hostctl with ``argv`` (default: sys.argv[1:]); return the exit code."""
    _debug["traceback"] = False
    prepare_streams()
    if COMPLETE_VAR in os.environ:  # the shell asks for completions (see completions/)
        from typer._completion_classes import completion_init

        completion_init()
    command = typer.main.get_command(app)
    try:
        rv = command.main(
            args=argv, prog_name="hostctl", complete_var=COMPLETE_VAR, standalone_mode=False
        )
    except HostctlError as exc:
        return fail(exc.message, exc.exit_status)
    except NoArgsIsHelpError as exc:  # a bare group: its help, laid out, as a usage error
        sys.stderr.write(exc.format_message().rstrip("\n") + "\n")
        return exc.exit_code
    except ClickException as exc:
        where = getattr(getattr(exc, "ctx", None), "command_path", "hostctl")
        return fail(f"{exc.format_message()} (see '{where} --help')", exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return fail("interrupted", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return ExitStatus.ERROR
    except Exception as exc:  # a bug: one line, unless asked for the trace
        return internal_error(exc, _debug["traceback"])
    return rv if isinstance(rv, int) else ExitStatus.OK


def run() -> NoReturn:
    """The whole command line (cli/entry.py sends here what its fast path does not take)."""
    exit_process(main())
