"""Child processes of a worker: their own process group, killed when their task is lost.

Every task runs in a new session (its own process group), so that a timeout or a cancel
can signal the whole tree with ``killpg``. A command task is started with ``posix_spawn``
(see provision/runner.py), which cannot ask for ``PR_SET_PDEATHSIG``: when its worker is
killed with ``kill -9`` the command runs on until the sweep that recovers the task (at the
next ``dispatch`` or ``wait-queue`` start, or the daemon's periodic sweep) kills its whole
group, before the task can run again, after checking that the group is still the one the
task's leader started (its start time in /proc), so a reused pid is never signalled. The
worker records the group and the window of clock ticks the leader was started in (read
from the clock before and after the spawn: see :func:`boot_ticks`) in the ``start`` event
right after the spawn returns. A forked child (a task function) also asks the kernel to
SIGKILL it when its worker dies (:func:`die_with_parent`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

_PR_SET_PDEATHSIG = 1
_libc = None


def die_with_parent(parent: int) -> None:
    """In a freshly forked child of ``parent``: own session, and SIGKILL when the parent
    dies. A parent that died before the death signal was set (between the fork and the
    prctl) is noticed at once: the child is no longer its child, and exits."""
    global _libc
    os.setsid()
    with suppress(OSError, AttributeError):
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(70)


def _living(session: int) -> list[int]:
    """The processes of ``session`` that have not exited (zombies excepted: a zombie has
    let go of its files and locks)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2:].split()
        if len(rest) > 3 and rest[3] == str(session).encode() and rest[0] != b"Z":
            found.append(int(entry))
    return found


def wait_gone(session: object, timeout: float = 5.0) -> bool:
    """Wait (at most ``timeout`` s) until every process of a killed task's session has
    exited; whether they have."""
    if not isinstance(session, int) or session <= 1:
        return True
    deadline = time.monotonic() + timeout
    while _living(session):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def kill_spawned(task_id: str, not_before: int) -> int:
    """SIGKILL every session that a worker started for ``task_id`` at or after the boot
    tick ``not_before`` and did not live to record (the worker died between the spawn and
    its ``start`` event): the sessions of the processes whose environment carries the
    task's ``HOSTCTL_TASK_ID`` and which started since. Returns how many processes were
    signalled. Repeated until none is left, since a member may fork meanwhile."""
    needle = f"HOSTCTL_TASK_ID={task_id}".encode()
    total = 0
    for _ in range(10):
        sessions = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            st = _stat(entry)
            if st is None or st[2] < not_before:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read()
            except OSError:  # gone, or not ours to read (then not ours to kill either)
                continue
            if needle in env.split(b"\0"):
                sessions.add(st[1])
        members = [pid for sid in sessions for pid in _living(sid)]
        if not members:
            return total
        for pid in members:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                total += 1
        for sid in sessions:
            wait_gone(sid, 1.0)
    return total


def _stat(pid: int | str) -> tuple[int, int, int] | None:
    """(process group, session, start time in clock ticks) from /proc/PID/stat."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)  # one read: procfs makes the whole line at once
    except OSError:
        return None
    finally:
        os.close(fd)
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return int(rest[2]), int(rest[3]), int(rest[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    found = _stat(pid)
    return found[2] if found else None


_TICK_NS = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def boot_ticks(up: bool = False) -> int:
    """Now, in the clock ticks of /proc/PID/stat's start time (CLOCK_BOOTTIME), rounded
    down, or ``up``. A child started between ``boot_ticks()`` and ``boot_ticks(up=True)``
    has its start time in that window: reading it back from /proc right after the spawn
    would cost ~0.1-0.2 ms a task (the read waits for the child's exec)."""
    ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return -(-ns // _TICK_NS) if up else ns // _TICK_NS


def group_start_times(pgid: int) -> list[int]:
    """Start times of the living processes whose process group and session are ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(entry)
            if st is not None and st[0] == pgid and st[1] == pgid:
                found.append(st[2])
    return found


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_group(started: Mapping[str, Any]) -> bool:
    """SIGKILL what is left of the process group (its session, from setsid) that a task's
    ``start`` event recorded."""
    pgid = started.get("pgid")
    return (isinstance(pgid, int) and is_task_group(started)
            and signal_group(pgid, signal.SIGKILL))


def is_task_group(started: Mapping[str, Any]) -> bool:
    """Whether the process group in a task's ``start`` event is still the one its leader
    started.

    The event has ``pgid`` and the leader's start time: ``pgid_start``, exactly, or (as
    the worker records it) at the earliest, with ``pgid_start_by`` at the latest. While
    the leader lives, its start time must be in that window (else the pid now belongs to
    another process). Once the leader is gone, the kernel cannot hand its pid out again
    while any member of its group lives, so the members still in that group and session,
    started no earlier than the leader, are the task's own descendants.
    """
    pgid, earliest, latest = (started.get("pgid"), started.get("pgid_start"),
                              started.get("pgid_start_by"))
    if not isinstance(pgid, int) or pgid <= 1:
        return False
    current = start_time(pgid)
    if current is not None:
        if not isinstance(earliest, int):
            return True
        return earliest <= current <= (latest if isinstance(latest, int) else earliest)
    members = group_start_times(pgid)
    if isinstance(earliest, int):
        return bool(members) and all(t >= earliest for t in members)
    return bool(members)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
