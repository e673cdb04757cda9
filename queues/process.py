"""Child processes of a worker: their own process group, killed with their worker.

Every task runs in a new session (its own process group), so that a timeout or a cancel
can signal the whole tree with ``killpg``. On Linux the child also asks the kernel to
SIGKILL it when its worker dies (``PR_SET_PDEATHSIG``): a worker killed with ``kill -9``
takes its running task with it, and the sweep that later recovers the task kills what is
left of the group, after checking that the group leader is still the process it started
(its start time in /proc), so a reused pid is never signalled.
"""

from __future__ import annotations

import ctypes
import os
import signal
from contextlib import suppress

_PR_SET_PDEATHSIG = 1
_libc = None


def die_with_parent() -> None:
    """In a freshly forked child: own session, and SIGKILL when the parent dies."""
    global _libc
    os.setsid()
    with suppress(OSError, AttributeError):
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_group(pgid: object, leader_start: object) -> bool:
    """SIGKILL a task's process group if its leader is still the process we started."""
    if not isinstance(pgid, int) or pgid <= 1:
        return False
    if leader_start is not None and start_time(pgid) != leader_start:
        return False
    return signal_group(pgid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
