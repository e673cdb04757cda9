"""Child processes of a worker: their own session, all of it stopped when their task is.

Every task runs in a new session (its own process group, whose id is the session's), so
that a timeout or a cancel can signal the whole tree. A process group alone is not the
whole run: a shell with job control, or any program that calls ``setpgid``, puts a
background job in a group of its own, which a ``killpg`` misses. So whatever stops a run
(a timeout, a cancel, the sweep) signals every process of its session
(:func:`signal_session`); only a process that calls ``setsid`` itself (a daemon) leaves
it. While any member of a session lives, the kernel does not hand out its id as a new
pid, so the session is the task's for as long as something of it is left.

A command task is started with ``posix_spawn`` (see provision/runner.py), which cannot ask
for ``PR_SET_PDEATHSIG``: when its worker is killed with ``kill -9`` the command runs on
until the sweep that recovers the task (at the next ``dispatch`` or ``wait-queue`` start,
or the daemon's periodic sweep) kills its whole session, and waits for it to be gone,
before the task can run again, after checking that the session is still the one the
task's leader started (its start time in /proc), so a reused pid is never signalled. The
worker records the session and the window of clock ticks the leader was started in (read
from the clock before and after the spawn: see :func:`boot_ticks`) in the ``start`` event
right after the spawn returns, and a ``spawn`` event (the intent) before it
(:func:`kill_spawned`). A forked child (a task function) also asks the kernel to SIGKILL
it when its worker dies (:func:`die_with_parent`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from hostctl.libc import libc

_PR_SET_PDEATHSIG = 1


#: where two hosts of a cluster share a host name (containers made from one image), each
#: is given its own here
HOST_NAME_VAR = "HOSTCTL_HOST_NAME"


def host_name() -> str:
    """The name of this host, as a task's events record where it ran: the kernel's
    (``uname -n``), unless HOSTCTL_HOST_NAME says otherwise."""
    return os.environ.get(HOST_NAME_VAR) or os.uname().nodename


def hostctl_command(*args: str) -> list[str]:
    """The argv of another hostctl process of this one: this interpreter and this package
    (``-P``: nothing of the working folder is imported), never a shell."""
    return [sys.executable, "-P", "-m", "hostctl", *args]


def die_with_parent(parent: int) -> None:
    """In a freshly forked child of ``parent``: own session, and SIGKILL when the parent
    dies. A parent that died before the death signal was set (between the fork and the
    prctl) is noticed at once: the child is no longer its child, and exits."""
    os.setsid()
    with suppress(OSError, AttributeError):
        libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(70)


def _members(session: int) -> list[tuple[int, int, int]]:
    """(pid, process group, start time in clock ticks) of the processes of ``session``
    that have not exited (zombies excepted: a zombie has let go of its files and
    locks)."""
    found = []
    want = str(session).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2:].split()
        if len(rest) > 19 and rest[3] == want and rest[0] not in (b"Z", b"X"):
            found.append((int(entry), int(rest[2]), int(rest[19])))
    return found


def _living(session: int) -> list[int]:
    return [pid for pid, _, _ in _members(session)]


def signal_session(session: int, sig: int) -> bool:
    """Send ``sig`` to every process of a task's session: its process group and any group
    a member made (each process is signalled once). Only for a session whose leader the
    caller has not reaped yet, or one :func:`is_task_group` vouched for. Whether
    anything was signalled."""
    sent = signal_group(session, sig)
    if session <= 1:
        return sent
    for pid, group, _ in _members(session):
        if group == session:
            continue  # reached by the killpg above
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            sent = True
    return sent


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


def kill_spawned(task_id: str, not_before: int) -> bool:
    """SIGKILL every session that a worker started for ``task_id`` at or after the boot
    tick ``not_before`` and did not live to record (the worker died between the spawn and
    its ``start`` event): the sessions of the processes whose environment carries the
    task's ``HOSTCTL_TASK_ID`` and which started since. Repeated until none is left,
    since a member may fork meanwhile. Whether none is left (False: something would not
    exit, such as a process of another user, and the run is not over)."""
    needle = f"HOSTCTL_TASK_ID={task_id}".encode()
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
            return True
        for pid in members:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for sid in sessions:
            wait_gone(sid, 1.0)
    return False


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


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_run(started: Mapping[str, Any], timeout: float = 5.0) -> bool:
    """SIGKILL what is left of the session a task's ``start`` event recorded (if it is
    still the task's), again until nothing is left (a member may fork meanwhile), and
    wait for it to exit: its locks are let go only then. Whether nothing is left (False:
    something would not exit within ``timeout`` s, such as a process of another user)."""
    sid = started.get("pgid")
    deadline = time.monotonic() + timeout
    while isinstance(sid, int) and sid > 1 and is_task_group(started):
        signal_session(sid, signal.SIGKILL)
        if wait_gone(sid, min(0.5, max(0.0, deadline - time.monotonic()))):
            return True
        if time.monotonic() >= deadline:
            return False
    return True


def is_task_group(started: Mapping[str, Any]) -> bool:
    """Whether the session (and process group) in a task's ``start`` event is still the
    one its leader started.

    The event has ``pgid`` and the leader's start time: ``pgid_start``, exactly, or (as
    the worker records it) at the earliest, with ``pgid_start_by`` at the latest. While
    the leader lives, its start time must be in that window (else the pid now belongs to
    another process). Once the leader is gone, the kernel cannot hand its pid out again
    while any member of its session lives, so the members still in that session, started
    no earlier than the leader, are the task's own descendants.
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
    members = [t for _, _, t in _members(pgid)]
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
