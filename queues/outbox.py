"""The receipts outbox: what a front end may read of the tasks it dropped.

``spool/outbox/RECEIPT.json`` holds a dropped task's status as :func:`receipt_doc` shows
it, rewritten (temp name, rename) at each change; ``RECEIPT.log`` is a second name of the
task's log, made when the log is. RECEIPT is the 32-hex-digit token the front end chose
and wrote into its drop (see dropbox.py): only its submitter knows it, and the folder
cannot be listed, so a receipt is a capability. Receipts are best effort: a full disk
loses an update, never a task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from hostctl.files import write_all
from hostctl.queues.layout import SHARED_FILE_MODE
from hostctl.queues.model import Task
from hostctl.times import utc_iso


def receipt_doc(task_json: Mapping[str, Any]) -> dict[str, Any]:
    """What a front end may read of its task: no home paths, no submitter, no receipt."""
    keys = ("id", "type", "context", "status", "status_code", "options", "context_options",
            "priority", "created", "started", "finished", "attempts", "due", "reason",
            "result")
    return {k: task_json.get(k) for k in keys}


def rejected_doc(task_id: str, reason: str) -> dict[str, Any]:
    return {"id": task_id, "status": "error", "status_code": 2, "rejected": True,
            "reason": f"rejected: {reason}", "attempts": [], "created": utc_iso(),
            "started": None, "finished": utc_iso(), "result": {}}


class Outbox:
    """The outbox folder of one spool."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def post(self, task: Task) -> None:
        """Publish a dropped task's status to its receipt (if it has one)."""
        if task.envelope.receipt:
            self.write(task.envelope.receipt, receipt_doc(task.to_json()))

    def post_rejected(self, receipt: str, task_id: str, reason: str) -> None:
        """Tell the submitter of a refused drop why."""
        self.write(receipt, rejected_doc(task_id, reason))

    def write(self, receipt: str, doc: dict[str, Any]) -> None:
        tmp = self.folder / f".{receipt}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOFOLLOW, SHARED_FILE_MODE)
            os.fchmod(fd, SHARED_FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
                fh.write("\n")
            os.rename(tmp, self.folder / f"{receipt}.json")
        except OSError:
            with suppress(OSError):
                os.unlink(tmp)

    def open_log(self, receipt: str, log: Path, flags: int) -> int | None:
        """Create the task's log ``log`` as a second name of ``RECEIPT.log``, shared with
        the front end; an fd open on it, or None (the caller makes a private log)."""
        shared = self.folder / f"{receipt}.log"
        with suppress(OSError):
            fd = os.open(shared, flags | os.O_EXCL, SHARED_FILE_MODE)
            os.fchmod(fd, SHARED_FILE_MODE)
            try:
                os.link(shared, log)
                return fd
            except OSError:
                os.close(fd)
                os.unlink(shared)
        return None

    def mirror_log(self, receipt: str, chunks: Iterator[bytes], whole: bool) -> None:
        """Append to ``RECEIPT.log`` the task's log kept elsewhere (the cluster's
        database): ``chunks`` are what came since the last mirror, or, ``whole``, all of
        it, of which what the file has already is passed over. Nothing is rewritten, so a
        front end that follows the file reads on."""
        shared = self.folder / f"{receipt}.log"
        fd = os.open(shared, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC |
                     os.O_NOFOLLOW, SHARED_FILE_MODE)
        try:
            os.fchmod(fd, SHARED_FILE_MODE)
            have = os.fstat(fd).st_size if whole else 0
            seen = 0
            for chunk in chunks:
                if seen + len(chunk) > have:
                    write_all(fd, chunk[max(0, have - seen):])
                seen += len(chunk)
        finally:
            os.close(fd)

    def paths(self, receipt: str) -> list[Path]:
        """The files of one receipt."""
        return [self.folder / f"{receipt}.{ext}" for ext in ("json", "log")]
