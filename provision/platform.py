"""The platform tasks: verify, delete, lock and unlock.

A platform is an application root (its code) with an optional manifest
(provision/app.py). Its sites keep their files in ``ROOT/sites/URI``. A locked platform
accepts no new sites: install, clone and migrate onto it are refused; the sites it has go
on as before.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from hostctl.contexts.store import Context
from hostctl.errors import Conflict, InvalidInput
from hostctl.files import flocked
from hostctl.provision import app, site
from hostctl.provision.checks import Checks
from hostctl.provision.job import Job, stoppable
from hostctl.provision.tasktype import RunContext

#: folders a platform root may never be (nor hold): the system's own
_SYSTEM = tuple(Path(p) for p in ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib",
                                  "/lib64", "/opt", "/proc", "/root", "/run", "/sbin",
                                  "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib",
                                  "/var/www"))


def _check_removable(job: Job, platform: Context, root: Path) -> None:
    """Refuse to remove a root that is a system folder, holds the home, or overlaps the
    root of another platform (the same folder, inside it, or around it)."""
    home = job.paths.home.resolve()
    if root in _SYSTEM or root == home or home.is_relative_to(root):
        raise InvalidInput(f"refusing to remove {root}: it is a system folder or holds "
                           "the home")
    for other in job.store.of_type("platform"):
        if other.name == platform.name:
            continue
        theirs = Path(str(other.get("root"))).resolve()
        if theirs == root or theirs.is_relative_to(root) or root.is_relative_to(theirs):
            raise InvalidInput(f"refusing to remove {root}: platform {other.display_name} "
                               f"lives in {theirs}")


def sites_of(job: Job, platform: Context) -> list[Context]:
    return [c for c in job.store.of_type("site") if c.get("platform") == platform.display_name]


def verify(rc: RunContext) -> int:
    job = Job(rc)
    checks = Checks(job)
    platform = rc.context
    root = Path(str(platform.get("root")))
    job.result["root"] = str(root)
    job.result["context"] = platform.display_name
    if not root.is_dir():
        checks.record(False, f"platform root {root} is missing")
        return checks.code()
    checks.record(True, f"platform root {root} exists")
    readable = os.access(root, os.R_OK | os.X_OK)
    checks.record(readable, f"platform root {root} is {'' if readable else 'not '}readable")
    manifest = checks.attempt("the manifest", lambda: app.load(platform))
    if manifest is not None:
        if manifest.path is None:
            checks.record(True, f"no {app.MANIFEST}: the web root is the platform root, "
                                "no commands")
        else:
            checks.record(True, f"manifest {manifest.path}: web root {manifest.web_root}, "
                                "commands: " + (", ".join(manifest.commands) or "none"))
            for name, argv in manifest.commands.items():
                program = argv[0]
                if "{" in program:
                    continue
                found = shutil.which(program) if os.sep not in program else (
                    program if os.access(program, os.X_OK) else None)
                checks.record(None if found is None else True,
                              f"{name} command program {program}"
                              + (f": {found}" if found else ": not found"))
    checks.folder(root / "sites", "sites folder", mode=None if (root / "sites").exists()
                  else 0o755)
    for key in ("web_server", "server"):
        ref = platform.get(key)
        if isinstance(ref, str):
            server = job.store.get(ref)
            kind = server.get("http_service_type")
            if key == "web_server" and kind not in ("nginx", "none"):
                checks.record(None, f"web server {ref}: {kind} is not supported (nginx, none)")
    if platform.get("locked"):
        checks.record(None, f"platform {platform.display_name} is locked: no new sites")
    job.result["sites"] = [s.display_name for s in sites_of(job, platform)]
    return checks.code()


def delete(rc: RunContext) -> int:
    """Refused while sites use the platform, unless ``--force yes``: then each site is
    deleted as its delete task would (a backup first), then the platform's root."""
    job = Job(rc)
    platform = rc.context
    if platform.get("protected"):
        raise Conflict(f"{platform.display_name} is protected: delete is refused")
    force = site._flag(job, "force")
    sites = sites_of(job, platform)
    if sites and not force:
        raise Conflict(f"{platform.display_name} has sites: "
                       + ", ".join(s.display_name for s in sites)
                       + "; delete them first, or give --force yes")
    guarded = [s.display_name for s in sites if s.get("protected")]
    if guarded:
        raise Conflict(f"{platform.display_name} has protected sites: {', '.join(guarded)}")
    root = Path(str(platform.get("root"))).resolve()
    _check_removable(job, platform, root)
    backups = []
    with stoppable(), _sites_held(job, sites):
        for one in sites:
            record = job.secrets.read(one.name)
            if record is not None:
                job.hide(*job.secrets.values(one.name))
                made = site._backup(job, one, record, "delete")
                backups.append(str(made.path))
                site.remove_installation(job, one, record)
            job.store.delete(one.name)
            job.say(f"site {one.display_name} deleted")
        if root.exists():
            shutil.rmtree(root)
            job.say(f"platform root {root} removed")
        job.store.delete(platform.name)
    job.say(f"platform {platform.display_name} deleted")
    job.result.update(deleted=platform.display_name, sites=[s.display_name for s in sites],
                      backups=backups)
    return 0


@contextmanager
def _sites_held(job: Job, sites: list[Context]) -> Iterator[None]:
    """Each site's context lock (the one a task on it holds while it runs, see the
    spool's locks/), held while the sites are deleted: a task running on one of them makes
    the delete a Conflict instead of removing what that task is working on, and none can
    start meanwhile."""
    folder = job.paths.spool / "locks"
    with ExitStack() as held:
        for one in sites:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = folder / f"context.{one.name}.lock"
            if not held.enter_context(flocked(lock, wait=False, follow=False)):
                raise Conflict(f"a task is running on {one.display_name}: the platform is "
                               "not deleted; try again once it has ended")
        yield


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
