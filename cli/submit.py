"""What ``hostctl task add`` does once its command line is read: queue the task (for a
front end, drop it into the spool's drop box) and print its id. Shared by the typer
command (cli/tasks.py) and the fast path (cli/entry.py); it loads no command-line library.
"""

from __future__ import annotations

import sys

from hostctl.cli.output import emit_json
from hostctl.cli.secretinput import read_secrets
from hostctl.paths import Paths
from hostctl.queues import dropbox
from hostctl.runners import lifecycle as ops
from hostctl.runners.home import Home


def add_task(paths: Paths, type_: str, context: str, options: list[str],
             context_options: list[str], priority: int, delay: float, json_: bool,
             quiet: bool = False) -> None:
    """Run by a front-end user who does not own the home, the task goes through the drop
    box: it is checked when the back end admits it, and its receipt lets this user follow
    it with `task show` and `task log`."""
    opts = ops.parse_pairs(options, "--option")
    # a secret field given as -c FIELD=- or FIELD=@FILE is read here, off the command line
    ctx_opts = read_secrets(ops.parse_pairs(context_options, "--context-option"),
                            what="--context-option ")
    if dropbox.is_frontend(paths):
        dropped = dropbox.submit(paths, type_, context, opts, ctx_opts, priority, delay)
        kept = dropbox.ReceiptBook.default().keep(dropped)
        if json_:
            emit_json({"id": dropped.id, "receipt": dropped.receipt, "status": "incoming"})
            return
        print(dropped.id)
        if not kept:
            print(f"hostctl: could not keep the receipt; follow the task with --receipt "
                  f"{dropped.receipt}", file=sys.stderr)
        return
    added = ops.add(Home(paths), type_, context, opts, ctx_opts, priority, delay)
    if json_:
        emit_json(added.task.to_json())
    else:
        print(added.task.id)
        if not added.created and not quiet:  # -q: the id alone
            print(f"hostctl: an identical task is already queued: {added.task.id}",
                  file=sys.stderr)
