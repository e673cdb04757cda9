"""``hostctl doctor``: check (and with ``fix`` repair) the home's owners and modes.

What is checked, for the home's owner:

- the home, contexts/, logs/, the spool and each of its folders: mode 0700, owned by the
  home's owner; with a front-end drop box (see queues/dropbox.py) the home and the spool
  are 0710, incoming/ 3730 and outbox/ 2710, all in the front-end group;
- config.toml, every context file, every log and every spool file: no access for group or
  others (0600), owned by the home's owner; a dropped task's shared log and its receipt may
  be 0640 in the front-end group, and a drop not yet admitted belongs to its submitter;
- the spool is not on a network file system.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hostctl.errors import ForeignHome, NotFound
from hostctl.files import NETWORK_FILESYSTEMS, filesystem_type
from hostctl.paths import Paths

PRIVATE_DIR = 0o700


@dataclass(frozen=True)
class Finding:
    path: Path
    problem: str
    fixed: bool = False

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "problem": self.problem, "fixed": self.fixed}


@dataclass(frozen=True)
class _Rule:
    path: Path
    modes: tuple[int, ...]  # acceptable modes; the first is what --fix sets
    gid: int | None = None  # required group, if any
    owner_free: bool = False  # may belong to someone else (a front end's drop)


def check(paths: Paths, fix: bool = False, allow_network: bool = False) -> list[Finding]:
    """Every problem found (and, with ``fix``, whether it was repaired)."""
    from hostctl.queues import dropbox

    home = paths.home
    try:
        owner = os.stat(home).st_uid
    except FileNotFoundError:
        raise NotFound(f"no home at {home} (nothing has been saved there yet)") from None
    euid = os.geteuid()
    if fix and euid not in (0, owner):
        raise ForeignHome(f"home {home} belongs to uid {owner}; only its owner or root "
                          "can fix it")
    fe = dropbox.frontend_gid(paths)
    findings = [f for rule in _rules(paths, fe) for f in _check_one(rule, owner, fix)]
    fstype = filesystem_type(paths.spool if paths.spool.exists() else home)
    if fstype in NETWORK_FILESYSTEMS and not allow_network:
        findings.append(Finding(paths.spool, f"on a {fstype} file system: file locks are not "
                                             "reliable there"))
    return findings


def _rules(paths: Paths, fe: int | None) -> Iterator[_Rule]:
    from hostctl.queues import dropbox
    from hostctl.queues.spool import FOLDERS

    # with a drop box the front end must pass through the home and the spool: 0700 would
    # lock it out, so only the shared mode is right there
    yield _Rule(paths.home, (dropbox.HOME_MODE,) if fe is not None else (PRIVATE_DIR,), fe)
    if paths.config_file.exists():
        yield _Rule(paths.config_file, (0o600, 0o400))
    yield from _tree(paths.contexts, files=(0o600, 0o400))
    yield from _tree(paths.logs, files=(0o600,), shared_gid=fe)
    yield from _tree(paths.home / "crontab", files=(0o600,))
    if not paths.spool.exists():
        return
    yield _Rule(paths.spool, (dropbox.SPOOL_MODE,) if fe is not None else (PRIVATE_DIR,), fe)
    for name in FOLDERS:
        folder = paths.spool / name
        if name == "incoming" and fe is not None:
            yield _Rule(folder, (dropbox.INCOMING_MODE,), fe)
            yield from _files(folder, (0o600, dropbox.SHARED_FILE_MODE), owner_free=True)
        elif name == "outbox" and fe is not None:
            yield _Rule(folder, (dropbox.OUTBOX_MODE,), fe)
            yield from _files(folder, (dropbox.SHARED_FILE_MODE,), gid=fe)
        else:
            yield from _tree(folder, files=(0o600,),
                             owner_free=name in ("incoming", "rejected"),
                             drop_modes=name in ("incoming", "rejected"))
    yield from _tree(paths.spool / "workers", files=(0o600,))
    for entry in _listdir(paths.spool):
        if entry.is_file() and not entry.is_symlink():
            yield _Rule(entry, (0o600,))


def _tree(folder: Path, files: tuple[int, ...], shared_gid: int | None = None,
          owner_free: bool = False, drop_modes: bool = False) -> Iterator[_Rule]:
    if not folder.exists():
        return
    yield _Rule(folder, (PRIVATE_DIR,))
    from hostctl.queues.dropbox import SHARED_FILE_MODE

    for entry in _listdir(folder):
        if entry.is_symlink() or not entry.is_file():
            continue
        if shared_gid is not None:
            st = entry.stat()
            if st.st_nlink > 1 and st.st_gid == shared_gid:  # a dropped task's shared log
                yield _Rule(entry, (SHARED_FILE_MODE,), shared_gid)
                continue
        modes = (*files, SHARED_FILE_MODE) if drop_modes else files
        yield _Rule(entry, modes, owner_free=owner_free)


def _files(folder: Path, modes: tuple[int, ...], gid: int | None = None,
           owner_free: bool = False) -> Iterator[_Rule]:
    for entry in _listdir(folder):
        if entry.is_file() and not entry.is_symlink():
            yield _Rule(entry, modes, gid, owner_free)


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _check_one(rule: _Rule, owner: int, fix: bool) -> Iterator[Finding]:
    try:
        st = os.lstat(rule.path)
    except FileNotFoundError:
        return
    if not rule.owner_free and st.st_uid != owner:
        fixed = False
        if fix and os.geteuid() == 0:
            os.lchown(rule.path, owner, -1)
            fixed = True
        yield Finding(rule.path, f"owned by uid {st.st_uid}, not by the home's owner "
                                 f"(uid {owner})", fixed)
    if rule.gid is not None and st.st_gid != rule.gid:
        fixed = _try(lambda: os.chown(rule.path, -1, rule.gid or 0)) if fix else False
        yield Finding(rule.path, f"group {st.st_gid}, not the front-end group {rule.gid}",
                      fixed)
    mode = stat.S_IMODE(st.st_mode)
    if mode not in rule.modes:
        want = rule.modes[0]
        fixed = _try(lambda: os.chmod(rule.path, want)) if fix else False
        yield Finding(rule.path, f"mode {mode:04o}, want {want:04o}", fixed)


def _try(action: object) -> bool:
    try:
        action()  # type: ignore[operator]
    except OSError:
        return False
    return True
