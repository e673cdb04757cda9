"""Output and exit primitives that need no command-line library: the one-line error, JSON
on stdout, the streams' error handling, the process's end. cli/main.py (the whole CLI)
and cli/entry.py (the fast path of ``task add``) share them, so both end alike.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

from hostctl.errors import ExitStatus


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
