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
      catalog/      a cache of each task's type, context and how it ended, for filtered
                    lists: log (appended), log.old, base (see catalog.py)

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
  catalog   a task's type and context are appended to ``catalog/log`` before it is
            linked into ``new/`` (or ``active/``), and how it ended (its file's size and
            status) before every move into ``done/``: one ``O_APPEND`` write, no fsync,
            no lock. A list reads the names of the folders, asks the catalog which ids may
            match, and reads those newest first; an id the catalog does not know (or, in
            ``done/``, not how it ended) is read, then noted. ``task_gc`` (``collect``)
            compacts it: only the tasks in the folders are kept, each finished one checked
            against its file's size. It is a cache: the files always win.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import heapq
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hostctl.errors import (
    Conflict,
    HostctlError,
    InvalidInput,
    NewerFormat,
    NotFound,
    NotJudgedYet,
    OperationFailed,
)
from hostctl.files import (
    NETWORK_FILESYSTEMS,
    filesystem_type,
    flocked,
    fsync_dir,
    lock_held,
    tail,
    write_all,
    write_atomic,
    write_private,
)
from hostctl.inotify import IN_DELETE, Inotify
from hostctl.libc import rename_noreplace
from hostctl.process import kill_spawned, stop_run
from hostctl.queues.admission import STALE_TMP_SECONDS, Admission
from hostctl.queues.backend import Ends
from hostctl.queues.catalog import Catalog, entry, size_of, status_of
from hostctl.queues.catalog import fields as entry_fields
from hostctl.queues.layout import FOLDERS, SUFFIX
from hostctl.queues.listing import Listing
from hostctl.queues.liveness import Registration
from hostctl.queues.liveness import workers as liveness_workers
from hostctl.queues.model import (
    DEFAULT_QUEUE,
    MAX_TASK_BYTES,
    Counts,
    Depth,
    Envelope,
    Policy,
    Status,
    StatusCounts,
    Tally,
    Task,
    TaskQuery,
    WorkerInfo,
    backoff,
    decode_task,
    encode_event,
    new_id,
    record_name,
    valid_id,
)
from hostctl.queues.outbox import Outbox
from hostctl.queues.tally import TallyBook
from hostctl.times import parse_iso, utc_iso

if TYPE_CHECKING:  # the seam this spool implements; only its types are needed here
    from hostctl.queues.backend import TaskClaim

log = logging.getLogger(__name__)
# O_NONBLOCK: a FIFO or device planted in a spool folder must not hang the opener.
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _prio_char(priority: int) -> str:
    return str(9 - priority)


def _ready_name(env: Envelope) -> str:
    return f"{_prio_char(env.priority)}{env.id}{SUFFIX}"


def _folders_of(statuses: Collection[Status]) -> tuple[str, ...]:
    """The folders that hold tasks of these statuses (garbage set aside shows as an
    error)."""
    folders: list[str] = []
    if Status.QUEUED in statuses:
        folders += ["new", "deferred"]
    if Status.PROCESSING in statuses:
        folders.append("active")
    if any(s.finished for s in statuses):
        folders += ["done", "quarantine"]
    return tuple(folders)


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
        self._listings: dict[str, Listing] = {}  # claim's and next_due's view of folders
        self.outbox = Outbox(root / "outbox")
        self.tally_book = TallyBook(root / "tally")
        self.catalog = Catalog(root / "catalog")
        self._admission = Admission(self, self.outbox)
        self._unjudged: tuple[object, dict[str, str]] = (None, {})  # see _waiting()
        self._too_new: set[str] = set()  # task files a newer hostctl wrote: said once
        #: the retry rules of the last sweep, for a lost task recovered by a claim
        self._policy: Callable[[Envelope], Policy] = lambda _env: Policy()
        #: who hears of the ends the last sweep's recovery records (and a claim's)
        self._ends: Ends | None = None

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
        with flocked(self.dir("locks") / "publish.lock"):
            key = self._key_path(env)
            if dedup:
                existing = self._queued_by_key(key)
                if existing:
                    return existing, False
            self.write_new(env, delay)
            with suppress(OSError):
                write_private(key, env.id.encode())
        return env.id, True

    def write_new(self, env: Envelope, delay: float) -> None:
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
            self._note(env)
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

    def take_queued(self) -> Iterator[tuple[Task, Callable[[], None]]]:
        """Each queued task (ready or deferred), held against every worker (its file's
        lock) while the caller moves it into another queue; calling the second item
        removes it from the spool, once the other queue holds it. A task a worker is
        taking this moment, or that does not read as a task, is passed over."""
        for state in ("new", "deferred"):
            for name in self._names(state):
                path = self.dir(state) / name
                try:
                    fd = os.open(path, _OPEN_FLAGS)
                except OSError:
                    continue
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        if not os.path.samestat(os.fstat(fd), os.lstat(path)):
                            continue  # moved meanwhile
                        task = self._read_fd(fd, state, name)
                    except (OSError, InvalidInput):
                        continue

                    def remove(path: Path = path) -> None:
                        os.unlink(path)
                        fsync_dir(path.parent)

                    yield task, remove
                finally:
                    os.close(fd)

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

    def stored(self, task_id: str) -> tuple[bool, Envelope | None]:
        """Whether a task with this id exists, and its envelope if it can be read."""
        found = self._locate(task_id)
        if found is None:
            return False, None
        try:
            return True, self._read_path(found[1], found[0]).envelope
        except (OSError, InvalidInput):
            return True, None

    def get(self, task_id: str) -> Task:
        if not valid_id(task_id):
            raise InvalidInput(f"malformed task id {task_id!r} (20 hex digits)")
        missed = 0
        for _ in range(6):  # the file may move between locate and read
            found = self._locate(task_id)
            if found is None:
                # one look may miss a task moving into a folder it looked in already
                # (deferred/ to new/, active/ to new/): gone when a second misses it too
                missed += 1
                if missed == 2:
                    break
                continue
            try:
                return self._read_path(found[1], found[0])
            except FileNotFoundError:
                continue
        raise NotFound(f"no task {task_id}")

    def tasks_in(self, states: tuple[str, ...] = ("new", "deferred", "active", "done"),
                 strict: bool = False) -> list[Task]:
        tasks = []
        for state in states:
            for name in self._names(state):
                try:
                    tasks.append(self._read_path(self.dir(state) / name, state))
                except (FileNotFoundError, InvalidInput):
                    continue
                except NewerFormat as exc:  # not this hostctl's to read: said, passed over
                    if strict:
                        raise
                    self._said_too_new(name, exc)
        tasks.sort(key=lambda t: t.id)
        return tasks

    def tasks(self, statuses: Collection[Status] | None = None,
              strict: bool = False) -> list[Task]:
        wanted = set(statuses) if statuses is not None else set(Status)
        return [t for t in self.tasks_in(_folders_of(wanted), strict) if t.status in wanted]

    def status_counts(self) -> StatusCounts:
        """The folders say which tasks are queued and which are running (those are read:
        the queued for the oldest's time); how a finished task ended is the catalog's
        word where its entry gives the file's size now (one ``lstat`` each), its file
        read where the catalog does not know it so (then noted in it), or for a name in
        done/ that is not an id."""
        by_status = {s: 0 for s in Status}
        oldest: float | None = None
        for state in ("new", "deferred"):
            for name in self._listed(state):
                try:
                    task = self._read_path(self.dir(state) / name, state)
                except (FileNotFoundError, InvalidInput):
                    continue  # moved on meanwhile, or garbage
                except NewerFormat as exc:
                    self._said_too_new(name, exc)
                    continue
                by_status[task.status] += 1
                created = parse_iso(task.envelope.created)
                oldest = created if oldest is None else min(oldest, created)
        for name in self._listed("active"):
            with suppress(FileNotFoundError, InvalidInput, NewerFormat):
                by_status[self._read_path(self.dir("active") / name, "active").status] += 1
        ids, odd = self._done_ids()
        known = self.catalog.load()
        finished = {s.label: s for s in Status if s.finished}
        folder = f"{self.dir('done')}/"
        to_read = []
        for task_id in ids:
            rest = known.get(task_id)
            status = finished.get(rest[rest.rfind(" ") + 1:]) if rest is not None else None
            try:  # an entry stands for the file only at the size it gives (see catalog.py)
                size = os.lstat(f"{folder}{task_id}{SUFFIX}").st_size
            except FileNotFoundError:
                continue  # collected meanwhile
            if status is None or rest is None or size_of(rest) != size:
                to_read.append(f"{task_id}{SUFFIX}")  # not catalogued as it is now
            else:
                by_status[status] += 1
        notes: list[str | None] = []
        for name in [*to_read, *odd]:
            try:
                task, size = self._read_sized(self.dir("done") / name, "done")
            except (FileNotFoundError, InvalidInput):
                continue
            except NewerFormat as exc:
                self._said_too_new(name, exc)
                continue
            by_status[task.status] += 1
            if name == f"{task.id}{SUFFIX}":
                notes.append(_entry_of(task, size))
        if notes:
            self.catalog.append(notes)
            if self.catalog.known_bytes() > _COMPACT_BYTES:  # built again from the files
                self.compact_catalog()
        return StatusCounts(by_status, oldest)

    def recent(self, query: TaskQuery) -> list[Task]:
        """Newest first, by the ids in the file names. A filter on type, context or how a
        task ended is answered by the catalog (catalog.py), so that only the files shown
        are read, with those the catalog does not know yet (each read once, then noted).
        A name without an id (garbage set aside) is read to know it."""
        floor = query.id_floor() or ""
        statuses = query.statuses or frozenset(Status)
        labels = {s.label for s in statuses if s.finished}
        narrowed = query.type is not None or query.context is not None
        by_status = 0 < len(labels) < sum(1 for s in Status if s.finished)
        known = self.catalog.load() if narrowed or by_status else None
        fits, ends_fit = _fitting(known, query, labels if by_status else None)
        done_ids: set[str] = set()
        others: list[tuple[str, str, str]] = []  # (id, state, name) outside done/
        for state in _folders_of(statuses):
            if state == "done":
                ids, odd = self._done_ids()
                if known is not None and ends_fit is not None:
                    ids = (ids & ends_fit) | ids.difference(known)
                elif known is not None and fits is not None:
                    ids = (ids & fits) | ids.difference(known)
                done_ids |= ids
            else:
                odd = []
                for name in self._listed(state):
                    task_id = _id_of(name)
                    if task_id is None:
                        odd.append(name)
                    elif (known is None or fits is None or state == "quarantine" or
                          task_id in fits or task_id not in known):
                        others.append((task_id, state, name))
            for name in odd:  # read now, to place it by the id inside
                try:
                    others.append((self._read_path(self.dir(state) / name, state).id,
                                   state, name))
                except (FileNotFoundError, InvalidInput):
                    continue
                except NewerFormat as exc:
                    self._said_too_new(name, exc)
        others.sort(reverse=True)
        in_done = ((task_id, "done", f"{task_id}{SUFFIX}")
                   for task_id in _newest_first(done_ids))
        out: list[Task] = []
        notes: list[str | None] = []
        for task_id, state, name in heapq.merge(in_done, others, reverse=True):
            if (query.limit is not None and len(out) >= query.limit) or task_id < floor:
                break
            odd_name = state == "done" and not valid_id(task_id)
            if odd_name and name.startswith("."):
                continue
            try:
                task, size = self._read_sized(self.dir(state) / name, state)
            except (FileNotFoundError, InvalidInput):
                continue  # moved on meanwhile (a listing is a moment's), or garbage
            except NewerFormat as exc:  # passed over, said once: not this hostctl's
                self._said_too_new(name, exc)
                continue
            if odd_name:
                task_id = task.id  # not an id after all: a name to be read, as above
            if known is not None and state != "quarantine" and task.id == task_id:
                rest = known.get(task_id)
                if rest is None or (state == "done" and size_of(rest) < size):
                    notes.append(_entry_of(task, size))
            if query.wants(task):
                out.append(task)
        if notes:
            self.catalog.append(notes)
            if self.catalog.known_bytes() > _COMPACT_BYTES:  # built again from the files
                self.compact_catalog()
        return out

    def _done_ids(self) -> tuple[set[str], list[str]]:
        """The ids the names in done/ say (``ID.task``; one that is not an id after all
        is told apart when read), and the other names."""
        try:
            names = os.listdir(self.dir("done"))
        except FileNotFoundError:
            return set(), []
        # the common case checked at once: every name 25 characters long, ending .task
        joined = "\n".join(names)
        if not names or (len(joined) == 26 * len(names) - 1 and
                         f"{joined}\n".count(f"{SUFFIX}\n") == len(names)):
            return {n[:20] for n in names}, []
        return ({n[:20] for n in names if len(n) == 25 and n.endswith(SUFFIX)},
                [n for n in names if not n.startswith(".") and
                 (len(n) != 25 or not n.endswith(SUFFIX))])

    def _listed(self, state: str) -> list[str]:
        """``_names(state)``, unsorted."""
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            return []
        if state in ("quarantine", "rejected"):
            return _set_aside(names)
        return [n for n in names if not n.startswith(".")]

    def _read_sized(self, path: Path, state: str) -> tuple[Task, int]:
        """The task in ``path`` and its file's size then (-1 in quarantine/)."""
        if state == "quarantine":
            return self._read_quarantined(path), -1
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:  # a folder, a symlink, unreadable
            raise InvalidInput(f"cannot open {path.name}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(f"{path.name} is not a regular file")
            data = os.pread(fd, min(st.st_size, MAX_TASK_BYTES * 16 + 1), 0)
            return self._decode(data, state, path.name), len(data)
        finally:
            os.close(fd)

    # -- the catalog (catalog.py) ------------------------------------------------------

    def _note(self, env: Envelope, size: int = -1) -> None:
        """Catalog a task about to appear in the folders (no fsync: see catalog.py); a
        task run again (``size``: its file's, with the ``retry`` event) is noted as not
        ended, larger than its last end's entry, which it therefore outweighs."""
        self.catalog.append([entry(env.id, env.type, env.context, size)])

    def _note_end(self, fd: int, env: Envelope, outcome: object) -> None:
        """Catalog how a task ended, before its file moves to done/. A catalog that
        cannot be written is dropped as a whole: an older entry of a task run again
        would say how its last run ended."""
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = -1
        line = entry(env.id, env.type, env.context, size, status_of(outcome))
        if size < 0 or not self.catalog.append([line]):
            self.catalog.drop()

    def compact_catalog(self) -> bool:
        """Fold the catalog's log into its base, keeping only the tasks in the folders,
        and check each finished one against its file (one that grew is read again);
        False if another process is at it (see catalog.py)."""
        with self.catalog.compacting() as mine:
            if not mine:
                return False
            self.catalog.rotate()
            known = self.catalog.load()
            kept: dict[str, str] = {}
            for state in ("new", "deferred", "active", "done"):
                for name in self._listed(state):
                    task_id = _id_of(name)
                    if task_id is None:
                        continue
                    rest = known.get(task_id)
                    path = self.dir(state) / name
                    if state == "done":
                        try:
                            size = os.lstat(path).st_size
                        except FileNotFoundError:
                            continue
                        if rest is not None and size_of(rest) == size:
                            kept[task_id] = rest
                            continue
                    elif rest is not None:  # not ended now, whatever an older end said
                        kind, context = entry_fields(rest)[:2]
                        kept[task_id] = f"{kind} {context} - -"
                        continue
                    try:
                        task, size = self._read_sized(path, state)
                    except (OSError, InvalidInput, NewerFormat):
                        continue
                    line = _entry_of(task, size) if task.id == task_id else None
                    if line is not None:
                        kept[task_id] = line[21:]
            try:
                self.catalog.replace(kept)
            except OSError as exc:
                log.warning("cannot write the task catalog: %s", exc.strerror)
                return False
            return True

    def counts(self) -> Counts:
        c = {s: self._count(s) for s in ("incoming", "new", "deferred", "active", "done",
                                         "quarantine", "rejected")}
        return Counts(queued=c["new"], deferred=c["deferred"], processing=c["active"],
                      finished=c["done"], incoming=c["incoming"],
                      quarantined=c["quarantine"], rejected=c["rejected"])

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
        names = self._listed(state)
        return names if state in ("quarantine", "rejected") else sorted(names)

    def _read_path(self, path: Path, state: str) -> Task:
        return self._read_sized(path, state)[0]

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
        except (InvalidInput, NewerFormat) as exc:  # set aside: garbage, whatever it says
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
        task = decode_task(data, state, due=due, where=self.dir(state) / name)
        return Task(task.envelope, task.events, state,
                    str(self.log_path(task.envelope.id)), due)

    # -- claim ------------------------------------------------------------------------

    def hold(self) -> None:
        """Nothing to give back: no task is set aside for one worker here."""

    def claim(
        self,
        check: Callable[[Envelope], None] | None = None,
        limit: int = 1,
        skip_contexts: set[str] | None = None,
        ahead: bool = False,
    ) -> list[TaskClaim]:
        """Claim up to ``limit`` ready tasks, at most one per context (``ahead`` makes no
        difference here).

        ``check`` may raise InvalidInput for a submission that must not run (a context
        that no longer exists, say): the file goes to quarantine with that reason. It
        raises NotJudgedYet for a task it cannot judge (a type its configuration does not
        know): that task stays queued, untouched, and is passed over until the check
        changes (a configuration reloaded), one warning per type.
        """
        self.ensure()
        claims: list[TaskClaim] = []
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
        listing.release(busy)
        names = listing.smallest(passed)
        try:
            while len(claims) < limit:
                smallest = next(names, None)
                if smallest is None:
                    break
                if smallest in waiting:  # known to wait for its type: not its context's
                    listing.let_go(smallest)  # turn to hold up the context's next task
                    continue
                context = listing.contexts.get(smallest)
                if context is None or context not in busy:
                    claim = self._try_claim(smallest, check, busy, listing.contexts)
                    if claim is not None:
                        passed.pop()
                        listing.discard(smallest)
                        claims.append(claim)
                        busy.add(claim.task.envelope.context)
                        continue
                    context = listing.contexts.get(smallest)
                if context is not None and context in busy:
                    passed.pop()  # waits for its context: parked, not passed over again
                    listing.park(smallest, context)
        finally:
            listing.restore(passed)
        return claims

    def _said_too_new(self, name: str, exc: NewerFormat) -> None:
        """A task file of a newer format is neither run, recovered nor quarantined: a
        runner leaves it where it lies, and logs it once."""
        if name not in self._too_new:
            self._too_new.add(name)
            log.error("%s", exc)

    def _waiting(self, check: object) -> dict[str, str]:
        """The names of ``new/`` that ``check`` could not judge (name -> task type); a
        new check (a configuration reloaded) judges them all again."""
        if self._unjudged[0] is not check:
            self._unjudged = (check, {})
        return self._unjudged[1]

    def _listing(self, state: str) -> Listing | None:
        """The up-to-date ordered view of ``new/`` or ``deferred/``; None without inotify."""
        listing = self._listings.get(state)
        if listing is None:
            listing = self._listings[state] = Listing(self.dir(state))
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
            except NewerFormat as exc:
                if _id_of(name) is None:  # not even a task's name: garbage, set aside
                    self._quarantine_path(path, str(exc))
                else:  # left as it is, for a newer hostctl
                    self._said_too_new(name, exc)
                return None
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
            if task.ended_unmoved:  # a cancel whose process died before its move
                self._to_done(Claim(task, target, fd, ctx_fd, self),
                              task.events[-1].get("outcome"))
                return None
            if task.cancel_requested:  # cancelled while queued, but not moved yet
                claim = Claim(task, target, fd, ctx_fd, self)
                with self._ending(task, "cancelled"):
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
            self._note(env)
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

    def heartbeat(self, claim: TaskClaim) -> None:
        """The claim's flock already says its owner lives; the touch shows when it last
        looked (the file's mtime)."""
        with suppress(OSError):
            os.utime(_own(claim).fd)

    def started(self, claim: TaskClaim) -> None:
        """The task's child runs: its front end's receipt says so."""
        self._post_claim(_own(claim), "active")

    def result_path(self, env: Envelope) -> str:
        return str(self.dir("tmp") / f".{env.id}.result")

    def finish(self, claim: TaskClaim, outcome: str, **fields: Any) -> None:
        """Record the end of the attempt and move the task to done/."""
        claim = _own(claim)
        claim.append("end", outcome=outcome, **fields)
        self._to_done(claim, outcome)

    def _to_done(self, claim: Claim, outcome: object) -> None:
        """Move a task whose end is recorded to done/ (catalogued as ``outcome``)."""
        self._note_end(claim.fd, claim.task.envelope, outcome)
        self._move(claim.path, self.dir("done") / f"{claim.task.id}{SUFFIX}")
        self._post_claim(claim, "done")
        claim.release()

    def defer(self, claim: TaskClaim, delay: float, outcome: str = "retry",
              **fields: Any) -> None:
        """Record the attempt's end and queue the task again after ``delay`` seconds."""
        claim = _own(claim)
        claim.append("end", outcome=outcome, **fields)
        self._defer_path(claim, delay)
        self._post_claim(claim, "deferred")
        claim.release()

    def _defer_path(self, claim: Claim, delay: float) -> None:
        due = time.time() + delay
        claim.append("defer", until=_iso(due))
        name = f"{int(due * 1000):013x}.{_ready_name(claim.task.envelope)}"
        self._move(claim.path, self.dir("deferred") / name)

    def requeue(self, claim: TaskClaim) -> None:
        """Give back a claimed task that never started (no attempt counted)."""
        claim = _own(claim)
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
                try:  # still the file locked? (a claim moves it under the lock)
                    if not os.path.samestat(os.fstat(fd), os.lstat(path)):
                        continue
                except FileNotFoundError:
                    continue
                try:
                    current: Task | None = self._read_fd(fd, state, path.name)
                except InvalidInput:
                    current = None
                if current is None or not current.ended_unmoved:  # (else a cancel cut short)
                    # one write: no moment with the cancel and not its end
                    write_all(fd, encode_event("cancel") + encode_event(
                        "end", outcome="cancelled", reason="cancelled before it started"))
                if current is not None:
                    with suppress(OSError):
                        self._note_end(fd, current.envelope, "cancelled")
                done = self.dir("done") / f"{task_id}{SUFFIX}"
                if not self._move_locked(fd, task_id, path, done):
                    # its cancel is written: said, not taken back (a claim or a sweep
                    # that finds it moves it on)
                    raise OperationFailed(f"task {task_id} is cancelled, but its file "
                                          "was moved elsewhere meanwhile")
                task = self._read_fd(fd, "done", done.name)
                self.outbox.post(task)
                return task
        return None

    def _move_locked(self, fd: int, task_id: str, path: Path, dst: Path) -> bool:
        """Rename the task file ``fd`` holds locked from ``path`` to ``dst``, following it
        where a move that takes no lock (a promotion from deferred/ to new/) took it
        meanwhile; False if it is found nowhere."""
        for _ in range(10):
            try:
                os.rename(path, dst)
                return True
            except FileNotFoundError:
                found = self._locate(task_id)
                if found is None:
                    return False
                with suppress(FileNotFoundError):
                    if os.path.samestat(os.fstat(fd), os.lstat(found[1])):
                        path = found[1]
        return False

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
            self._note(task.envelope, os.fstat(fd).st_size)
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
            self.outbox.post(task)
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

    def recovery(self, policy: Callable[[Envelope], Policy], ends: Ends | None) -> None:
        self._policy, self._ends = policy, ends

    def sweep(self, policy: Callable[[Envelope], Policy], now: float | None = None,
              ends: Ends | None = None) -> list[str]:
        """Recover tasks whose worker died (each end recorded inside ``ends.ending``);
        promote due tasks; drop stale temp files; list ``new/`` and ``deferred/`` again
        (the safety net for what inotify missed).

        Returns one line per recovered task, for the log.
        """
        self.ensure()
        self._policy = policy
        self._ends = ends
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
        try:
            self.tally_book.fold()
        except (OSError, NewerFormat) as exc:  # the counts stay where they are
            notes.append(f"cannot fold the counts of ended workers: {exc}")
        return notes

    def _recover(self, path: Path, policy: Callable[[Envelope], Policy]) -> str | None:
        note = self._recover_one(path, policy)
        if note:
            stem = _id_of(path.name)
            if stem:
                with suppress(NotFound, InvalidInput):
                    self.outbox.post(self.get(stem))
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
            except NewerFormat as exc:
                if _id_of(path.name) is not None:  # left as it is, for a newer hostctl
                    self._said_too_new(path.name, exc)
                    return None
                self._quarantine_path(path, str(exc))  # not even a task's name: garbage
                return f"quarantined {path.name}: {exc}"
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
                    self._note_end(fd, env, last.get("outcome"))
                    self._move(path, self.dir("done") / f"{env.id}{SUFFIX}")
                return f"completed the interrupted move of task {env.id}"
            spawn, start = task.last_index("spawn"), task.last_index("start")
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
            elif start < 0 or task.last_index("end") > start:
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
                with self._ending(task, "cancelled"):
                    claim.append("end", outcome="cancelled", reason=f"cancelled; {reason}")
                    self._note_end(fd, env, "cancelled")
                    self._move(path, self.dir("done") / f"{env.id}{SUFFIX}")
                return f"task {env.id}: {reason}; it was being cancelled"
            if rules.rerun_on_loss and attempts < rules.max_attempts:
                with self._ending(task, "lost"):
                    claim.append("end", outcome="lost", reason=reason)
                    self._defer_path(claim, backoff(rules, attempts))
                return f"task {env.id}: {reason}; queued again"
            why = (f"{reason}; a {env.type} that was cut off must be checked by a person"
                   if not rules.rerun_on_loss else
                   f"{reason}; no attempts left (max {rules.max_attempts})")
            with self._ending(task, "lost"):
                claim.append("end", outcome="lost", reason=why)
                self._note_end(fd, env, "lost")
                self._move(path, self.dir("done") / f"{env.id}{SUFFIX}")
            return f"task {env.id}: {why}"
        finally:
            os.close(fd)

    def _ending(self, task: Task, outcome: str) -> AbstractContextManager[object]:
        """Where a recovery records an attempt's end, and a claim a cancel before the
        start: inside its runner's ``ending``."""
        return nullcontext() if self._ends is None else self._ends.ending(task, outcome)

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

    # -- incoming (see admission.py) and receipts (outbox.py) --------------------------

    def admit(self, check: Callable[[Envelope], None]) -> list[str]:
        """Publish what front ends dropped into incoming/; reject the rest with a reason
        (see :meth:`Admission.admit`)."""
        return self._admission.admit(check)

    def _post_claim(self, claim: Claim, state: str) -> None:
        if claim.task.envelope.receipt:
            with suppress(OSError, InvalidInput):
                self.outbox.post(self._read_fd(claim.fd, state, claim.path.name))

    def open_log(self, env: Envelope) -> FileLog:
        """Open the task's log for appending; a dropped task's log is shared via outbox/."""
        path = self.log_path(env.id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        if env.receipt and not path.exists():
            fd = self.outbox.open_log(env.receipt, path, flags)
            if fd is not None:
                return FileLog(fd)
        return FileLog(os.open(path, flags, 0o600))

    def read_log(self, task_id: str, follow: bool, poll: float = 0.1) -> Iterator[bytes]:
        task = self.get(task_id)
        return tail(self.log_path(task.id), follow,
                    lambda: self.get(task_id).status.finished, poll)

    # -- the runners' side: wake-ups, pause, leader, records, workers, collection -------

    def has_submissions(self) -> bool:
        try:
            return bool(os.listdir(self.dir("incoming")))
        except FileNotFoundError:
            return False

    def watch(self) -> Inotify | None:
        """One inotify descriptor on new/, incoming/ and deferred/ (a publish, a drop, a
        deferral) and on the spool itself (``paused`` removed: the queue resumed)."""
        try:
            watch = Inotify([self.dir("new"), self.dir("incoming"), self.dir("deferred")])
        except OSError as exc:
            log.warning("no inotify (%s): new tasks are found by the periodic rescan", exc)
            return None
        try:
            watch.add(self.root, IN_DELETE)
        except OSError:
            pass  # a resume is then seen at the next rescan
        return watch

    def pause(self) -> None:
        self.ensure()
        (self.root / "paused").touch(mode=0o600)

    def resume(self) -> None:
        (self.root / "paused").unlink(missing_ok=True)

    def paused(self) -> bool:
        return (self.root / "paused").exists()

    def running(self) -> list[str]:
        """Tasks in active/ whose worker lives (holds the file's lock)."""
        folder = self.dir("active")
        out = []
        for name in self._names("active"):
            task_id = _id_of(name)
            if task_id is not None and lock_held(folder / name):
                out.append(task_id)
        return out

    @contextmanager
    def leader(self) -> Iterator[bool]:
        """``locks/dispatch.lock``, flock'ed without waiting."""
        self.ensure()
        with flocked(self.dir("locks") / "dispatch.lock", wait=False) as mine:
            yield mine

    def read_record(self, name: str) -> bytes | None:
        try:
            return (self.root / f"{record_name(name)}.json").read_bytes()
        except OSError:
            return None

    def write_record(self, name: str, data: bytes) -> None:
        write_atomic(self.root / f"{record_name(name)}.json", data)

    def register_worker(self, pid: int, started: str, max_runtime: float) -> Registration:
        self.ensure()
        return Registration(self.root / "workers", self.dir("locks"), pid, started,
                            max_runtime)

    def workers(self) -> list[WorkerInfo]:
        return liveness_workers(self.root / "workers", self.dir("locks"))

    def collect(self, retention_days: float, now: float, limit: int) -> int:
        victims = _older(self.dir("done"), now - retention_days * 86400)
        for path in victims[:limit]:
            self.remove_done(path)
        for path in _older(self.dir("rejected"), now - retention_days * 86400):
            self.remove_rejected(path)
        self.compact_catalog()  # the removed tasks leave it
        return min(len(victims), limit)

    def collectable(self, retention_days: float, now: float) -> int:
        return len(_older(self.dir("done"), now - retention_days * 86400))

    def tally(self, type_name: str, outcome: str, seconds: float | None) -> None:
        self.tally_book.count(type_name, outcome, seconds)

    def tallies(self) -> list[Tally]:
        return self.tally_book.read()

    def depths(self) -> list[Depth]:
        """The one queue: its ready tasks (the oldest's age: since its file was last
        written, when it was queued or deferred) and its deferred ones."""
        oldest: float | None = None
        ready = 0
        for name in self._names("new"):
            try:
                mtime = os.stat(self.dir("new") / name).st_mtime
            except FileNotFoundError:  # taken meanwhile
                continue
            ready += 1
            oldest = mtime if oldest is None else min(oldest, mtime)
        age = None if oldest is None else max(0.0, time.time() - oldest)
        return [Depth(DEFAULT_QUEUE, ready, len(self._names("deferred")), age)]

    def remove_done(self, path: Path) -> None:
        """Delete a finished task with its log and receipt (task_gc)."""
        try:
            task = self._read_path(path, "done")
        except FileNotFoundError:
            return
        except InvalidInput as exc:  # garbage (a folder, a FIFO, a broken file): set aside
            self._quarantine_path(path, str(exc))
            return
        except NewerFormat as exc:
            if _id_of(path.name) is None:  # not even a task's name: garbage, set aside
                self._quarantine_path(path, str(exc))
            else:  # a newer hostctl's: left where it lies
                self._said_too_new(path.name, exc)
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
            paths += self.outbox.paths(task.envelope.receipt)
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

    def set_aside(self, rejected: bool = False) -> list[tuple[str, str]]:
        """(file, reason) of what lies in quarantine/ (or in rejected/)."""
        out = []
        where = "rejected" if rejected else "quarantine"
        folder = self.dir(where)
        for name in self._names(where):
            try:
                reason = (folder / f"{name}.reason").read_text().strip()
            except OSError:
                reason = ""
            out.append((name, reason))
        return sorted(out)

    # -- helpers ----------------------------------------------------------------------



#: a catalog log larger than this is folded by the list that added to it
_COMPACT_BYTES = 1 << 20


def _entry_of(task: Task, size: int) -> str | None:
    """The catalog entry of a task read from a file of ``size`` bytes."""
    env = task.envelope
    if task.state == "done":
        return entry(env.id, env.type, env.context, size, task.status.label)
    return entry(env.id, env.type, env.context)


def _fitting(known: dict[str, str] | None, query: TaskQuery, labels: set[str] | None
             ) -> tuple[set[str] | None, set[str] | None]:
    """Of the catalogued ids: those whose type and context fit ``query`` (None: no such
    filter), and of those, the ones whose entry says they ended with one of ``labels``
    or not at all (None: no such filter)."""
    if known is None:
        return None, None
    fits: set[str] | None = None
    if query.type is not None or query.context is not None:
        head = f"{query.type} "
        middle = f" {query.context} "
        if query.context is None:
            fits = {i for i, rest in known.items() if rest.startswith(head)}
        elif query.type is None:
            fits = {i for i, rest in known.items() if middle in rest}
        else:
            fits = {i for i, rest in known.items() if rest.startswith(head) and middle in rest}
    if labels is None:
        return fits, None
    ends = {f" {label}" for label in labels} | {" -"}
    pool = known.keys() if fits is None else fits
    return fits, {i for i in pool if known[i][known[i].rfind(" "):] in ends}


def _newest_first(ids: set[str]) -> Iterator[str]:
    """``ids`` from the largest down, sorting only as many as are taken."""
    taken, batch = 0, 256
    while taken < len(ids):
        if batch * 4 >= len(ids):
            yield from sorted(ids, reverse=True)[taken:]
            return
        top = heapq.nlargest(batch, ids)
        yield from top[taken:]
        taken, batch = batch, batch * 16


def _head(path: Path) -> bytes:
    """The first line's worth of a file (a task's first line is at most MAX_TASK_BYTES),
    opened without following a link or blocking on a FIFO."""
    fd = os.open(path, _READ_FLAGS)
    try:
        return os.pread(fd, MAX_TASK_BYTES, 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)


def _own(claim: TaskClaim) -> Claim:
    """A claim this spool made (a claim of another backend here is a bug)."""
    if not isinstance(claim, Claim):
        raise TypeError(f"not a spool claim: {claim!r}")
    return claim


class FileLog:
    """A task's log: an append-only file this worker holds open."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        write_all(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _older(folder: Path, cutoff: float) -> list[Path]:
    """The entries of ``folder`` last changed before ``cutoff``, in name order."""
    out = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    for name in sorted(names):
        try:
            if os.lstat(folder / name).st_mtime < cutoff:
                out.append(folder / name)
        except FileNotFoundError:
            continue
    return out


def _iso(ts: float) -> str:
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


def _set_aside(names: list[str]) -> list[str]:
    """The files in quarantine/ or rejected/: every name but the ``NAME.reason`` beside a
    NAME (a file set aside may itself be called ``x.reason``: its reason is
    ``x.reason.reason``)."""
    present = set(names)
    return [n for n in names if not n.endswith(".reason") or f"{n}.reason" in present]


def _hold(ctx_fd: int, name: str) -> None:
    """Name the active task that holds a context's lock in the lock file (see
    Spool._context_lock); no fsync: the record matters only while processes live."""
    with suppress(OSError):
        os.pwrite(ctx_fd, f"{name}\n".encode(), 0)
