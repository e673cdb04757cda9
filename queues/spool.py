"""The local spool: a directory queue under ``HOME/spool`` that never loses a task.

Layout (one local file system; every name below is a plain file unless it ends in ``/``)::

    spool/
      incoming/     the drop box: front ends drop ``*.task`` files here (dot-name, then
                    rename). Each is admitted (checked, then published) or rejected.
      tmp/          staging for hostctl's own writes (``.ID.tmp``)
      new/          ready to run:   P ID .task          P = 9 - priority
      deferred/     waiting:        DUE . P ID .task    DUE = 13 hex digits of Unix ms
      active/       claimed:        P ID .task          flock'ed by its worker
      done/         finished:       ID .task            status in its last ``end`` event
      quarantine/   garbage:        NAME and NAME.reason
      rejected/     refused drops:  NAME and NAME.reason
      outbox/       receipts:       RECEIPT.json (a dropped task's status), RECEIPT.log
      keys/         de-duplication: HASH holds the id of the last task with that key
      locks/        publish.lock, context.NAME.lock

``ID`` is 12 hex digits of milliseconds plus 8 random hex digits, so ``sorted(new/)`` is
the run order: higher priority first, then first queued, first run.

Protocol
  publish   write ``tmp/.ID.tmp``, fsync, ``link`` it into ``new/`` (link never replaces
            an existing name), unlink the temp name, fsync ``new/``. Only then is the id
            reported. A crash leaves at most a temp file, removed by the sweep.
  claim     open ``new/X``, ``flock(LOCK_EX|LOCK_NB)`` (busy: skip), read and check it,
            take the context's lock without waiting (busy: skip, so one task per context),
            ``rename`` to ``active/X`` (ENOENT: another worker won). The flock lives on
            the inode, so it moves with the file and is released by the kernel the
            moment its owner dies: no timeouts, no "wait an hour".
  run       the owner appends events to the file it holds; it never replaces the file
            (a new inode would drop the lock).
  finish    append an ``end`` event, then one rename: to ``done/`` or, for a retry, to
            ``deferred/``; then close (unlock).
  sweep     for every ``active/X`` whose flock can be taken, the owner is dead: the run
            is counted as an attempt and the task is deferred with backoff or finished
            in ``error``, with the reason in its ``end`` event. Due deferred tasks move to
            ``new/``; stale temp files go.
  garbage   a file that cannot be read as a task is moved to ``quarantine/`` with a
            ``.reason`` file beside it, and the queue goes on.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import heapq
import logging
import os
import random
import shutil
import stat
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostctl.errors import (
    Conflict,
    HostctlError,
    InvalidInput,
    NotFound,
    NotJudgedYet,
    OperationFailed,
)
from hostctl.files import (
    NETWORK_FILESYSTEMS,
    filesystem_type,
    fsync_dir,
    write_all,
    write_private,
)
from hostctl.queues.task import (
    MAX_TASK_BYTES,
    Envelope,
    Task,
    decode_task,
    encode_event,
    new_id,
    valid_id,
)
from hostctl.text import printable

FOLDERS = ("incoming", "tmp", "new", "deferred", "active", "done", "quarantine", "rejected",
           "outbox", "keys", "locks")
SUFFIX = ".task"
log = logging.getLogger(__name__)
STALE_TMP_SECONDS = 3600.0
#: of a drop too large to admit, this much of its head is read to find its receipt
RECEIPT_SCAN_BYTES = 16 * MAX_TASK_BYTES
# O_NONBLOCK: a FIFO or device planted in a spool folder must not hang the opener.
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


@dataclass(frozen=True)
class Policy:
    """What the spool needs to know of a task type to recover and retry it."""

    max_attempts: int = 3
    rerun_on_loss: bool = True  # may a run whose worker died simply run again?
    backoff_base: float = 10.0
    backoff_max: float = 3600.0


def backoff(policy: Policy, attempts: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half fixed, half random (never zero)."""
    ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** max(attempts - 1, 0))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))


def _prio_char(priority: int) -> str:
    return str(9 - priority)


def _ready_name(env: Envelope) -> str:
    return f"{_prio_char(env.priority)}{env.id}{SUFFIX}"


def _id_of(name: str) -> str | None:
    """The task id inside a spool file name of any folder, or None for a stray name."""
    if not name.endswith(SUFFIX):
        return None
    stem = name[: -len(SUFFIX)]
    stem = stem.rpartition(".")[2]  # deferred: DUE.PID
    if len(stem) == 21 and stem[0].isdigit():
        stem = stem[1:]
    return stem if valid_id(stem) else None


@dataclass
class Claim:
    """A task this process holds: the task file's lock and its context's lock."""

    task: Task
    path: Path
    fd: int
    context_fd: int
    spool: Spool
    released: bool = field(default=False)
    known_size: int = field(default=-1)  # the file's size after this claim's last write

    def append(self, kind: str, **fields: Any) -> None:
        """Append one event, whole or not at all: a torn line (a full disk) is cut off
        again, so that it cannot swallow the next event."""
        data = encode_event(kind, **fields)
        size = os.fstat(self.fd).st_size
        if os.write(self.fd, data) != len(data):
            os.ftruncate(self.fd, size)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.known_size = size + len(data) if size == self.known_size else -1

    def reload(self) -> Task:
        self.task = self.spool._read_fd(self.fd, "active")
        self.known_size = os.fstat(self.fd).st_size
        return self.task

    def grew(self) -> bool:
        """Whether someone else may have appended to the task since this claim last read
        or wrote it (a ``task cancel``, say): :meth:`reload` tells what."""
        return self.known_size < 0 or os.fstat(self.fd).st_size != self.known_size

    def release(self) -> None:
        if not self.released:
            self.released = True
            os.close(self.fd)
            if self.context_fd >= 0:
                with suppress(OSError):  # the context is free: no holder to look after
                    os.ftruncate(self.context_fd, 0)
                os.close(self.context_fd)


class Spool:
    """The spool-directory queue backend (see the module docstring)."""

    def __init__(self, root: Path, logs: Path, allow_network_filesystem: bool = False) -> None:
        self.root = root
        self.logs = logs
        self.allow_network_filesystem = allow_network_filesystem
        self._ready = False
        self._listings: dict[str, _Listing] = {}  # claim's and next_due's view of folders
        self._admit_said: set[tuple[str, str]] = set()  # drops left by the last admit()
        self._stuck: dict[tuple[int, int], str] = {}  # (dev, ino) of incoming/: why
        self._unjudged: tuple[object, dict[str, str]] = (None, {})  # see _waiting()
        #: the retry rules of the last sweep, for a lost task recovered by a claim
        self._policy: Callable[[Envelope], Policy] = lambda _env: Policy()

    # -- set-up -----------------------------------------------------------------------

    def ensure(self) -> None:
        if self._ready:
            return
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name in FOLDERS:
                (self.root / name).mkdir(mode=0o700, exist_ok=True)
            self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationFailed(f"cannot create the spool in {self.root}: {exc}") from exc
        if not self.allow_network_filesystem:
            fstype = filesystem_type(self.root)
            if fstype in NETWORK_FILESYSTEMS:
                raise OperationFailed(
                    f"the spool {self.root} is on a {fstype} file system, where file locks "
                    "are not reliable; move the home to a local disk (or set "
                    "[spool] allow_network_filesystem = true in config.toml)")
        self._ready = True

    def dir(self, name: str) -> Path:
        return self.root / name

    def log_path(self, task_id: str) -> Path:
        return self.logs / f"{task_id}.log"

    # -- publish ----------------------------------------------------------------------

    def publish(self, env: Envelope, delay: float = 0.0, dedup: bool = True) -> tuple[str, bool]:
        """Queue a task durably; return (id, created). An identical queued task wins."""
        self.ensure()
        with self._flock(self.dir("locks") / "publish.lock"):
            key = self._key_path(env)
            if dedup:
                existing = self._queued_by_key(key)
                if existing:
                    return existing, False
            self._write_new(env, delay)
            with suppress(OSError):
                write_private(key, env.id.encode())
        return env.id, True

    def _write_new(self, env: Envelope, delay: float) -> None:
        data = env.encode()
        tmp = self.dir("tmp") / f".{env.id}.tmp"
        if delay > 0:
            due_ms = int((time.time() + delay) * 1000)
            target_dir = self.dir("deferred")
            target = target_dir / f"{due_ms:013x}.{_ready_name(env)}"
        else:
            target_dir = self.dir("new")
            target = target_dir / _ready_name(env)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, target)
            os.unlink(tmp)
            fsync_dir(target_dir)
        except FileExistsError:
            with suppress(OSError):
                os.unlink(tmp)
            raise Conflict(f"a task with id {env.id} already exists") from None
        except OSError as exc:
            with suppress(OSError):
                os.unlink(tmp)
            raise OperationFailed(f"cannot queue the task: {exc.strerror or exc}") from exc

    def _key_path(self, env: Envelope) -> Path:
        digest = hashlib.sha256(repr(env.dedup_key()).encode()).hexdigest()[:32]
        return self.dir("keys") / digest

    def _queued_by_key(self, key: Path) -> str | None:
        try:
            task_id = key.read_text().strip()
        except OSError:
            return None
        if not valid_id(task_id):
            return None
        found = self._locate(task_id)
        return task_id if found and found[0] in ("new", "deferred") else None

    # -- reading ----------------------------------------------------------------------

    def _locate(self, task_id: str) -> tuple[str, Path] | None:
        """Where the task lies now, or None."""
        for state in ("new", "active"):
            for p in range(10):
                path = self.dir(state) / f"{p}{task_id}{SUFFIX}"
                if path.exists():
                    return state, path
        done = self.dir("done") / f"{task_id}{SUFFIX}"
        if done.exists():
            return "done", done
        suffix = f"{task_id}{SUFFIX}"
        with suppress(FileNotFoundError):
            for name in os.listdir(self.dir("deferred")):
                if name.endswith(suffix):
                    return "deferred", self.dir("deferred") / name
        # set aside (its name kept, perhaps with a suffix against a clash), or under a
        # name that does not say its id: still its task, to be shown and queued again
        quarantined = sorted(self._names("quarantine"), reverse=True)
        for name in quarantined:
            if suffix in name:
                return "quarantine", self.dir("quarantine") / name
        needle = f'"{task_id}"'.encode()
        for name in quarantined:
            path = self.dir("quarantine") / name
            with suppress(OSError, InvalidInput):
                if (needle in _head(path) and
                        self._read_quarantined(path).id == task_id):
                    return "quarantine", path
        return None

    def get(self, task_id: str) -> Task:
        if not valid_id(task_id):
            raise InvalidInput(f"malformed task id {task_id!r} (20 hex digits)")
        for _ in range(5):  # the file may move between locate and read
            found = self._locate(task_id)
            if found is None:
                break
            try:
                return self._read_path(found[1], found[0])
            except FileNotFoundError:
                continue
        raise NotFound(f"no task {task_id}")

    def tasks_in(self, states: tuple[str, ...] = ("new", "deferred", "active", "done")
                 ) -> list[Task]:
        tasks = []
        for state in states:
            for name in self._names(state):
                with suppress(FileNotFoundError, InvalidInput):
                    tasks.append(self._read_path(self.dir(state) / name, state))
        tasks.sort(key=lambda t: t.id)
        return tasks

    def counts(self) -> dict[str, int]:
        return {s: self._count(s) for s in ("incoming", "new", "deferred", "active",
                                            "done", "quarantine", "rejected")}

    def _count(self, state: str) -> int:
        """len(self._names(state)), without sorting."""
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            return 0
        if state in ("quarantine", "rejected"):
            return len(_set_aside(names))
        return sum(1 for n in names if not n.startswith("."))

    def _names(self, state: str) -> list[str]:
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            return []
        if state in ("quarantine", "rejected"):
            return _set_aside(names)
        return sorted(n for n in names if not n.startswith("."))

    def _read_path(self, path: Path, state: str) -> Task:
        if state == "quarantine":
            return self._read_quarantined(path)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:  # a folder, a symlink, unreadable
            raise InvalidInput(f"cannot open {path.name}: {exc.strerror}") from exc
        try:
            return self._read_fd(fd, state, path.name)
        finally:
            os.close(fd)

    def _read_quarantined(self, path: Path) -> Task:
        """A task in quarantine/, with the reason it lies there; InvalidInput (saying
        that reason) when the file cannot be read as a task."""
        try:
            why = (path.parent / f"{path.name}.reason").read_text(errors="replace").strip()
        except OSError:
            why = ""
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise InvalidInput(f"quarantine/{path.name} ({why or 'no reason recorded'}) "
                               f"cannot be opened: {exc.strerror}") from exc
        try:
            task = self._read_fd(fd, "quarantine", path.name)
        except InvalidInput as exc:
            raise InvalidInput(f"quarantine/{path.name} ({why or 'no reason recorded'}) "
                               f"is not a readable task: {exc}") from None
        finally:
            os.close(fd)
        return Task(task.envelope, task.events, "quarantine", task.log_path, None, why)

    def _read_fd(self, fd: int, state: str, name: str = "") -> Task:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{name or 'the task file'} is not a regular file")
        size = st.st_size
        return self._decode(os.pread(fd, min(size, MAX_TASK_BYTES * 16 + 1), 0), state, name)

    def _decode(self, data: bytes, state: str, name: str) -> Task:
        due = _deferred_due(name) if state == "deferred" else None
        task = decode_task(data, state, due=due)
        return Task(task.envelope, task.events, state,
                    str(self.log_path(task.envelope.id)), due)

    # -- claim ------------------------------------------------------------------------

    def claim(
        self,
        check: Callable[[Envelope], None] | None = None,
        limit: int = 1,
        skip_contexts: set[str] | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` ready tasks, at most one per context.

        ``check`` may raise InvalidInput for a submission that must not run (a context
        that no longer exists, say): the file goes to quarantine with that reason. It
        raises NotJudgedYet for a task it cannot judge (a type its configuration does not
        know): that task stays queued, untouched, and is passed over until the check
        changes (a configuration reloaded), one warning per type.
        """
        self.ensure()
        claims: list[Claim] = []
        busy = set(skip_contexts or ())
        waiting = self._waiting(check)
        listing = self._listing("new")
        if listing is None:  # no inotify: list the folder
            for name in self._names("new"):
                if len(claims) >= limit:
                    break
                if name in waiting:
                    continue
                claim = self._try_claim(name, check, busy)
                if claim is not None:
                    claims.append(claim)
                    busy.add(claim.task.envelope.context)
            return claims
        passed: list[str] = []  # still queued (or gone meanwhile): back into the listing
        names = listing.smallest(passed)
        try:
            while len(claims) < limit:
                smallest = next(names, None)
                if smallest is None:
                    break
                if listing.contexts.get(smallest) in busy or smallest in waiting:
                    continue  # known to wait for its context, or for its type
                claim = self._try_claim(smallest, check, busy, listing.contexts)
                if claim is not None:
                    passed.pop()
                    listing.discard(smallest)
                    claims.append(claim)
                    busy.add(claim.task.envelope.context)
        finally:
            listing.restore(passed)
        return claims

    def _waiting(self, check: object) -> dict[str, str]:
        """The names of ``new/`` that ``check`` could not judge (name -> task type); a
        new check (a configuration reloaded) judges them all again."""
        if self._unjudged[0] is not check:
            self._unjudged = (check, {})
        return self._unjudged[1]

    def _listing(self, state: str) -> _Listing | None:
        """The up-to-date ordered view of ``new/`` or ``deferred/``; None without inotify."""
        listing = self._listings.get(state)
        if listing is None:
            listing = self._listings[state] = _Listing(self.dir(state))
        return listing if listing.refresh() else None

    def _try_claim(
        self, name: str, check: Callable[[Envelope], None] | None, busy: set[str],
        contexts: dict[str, str] | None = None,
    ) -> Claim | None:
        """Claim ``new/name``, or None; a task left waiting for its context's lock has its
        context noted in ``contexts`` (a name's task never changes its context)."""
        path = self.dir("new") / name
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink, a folder, unreadable: garbage
            self._quarantine_path(path, f"cannot open: {exc.strerror}")
            return None
        keep = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            try:  # lstat: FileNotFoundError if it moved while we were locking it
                st = os.fstat(fd)
                if not os.path.samestat(st, os.lstat(path)):
                    return None
                if not stat.S_ISREG(st.st_mode):
                    raise InvalidInput(f"{name} is not a regular file")
                data = os.pread(fd, min(st.st_size, MAX_TASK_BYTES * 16 + 1), 0)
                task = self._decode(data, "new", name)
                if _id_of(name) != task.id or name[0] != str(9 - task.envelope.priority):
                    raise InvalidInput(f"file name {name!r} does not match the task inside")
                if check is not None:
                    check(task.envelope)
            except NotJudgedYet as exc:
                waiting = self._waiting(check)
                if task.envelope.type not in waiting.values():
                    log.warning("task %s waits in the queue: %s (not in the configuration "
                                "this process loaded)", task.id, exc)
                waiting[name] = task.envelope.type
                return None
            except InvalidInput as exc:
                self._quarantine_path(path, str(exc))
                return None
            except FileNotFoundError:
                return None
            context = task.envelope.context
            if context in busy:
                if contexts is not None:
                    contexts[name] = context
                return None
            ctx_fd = self._try_context_lock(context)
            if ctx_fd is None:
                busy.add(context)
                if contexts is not None:
                    contexts[name] = context
                return None
            target = self.dir("active") / name
            try:
                os.rename(path, target)
            except FileNotFoundError:
                os.close(ctx_fd)
                return None
            keep = True
            _hold(ctx_fd, name)
            if task.cancel_requested:  # cancelled while queued, but not moved yet
                claim = Claim(task, target, fd, ctx_fd, self)
                self.finish(claim, "cancelled", reason="cancelled before it started")
                return None
            return Claim(Task(task.envelope, task.events, "active", task.log_path), target,
                         fd, ctx_fd, self, known_size=len(data))
        finally:
            if not keep:
                os.close(fd)

    def publish_claimed(self, env: Envelope, wait: bool = True) -> Claim:
        """Queue a task already claimed by this process (a foreground provision-TYPE).

        The file is locked before it appears in active/, so no worker can take it; the
        context's lock is taken first, waiting for a running task on it unless ``wait``
        is false (then BlockingIOError).
        """
        self.ensure()
        ctx_fd = self._context_lock(env.context, wait)
        tmp = self.dir("tmp") / f".{env.id}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o600)
        except BaseException as exc:
            os.close(ctx_fd)
            if isinstance(exc, OSError):  # a full disk, say: one line, not a traceback
                raise OperationFailed(f"cannot queue the task: {exc.strerror or exc}") from exc
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = env.encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
            target = self.dir("active") / _ready_name(env)
            os.rename(tmp, target)
            fsync_dir(target.parent)
            _hold(ctx_fd, target.name)
            task = self._read_fd(fd, "active", target.name)
        except BaseException as exc:
            os.close(fd)
            os.close(ctx_fd)
            with suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise OperationFailed(f"cannot queue the task: {exc.strerror or exc}") from exc
            raise
        return Claim(task, target, fd, ctx_fd, self)

    def _context_lock(self, context: str, wait: bool) -> int:
        """The context's lock, held; BlockingIOError while it is busy (``wait``: wait).

        The lock file names the active task that holds it (``_hold``), and is emptied
        when that task's claim ends. A name still there when the lock is taken means the
        holder's worker died with the task running: its command may live on (a spawned
        command outlives its worker), so before anything else runs on the context that
        task is recovered here, as the sweep would: what is left of its process group is
        stopped. A task another process is recovering meanwhile makes the context busy.
        """
        path = self.dir("locks") / f"context.{context.lstrip('@')}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            while True:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                holder = os.pread(fd, 64, 0).strip()
                if not holder or self._settled(os.fsdecode(holder)):
                    return fd
                fcntl.flock(fd, fcntl.LOCK_UN)
                if not wait:
                    raise BlockingIOError(errno.EWOULDBLOCK, "a lost task is being recovered")
                time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise

    def _settled(self, holder: str) -> bool:
        """Whether the task a dead holder of a context lock left is dealt with: gone from
        active/, or recovered now (its leftovers stopped)."""
        path = self.dir("active") / holder
        if os.sep in holder or not os.path.exists(path):
            return True
        try:
            self._recover_one(path, self._policy)
        except (OSError, HostctlError) as exc:
            log.error("cannot recover task file %s: %s", holder, exc)
            return False
        return not os.path.exists(path)

    def _try_context_lock(self, context: str) -> int | None:
        try:
            return self._context_lock(context, wait=False)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
                raise InvalidInput(f"unusable context name {context!r}") from None
            raise

    def context_busy(self, context: str) -> bool:
        fd = self._try_context_lock(context)
        if fd is None:
            return True
        os.close(fd)
        return False

    # -- finish -----------------------------------------------------------------------

    def heartbeat(self, claim: Claim) -> None:
        """The claim's flock already says its owner lives; the touch shows when it last
        looked (the file's mtime)."""
        with suppress(OSError):
            os.utime(claim.fd)

    def started(self, claim: Claim) -> None:
        """The task's child runs: its front end's receipt says so."""
        self.post_claim(claim, "active")

    def result_path(self, env: Envelope) -> str:
        return str(self.dir("tmp") / f".{env.id}.result")

    def finish(self, claim: Claim, outcome: str, **fields: Any) -> None:
        """Record the end of the attempt and move the task to done/."""
        claim.append("end", outcome=outcome, **fields)
        self._move(claim.path, self.dir("done") / f"{claim.task.id}{SUFFIX}")
        self.post_claim(claim, "done")
        claim.release()

    def defer(self, claim: Claim, delay: float, outcome: str = "retry", **fields: Any) -> None:
        """Record the attempt's end and queue the task again after ``delay`` seconds."""
        claim.append("end", outcome=outcome, **fields)
        self._defer_path(claim, delay)
        self.post_claim(claim, "deferred")
        claim.release()

    def _defer_path(self, claim: Claim, delay: float) -> None:
        due = time.time() + delay
        claim.append("defer", until=_iso(due))
        name = f"{int(due * 1000):013x}.{_ready_name(claim.task.envelope)}"
        self._move(claim.path, self.dir("deferred") / name)

    def requeue(self, claim: Claim) -> None:
        """Give back a claimed task that never started (no attempt counted)."""
        self._move(claim.path, self.dir("new") / _ready_name(claim.task.envelope))
        claim.release()

    def _move(self, src: Path, dst: Path) -> None:
        try:
            os.rename(src, dst)
        except OSError as exc:
            raise OperationFailed(f"cannot move {src.name} to {dst.parent.name}/: {exc}") from exc

    # -- cancel, retry ----------------------------------------------------------------

    def cancel_queued(self, task_id: str) -> Task | None:
        """Cancel a queued task; return None if it is not queued (any more)."""
        for _ in range(20):
            found = self._locate(task_id)
            if found is None or found[0] not in ("new", "deferred"):
                return None
            state, path = found
            with self._open_locked(path, wait=False) as fd:
                if fd is None:  # a worker is claiming it right now
                    time.sleep(0.01)
                    continue
                os.write(fd, encode_event("cancel"))
                os.write(fd, encode_event("end", outcome="cancelled",
                                          reason="cancelled before it started"))
                done = self.dir("done") / f"{task_id}{SUFFIX}"
                try:
                    os.rename(path, done)
                except FileNotFoundError:
                    continue
                task = self._read_fd(fd, "done", done.name)
                self.post(task)
                return task
        return None

    def request_cancel(self, task_id: str) -> Task:
        """Mark a running task as cancelled (its runner stops it); return it."""
        found = self._locate(task_id)
        if found is None or found[0] != "active":
            raise Conflict(f"task {task_id} is not processing")
        fd = os.open(found[1], _OPEN_FLAGS)
        try:
            os.write(fd, encode_event("cancel"))
            return self._read_fd(fd, "active", found[1].name)
        finally:
            os.close(fd)

    def retry(self, task_id: str) -> Task:
        """Queue a finished task again under the same id; its history stays. A task in
        quarantine/ goes back too, once it reads as a task (its reason file goes)."""
        found = self._locate(task_id)
        if found is None:
            raise NotFound(f"no task {task_id}")
        state, path = found
        if state == "quarantine":
            self._read_quarantined(path)  # InvalidInput, with the reason, if unreadable
        elif state != "done":
            raise Conflict(f"task {task_id} is {'queued' if state != 'active' else 'processing'}"
                           "; only a finished task can be retried")
        with self._open_locked(path, wait=False) as fd:
            if fd is None:
                raise Conflict(f"task {task_id} is being changed by another process")
            os.write(fd, encode_event("retry"))
            task = self._read_fd(fd, "new")
            target = self.dir("new") / _ready_name(task.envelope)
            try:
                rename_noreplace(path, target)
            except FileNotFoundError:
                raise Conflict(f"task {task_id} moved meanwhile; try again") from None
            except FileExistsError:
                raise Conflict(f"task {task_id} is queued already (new/{target.name})"
                               ) from None
            fsync_dir(target.parent)
            if state == "quarantine":
                with suppress(OSError):
                    os.unlink(path.parent / f"{path.name}.reason")
            self.post(task)
            return task

    @contextmanager
    def _open_locked(self, path: Path, wait: bool) -> Iterator[int | None]:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield None
                return
            yield fd
        finally:
            os.close(fd)

    # -- sweep ------------------------------------------------------------------------

    def sweep(self, policy: Callable[[Envelope], Policy], now: float | None = None) -> list[str]:
        """Recover tasks whose worker died; promote due tasks; drop stale temp files;
        list ``new/`` and ``deferred/`` again (the safety net for what inotify missed).

        Returns one line per recovered task, for the log.
        """
        self.ensure()
        self._policy = policy
        now = time.time() if now is None else now
        for listing in self._listings.values():
            listing.relist()
        # promote_due stops at the first task still to come; a malformed name sorted
        # after it would wait for that task's time: look at every name here
        for name in self._names("deferred"):
            if _deferred_due(name) is None:
                self._quarantine_deferred(name)
        notes = []
        for name in self._names("active"):
            note = self._recover(self.dir("active") / name, policy)
            if note:
                notes.append(note)
        self.promote_due(now)
        self._drop_stale_tmp(now)
        return notes

    def _recover(self, path: Path, policy: Callable[[Envelope], Policy]) -> str | None:
        note = self._recover_one(path, policy)
        if note:
            stem = _id_of(path.name)
            if stem:
                with suppress(NotFound, InvalidInput):
                    self.post(self.get(stem))
        return note

    def _recover_one(self, path: Path, policy: Callable[[Envelope], Policy]) -> str | None:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._quarantine_path(path, f"cannot open: {exc.strerror}")
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # its owner is alive
            if not os.path.exists(path):
                return None
            try:
                task = self._read_fd(fd, "active", path.name)
            except InvalidInput as exc:
                self._quarantine_path(path, str(exc))
                return f"quarantined {path.name}: {exc}"
            claim = Claim(task, path, fd, -1, self)
            claim.released = True  # fd is closed below
            env = task.envelope
            last = task.events[-1] if task.events else None
            if last is not None and last.get("event") == "end":
                # finished, but died before the move: complete the move
                if last.get("outcome") == "retry":
                    self._defer_path(claim, 0)
                else:
                    self._move(path, self.dir("done") / f"{env.id}{SUFFIX}")
                return f"completed the interrupted move of task {env.id}"
            from hostctl.queues.process import kill_spawned, stop_run

            kinds = [ev.get("event") for ev in task.events]
            spawn, start = _last_index(kinds, "spawn"), _last_index(kinds, "start")
            if spawn > start:
                # its worker died between the spawn and the `start` event: what it spawned
                # may be running, unrecorded. It is stopped before the task can run again,
                # and the run counts as an attempt (it may have done its work)
                spawned = task.events[spawn]
                not_before = spawned.get("not_before")
                if isinstance(not_before, int) and not kill_spawned(env.id, not_before):
                    return (f"task {env.id}: what its dead worker started has not exited "
                            "yet; recovered once it has")
                claim.append("start", attempt=spawned.get("attempt"),
                             worker=spawned.get("worker"), at=spawned.get("at"))
                task = self._read_fd(fd, "active", path.name)
            elif start < 0 or _last_index(kinds, "end") > start:
                self._move(path, self.dir("new") / _ready_name(env))
                return f"task {env.id} was claimed but never started: queued again"
            started = task.last("start") or {}
            # all of its session, waited for (its locks are let go only at its exit); a
            # run that will not end keeps its task active and its context busy
            if not stop_run(started):
                return (f"task {env.id}: what is left of its run (session "
                        f"{started.get('pgid')}) has not exited yet; recovered once it has")
            rules = policy(env)
            attempts = task.attempt_count
            reason = (f"its worker (pid {started.get('worker')}) died during attempt "
                      f"{attempts}")
            if task.cancel_requested:
                claim.append("end", outcome="cancelled", reason=f"cancelled; {reason}")
                self._move(path, self.dir("done") / f"{env.id}{SUFFIX}")
                return f"task {env.id}: {reason}; it was being cancelled"
            if rules.rerun_on_loss and attempts < rules.max_attempts:
                claim.append("end", outcome="lost", reason=reason)
                self._defer_path(claim, backoff(rules, attempts))
                return f"task {env.id}: {reason}; queued again"
            why = (f"{reason}; a {env.type} that was cut off must be checked by a person"
                   if not rules.rerun_on_loss else
                   f"{reason}; no attempts left (max {rules.max_attempts})")
            claim.append("end", outcome="lost", reason=why)
            self._move(path, self.dir("done") / f"{env.id}{SUFFIX}")
            return f"task {env.id}: {why}"
        finally:
            os.close(fd)

    def promote_due(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        moved = 0
        listing = self._listing("deferred")
        passed: list[str] = []
        names = self._names("deferred") if listing is None else listing.smallest(passed)
        try:
            for name in names:
                due = _deferred_due(name)
                if due is None:
                    self._quarantine_deferred(name)
                    continue
                if due > now:
                    break
                moved += self._promote(name, name.partition(".")[2])
        finally:
            if listing is not None:
                listing.restore(passed)
        return moved

    def _quarantine_deferred(self, name: str) -> None:
        self._quarantine_path(self.dir("deferred") / name,
                              "malformed deferred name (not DUE.NAME, DUE 13 hex digits)")

    def _promote(self, name: str, ready: str) -> int:
        """Move ``deferred/name`` to ``new/ready``; 1 if it moved. It never replaces a
        file already there (a task's ids are unique, so that one is garbage: it is set
        aside)."""
        source = self.dir("deferred") / name
        try:
            rename_noreplace(source, self.dir("new") / ready)
        except FileNotFoundError:
            return 0  # promoted by another worker meanwhile
        except FileExistsError:
            self._quarantine_path(source, f"new/{ready} is already queued")
            return 0
        return 1

    def next_due(self) -> float | None:
        listing = self._listing("deferred")
        passed: list[str] = []
        names = self._names("deferred") if listing is None else listing.smallest(passed)
        try:
            for name in names:
                due = _deferred_due(name)
                if due is not None:
                    return due
            return None
        finally:
            if listing is not None:
                listing.restore(passed)

    def _drop_stale_tmp(self, now: float) -> None:
        tmp = self.dir("tmp")
        with suppress(FileNotFoundError):
            for name in os.listdir(tmp):
                with suppress(OSError):
                    if now - os.lstat(tmp / name).st_mtime > STALE_TMP_SECONDS:
                        os.unlink(tmp / name)

    # -- incoming and garbage ---------------------------------------------------------

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
        self.ensure()
        notes: list[str] = []
        said, self._admit_said = self._admit_said, set()

        def leave(name: str, key: tuple[str, str], why: str, stays: str) -> None:
            self._admit_said.add(key)
            if key not in said:
                log.warning("cannot admit incoming/%s now (%s); %s in incoming/ until the "
                            "next try", printable(name), printable(why), stays)

        try:
            lock = os.open(self.dir("locks") / "admit.lock",
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # not even the lock file can be made (a full disk)
            leave("*", ("", exc.strerror or str(exc)), exc.strerror or str(exc), "they stay")
            return notes
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            folder = self.dir("incoming")
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
                except _Stuck as exc:  # this entry alone: the others go on
                    self._admit_said.add((name, "stuck"))
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
        """Admit or reject one drop; return what was done. Raises _Stuck for an entry
        that can be neither admitted nor moved, and what is not the drop's fault
        (OSError from the back end's own writes, OperationFailed, other HostctlErrors),
        leaving it in place."""
        from hostctl.queues.dropbox import decode_submission, receipt_of

        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _Stuck(f"cannot be looked at: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) in self._stuck:
            raise _Stuck(self._stuck[(st.st_dev, st.st_ino)])
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
            found = self._locate(sub.envelope.id)
            if found is not None:
                old = self._envelope_at(*found)
                # a power cut after the task was published, before the drop's removal
                # reached the disk, brings the drop back: the same receipt (which only
                # its submitter knows) from the same uid. It goes; it is no duplicate.
                taken = old is not None and old.receipt == sub.envelope.receipt != ""
                if taken and old is not None and old.submitter == sub.envelope.submitter:
                    self._unlink_drop(path, st)
                    return f"incoming/{path.name} was admitted before (task {old.id})"
                raise Conflict(f"a task with id {sub.envelope.id} already exists")
            self._write_new(sub.envelope, sub.delay)
        except (InvalidInput, Conflict, NotFound) as exc:
            # the receipt of a task that exists is that task's, never a rejection's
            self._reject(path, st, str(exc), "" if taken else
                         receipt_of(exc.head if isinstance(exc, _Refused) else data))
            return f"rejected incoming/{printable(path.name)}: {printable(str(exc))}"
        self._unlink_drop(path, st)
        self.post(Task(sub.envelope, (), "deferred" if sub.delay else "new"))
        return (f"admitted task {sub.envelope.id} from incoming/{printable(path.name)} "
                f"(uid {sub.envelope.submitter})")

    def _unlink_drop(self, path: Path, st: os.stat_result) -> None:
        """Remove an admitted drop, if its name still holds the file that was read (its
        owner may have renamed another drop over it meanwhile: that one stays)."""
        with suppress(OSError):
            if os.path.samestat(os.lstat(path), st):
                os.unlink(path)

    def _envelope_at(self, state: str, path: Path) -> Envelope | None:
        try:
            return self._read_path(path, state).envelope
        except (OSError, InvalidInput):
            return None

    def _read_incoming(self, path: Path, seen: os.stat_result) -> tuple[bytes, int]:
        """The drop's bytes and owner; _Refused for a file that must not be admitted.

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
                raise _Refused(f"{st.st_size} bytes is more than {MAX_TASK_BYTES}",
                               _read_upto(fd, RECEIPT_SCAN_BYTES))
            data = _read_upto(fd, MAX_TASK_BYTES + 1)
            if len(data) > MAX_TASK_BYTES:  # it grew after the fstat
                raise _Refused(f"more than {MAX_TASK_BYTES} bytes",
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
        replaced meanwhile) raises _Stuck and is remembered, so that the next passes
        pass it over."""
        folder = self.dir("rejected")
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
                raise _Stuck("replaced while it was judged")  # judged again next pass
            rename_noreplace(path, target)
        except BaseException as exc:
            with suppress(OSError):
                os.unlink(why)
            if isinstance(exc, _Stuck) or not isinstance(exc, OSError):
                raise
            if exc.errno == errno.ENOENT:
                raise
            if exc.errno in _BACK_END_ERRNOS:
                raise  # the back end's own trouble: every drop would meet it
            stuck = (f"{reason}; it cannot be moved to rejected/ ({exc.strerror}: "
                     f"{_file_type(seen.st_mode)} owned by uid {seen.st_uid})")
            self._stuck[(seen.st_dev, seen.st_ino)] = stuck
            raise _Stuck(stuck) from None
        if receipt:
            from hostctl.queues.dropbox import rejected_doc

            stem = path.name.removesuffix(SUFFIX)
            self._write_receipt(receipt, rejected_doc(stem if valid_id(stem) else "", reason))

    # -- receipts (the front end's view of its own tasks) -----------------------------

    def post(self, task: Task) -> None:
        """Publish a dropped task's status to its receipt in outbox/ (if it has one)."""
        if task.envelope.receipt:
            from hostctl.queues.dropbox import receipt_doc

            self._write_receipt(task.envelope.receipt, receipt_doc(task.to_json()))

    def post_claim(self, claim: Claim, state: str) -> None:
        if claim.task.envelope.receipt:
            with suppress(OSError, InvalidInput):
                self.post(self._read_fd(claim.fd, state, claim.path.name))

    def _write_receipt(self, receipt: str, doc: dict[str, Any]) -> None:
        import json

        from hostctl.queues.dropbox import SHARED_FILE_MODE

        outbox = self.dir("outbox")
        tmp = outbox / f".{receipt}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOFOLLOW, SHARED_FILE_MODE)
            os.fchmod(fd, SHARED_FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
                fh.write("\n")
            os.rename(tmp, outbox / f"{receipt}.json")
        except OSError:
            with suppress(OSError):
                os.unlink(tmp)

    def open_log(self, env: Envelope) -> int:
        """Open the task's log for appending; a dropped task's log is shared via outbox/."""
        path = self.log_path(env.id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        if env.receipt and not path.exists():
            from hostctl.queues.dropbox import SHARED_FILE_MODE

            shared = self.dir("outbox") / f"{env.receipt}.log"
            with suppress(OSError):
                fd = os.open(shared, flags | os.O_EXCL, SHARED_FILE_MODE)
                os.fchmod(fd, SHARED_FILE_MODE)
                try:
                    os.link(shared, path)
                    return fd
                except OSError:
                    os.close(fd)
                    os.unlink(shared)
        return os.open(path, flags, 0o600)

    def remove_done(self, path: Path) -> None:
        """Delete a finished task with its log and receipt (task_gc)."""
        try:
            task = self._read_path(path, "done")
        except FileNotFoundError:
            return
        except InvalidInput as exc:  # garbage (a folder, a FIFO, a broken file): set aside
            self._quarantine_path(path, str(exc))
            return
        with suppress(FileNotFoundError):
            os.unlink(path)
        self.forget(task)

    def remove_rejected(self, path: Path) -> None:
        """Delete a rejected submission and its reason (task_gc), whatever it is."""
        for victim in (path, path.with_name(path.name + ".reason")):
            try:
                if victim.is_dir() and not victim.is_symlink():
                    shutil.rmtree(victim)
                else:
                    victim.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", victim, exc.strerror)

    def forget(self, task: Task) -> None:
        """Remove a finished task's log and receipt files (task_gc)."""
        paths = [self.log_path(task.id)]
        if task.envelope.receipt:
            paths += [self.dir("outbox") / f"{task.envelope.receipt}.{ext}"
                      for ext in ("json", "log")]
        for path in paths:
            with suppress(FileNotFoundError):
                os.unlink(path)

    def _quarantine_path(self, path: Path, reason: str, folder: Path | None = None) -> None:
        folder = folder or self.dir("quarantine")
        target = folder / f"{path.name}"
        if target.exists() or (folder / f"{path.name}.reason").exists():
            target = folder / f"{path.name}.{new_id()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        with suppress(OSError):
            write_private(folder / f"{target.name}.reason",
                          (" ".join(reason.split()) + "\n").encode())

    def quarantined(self, where: str = "quarantine") -> list[tuple[str, str]]:
        """(file, reason) of what lies in quarantine/ (or in rejected/)."""
        out = []
        folder = self.dir(where)
        for name in self._names(where):
            try:
                reason = (folder / f"{name}.reason").read_text().strip()
            except OSError:
                reason = ""
            out.append((name, reason))
        return sorted(out)

    # -- helpers ----------------------------------------------------------------------

    @contextmanager
    def _flock(self, path: Path) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class _Stuck(HostctlError):
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


class _Refused(InvalidInput):
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


def _hold(ctx_fd: int, name: str) -> None:
    """Name the active task that holds a context's lock in the lock file (see
    Spool._context_lock); no fsync: the record matters only while processes live."""
    with suppress(OSError):
        os.pwrite(ctx_fd, f"{name}\n".encode(), 0)


def _last_index(items: list[Any], value: Any) -> int:
    """The index of the last ``value`` in ``items``, or -1."""
    for i in range(len(items) - 1, -1, -1):
        if items[i] == value:
            return i
    return -1


def _head(path: Path) -> bytes:
    """The first line's worth of a file (a task's first line is at most MAX_TASK_BYTES),
    opened without following a link or blocking on a FIFO."""
    fd = os.open(path, _READ_FLAGS)
    try:
        return os.pread(fd, MAX_TASK_BYTES, 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)


def _iso(ts: float) -> str:
    from hostctl.queues.task import utc_iso

    return utc_iso(ts)


_DUE_DIGITS = 13


def _deferred_due(name: str) -> float | None:
    """When ``deferred/name`` comes due (Unix seconds), or None for a malformed name:
    DUE (13 lower-case hex digits of Unix ms), a dot, a name that is not a dot-name."""
    due_hex, dot, ready = name.partition(".")
    if (len(due_hex) != _DUE_DIGITS or not dot or not ready or ready.startswith(".")
            or any(c not in "0123456789abcdef" for c in due_hex)):
        return None
    return int(due_hex, 16) / 1000


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2), but FileExistsError where ``dst`` exists (renameat2's RENAME_NOREPLACE;
    where the kernel or the file system lacks it, a check just before the rename)."""
    import ctypes

    from hostctl.queues.inotify import _lib

    fn = getattr(_lib(), "renameat2", None)
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _set_aside(names: list[str]) -> list[str]:
    """The files in quarantine/ or rejected/: every name but the ``NAME.reason`` beside a
    NAME (a file set aside may itself be called ``x.reason``: its reason is
    ``x.reason.reason``)."""
    present = set(names)
    return [n for n in names if not n.endswith(".reason") or f"{n}.reason" in present]


class _Listing:
    """The names in one spool folder, smallest first, without listing the folder again for
    every claim (Linux; the caller lists the folder itself when :meth:`refresh` says no).

    An inotify watch on the folder, set before its one full listing, reports every name
    that arrives (a link, a rename into it, a create) or leaves (a rename out of it, an
    unlink); :meth:`refresh` applies the reports, so that ``present`` then holds exactly
    the folder's names (dot-names left out). ``heap`` holds the same names, smallest
    first, plus stale entries (a name gone meanwhile, or there twice) which are passed
    over when they come up. A lost report (the kernel's event queue overflowed) or a
    replaced folder means one more full listing. The cost of a claim therefore does not
    grow with the length of the queue.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ino: Any = None
        self.broken = False  # no inotify here: the caller lists the folder
        self.heap: list[str] = []
        self.present: set[str] = set()
        self.contexts: dict[str, str] = {}  # name -> its task's context, where noted

    def refresh(self) -> bool:
        """Apply the pending reports; False where inotify cannot be used."""
        from hostctl.queues import inotify as ino

        if self.broken:
            return False
        if self.ino is None:
            try:
                watch = ino.Inotify([self.folder], ino.IN_CREATE | ino.IN_MOVED_TO
                                    | ino.IN_MOVED_FROM | ino.IN_DELETE | ino.IN_DELETE_SELF
                                    | ino.IN_MOVE_SELF | ino.IN_ONLYDIR)
            except (OSError, AttributeError):  # no inotify, no such folder, no watch left
                self.broken = True
                return False
            self.ino = watch
            weakref.finalize(self, watch.close)
            self.relist()
            return True
        relist = False
        for _wd, mask, name in self.ino.events():
            if mask & (ino.IN_IGNORED | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
                self.ino.close()  # the folder itself went: watch the new one
                self.ino = None
                return self.refresh()
            if mask & ino.IN_Q_OVERFLOW:
                relist = True
            elif mask & (ino.IN_CREATE | ino.IN_MOVED_TO):
                if name not in self.present and not name.startswith("."):
                    self.present.add(name)
                    heapq.heappush(self.heap, name)
            elif mask & (ino.IN_MOVED_FROM | ino.IN_DELETE):
                self.discard(name)
        if relist:
            self.relist()
        return True

    def relist(self) -> None:
        try:
            names = [n for n in os.listdir(self.folder) if not n.startswith(".")]
        except FileNotFoundError:
            names = []
        names.sort()  # a sorted list is a heap
        self.heap = names
        self.present = set(names)
        self.contexts = {n: c for n, c in self.contexts.items() if n in self.present}

    def smallest(self, passed: list[str]) -> Iterator[str]:
        """The present names, smallest first, each once; each one yielded is taken out of
        the heap and appended to ``passed``, for :meth:`restore` to put back."""
        seen = set()
        while self.heap:
            name = heapq.heappop(self.heap)
            if name in self.present and name not in seen:
                seen.add(name)
                passed.append(name)
                yield name

    def restore(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.present:
                heapq.heappush(self.heap, name)

    def discard(self, name: str) -> None:
        self.present.discard(name)
        self.contexts.pop(name, None)
