"""Check lines for the verify tasks: ``[ok]``, ``[warning]`` or ``[FAILED]`` each.

A failed check makes the task fail (exit 1); a warning makes it end in ``warning``. Every
check is also in the result, under ``checks``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hostctl.errors import HostctlError
from hostctl.provision.job import Job

T = TypeVar("T")


class Checks:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.failed = 0
        self.checks: list[dict[str, str]] = []
        job.result["checks"] = self.checks

    def record(self, ok: bool | None, what: str) -> None:
        mark = {True: "ok", False: "FAILED", None: "warning"}[ok]
        what = self.job.redact(what)
        self.job.rc.say(f"[{mark}] {what}")
        self.checks.append({"check": what, "status": mark})
        if ok is False:
            self.failed += 1
        elif ok is None:
            warnings = self.job.result.setdefault("warnings", [])
            assert isinstance(warnings, list)
            warnings.append(what)

    def attempt(self, what: str, step: Callable[[], T]) -> T | None:
        """Run ``step``; a HostctlError is a failed check named ``what``."""
        try:
            return step()
        except HostctlError as exc:
            self.record(False, f"{what}: {exc.message}")
            return None

    def folder(self, path: Path, label: str, mode: int | None = None) -> None:
        """A folder that must exist and be writable; created (with ``mode``) if missing."""
        if not path.exists() and mode is not None:
            try:
                path.mkdir(mode=mode, parents=True)
                os.chmod(path, mode)
                self.record(True, f"{label} {path} created")
                return
            except OSError as exc:
                self.record(False, f"{label} {path} cannot be created: {exc.strerror}")
                return
        if not path.is_dir():
            self.record(False, f"{label} {path} is missing")
        elif not os.access(path, os.W_OK | os.X_OK):
            self.record(False, f"{label} {path} is not writable")
        else:
            if mode is not None and (path.stat().st_mode & 0o7777) != mode:
                try:
                    os.chmod(path, mode)
                    self.record(True, f"{label} {path}: mode set to {mode:04o}")
                    return
                except OSError as exc:
                    self.record(None, f"{label} {path}: cannot set mode {mode:04o}: "
                                      f"{exc.strerror}")
                    return
            self.record(True, f"{label} {path} exists and is writable")

    def program(self, what: str, found: str | None, looked: str) -> str | None:
        """A service's program: a warning (not a failure) when it is missing."""
        if found:
            self.record(True, f"{what}: {found}")
        else:
            self.record(None, f"{what}: not found ({looked})")
        return found

    def code(self) -> int:
        self.job.result["failed_checks"] = self.failed
        return 1 if self.failed else 0
