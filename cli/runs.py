"""What ``hostctl dispatch`` and ``hostctl wait-queue`` do once their command line is
read: shared by the typer commands (cli/runners.py) and the console script's fast path
(cli/entry.py), so cron's pass every minute and the long-lived daemon load no
command-line library. Returns the exit status.
"""

from __future__ import annotations

import logging

from hostctl.cli.begin import State, file_log
from hostctl.config import wait_if_emptied
from hostctl.errors import ExitStatus
from hostctl.runners.daemon import WaitQueue, drain_once
from hostctl.runners.dispatcher import Dispatcher
from hostctl.runners.home import Home


def dispatch(st: State, force: bool = False, queue: str | None = None,
             server: str | None = None) -> int:
    """One pass from cron: sweep lost tasks, run every queue that is due, wait, exit."""
    file_log(st)
    wait_if_emptied(st.paths.config_file)  # not an editor's write caught halfway
    home = Home(st.paths, server or "")
    home.check_server()
    report = Dispatcher(home).run(force=force, only=queue)  # logs each queue
    return ExitStatus.ERROR if report.failed else ExitStatus.OK


def wait_queue(st: State, max_runtime: float = 3600.0, concurrency: int | None = None,
               once: bool = False, housekeeping_every: float = 60.0,
               server: str | None = None) -> int:
    """The daemon: run each task as soon as it is queued (under Supervisor or systemd)."""
    file_log(st)
    wait_if_emptied(st.paths.config_file)  # not an editor's write caught halfway
    home = Home(st.paths, server or "")
    home.check_server()
    if once:
        summary = drain_once(home, concurrency)
        logging.getLogger("hostctl").info("wait-queue --once ran %d task(s)", summary.started)
        return ExitStatus.OK
    return WaitQueue(home, max_runtime, concurrency,
                     housekeeping_every=housekeeping_every).run()
