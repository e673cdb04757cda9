"""The ``hostctl`` console script (and ``python -m hostctl``).

The command a front end runs for every click, ``task add``, takes a fast path that loads
no command-line library: typer and its click take about a third of a whole ``task add``.
Everything else, and any ``task add`` command line this parser is not sure of, goes to the
typer CLI (cli/main.py), which then says what is wrong in its own words. The fast path
takes exactly::

    hostctl [--home PATH] [-v|--verbose]... [-q|--quiet] [--traceback] task add TYPE @NAME
            [--option|-o KEY=VALUE]... [--context-option|--context_option|-c FIELD=VALUE]...
            [--priority|-p 0-9] [--delay SECONDS] [--json]

options in any order after ``add`` (also ``--name=value``), a value in the next word only
if that word does not start with ``-``, digits for the priority and digits (with one
decimal point) for the delay; the last of a repeated priority or delay wins, as in click.
Both paths run the same code once the line is read (cli/submit.py) and end alike
(cli/output.py); tests/test_entry.py runs both on the same command lines and compares
exit codes, output and the queued tasks.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import NoReturn

from hostctl.cli.output import (
    exit_process,
    fail,
    internal_error,
    logging_level,
    prepare_streams,
)
from hostctl.errors import ExitStatus, HostctlError

_VALUED = {"--option": "options", "-o": "options",
           "--context-option": "context_options", "--context_option": "context_options",
           "-c": "context_options", "--priority": "priority", "-p": "priority",
           "--delay": "delay"}


@dataclass
class TaskAdd:
    """A ``task add`` command line, read."""

    home: str | None = None
    verbose: int = 0
    quiet: bool = False
    traceback: bool = False
    args: list[str] = field(default_factory=list)  # TYPE, @NAME
    options: list[str] = field(default_factory=list)
    context_options: list[str] = field(default_factory=list)
    priority: int = 5
    delay: float = 0.0
    json: bool = False


def parse(argv: list[str]) -> TaskAdd | None:
    """The request, if ``argv`` is a ``task add`` line of the fast path's form; else None."""
    req = TaskAdd()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # hostctl's own options
        token = argv[i]
        if token in ("-v", "--verbose"):
            req.verbose += 1
        elif token in ("-q", "--quiet"):
            req.quiet = True
        elif token == "--traceback":
            req.traceback = True
        elif token == "--home" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            i += 1
            req.home = argv[i]
        elif token.startswith("--home="):
            req.home = token[len("--home="):]
        else:
            return None
        i += 1
    if argv[i:i + 2] != ["task", "add"]:
        return None
    rest = argv[i + 2:]
    j = 0
    while j < len(rest):
        token = rest[j]
        j += 1
        if not token.startswith("-"):
            req.args.append(token)
            continue
        if token == "--json":
            req.json = True
            continue
        name, eq, value = token.partition("=")
        if not eq or not name.startswith("--"):
            name, value = token, ""
            if j >= len(rest) or rest[j].startswith("-"):
                return None
            value = rest[j]
            j += 1
        where = _VALUED.get(name)
        if where is None:
            return None
        if where in ("options", "context_options"):
            getattr(req, where).append(value)
        elif where == "priority":
            if not (value.isascii() and value.isdigit() and 0 <= int(value) <= 9):
                return None
            req.priority = int(value)
        else:
            whole, _, part = value.partition(".")
            if not (value.isascii() and whole.isdigit() and (part == "" or part.isdigit())
                    and not value.endswith(".")):
                return None
            req.delay = float(value)
    return req if len(req.args) == 2 else None


def main(argv: list[str] | None = None) -> int:
    """Run hostctl with ``argv`` (default: sys.argv[1:]); return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["privileged"]:  # the root helper: no CLI library, no home
        from hostctl.cli.privileged import main as privileged

        prepare_streams()
        return privileged(args[1:])
    req = None if "_HOSTCTL_COMPLETE" in os.environ else parse(args)
    if req is None:
        from hostctl.cli.main import main as full

        return full(args)
    return _run(req)


def _run(req: TaskAdd) -> int:
    import logging

    from hostctl.cli.submit import add_task
    from hostctl.paths import Paths, resolve_home

    prepare_streams()
    logging.basicConfig(level=logging_level(req.verbose, req.quiet),
                        format="hostctl: %(message)s", stream=sys.stderr)
    try:
        add_task(Paths(resolve_home(req.home)), req.args[0], req.args[1], req.options,
                 req.context_options, req.priority, req.delay, req.json)
    except HostctlError as exc:
        return fail(exc.message, exc.exit_status)
    except KeyboardInterrupt:
        return fail("interrupted", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return ExitStatus.ERROR
    except Exception as exc:  # a bug: one line, unless asked for the trace
        return internal_error(exc, req.traceback)
    return ExitStatus.OK


def run() -> NoReturn:
    exit_process(main())
