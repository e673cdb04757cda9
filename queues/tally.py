"""The spool's tally of ended attempts (what ``hostctl metrics`` counts), kept across
restarts and summed over every process that ran tasks::

    spool/tally/
        .fold                  flock: held exclusively while folding, shared while reading
        total.json             {"version": 1, "tallies": [...], "folded": [NAME, ...]}
        NAME.json              one live or dead process's own counts (NAME: pid-start)
        NAME.lock              flock held by that process for its life

A process counts into its own file only (written whole to a temporary file and renamed
over it), so no two writers meet. Its lock file tells whether it still lives. The fold
(housekeeping, any process) adds a dead process's counts into ``total.json`` and names the
file there as folded *before* removing it: a fold cut short is finished by the next one,
and nothing is counted twice. A reader adds ``total.json`` and every file not folded yet;
the shared lock keeps a fold from moving counts between the two while it reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hostctl.files import lock_held, write_atomic
from hostctl.formats import refuse_newer
from hostctl.queues.model import DURATION_BUCKETS, Tally

VERSION = 1
TOTAL = "total.json"
_Key = tuple[str, str]


class TallyBook:
    """This process's counts, and the sum of everyone's (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._mine: dict[_Key, Tally] = {}
        self._name = ""
        self._lock_fd = -1
        self._pid = 0

    def count(self, type_name: str, outcome: str, seconds: float | None) -> None:
        """One attempt ended (``seconds``: how long it ran, None if unknown); OSError if
        it cannot be written (the caller goes on: a count is not worth a task)."""
        if self._pid != os.getpid():  # a fork counts on its own
            self._mine, self._name, self._lock_fd = {}, "", -1
            self._pid = os.getpid()
        key = (type_name, outcome)
        self._mine[key] = add(self._mine.get(key, Tally(type_name, outcome)), seconds)
        if not self._name:
            self._claim_name()
        write_atomic(self.folder / f"{self._name}.json",
                     _encode(self._mine.values(), []), durable=False)

    def _claim_name(self) -> None:
        self.folder.mkdir(mode=0o700, exist_ok=True)
        name = f"{os.getpid()}-{time.time_ns()}"
        # locked before it takes its name: a fold never sees a live process's lock free
        for again in (True, True, False):
            tmp = self.folder / f".{name}.lock.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC |
                         os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.rename(tmp, self.folder / f"{name}.lock")
            except FileNotFoundError:  # a fold took it for a dead one's before the lock
                os.close(fd)
                if not again:
                    raise
                continue
            self._name, self._lock_fd = name, fd
            return

    def read(self) -> list[Tally]:
        """Everyone's counts, summed by (task type, outcome)."""
        with self._fold_lock(fcntl.LOCK_SH) as held:
            if not held:
                return []
            total, folded = _load(self.folder / TOTAL)
            sums: dict[_Key, Tally] = {}
            for t in total:
                sums[(t.type, t.outcome)] = merge(sums.get((t.type, t.outcome)), t)
            for name in self._names():
                if name in folded:
                    continue
                for t in _load(self.folder / f"{name}.json")[0]:
                    sums[(t.type, t.outcome)] = merge(sums.get((t.type, t.outcome)), t)
        return sorted(sums.values(), key=lambda t: (t.type, t.outcome))

    def fold(self) -> int:
        """Fold the files of processes that have died into the total; how many."""
        with self._fold_lock(fcntl.LOCK_EX) as held:
            if not held:
                return 0
            total_path = self.folder / TOTAL
            total, folded = _load(total_path)
            names = set(self._names())
            for entry in os.listdir(self.folder):  # a process that died taking its name
                if entry.endswith(".lock.tmp") and not lock_held(self.folder / entry):
                    with suppress(FileNotFoundError):
                        (self.folder / entry).unlink()
            leftover = [n for n in folded if n in names]  # a fold cut short: in the total
            dead = [n for n in sorted(names) if n not in folded and n != self._name
                    and not lock_held(self.folder / f"{n}.lock")]
            if not dead and not folded:
                return 0
            sums = {(t.type, t.outcome): t for t in total}
            for name in dead:
                for t in _load(self.folder / f"{name}.json")[0]:
                    sums[(t.type, t.outcome)] = merge(sums.get((t.type, t.outcome)), t)
            if dead:  # counted, and said so, before anything is removed
                write_atomic(total_path, _encode(sums.values(), leftover + dead))
            for name in leftover + dead:
                self._remove(name)
            write_atomic(total_path, _encode(sums.values(), []))
            return len(dead)

    def _remove(self, name: str) -> None:
        """A folded process's files: its counts, what a write cut short by its death
        left (write_atomic's temporary files), its lock last."""
        left = [e for e in os.listdir(self.folder) if e.startswith(f".{name}.json.")]
        for entry in [f"{name}.json", *left, f"{name}.lock"]:
            with suppress(FileNotFoundError):
                (self.folder / entry).unlink()

    def _names(self) -> Iterator[str]:
        """Every process that counted here (its lock file, made first, removed last)."""
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.endswith(".lock") and entry[:1].isdigit():
                yield entry[:-len(".lock")]

    @contextmanager
    def _fold_lock(self, how: int) -> Iterator[bool]:
        try:  # no folder: nothing was ever counted here (and none is made for it)
            fd = os.open(self.folder / ".fold",
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            yield False
            return
        except PermissionError:  # a reader who may not write here: no lock to share
            yield os.access(self.folder, os.R_OK)
            return
        try:
            fcntl.flock(fd, how)
            yield True
        finally:
            os.close(fd)


def add(t: Tally, seconds: float | None) -> Tally:
    """``t`` with one more attempt (its duration in the histogram when known)."""
    if seconds is None:
        return t._replace(attempts=t.attempts + 1)
    buckets = tuple(n + (1 if seconds <= bound else 0)
                    for n, bound in zip(t.buckets, DURATION_BUCKETS, strict=True))
    return t._replace(attempts=t.attempts + 1, timed=t.timed + 1, seconds=t.seconds + seconds,
                      buckets=buckets)


def merge(a: Tally | None, b: Tally) -> Tally:
    if a is None:
        return b
    return a._replace(attempts=a.attempts + b.attempts, timed=a.timed + b.timed,
                      seconds=a.seconds + b.seconds,
                      buckets=tuple(x + y for x, y in zip(a.buckets, b.buckets, strict=True)))


def _encode(tallies: Iterable[Tally], folded: list[str]) -> bytes:
    return json.dumps({"version": VERSION, "tallies": [t._asdict() for t in tallies],
                       "folded": folded}).encode()


def _load(path: Path) -> tuple[list[Tally], list[str]]:
    """A tally file's counts and the names it folded; nothing from a missing or damaged
    one (a count is never worth an error); NewerFormat for one a newer hostctl wrote
    (neither counted nor folded: a fold would write it back in this format)."""
    try:
        doc: Any = json.loads(path.read_bytes())
        if isinstance(doc, dict):
            refuse_newer(doc.get("version"), VERSION, path)
        tallies = [Tally(str(t["type"]), str(t["outcome"]), int(t["attempts"]), int(t["timed"]),
                         float(t["seconds"]), tuple(int(n) for n in t["buckets"]))
                   for t in doc["tallies"]]
        if any(len(t.buckets) != len(DURATION_BUCKETS) for t in tallies):
            return [], []
        return tallies, [str(n) for n in doc.get("folded", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return [], []
