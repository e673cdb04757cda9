"""The ``hostctl`` console script (and ``python -m hostctl``).

The commands that run most often or longest take a fast path that loads no command-line
library (typer, its click and the pydantic it coerces values with take about half of a
short command, and 14 MB of a long-lived one): ``task add``, what a front end runs for
every click; ``dispatch``, cron's pass every minute; ``wait-queue``, the daemon. Anything
else, and any such line this parser is not sure of, goes to the typer CLI (cli/main.py),
which then says what is wrong in its own words. The fast path takes exactly::

    hostctl [--home PATH] [-v|--verbose]... [-q|--quiet] [--traceback] LINE

    LINE:   task add TYPE @NAME [--option|-o KEY=VALUE]...
                [--context-option|--context_option|-c FIELD=VALUE]...
                [--priority|-p 0-9] [--delay SECONDS] [--json]
          | dispatch [--force] [--queue NAME] [--server @NAME]
          | wait-queue [--max-runtime SECONDS] [--concurrency 1-256] [--once]
                [--housekeeping-every SECONDS] [--server @NAME]

options in any order after the command's words (also ``--name=value``), a value in the
next word only if that word does not start with ``-``, digits for a whole number and
digits with one decimal point for a number, within the option's bounds; the last of a
repeated option wins, as in click. The words come from one table (cli/grammar.py) that
the typer commands are declared with; both paths run the same code once the line is read
(cli/submit.py, cli/runs.py) and end alike (cli/output.py). tests/test_entry.py runs both
on the same command lines and compares exit codes, output and what was queued.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from hostctl.cli import grammar as g
from hostctl.cli.output import exit_process, guarded, prepare_streams


@dataclass
class Request:
    """A fast-path command line, read."""

    line: g.Line
    home: str | None = None
    verbose: int = 0
    quiet: bool = False
    traceback: bool = False
    args: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


def _value(flag: g.Flag, text: str) -> Any:
    """The option's value, or None where the parser is not sure (typer then says)."""
    if flag.kind in ("text", "list"):
        return text
    if not text.isascii() or text.endswith("."):
        return None
    whole, _, part = text.partition(".")
    if not whole.isdigit() or (part and (flag.kind == "int" or not part.isdigit())):
        return None
    number: float = int(text) if flag.kind == "int" else float(text)
    if (flag.low is not None and number < flag.low) or (
            flag.high is not None and number > flag.high):
        return None
    return number


def parse(argv: list[str]) -> Request | None:
    """The request, if ``argv`` is a line of the fast path's form; else None."""
    i = 0
    root: dict[str, Any] = {"home": None, "verbose": 0, "quiet": False, "traceback": False}
    while i < len(argv) and argv[i].startswith("-"):  # hostctl's own options
        token = argv[i]
        if token in g.VERBOSE.names:
            root["verbose"] += 1
        elif token in g.QUIET.names:
            root["quiet"] = True
        elif token in g.TRACEBACK.names:
            root["traceback"] = True
        elif token in g.HOME.names and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            i += 1
            root["home"] = argv[i]
        elif token.partition("=")[0] in g.HOME.names and "=" in token:
            root["home"] = token.partition("=")[2]
        else:
            return None
        i += 1
    line = next((ln for ln in g.FAST_LINES
                 if tuple(argv[i:i + len(ln.words)]) == ln.words), None)
    if line is None:
        return None
    req = Request(line, **root)
    rest = argv[i + len(line.words):]
    j = 0
    while j < len(rest):
        token = rest[j]
        j += 1
        if not token.startswith("-"):
            req.args.append(token)
            continue
        flag = line.flag(token)
        if flag is not None and flag.kind == "switch":
            req.values[flag.dest] = True
            continue
        name, eq, text = token.partition("=")
        if not eq or not name.startswith("--"):
            name = token
            if j >= len(rest) or rest[j].startswith("-"):
                return None
            text = rest[j]
            j += 1
        flag = line.flag(name)
        if flag is None or flag.kind == "switch":
            return None
        value = _value(flag, text)
        if value is None:
            return None
        if flag.kind == "list":
            req.values.setdefault(flag.dest, []).append(value)
        else:
            req.values[flag.dest] = value
    return req if len(req.args) == line.arguments else None


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
    prepare_streams()
    return guarded(lambda: _run(req), lambda: req.traceback)


def _run(req: Request) -> int | None:
    # each route loads only its own code: the root helper never loads the queue's, and
    # task add never loads the worker's
    from hostctl.cli.begin import begin

    st = begin(req.home, req.verbose, req.quiet, req.line.words[0])
    v = req.values
    if req.line is g.TASK_ADD:
        from hostctl.cli.submit import add_task

        add_task(st.paths, req.args[0], req.args[1], v.get("options", []),
                 v.get("context_options", []), v.get("priority", g.DEFAULT_PRIORITY),
                 v.get("delay", 0.0), v.get("json", False), st.quiet)
        return None
    from hostctl.cli import runs

    if req.line is g.DISPATCH:
        return runs.dispatch(st, v.get("force", False), v.get("queue"), v.get("server"))
    return runs.wait_queue(st, v.get("max_runtime", 3600.0), v.get("concurrency"),
                           v.get("once", False), v.get("housekeeping_every", 60.0),
                           v.get("server"))


def run() -> NoReturn:
    exit_process(main())
