"""An ordered view of one spool folder, kept by inotify (see :class:`Listing`)."""

from __future__ import annotations

import heapq
import os
import weakref
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from hostctl import inotify as ino


class Listing:
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

    A name whose task waits for its context (run by this worker or locked by another) is
    *parked*: taken out of ``heap`` into ``parked[CONTEXT]`` (smallest first), so that a
    claim does not pass over every task of a busy context again. :meth:`release` puts the
    smallest parked name of each context that is no longer busy back into ``heap`` (one
    per context: a context runs one task at a time), and the next when that one is gone.
    A burst of tasks on one site therefore costs each claim O(log n), not O(n).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ino: Any = None
        self.broken = False  # no inotify here: the caller lists the folder
        self.heap: list[str] = []
        self.present: set[str] = set()
        self.contexts: dict[str, str] = {}  # name -> its task's context, where noted
        self.parked: dict[str, list[str]] = {}  # context -> its names out of ``heap``
        self.out: dict[str, str] = {}  # context -> its parked name put back into ``heap``

    def refresh(self) -> bool:
        """Apply the pending reports; False where inotify cannot be used."""
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
        self.parked, self.out = {}, {}

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
        context = self.contexts.pop(name, None)
        if context is not None and self.out.get(context) == name:
            del self.out[context]  # gone: the context's next parked name may come back

    def park(self, name: str, context: str) -> None:
        """``name`` (just yielded by :meth:`smallest`, its task on ``context``) waits for
        its context: out of ``heap`` until :meth:`release` lets the context go on."""
        if self.out.get(context) == name:
            del self.out[context]
        heapq.heappush(self.parked.setdefault(context, []), name)

    def let_go(self, name: str) -> None:
        """``name``, put back by :meth:`release`, waits neither claimed nor parked (its
        type not judged yet): the next parked name of its context comes back now."""
        context = self.contexts.get(name)
        if context is not None and self.out.get(context) == name:
            del self.out[context]
            self._put_back(context)

    def release(self, busy: Collection[str]) -> None:
        """Put back into ``heap`` the smallest parked name of each context not ``busy``
        (unless one of its names is there already)."""
        for context in [c for c in self.parked if c not in busy and c not in self.out]:
            self._put_back(context)

    def _put_back(self, context: str) -> None:
        names = self.parked.get(context, [])
        while names and names[0] not in self.present:
            heapq.heappop(names)  # gone meanwhile
        if not names:
            self.parked.pop(context, None)
            return
        name = heapq.heappop(names)
        self.out[context] = name
        heapq.heappush(self.heap, name)
