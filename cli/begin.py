"""What every command does before its own work, without the command-line library: the
logging on stderr (and, for the runners, into ``HOME/logs/hostctl.log``), the home, and
the front end's refusal of every command but ``task``. The typer root (cli/main.py) and
the console script's fast path (cli/entry.py) both begin here.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from contextlib import suppress
from typing import NamedTuple

from hostctl.cli.output import logging_level
from hostctl.formats import check_home
from hostctl.paths import Paths, resolve_home
from hostctl.queues.dropbox import refuse_frontend


class State(NamedTuple):
    """Resolved once, before the command, and handed to it."""

    paths: Paths
    verbose: int = 0
    quiet: bool = False


def begin(home: str | None, verbose: int, quiet: bool, command: str | None,
          asks_help: bool = False) -> State:
    """Set up stderr's logging and the home; a front end's user may run only ``task``
    (``command`` None: no command, help or completion); a home a newer hostctl wrote is
    refused by every command (formats.py)."""
    logging.basicConfig(level=logging_level(verbose, quiet), format="hostctl: %(message)s",
                        stream=sys.stderr)
    st = State(paths=Paths(resolve_home(home)), verbose=verbose, quiet=quiet)
    if command and command != "task" and not asks_help:
        refuse_frontend(st.paths, command)
    if command and not asks_help:
        check_home(st.paths.home)
    return st


class _LogFile(logging.handlers.WatchedFileHandler):
    """hostctl.log, opened again when it was rotated away (logrotate's ``create``: the
    file at the path is another one) and made again 0600 if it was removed; a line that
    cannot be written (a full disk) is said in one line on stderr, once until writing
    works again, instead of logging's traceback."""

    failing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not os.path.exists(self.baseFilename):  # removed: made again, private
                os.close(os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT |
                                 os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
            self.reopenIfNeeded()  # (its own errors are not handled by logging)
        except OSError:
            self.handleError(record)
            return
        logging.FileHandler.emit(self, record)
        if self.failing and self.stream is not None:
            try:
                self.flush()
            except OSError:
                return
            self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failing:
            return
        self.failing = True
        exc = sys.exc_info()[1]
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        with suppress(OSError, ValueError):
            sys.stderr.write(f"hostctl: cannot write {self.baseFilename}: {reason}\n")


def file_log(st: State) -> None:
    """Also log to HOME/logs/hostctl.log (created 0600): what the runners did."""
    st.paths.ensure_dir(st.paths.logs)
    path = st.paths.logs / "hostctl.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.close(fd)
    handler = _LogFile(path)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [{os.getpid()}] %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("hostctl")
    for old in [h for h in root.handlers if isinstance(h, _LogFile)]:
        # one hostctl.log per process: a process that ran for another home before (a
        # test, a fork) writes no more there
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if st.verbose > 1 else logging.INFO)
    for h in logging.getLogger().handlers:  # stderr keeps the level -v/-q chose
        h.setLevel(logging.getLogger().level)
