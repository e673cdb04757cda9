"""``hostctl doctor``: check (and with ``fix`` repair) the home's owners and modes.

What is checked, for the home's owner:

- the home, contexts/, logs/, the spool and each of its folders: mode 0700, owned by the
  home's owner; with a front-end drop box (see queues/dropbox.py) the home and the spool
  are 0710, incoming/ 3730 and outbox/ 2710, all in the front-end group;
- config.toml, every context file, every log and every spool file: no access for group or
  others (0600), owned by the home's owner; a dropped task's shared log and its receipt may
  be 0640 in the front-end group, and a drop not yet admitted belongs to its submitter;
- the spool is not on a network file system.

``fix`` changes a path itself, never through a symbolic link (as root that would change
whatever the link points to), and calls a problem fixed only when a fresh ``lstat`` shows
it gone; otherwise the finding says why (``cannot_fix``: owned by root, so only root can
change it; not a member of the group; a link; ...).
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hostctl.errors import ForeignHome, NotFound
from hostctl.files import NETWORK_FILESYSTEMS, filesystem_type
from hostctl.paths import Paths
from hostctl.queues import dropbox
from hostctl.queues.layout import (
    FOLDERS,
    HOME_MODE,
    INCOMING_MODE,
    OUTBOX_MODE,
    SHARED_FILE_MODE,
    SPOOL_MODE,
)

PRIVATE_DIR = 0o700


@dataclass(frozen=True)
class Finding:
    path: Path
    problem: str
    fixed: bool = False
    cannot_fix: str = ""  # with --fix: why this problem is still there

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"path": str(self.path), "problem": self.problem,
                                  "fixed": self.fixed}
        if self.cannot_fix:
            doc["cannot_fix"] = self.cannot_fix
        return doc


@dataclass(frozen=True)
class _Rule:
    path: Path
    modes: tuple[int, ...]  # acceptable modes; the first is what --fix sets
    gid: int | None = None  # required group, if any
    owner_free: bool = False  # may belong to someone else (a front end's drop)
    kept: bool = False  # set aside for good (rejected/): a front end's file, any mode


def check(paths: Paths, fix: bool = False, allow_network: bool = False) -> list[Finding]:
    """Every problem found (and, with ``fix``, whether it was repaired)."""
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
    findings += _stuck_in_incoming(paths.spool / "incoming", fix)
    fstype = filesystem_type(paths.spool if paths.spool.exists() else home)
    if fstype in NETWORK_FILESYSTEMS and not allow_network:
        findings.append(Finding(paths.spool, f"on a {fstype} file system: file locks are not "
                                             "reliable there", False,
                                "doctor does not change a file system; move the home, or "
                                "allow it in config.toml" if fix else ""))
    return findings


def _rules(paths: Paths, fe: int | None) -> Iterator[_Rule]:
    # with a drop box the front end must pass through the home and the spool: 0700 would
    # lock it out, so only the shared mode is right there
    yield _Rule(paths.home, (HOME_MODE,) if fe is not None else (PRIVATE_DIR,), fe)
    if paths.config_file.exists():
        yield _Rule(paths.config_file, (0o600, 0o400))
    yield from _tree(paths.contexts, files=(0o600, 0o400))
    yield from _tree(paths.logs, files=(0o600,), shared_gid=fe)
    yield from _tree(paths.home / "crontab", files=(0o600,))
    if not paths.spool.exists():
        return
    yield _Rule(paths.spool, (SPOOL_MODE,) if fe is not None else (PRIVATE_DIR,), fe)
    for name in FOLDERS:
        folder = paths.spool / name
        if name == "incoming" and fe is not None:
            yield _Rule(folder, (INCOMING_MODE,), fe)
            yield from _files(folder, (0o600, SHARED_FILE_MODE), owner_free=True)
        elif name == "outbox" and fe is not None:
            yield _Rule(folder, (OUTBOX_MODE,), fe)
            yield from _files(folder, (SHARED_FILE_MODE,), gid=fe)
        else:
            yield from _tree(folder, files=(0o600,),
                             owner_free=name in ("incoming", "rejected"),
                             drop_modes=name in ("incoming", "rejected"),
                             kept=name == "rejected")
    yield from _tree(paths.spool / "workers", files=(0o600,))
    for entry in _listdir(paths.spool):
        if entry.is_file() and not entry.is_symlink():
            yield _Rule(entry, (0o600,))


def _tree(folder: Path, files: tuple[int, ...], shared_gid: int | None = None,
          owner_free: bool = False, drop_modes: bool = False,
          kept: bool = False) -> Iterator[_Rule]:
    if not folder.exists():
        return
    yield _Rule(folder, (PRIVATE_DIR,))

    for entry in _listdir(folder):
        if entry.is_symlink() or not entry.is_file():
            continue
        if shared_gid is not None:
            st = entry.stat()
            if st.st_nlink > 1 and st.st_gid == shared_gid:  # a dropped task's shared log
                yield _Rule(entry, (SHARED_FILE_MODE,), shared_gid)
                continue
        modes = (*files, SHARED_FILE_MODE) if drop_modes else files
        yield _Rule(entry, modes, owner_free=owner_free, kept=kept)


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
    wrong = _wrongs(rule, st, owner)
    if not wrong:
        return
    if not fix:
        for _, problem in wrong:
            yield Finding(rule.path, problem)
        return
    why = _repair(rule, st, owner, [key for key, _ in wrong])
    # fixed only when a fresh look says so: a change that did nothing (a chmod through a
    # link, a file system that ignores modes, a file replaced meanwhile) is no fix
    try:
        still = dict(_wrongs(rule, os.lstat(rule.path), owner))
    except FileNotFoundError:  # gone (a drop admitted meanwhile): nothing wrong is left
        still = {}
    for key, problem in wrong:
        if key in still:
            yield Finding(rule.path, problem, False,
                          why.get(key) or f"still {still[key]} after the change")
        else:
            yield Finding(rule.path, problem, True)


def _wrongs(rule: _Rule, st: os.stat_result, owner: int) -> list[tuple[str, str]]:
    """(what, problem) for each way ``st`` breaks ``rule``: owner, group, mode."""
    out = []
    if not rule.owner_free and st.st_uid != owner:
        out.append(("owner", f"owned by uid {st.st_uid}, not by the home's owner "
                             f"(uid {owner})"))
    if rule.gid is not None and st.st_gid != rule.gid:
        out.append(("group", f"group {st.st_gid}, not the front-end group {rule.gid}"))
    mode = stat.S_IMODE(st.st_mode)
    if rule.kept and st.st_uid != owner:
        return out  # a front end's rejected drop: never read again, its mode is its own
    if mode not in rule.modes:
        out.append(("mode", f"mode {mode:04o}, want {rule.modes[0]:04o}"))
    return out


def _stuck_in_incoming(incoming: Path, fix: bool) -> list[Finding]:
    """Entries of incoming/ that admission can neither admit nor move to rejected/: a
    drop is a file, so any folder there is one (a front end made it, and the back end
    may not write into it). With ``fix``, root removes it (never following a link)."""
    found = []
    for entry in _listdir(incoming):
        try:
            st = os.lstat(entry)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        problem = (f"a folder (owned by {_who(st.st_uid)}) that admission can neither admit "
                   "nor move away; it holds up nothing else, but only its owner or root "
                   "can remove it")
        if not fix:
            found.append(Finding(entry, problem))
            continue
        if os.geteuid() != 0:
            found.append(Finding(entry, problem, False,
                                 "run `hostctl doctor --fix` as root, or its owner removes it"))
            continue
        shutil.rmtree(entry, ignore_errors=True)  # never follows a link inside
        fixed = not os.path.lexists(entry)
        found.append(Finding(entry, problem, fixed, "" if fixed else "it could not be removed"))
    return found


def _who(uid: int) -> str:
    if uid == 0:
        return "root"
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _repair(rule: _Rule, st: os.stat_result, owner: int, keys: list[str]) -> dict[str, str]:
    """Try to repair each of ``keys``; return why each one that failed could not be."""
    if stat.S_ISLNK(st.st_mode):
        # never through a link: as root, a chmod or chown that follows one would change
        # whatever it points to, anywhere
        return {key: "a symbolic link, which doctor does not follow; replace it with the "
                     "file or folder itself" for key in keys}
    euid = os.geteuid()
    as_root = "run `hostctl doctor --fix` as root"
    why: dict[str, str] = {}
    if "owner" in keys:
        if euid != 0:
            why["owner"] = f"only root can give it back to uid {owner}; {as_root}"
        else:
            why.update(_attempt("owner", lambda: os.lchown(rule.path, owner, -1)))
    if "group" in keys and rule.gid is not None:
        gid = rule.gid
        why.update(_attempt("group", lambda: os.lchown(rule.path, -1, gid)))
        if "group" in why and euid != 0:
            why["group"] = (f"uid {euid} may not give it to group {gid} (not a member, or "
                            f"not its owner); {as_root}")
    if "mode" in keys:
        why.update(_attempt("mode", lambda: _chmod_here(rule.path, rule.modes[0])))
        if "mode" in why and euid != 0:
            try:
                uid = os.lstat(rule.path).st_uid
            except OSError:
                uid = euid
            if uid != euid:
                why["mode"] = f"owned by {_who(uid)}; {as_root}"
    return why


def _attempt(key: str, action: Callable[[], None]) -> dict[str, str]:
    try:
        action()
    except OSError as exc:
        return {key: exc.strerror or str(exc)}
    return {}


def _chmod_here(path: Path, mode: int) -> None:
    """chmod ``path`` itself, never what a link put there meanwhile points to."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "a symbolic link, which doctor does not follow")
        # an O_PATH descriptor cannot be fchmod-ed; its /proc name reaches that inode
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        except FileNotFoundError:  # no /proc: the name, just seen not to be a link
            os.chmod(path, mode)
    finally:
        os.close(fd)
