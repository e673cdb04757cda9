"""The C library, for the few calls Python's os module lacks (inotify, renameat2, prctl).

Loaded on first use: ctypes costs a few milliseconds that a ``task add`` never needs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

_libc: ctypes.CDLL | None = None
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def libc() -> ctypes.CDLL:
    """The process's C library (its functions set errno: see :func:`last_errno`)."""
    global _libc
    if _libc is None:
        import ctypes.util

        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def last_errno() -> int:
    """errno as the last call through :func:`libc` left it."""
    import ctypes

    return ctypes.get_errno()


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2), but FileExistsError where ``dst`` exists (renameat2's RENAME_NOREPLACE;
    where the kernel or the file system lacks it, a check just before the rename)."""
    fn = getattr(libc(), "renameat2", None)
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = last_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_CLOCK_MONOTONIC = 1


class Timer:
    """A timerfd: a descriptor that turns readable once a set time has passed, to sleep
    on beside others (``select``, ``epoll``)."""

    def __init__(self) -> None:
        fd = libc().timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(last_errno(), "timerfd_create failed")
        self.fd = int(fd)

    def fileno(self) -> int:
        return self.fd

    def arm(self, seconds: float) -> None:
        """Readable once, ``seconds`` from now (0: never, the timer is disarmed)."""
        import ctypes

        whole = int(seconds)
        nanos = int((seconds - whole) * 1e9)
        if seconds > 0 and whole == 0 and nanos == 0:
            nanos = 1
        # struct itimerspec {struct timespec it_interval, it_value}: four longs on Linux
        spec = (ctypes.c_long * 4)(0, 0, whole, nanos)
        if libc().timerfd_settime(self.fd, 0, spec, None) != 0:
            raise OSError(last_errno(), "timerfd_settime failed")

    def drain(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
