"""The root command: global options, sub-commands, and the one place errors become exits.

Every user error is a :class:`~hostctl.errors.HostctlError` (or a usage error from the
argument parser); :func:`main` prints it as one line on stderr and returns its exit code.
Anything else is a bug: one line too, exit 70, and ``--traceback`` shows the trace.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, NoReturn

import typer

# typer ships its own copy of click; its exceptions are the parser's usage errors.
from typer._click.exceptions import ClickException

from hostctl import __version__
from hostctl.cli import contexts, save
from hostctl.cli.common import State
from hostctl.errors import ExitStatus, HostctlError
from hostctl.paths import Paths, resolve_home

app = typer.Typer(
    name="hostctl",
    help="Backend of a hosting control panel: contexts, a task queue, provision commands.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(contexts.app, name="context")
app.command(
    "provision-save",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
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
        "--home", metavar="PATH",
        help="hostctl's home (default: $HOSTCTL_HOME, else the user data folder).")] = None,
    verbose: Annotated[int, typer.Option(
        "-v", "--verbose", count=True, show_default=False, help="Say more on stderr (repeat for debug).")] = 0,
    quiet: Annotated[bool, typer.Option(
        "-q", "--quiet", help="Print only results and errors.")] = False,
    traceback: Annotated[bool, typer.Option(
        "--traceback", help="On an unexpected error, print the Python traceback.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    _debug["traceback"] = traceback
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO)[min(verbose, 1)]
    if verbose > 1:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="hostctl: %(message)s", stream=sys.stderr)
    ctx.obj = State(paths=Paths(resolve_home(home)), verbose=verbose, quiet=quiet)


def _fail(message: str, status: int) -> int:
    text = " ".join(message.split())
    sys.stderr.write(f"hostctl: error: {text}\n")
    sys.stderr.flush()
    return status


def main(argv: list[str] | None = None) -> int:
    """Run hostctl with ``argv`` (default: sys.argv[1:]); return the exit code."""
    _debug["traceback"] = False
    if COMPLETE_VAR in os.environ:  # the shell asks for completions (see completions/)
        from typer._completion_classes import completion_init

        completion_init()
    command = typer.main.get_command(app)
    try:
        rv = command.main(
            args=argv, prog_name="hostctl", complete_var=COMPLETE_VAR, standalone_mode=False
        )
    except HostctlError as exc:
        return _fail(exc.message, exc.exit_status)
    except ClickException as exc:
        where = getattr(getattr(exc, "ctx", None), "command_path", "hostctl")
        return _fail(f"{exc.format_message()} (see '{where} --help')", exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return ExitStatus.ERROR
    except Exception as exc:  # a bug: one line, unless asked for the trace
        if _debug["traceback"]:
            raise
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --traceback)",
            ExitStatus.INTERNAL,
        )
    return rv if isinstance(rv, int) else ExitStatus.OK


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
