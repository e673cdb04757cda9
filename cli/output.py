"""Output and exit primitives that need no command-line library: the one-line error, JSON
on stdout, the streams' error handling, the process's end, and :func:`guarded`, the one
place where errors become exit codes. cli/main.py (the whole CLI), cli/entry.py (the fast
path of ``task add``) and cli/privileged.py (the root helper) all run through it, so all
end alike.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from hostctl.errors import ExitStatus, HostctlError


def prepare_streams() -> None:
    """Print a value that is not UTF-8 (a 0xff byte from a command line or a file name,
    kept as a surrogate) as its escape (also a valid one inside a JSON string), not an
    encoding error, whatever the locale."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (OSError, ValueError):
                pass


def logging_level(verbose: int, quiet: bool) -> int:
    """stderr's level: errors only with -q, warnings by default, more with each -v."""
    import logging

    if verbose > 1:
        return logging.DEBUG
    return logging.ERROR if quiet else (logging.WARNING, logging.INFO)[min(verbose, 1)]


def fail(message: str, status: int) -> int:
    """The one line on stderr for an error; return its exit status."""
    text = " ".join(message.split())
    sys.stderr.write(f"hostctl: error: {text}\n")
    sys.stderr.flush()
    return status


def internal_error(exc: Exception, show_traceback: bool) -> int:
    """A bug: one line, or (``--traceback``) the trace; EX_SOFTWARE either way."""
    if show_traceback:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        return ExitStatus.INTERNAL
    return fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --traceback)",
                ExitStatus.INTERNAL)


def guarded(call: Callable[[], int | None], show_traceback: Callable[[], bool]) -> int:
    """Run ``call`` and return its exit status: its own (a command that reports an outcome
    returns it), else the one its error carries, every error said in one line on stderr.

    - :class:`HostctlError`: its message and its status;
    - the argument parser's errors (typer's, which carry click's documented
      ``format_message()`` and ``exit_code``): the message and where to find help, or,
      for a bare command group, its help;
    - an interrupt: 130; a closed stdout (``| head``): 1, silently;
    - anything else is a bug: one line (``--traceback``: the trace), 70.
    """
    try:
        status = call()
    except HostctlError as exc:
        return fail(exc.message, exc.exit_status)
    except KeyboardInterrupt:
        return fail("interrupted", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return ExitStatus.ERROR
    except Exception as exc:
        parsed = _parser_error(exc)
        if parsed is not None:
            return parsed
        if type(exc).__name__ == "Abort" and type(exc).__module__.startswith("typer"):
            return fail("interrupted", ExitStatus.INTERRUPTED)  # typer.Abort: ^C at a prompt
        return internal_error(exc, show_traceback())
    return ExitStatus.OK if status is None else int(status)


def _parser_error(exc: Exception) -> int | None:
    """Say a usage error of the argument parser; None for any other exception."""
    if not type(exc).__module__.startswith("typer"):
        return None
    message = getattr(exc, "format_message", None)
    code = getattr(exc, "exit_code", None)
    if not callable(message) or not isinstance(code, int):
        return None
    text = str(message())
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as a usage error
        sys.stderr.write(text.rstrip("\n") + "\n")
        return code
    where = getattr(getattr(exc, "ctx", None), "command_path", None) or "hostctl"
    return fail(f"{text} (see '{where} --help')", code)


def emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, ensure_ascii=False)
    sys.stdout.write("\n")


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` once the output is flushed.

    It ends with ``os._exit``: tearing down the hundreds of modules a command has loaded
    takes the interpreter ~100 ms and does nothing a user could see. The exit handlers
    (logging's among them) still run first; if a flush fails (a closed pipe), the normal
    exit reports it.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    os._exit(int(code) & 0xFF)
