"""Durable file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader sees either the old file or the new one, never half of either, and once
:func:`write_atomic` returns the new content survives a power loss.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hostctl.errors import OperationFailed

#: file systems whose file locks cannot be trusted between processes or machines
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "fuse.sshfs",
    "fuse.s3fs", "fuse.rclone", "davfs", "fuse.davfs2",
})


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and (unless not ``durable``: a record
    that a power cut may take back, such as a liveness stamp) durably; the file gets
    ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_private(path: Path, data: bytes) -> None:
    """Create or replace a small file readable by its owner only (not durable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system ``path`` lies on (Linux), or None if unknown."""
    try:
        target = os.path.realpath(path)
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best, best_len = None, -1
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        mount_point = _unescape(fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= best_len:
            best, best_len = tail[0], len(mount_point)
    return best


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def tail(path: Path, follow: bool, finished: Callable[[], bool],
         poll: float = 0.1) -> Iterator[bytes]:
    """A file's content; with ``follow``, what is appended until ``finished()``.

    ``finished`` is asked before each read, so the read after it said yes holds all that
    was written before the end. A missing file reads as empty (not written yet).
    """
    offset = 0
    while True:
        done = follow and finished()
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except FileNotFoundError:
            chunk = b""
        except PermissionError as exc:
            raise OperationFailed(f"cannot read {path.name}: {exc.strerror}") from None
        if chunk:
            offset += len(chunk)
            yield chunk
        if not follow or done:
            return
        time.sleep(poll)


def lock_held(path: Path) -> bool:
    """Whether another process holds an flock on ``path`` (False if there is no such
    file): a worker holds one on each task it runs and on its liveness lock, and the
    kernel drops it when the worker dies."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


@contextmanager
def flocked(path: Path, *, wait: bool = True, follow: bool = True,
            patience: float = 0.0) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (a lock file, made 0600 if missing) for the
    block; True inside it. Without ``wait``, a lock another process holds gives False at
    once, or after trying again for ``patience`` seconds (a :func:`lock_held` probe holds
    a shared lock for an instant: it is no holder). The kernel drops the lock when its
    holder dies: no stale lock to clean up. ``follow=False`` refuses a symbolic link where
    the lock file should be."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, 0o600)
    try:
        until = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= until:
                    yield False
                    return
                time.sleep(min(0.005, max(0.0, until - time.monotonic())))
        yield True
    finally:
        os.close(fd)
