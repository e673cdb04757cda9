"""The words of the command lines that two parsers read: hostctl's own options and the
lines of the commands that run most often or longest (``task add``, a front end's click;
``dispatch``, cron's every minute; ``wait-queue``, the daemon). The typer commands
(cli/main.py, cli/tasks.py, cli/runners.py) declare their options from these tables, and
the console script's fast path (cli/entry.py) reads the same tables, so the two cannot
drift apart; tests/test_entry.py runs both on the same lines. It loads no command-line
library.
"""

from __future__ import annotations

from typing import NamedTuple

from hostctl.queues.model import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY


class Flag(NamedTuple):
    """One option: every spelling, where its value goes, what values it takes."""

    names: tuple[str, ...]
    dest: str
    help: str
    metavar: str | None = None
    #: switch (no value), text, int (digits), number (digits, one '.'), list (repeatable)
    kind: str = "switch"
    low: float | None = None
    high: float | None = None


class Line(NamedTuple):
    """A command's words, how many arguments it takes, and its options."""

    words: tuple[str, ...]
    arguments: int
    flags: tuple[Flag, ...]

    def flag(self, name: str) -> Flag | None:
        return next((f for f in self.flags if name in f.names), None)


# hostctl's own options (before the command)
HOME = Flag(("--home",), "home", "hostctl's home (default: $HOSTCTL_HOME, else the user "
            "data folder).", "PATH", "text")
VERBOSE = Flag(("-v", "--verbose"), "verbose", "Say more on stderr (repeat for debug).")
QUIET = Flag(("-q", "--quiet"), "quiet", "Print only results and errors.")
TRACEBACK = Flag(("--traceback",), "traceback",
                 "On an unexpected error, print the Python traceback.")
JSON = Flag(("--json",), "json", "Print one JSON document on stdout.")

# task add TYPE @NAME [options]
OPTION = Flag(("--option", "-o"), "options", "A one-time option for this run (repeatable).",
              "KEY=VALUE", "list")
CONTEXT_OPTION = Flag(
    ("--context-option", "--context_option", "-c"), "context_options",
    "Saved into the context before the task runs (repeatable). A secret field takes - "
    "(read from stdin) or @FILE, never on the command line; @@TEXT is the literal @TEXT.",
    "FIELD=VALUE", "list")
PRIORITY = Flag(("--priority", "-p"), "priority", "0 to 9; higher runs sooner.", None,
                "int", MIN_PRIORITY, MAX_PRIORITY)
DELAY = Flag(("--delay",), "delay", "Run no sooner than this.", "SECONDS", "number", 0)
TASK_ADD = Line(("task", "add"), 2, (OPTION, CONTEXT_OPTION, PRIORITY, DELAY, JSON))

# dispatch [options]
FORCE = Flag(("--force",), "force", "Run every queue, due or not.")
QUEUE = Flag(("--queue",), "queue", "Only this queue (tasks, cron, backup, ssl, task_gc).",
             "NAME", "text")
SERVER = Flag(("--server",), "server",
              "In a cluster: the server this host is; take only its tasks (default: "
              "[cluster] server, else every server's).", "@NAME", "text")
DISPATCH = Line(("dispatch",), 0, (FORCE, QUEUE, SERVER))

# wait-queue [options]
MAX_RUNTIME = Flag(("--max-runtime",), "max_runtime",
                   "Exit 0 after this long, so the supervisor starts a fresh one.",
                   "SECONDS", "number", 0)
CONCURRENCY = Flag(("--concurrency",), "concurrency", "Tasks at once (default: from config).",
                   None, "int", 1, 256)
ONCE = Flag(("--once",), "once", "Drain what is due, then exit.")
HOUSEKEEPING_EVERY = Flag(
    ("--housekeeping-every",), "housekeeping_every",
    "How often to sweep lost tasks, rescan the spool (the safety net for what inotify does "
    "not report), run due periodic queues and record liveness.", "SECONDS", "number", 0.1)
WAIT_QUEUE = Line(("wait-queue",), 0, (MAX_RUNTIME, CONCURRENCY, ONCE, HOUSEKEEPING_EVERY,
                                       SERVER))

#: the lines the fast path reads
FAST_LINES = (TASK_ADD, DISPATCH, WAIT_QUEUE)

__all__ = ["DEFAULT_PRIORITY", "MAX_PRIORITY", "MIN_PRIORITY"]
