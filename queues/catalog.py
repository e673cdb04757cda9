"""The spool's catalog: a cache of each task's facts, so that a filtered ``task list``
opens only the task files it shows.

A task's id, type and context never change; its status changes only when its file moves
between folders (and, for a finished task, with the last ``end`` event its file ends
with). The catalog keeps, per task id, one entry::

    ID TYPE CONTEXT SIZE STATUS

``SIZE`` and ``STATUS`` say how the task ended: the task file's size in bytes just after
its ``end`` event was appended, and the status that event gives (``success``, ``error``,
``warning``, ``cancelled``); both are ``-`` for an entry written before the task ended.
A task file only ever grows (events are appended, it is never replaced), so of two entries
for one id the one with the larger ``SIZE`` is the newer: entries merge in any order.

Layout (under ``spool/catalog/``)::

    log            appended by every writer: ENTRY CRC, one record per write()
    log.old        the log a compaction is folding (present during one, or after a crash)
    base           written by compaction: a header line "hostctl-catalog 1 CRC COUNT",
                   then COUNT lines of one id each (sorted), then COUNT lines of the rest
                   of their entries (TYPE CONTEXT SIZE STATUS) in the same order; CRC
                   covers all of them (two columns load faster than COUNT lines to split)
    compact.lock   flock'ed by the one compaction at a time

Protocol
  append    ``open(log, O_APPEND|O_CREAT)``, one ``write()`` of whole lines (each with the
            CRC-32 of its entry, so a torn or interleaved line is dropped when read), no
            fsync: a record lost to a power cut only makes a list read that task's file.
            Then, if ``log`` no longer names the file written (a compaction renamed it
            meanwhile), the same lines are appended to the new ``log`` too: a record is
            never lost to a compaction, and a duplicate is harmless.
  read      open ``log``, then ``log.old``, then ``base`` (in that order, so that a
            compaction running meanwhile cannot hide a record: whatever it folded into a
            base that was not yet opened is still in one of the logs opened before it),
            then merge their entries, the larger ``SIZE`` winning. A damaged base (its CRC)
            is ignored as a whole; a damaged log line on its own.
  compact   under ``compact.lock`` (housekeeping, or a list that had to read many files):
            rename ``log`` to ``log.old`` (unless a crashed compaction left one), merge
            everything, keep only the tasks found in the folders, check each finished
            task's ``SIZE`` against its file (a file that grew is read again), write
            ``base`` atomically, remove ``log.old``.

It is a cache, never the truth: a task file always wins. The spool reads every file
whose id the catalog does not know, reads each file it shows, and lists only what it
finds in its folders; a missing or damaged catalog costs time, never a task.
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from hostctl.files import flocked, write_atomic

FORMAT = 1
_MAGIC = "hostctl-catalog"
_FIELDS = 5
_HEX = set("0123456789abcdef")
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
#: how a finished task's outcome reads as a status (see Task.status)
_FINISHED = {"success": "success", "warning": "warning", "cancelled": "cancelled"}


def status_of(outcome: object) -> str:
    """The status label a finished task's last ``end`` outcome gives."""
    return _FINISHED.get(str(outcome), "error")


def _safe(field: str) -> bool:
    return bool(field) and field.isprintable() and " " not in field and len(field) <= 255


def entry(task_id: str, type_name: str, context: str, size: int = -1,
          status: str = "-") -> str | None:
    """One catalog entry, or None for fields it cannot hold (such a task is not
    catalogued: it is read each time)."""
    if not (_safe(type_name) and _safe(context)):
        return None
    return f"{task_id} {type_name} {context} {size if size >= 0 else '-'} {status}"


def fields(rest: str) -> list[str]:
    """TYPE, CONTEXT, SIZE, STATUS of an entry without its id."""
    return rest.split(" ")


def size_of(rest: str) -> int:
    size = rest.split(" ")[2]
    return int(size) if size.isdigit() else -1


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


class Catalog:
    """The catalog folder (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder / "log"
        self.old = folder / "log.old"
        self.base = folder / "base"
        self._mine: bool | None = None

    def writable(self) -> bool:
        """Whether this process may write the catalog: the spool is its user's. Another
        user who may read the home (root, looking) only reads: a file it made here would
        be its own, and the back end could not append to it."""
        if self._mine is None:
            try:
                self._mine = os.stat(self.folder.parent).st_uid == os.geteuid()
            except OSError:
                return False
        return self._mine

    # -- writers ----------------------------------------------------------------------

    def append(self, entries: Iterable[str | None]) -> bool:
        """Add entries, best effort (a catalog that cannot be written is a slower list,
        never a failed task); False if they could not be written."""
        lines = "".join(f"{e} {_crc(e)}\n" for e in entries if e is not None)
        if not lines:
            return True
        if not self.writable():
            return False
        # the leading newline ends a line a writer left torn (a full disk), so that
        # this record is not glued to it
        data = f"\n{lines}".encode()
        try:
            for _ in range(3):
                if self._append_once(data):
                    return True
        except OSError:
            return False
        return True

    def _append_once(self, data: bytes) -> bool:
        """Append ``data`` to the log; False if a compaction renamed it meanwhile (the
        data may then be in ``log.old`` too, maybe after that compaction read it)."""
        try:
            fd = os.open(self.log, _APPEND_FLAGS, 0o600)
        except FileNotFoundError:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self.log, _APPEND_FLAGS, 0o600)
        try:
            if os.write(fd, data) != len(data):  # a full disk: cut the torn line off
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            mine = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            return os.path.samestat(mine, os.stat(self.log))
        except FileNotFoundError:
            return False

    def drop(self) -> None:
        """Forget everything (an entry that had to be written could not be): the next
        lists read the files, and a compaction builds the catalog again."""
        if not self.writable():
            return
        # under the compaction's lock: a compaction that loaded the entries before this
        # must not write them back as a base after it
        with self.compacting(wait=True):
            for path in (self.log, self.old, self.base):
                with suppress(OSError):
                    os.unlink(path)

    # -- readers ----------------------------------------------------------------------

    def load(self) -> dict[str, str]:
        """Every entry: id -> "TYPE CONTEXT SIZE STATUS" (empty if there is none)."""
        fds = []
        for path in (self.log, self.old, self.base):  # this order: see the docstring
            try:
                fds.append(os.open(path, _READ_FLAGS))
            except OSError:
                fds.append(-1)
        try:
            log, old, base = (_read(fd) for fd in fds)
        finally:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
        merged = _base_entries(base)
        for data in (old, log):
            _merge_log(merged, data)
        return merged

    def known_bytes(self) -> int:
        """How much is still to be folded (the logs' size)."""
        total = 0
        for path in (self.log, self.old):
            with suppress(OSError):
                total += os.stat(path).st_size
        return total

    # -- compaction -------------------------------------------------------------------

    @contextmanager
    def compacting(self, wait: bool = False) -> Iterator[bool]:
        """``compact.lock`` (``wait``: for the compaction at work to end), True if this
        process holds it (may compact)."""
        if not self.writable():
            yield False
            return
        with ExitStack() as held:
            try:
                self.folder.mkdir(mode=0o700, exist_ok=True)
                mine = held.enter_context(
                    flocked(self.folder / "compact.lock", wait=wait, follow=False))
            except OSError:  # no lock file here: no compaction, a slower list
                mine = False
            yield mine

    def rotate(self) -> None:
        """Start a compaction: new records go to a new log (a compaction that crashed
        left ``log.old``: it is folded first, and ``log`` waits for the next one)."""
        if not self.old.exists():
            with suppress(FileNotFoundError):
                os.rename(self.log, self.old)

    def replace(self, entries: dict[str, str]) -> None:
        """End a compaction: ``entries`` become the base; the folded log goes."""
        ids = sorted(entries)
        body = "".join(f"{task_id}\n" for task_id in ids) + \
            "".join(f"{entries[task_id]}\n" for task_id in ids)
        header = f"{_MAGIC} {FORMAT} {_crc(body)} {len(entries)}\n"
        write_atomic(self.base, (header + body).encode(), durable=False)
        with suppress(FileNotFoundError):
            os.unlink(self.old)


def _read(fd: int) -> str:
    if fd < 0:
        return ""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _base_entries(text: str) -> dict[str, str]:
    header, _, body = text.partition("\n")
    parts = header.split(" ")
    if len(parts) != 4 or parts[0] != _MAGIC or parts[1] != str(FORMAT) or \
            parts[2] != _crc(body):
        return {}  # missing, damaged or of another format: rebuilt by the next compaction
    count = int(parts[3]) if parts[3].isdigit() else -1
    lines = body.split("\n")
    if len(lines) != 2 * count + 1:
        return {}
    return dict(zip(lines[:count], lines[count:-1], strict=True))


def _merge_log(merged: dict[str, str], text: str) -> None:
    for line in text.split("\n"):
        if len(line) < 30 or line[-9] != " ":
            continue
        text_part = line[:-9]
        if _crc(text_part) != line[-8:]:
            continue  # torn, interleaved or damaged: that task's file is read instead
        task_id, _, rest = text_part.partition(" ")
        if len(task_id) != 20 or rest.count(" ") != _FIELDS - 2 or \
                not set(task_id) <= _HEX:
            continue
        known = merged.get(task_id)
        if known is None or size_of(rest) > size_of(known):
            merged[task_id] = rest
