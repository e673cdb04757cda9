"""A minimal inotify wrapper (Linux), so an idle worker sleeps in the kernel.

The worker watches the spool's ``new/``, ``incoming/`` and ``deferred/`` folders: a
publish (a link or rename into ``new/``) wakes it at once. The daemon also watches the
spool's root for deletions only: ``queue resume`` removes the ``paused`` file. Where
inotify is missing the worker falls back to its periodic rescan. The spool keeps its
ordered view of ``new/`` and ``deferred/`` from the names in the events
(:meth:`Inotify.events`).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hostctl.libc import last_errno, libc

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WAKE_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
#: what changes a folder of contexts (contexts/store.py keeps listings until one comes)
CONTEXTS_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
                 | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class Inotify:
    def __init__(self, folders: list[Path], mask: int = WAKE_MASK) -> None:
        fd = libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(last_errno(), "inotify_init1 failed")
        self.fd = int(fd)
        self.watches: dict[int, Path] = {}
        for folder in folders:
            self.add(folder, mask)

    def add(self, folder: Path, mask: int) -> int:
        """Watch one more folder; return its watch descriptor."""
        wd = libc().inotify_add_watch(self.fd, os.fsencode(folder), mask)
        if wd < 0:
            err = last_errno()
            self.close()
            raise OSError(err, f"inotify_add_watch {folder} failed")
        self.watches[wd] = folder
        return int(wd)

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

    def events(self) -> list[tuple[int, int, str]]:
        """The pending events as (watch descriptor, mask, name); never blocks."""
        out: list[tuple[int, int, str]] = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            offset, size = 0, len(chunk)
            while offset + _HEADER.size <= size:
                wd, mask, _cookie, length = _HEADER.unpack_from(chunk, offset)
                offset += _HEADER.size
                raw = chunk[offset:offset + length]
                offset += length
                out.append((wd, mask, os.fsdecode(raw.rstrip(b"\0"))))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
