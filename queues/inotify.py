"""A minimal inotify wrapper (Linux), so an idle worker sleeps in the kernel.

The worker watches the spool's ``new/``, ``incoming/`` and ``deferred/`` folders: a
publish (a link or rename into ``new/``) wakes it at once. The daemon also watches the
spool's root for deletions only: ``queue resume`` removes the ``paused`` file. Where
inotify is missing the worker falls back to its periodic rescan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WAKE_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE


class Inotify:
    def __init__(self, folders: list[Path], mask: int = WAKE_MASK) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        for folder in folders:
            wd = libc.inotify_add_watch(fd, os.fsencode(folder), mask)
            if wd < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, f"inotify_add_watch {folder} failed")

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        """Read and discard pending events; return how many bytes were read."""
        total = 0
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return total
            if not chunk:
                return total
            total += len(chunk)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
