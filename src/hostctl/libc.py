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
