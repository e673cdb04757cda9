"""The spool's list of live workers: ``spool/workers/PID.json`` (a stamp: who, since when,
last seen, tasks run) beside ``spool/locks/worker.PID.lock``, flock'ed for the worker's
life. A worker is alive exactly while its lock is held: the kernel drops the lock the
moment the process dies, so a record whose lock is free is a dead worker's, reported once
and removed.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import suppress
from pathlib import Path

from hostctl.files import lock_held, write_atomic
from hostctl.process import host_name
from hostctl.queues.model import WorkerInfo
from hostctl.times import utc_iso


class Registration:
    """One worker's entry, held until :meth:`close`."""

    def __init__(self, folder: Path, locks: Path, pid: int, started: str,
                 max_runtime: float) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        self._lock_path = locks / f"worker.{pid}.lock"
        self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._record = folder / f"{pid}.json"
        self._doc = {"pid": pid, "host": host_name(), "started": started,
                     "last_seen": "", "tasks_run": 0, "max_runtime": max_runtime}
        self.update(0)

    def update(self, tasks_run: int) -> None:
        if self._lock_fd < 0:
            return
        self._doc.update(last_seen=utc_iso(), tasks_run=tasks_run)
        with suppress(OSError):  # a stamp, not a record to keep: no fsync (no wake-up)
            write_atomic(self._record, json.dumps(self._doc).encode(), durable=False)

    def close(self) -> None:
        if self._lock_fd < 0:
            return
        with suppress(OSError):
            self._record.unlink()
        with suppress(OSError):
            self._lock_path.unlink()
        os.close(self._lock_fd)
        self._lock_fd = -1


def workers(folder: Path, locks: Path) -> list[WorkerInfo]:
    """The registered workers; a dead one is reported, and its record removed."""
    out = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            doc = json.loads((folder / name).read_bytes())
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        alive = lock_held(locks / f"worker.{pid}.lock")
        out.append(WorkerInfo(pid, str(doc.get("host", "")), str(doc.get("started", "")),
                              str(doc.get("last_seen", "")), int(doc.get("tasks_run", 0)),
                              alive))
        if not alive:
            with suppress(OSError):
                (folder / name).unlink()
    return out
