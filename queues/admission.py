"""Admission: the back end's side of the drop box (see dropbox.py for the front end's).

What a front end dropped into ``spool/incoming/`` is read (strictly: see
:func:`decode_submission`), checked by the caller's ``check`` (known task type, existing
context, allowed options), and published into the spool, or moved to ``rejected/`` with
its reason; either way its receipt in the outbox says what became of it. The spool
composes an :class:`Admission` and lends it the few calls it needs (:class:`Publisher`).
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hostctl.contexts.names import display, parse_name
from hostctl.errors import Conflict, HostctlError, InvalidInput, NotFound, OperationFailed
from hostctl.files import write_private
from hostctl.formats import unsupported
from hostctl.libc import rename_noreplace
from hostctl.queues.layout import SUFFIX
from hostctl.queues.model import (
    FORMAT,
    MAX_TASK_BYTES,
    Envelope,
    Task,
    decode_envelope,
    loads_strict,
    new_id,
    valid_id,
)
from hostctl.queues.outbox import Outbox
from hostctl.text import printable
from hostctl.times import utc_iso

log = logging.getLogger(__name__)
STALE_TMP_SECONDS = 3600.0
#: of a drop too large to admit, this much of its head is read to find its receipt
RECEIPT_SCAN_BYTES = 16 * MAX_TASK_BYTES
DROP_KEYS = frozenset({"format", "id", "type", "context", "options", "context_options",
                       "priority", "delay", "receipt"})
MAX_DROP_DELAY = 366 * 86400
RECEIPT = re.compile(r"[0-9a-f]{32}")
#: fields a front end may not change through a drop (they guard against dangerous tasks)
GUARDED_FIELDS = frozenset({"protected", "locked"})


@dataclass(frozen=True)
class Submission:
    envelope: Envelope
    delay: float = 0.0


def decode_submission(data: bytes, submitter: int, now: float | None = None) -> Submission:
    """Check a dropped file strictly; raise InvalidInput saying what is wrong."""
    first, _, rest = data.partition(b"\n")
    if rest.strip():
        raise InvalidInput("a submission is one JSON line")
    doc = loads_strict(first)
    if not isinstance(doc, dict):
        raise InvalidInput("not a JSON object")
    unknown = sorted(set(doc) - DROP_KEYS)
    if unknown:
        raise InvalidInput(f"unknown key {unknown[0]!r}; a submission may hold only "
                           f"{', '.join(sorted(DROP_KEYS))}")
    receipt = doc.get("receipt", "")
    if not isinstance(receipt, str) or (receipt and not RECEIPT.fullmatch(receipt)):
        raise InvalidInput("'receipt' must be 32 lower-case hex digits")
    delay = doc.get("delay", 0)
    if (not isinstance(delay, int | float) or isinstance(delay, bool)
            or not 0 <= delay <= MAX_DROP_DELAY):
        raise InvalidInput(f"'delay' must be a number of seconds from 0 to {MAX_DROP_DELAY}")
    for key in ("options", "context_options"):
        if not isinstance(doc.get(key) or {}, dict):
            raise InvalidInput(f"{key!r} must be an object of strings")
    if doc.get("format", FORMAT) != FORMAT:  # a newer front end's too: rejected, saying why
        raise InvalidInput(unsupported(doc.get("format"), FORMAT))
    guarded = sorted(GUARDED_FIELDS & set(doc.get("context_options") or {}))
    if guarded:
        raise InvalidInput(f"a front end may not change {guarded[0]!r}")
    created = utc_iso(time.time() if now is None else now)
    plain = {k: v for k, v in doc.items() if k not in ("receipt", "delay")}
    plain["created"] = created
    env = decode_envelope(json.dumps(plain).encode())
    envelope = Envelope(
        # one spelling of the context ('@name'), as `task add` gives it, so that the
        # task shows, lists and locks under its context's name
        id=env.id, type=env.type, context=display(parse_name(env.context)),
        options=env.options, context_options=env.context_options, priority=env.priority,
        created=created, submitter=submitter, receipt=receipt,
    )
    # the task file adds a few keys to what was dropped: it must still be readable
    if len(envelope.encode()) > MAX_TASK_BYTES:
        raise InvalidInput(f"the task would be larger than {MAX_TASK_BYTES} bytes")
    return Submission(envelope, float(delay))


_BLANK = re.compile(r"[ \t\n\r]*")


def _skip_blank(text: str, at: int) -> int:
    found = _BLANK.match(text, at)
    return found.end() if found else at


def receipt_of(data: bytes) -> str:
    """The receipt token of a (possibly invalid) submission, or ''.

    ``data`` may be only the head of a file too large to admit (see Spool.admit), cut off
    anywhere: the keys of the top-level object are read one by one, each value decoded
    whole (so that a value holding the text ``"receipt": ...`` is never taken for the key)
    until the object ends or the data does. The last ``receipt`` key read counts, as in
    ``json.loads``; anything unreadable before it means no receipt.
    """
    try:  # strict, but a character cut off at the very end is no error
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return ""
    decoder = json.JSONDecoder()
    found = ""
    at = _skip_blank(text, 0)
    if text[at:at + 1] != "{":
        return ""
    at += 1
    while True:
        at = _skip_blank(text, at)
        if text[at:at + 1] != '"':
            return found  # the end of the object, or of what was read
        try:
            key, at = decoder.raw_decode(text, at)  # a JSON string: it starts with '"'
            at = _skip_blank(text, at)
            if text[at:at + 1] != ":":
                return found
            value, at = decoder.raw_decode(text, _skip_blank(text, at + 1))
        except (ValueError, RecursionError):
            return found
        if key == "receipt":
            found = value if isinstance(value, str) and RECEIPT.fullmatch(value) else ""
        at = _skip_blank(text, at)
        if text[at:at + 1] != ",":
            return found
        at += 1


if TYPE_CHECKING:  # a shape for the type checker: the spool is one

    class Publisher(Protocol):
        """What admission needs of the spool it admits into."""

        def ensure(self) -> None: ...

        def dir(self, name: str) -> Path: ...

        def stored(self, task_id: str) -> tuple[bool, Envelope | None]:
            """Whether a task with this id exists, and its envelope if it can be read."""
            ...

        def write_new(self, env: Envelope, delay: float) -> None: ...


class Admission:
    """One spool's admission of drops; it remembers, between passes, what it warned of
    and which entries are stuck."""

    def __init__(self, spool: Publisher, outbox: Outbox) -> None:
        self.spool = spool
        self.outbox = outbox
        self._said: set[tuple[str, str]] = set()
        self._stuck: dict[tuple[int, int], str] = {}

    def admit(self, check: Callable[[Envelope], None]) -> list[str]:
        """Publish what front ends dropped into incoming/; reject the rest with a reason.

        See dropbox.py for the rules. The dropping uid is recorded as the submitter; a
        receipt in the submission gets its status in outbox/, also when it is rejected.

        Each entry is judged alone: whatever it is (any file type, name, size or content,
        or changed while it is read), it is admitted, rejected into rejected/ with its
        reason, or, when it cannot be moved at all (a folder the back end may not write
        into, say), set aside where it lies: logged once, passed over from then on, and
        reported by ``doctor``; the entries after it are admitted in the same pass. Only
        what fails on the back end's own side stops the pass: its own writes (a full
        disk, a read-only or failing file system) and a malformed context file (which
        holds back only the drops on that context). Those drops stay in incoming/
        untouched, one warning is logged, and the next pass (the next dispatch, drop or
        housekeeping round) tries again; the warning is not repeated while the same
        trouble lasts. Front ends' dot-names (a drop being written) older than an hour
        are removed. One admitter at a time (``locks/admit.lock``): a daemon and a
        dispatch admitting the same drop would publish it twice, or reject it as a
        duplicate.
        """
        self.spool.ensure()
        notes: list[str] = []
        said, self._said = self._said, set()

        def leave(name: str, key: tuple[str, str], why: str, stays: str) -> None:
            self._said.add(key)
            if key not in said:
                log.warning("cannot admit incoming/%s now (%s); %s in incoming/ until the "
                            "next try", printable(name), printable(why), stays)

        try:
            lock = os.open(self.spool.dir("locks") / "admit.lock",
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # not even the lock file can be made (a full disk)
            leave("*", ("", exc.strerror or str(exc)), exc.strerror or str(exc), "they stay")
            return notes
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            folder = self.spool.dir("incoming")
            now = time.time()
            names = []
            for name in sorted(os.listdir(folder)):
                if name.startswith("."):
                    _remove_stale_dot(folder / name, now)
                else:
                    names.append(name)
            for n, name in enumerate(names):
                try:
                    notes.append(self._admit_one(folder / name, check))
                except FileNotFoundError:
                    continue  # it went away meanwhile
                except Stuck as exc:  # this entry alone: the others go on
                    self._said.add((name, "stuck"))
                    if (name, "stuck") not in said:
                        log.warning("incoming/%s is set aside where it lies: %s (hostctl "
                                    "doctor reports it; its owner or root must remove it)",
                                    printable(name), printable(exc.message))
                except (OperationFailed, OSError) as exc:
                    # the back end's own write failed: the same would befall every other
                    # drop, so leave them all for later
                    why = (exc.message if isinstance(exc, OperationFailed)
                           else exc.strerror or str(exc))
                    left = len(names) - n - 1
                    leave(name, ("", why), why, f"it and {left} more stay" if left
                          else "it stays")
                    break
                except HostctlError as exc:  # a malformed context file, say
                    leave(name, (name, str(exc)), str(exc), "it stays")
        finally:
            os.close(lock)
        return notes

    def _admit_one(self, path: Path, check: Callable[[Envelope], None]) -> str:
        """Admit or reject one drop; return what was done. Raises Stuck for an entry
        that can be neither admitted nor moved, and what is not the drop's fault
        (OSError from the back end's own writes, OperationFailed, other HostctlErrors),
        leaving it in place."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise Stuck(f"cannot be looked at: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) in self._stuck:
            raise Stuck(self._stuck[(st.st_dev, st.st_ino)])
        data, taken = b"", False
        try:
            data, uid = self._read_incoming(path, st)
            try:
                sub = decode_submission(data, uid)
                check(sub.envelope)
            except (HostctlError, OSError):
                raise
            except Exception as exc:  # whatever the content makes of the checks: its own
                raise InvalidInput(f"cannot be judged ({type(exc).__name__}: {exc})"
                                   ) from None
            exists, old = self.spool.stored(sub.envelope.id)
            if exists:
                # a power cut after the task was published, before the drop's removal
                # reached the disk, brings the drop back: the same receipt (which only
                # its submitter knows) from the same uid. It goes; it is no duplicate.
                taken = old is not None and old.receipt == sub.envelope.receipt != ""
                if taken and old is not None and old.submitter == sub.envelope.submitter:
                    self._unlink_drop(path, st)
                    return f"incoming/{path.name} was admitted before (task {old.id})"
                raise Conflict(f"a task with id {sub.envelope.id} already exists")
            self.spool.write_new(sub.envelope, sub.delay)
        except (InvalidInput, Conflict, NotFound) as exc:
            # the receipt of a task that exists is that task's, never a rejection's
            self._reject(path, st, str(exc), "" if taken else
                         receipt_of(exc.head if isinstance(exc, Refused) else data))
            return f"rejected incoming/{printable(path.name)}: {printable(str(exc))}"
        self._unlink_drop(path, st)
        self.outbox.post(Task(sub.envelope, (), "deferred" if sub.delay else "new"))
        return (f"admitted task {sub.envelope.id} from incoming/{printable(path.name)} "
                f"(uid {sub.envelope.submitter})")

    def _unlink_drop(self, path: Path, st: os.stat_result) -> None:
        """Remove an admitted drop, if its name still holds the file that was read (its
        owner may have renamed another drop over it meanwhile: that one stays)."""
        with suppress(OSError):
            if os.path.samestat(os.lstat(path), st):
                os.unlink(path)

    def _read_incoming(self, path: Path, seen: os.stat_result) -> tuple[bytes, int]:
        """The drop's bytes and owner; Refused for a file that must not be admitted.

        Only a regular file with one link is read (no symlink, FIFO or device: opened
        without following, without blocking), and only the file ``seen`` (lstat) found
        under that name; at most MAX_TASK_BYTES of it; of a larger one only its head, up
        to RECEIPT_SCAN_BYTES, so that its receipt can say it was refused. Whatever
        reading it does is its own: an error is a reason to refuse it.
        """
        if not stat.S_ISREG(seen.st_mode):
            raise InvalidInput(f"not a regular file ({_file_type(seen.st_mode)})")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            raise InvalidInput(f"cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not os.path.samestat(st, seen):
                raise InvalidInput("replaced while it was read")
            if st.st_nlink != 1:
                raise InvalidInput("a hard-linked file")
            if st.st_size > MAX_TASK_BYTES:
                raise Refused(f"{st.st_size} bytes is more than {MAX_TASK_BYTES}",
                               _read_upto(fd, RECEIPT_SCAN_BYTES))
            data = _read_upto(fd, MAX_TASK_BYTES + 1)
            if len(data) > MAX_TASK_BYTES:  # it grew after the fstat
                raise Refused(f"more than {MAX_TASK_BYTES} bytes",
                               data + _read_upto(fd, RECEIPT_SCAN_BYTES - len(data)))
        except OSError as exc:
            raise InvalidInput(f"cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)
        return data, st.st_uid

    def _reject(self, path: Path, seen: os.stat_result, reason: str, receipt: str) -> None:
        """Move a drop to rejected/ with its reason beside it. The reason is written
        first: a disk too full for it raises OSError, and the drop stays where it was.
        A drop that cannot be moved (a folder the back end may not write into, a name
        replaced meanwhile) raises Stuck and is remembered, so that the next passes
        pass it over."""
        folder = self.spool.dir("rejected")
        base = path.name
        if len(os.fsencode(base)) > _KEEP_NAME_BYTES:  # room for .ID.reason
            base = os.fsdecode(os.fsencode(base)[:_KEEP_NAME_BYTES])
        target = folder / base
        if base != path.name or target.exists() or (folder / f"{base}.reason").exists():
            target = folder / f"{base}.{new_id()}"
        why = folder / f"{target.name}.reason"
        try:
            write_private(why, (" ".join(reason.split()) + "\n").encode())
            if not os.path.samestat(os.lstat(path), seen):
                raise Stuck("replaced while it was judged")  # judged again next pass
            rename_noreplace(path, target)
        except BaseException as exc:
            with suppress(OSError):
                os.unlink(why)
            if isinstance(exc, Stuck) or not isinstance(exc, OSError):
                raise
            if exc.errno == errno.ENOENT:
                raise
            if exc.errno in _BACK_END_ERRNOS:
                raise  # the back end's own trouble: every drop would meet it
            stuck = (f"{reason}; it cannot be moved to rejected/ ({exc.strerror}: "
                     f"{_file_type(seen.st_mode)} owned by uid {seen.st_uid})")
            self._stuck[(seen.st_dev, seen.st_ino)] = stuck
            raise Stuck(stuck) from None
        if receipt:
            stem = path.name.removesuffix(SUFFIX)
            self.outbox.post_rejected(receipt, stem if valid_id(stem) else "", reason)


class Stuck(HostctlError):
    """An entry of incoming/ that can be neither admitted nor moved away."""


#: errors of a write that would befall every drop (the back end's own file system)
_BACK_END_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
#: of a rejected drop's name, this many bytes are kept (NAME.ID.reason fits NAME_MAX)
_KEEP_NAME_BYTES = 200


def _file_type(mode: int) -> str:
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return word
    return "an unknown kind of file"


def _remove_stale_dot(path: Path, now: float) -> None:
    """A front end's dot-name (a drop it was writing) older than STALE_TMP_SECONDS: it
    crashed before its rename. A folder is left to doctor."""
    with suppress(OSError):
        st = os.lstat(path)
        if now - st.st_mtime > STALE_TMP_SECONDS and not stat.S_ISDIR(st.st_mode):
            os.unlink(path)


class Refused(InvalidInput):
    """A drop refused before it was read whole; ``head`` is what was read of it."""

    def __init__(self, message: str, head: bytes) -> None:
        super().__init__(message)
        self.head = head


def _read_upto(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``: fewer only at the end of the file."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
