"""Built-in task types: verify (server, platform, site), lock and unlock (platform).

Each function runs in a child of the worker, prints what it finds (the task's log), fills
``rc.result`` and returns an exit code: 0 when all is well (warnings make the task end in
``warning``), 1 when a check failed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hostctl.contexts.names import parse_name
from hostctl.provision.registry import RunContext, TaskType

_SERVICE_BINARIES = {
    "nginx": ("nginx",),
    "apache": ("apache2ctl", "apachectl"),
    "pgsql": ("psql",),
    "mysql": ("mysql",),
}


class _Checks:
    """Collects check lines; a failed check makes the task fail."""

    def __init__(self, rc: RunContext) -> None:
        self.rc = rc
        self.failed = 0
        self.rc.result.setdefault("checks", [])

    def record(self, ok: bool | None, what: str) -> None:
        mark = {True: "ok", False: "FAILED", None: "warning"}[ok]
        self.rc.say(f"[{mark}] {what}")
        self.rc.result["checks"].append({"check": what, "status": mark})
        if ok is False:
            self.failed += 1
        elif ok is None:
            self.rc.result.setdefault("warnings", []).append(what)

    def writable_dir(self, path: Path, label: str, create: bool = False) -> None:
        if not path.exists() and create:
            try:
                path.mkdir(mode=0o700, parents=True)
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
            self.record(True, f"{label} {path} exists and is writable")

    def binary(self, service: str, kind: str) -> None:
        names = _SERVICE_BINARIES.get(kind, ())
        if not names:
            return
        found = next((p for p in map(shutil.which, names) if p), None)
        if found:
            self.record(True, f"{service} service {kind}: {found}")
        else:
            self.record(None, f"{service} service {kind}: none of {', '.join(names)} on PATH")

    def code(self) -> int:
        self.rc.result["failed_checks"] = self.failed
        return 1 if self.failed else 0


def verify(rc: RunContext) -> int:
    checks = _Checks(rc)
    ctx = rc.context
    if ctx.type == "server":
        checks.writable_dir(rc.paths.home, "home")
        for key in ("backup_path", "config_path", "include_path", "clients_path"):
            value = ctx.get(key)
            if isinstance(value, str):
                checks.writable_dir(Path(value), key, create=True)
        checks.binary("http", str(ctx.get("http_service_type")))
        db = str(ctx.get("db_service_type"))
        if db == "sqlite":
            try:
                import sqlite3

                sqlite3.connect(":memory:").close()
                checks.record(True, f"db service sqlite: SQLite {sqlite3.sqlite_version}")
            except Exception as exc:  # pragma: no cover - sqlite3 ships with CPython
                checks.record(False, f"db service sqlite: {exc}")
        else:
            checks.binary("db", db)
    elif ctx.type == "platform":
        root = Path(str(ctx.get("root")))
        if root.is_dir():
            checks.record(True, f"platform root {root} exists")
            ok = os.access(root, os.R_OK | os.X_OK)
            checks.record(ok, f"platform root {root} is {'' if ok else 'not '}readable")
        else:
            checks.record(False, f"platform root {root} is missing")
        rc.result["root"] = str(root)
    else:
        platform = rc.store.get(parse_name(str(ctx.get("platform"))))
        root = Path(str(platform.get("root")))
        if not root.is_dir():
            checks.record(False, f"platform root {root} is missing")
        else:
            checks.record(True, f"platform root {root} exists")
            site_dir = root / "sites" / str(ctx.get("uri"))
            checks.writable_dir(site_dir, "site folder", create=True)
            rc.result["site_path"] = str(site_dir)
        if platform.get("locked"):
            checks.record(None, f"platform {platform.display_name} is locked")
    rc.result["context"] = ctx.display_name
    return checks.code()


def _set_locked(rc: RunContext, locked: bool) -> int:
    rc.store.save(rc.context.name, {"locked": "true" if locked else "false"})
    state = "locked: it accepts no new sites" if locked else "unlocked"
    rc.say(f"platform {rc.context.display_name} {state}")
    rc.result["locked"] = locked
    return 0


def lock(rc: RunContext) -> int:
    return _set_locked(rc, True)


def unlock(rc: RunContext) -> int:
    return _set_locked(rc, False)


TYPES = (
    TaskType("verify", ("server", "platform", "site"),
             "check a context's folders, services and settings; fix what is safe to fix",
             function=verify, timeout=600),
    TaskType("lock", ("platform",), "lock a platform: it accepts no new sites",
             function=lock, timeout=60),
    TaskType("unlock", ("platform",), "unlock a platform", function=unlock, timeout=60),
)
