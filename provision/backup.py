"""Site backups: one zstd-compressed tar archive per backup, under ``HOME/backups``.

Name: ``URI-YYYYmmdd.HHMMSS.tar.zst`` (UTC), ``URI-YYYYmmdd.HHMMSS_2.tar.zst`` and so on
when that name is taken (Aegir's). Mode 0600. Older backups, gzipped
(``URI-YYYYmmdd.HHMMSS.tar.gz``), are read as before everywhere (restore, clone, migrate,
retention, the restore checker); what an archive is comes from its first bytes. zstd
(level 3, on every core, through the ``zstandard`` binding of the reference library)
compresses several times faster than gzip at a like ratio. Inside::

    database.sql.000000 ... the database's dump, in parts of at most 8 MiB (PostgreSQL's
                            pg_dump, MariaDB's mariadb-dump: plain SQL): the dump
                            program's output goes straight into the archive, part by
                            part, never staged on disk (a tar member's size comes before
                            its data; a stream's is known only at its end), or
    database.sqlite.000000  ... the SQLite file, read under its shared lock, alike
    files/...               the site folder (ROOT/sites/URI), modes and times kept
    hostctl-backup.json     what it is: format, site, uri, site folder, platform, created,
                            db type, the dump's name and its number of parts (0: one
                            member of that very name, as older archives have it), why it
                            was made, and what of the folder was left out ("skipped") and
                            why

An archive is written under a temporary name and linked to its final one only when it is
complete, so a name in the folder is always a whole backup.

What a backup takes, entry by entry: folders, regular files (each whole: no hard links
between members) and symbolic links whose target, resolved, stays inside the site folder
(an absolute one is stored relative, so it points into the restored copy, wherever that
lands). Left out, with a warning, a ``backup_skipped`` list in the task's result and the
same list in the manifest: sockets and FIFOs (no data: their program makes them again),
device files, links that lead outside the site folder or round in a loop (the manifest
keeps each one's target, so it can be made again by hand), and entries that vanish while
the backup reads the folder. Before the archive gets its name, the restore checker reads
its member list: a backup never produces an archive that restore would refuse.

Restoring checks every member before it extracts anything (one code path on every
Python: tarfile's ``filter=`` is not used, it is missing before 3.11.4): names stay
relative, without ``.`` or ``..``, each under a folder of the archive (never under a link
or a file), no name twice; only folders, regular files, hard links to an earlier file
(copied) and symbolic links that resolve inside the site folder (resolved over the
archive's own tree, links through links included). Anything else is a refusal naming the
member and the reason, except what older versions of hostctl stored and can be left out
safely: an absolute link into the site's own folder is made relative, and a FIFO, a
device file, or a link that leads outside the folder is left out with a warning. Modes
lose set-id, sticky and group/other write bits, the owner keeps read and write; owners
are never taken from the archive. Only ``files/`` and the named dump are read.

Retention (``[provision] backup_keep_days``, ``backup_keep``) is applied by the backup
task to the site's own backups; the newest is always kept, and backups of sites that are
gone (the one delete left, for instance) are never touched.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import zstandard

from hostctl.contexts.store import Context, utcnow
from hostctl.errors import Conflict, InvalidInput, MalformedFile, NotFound, OperationFailed
from hostctl.files import fsync_dir
from hostctl.formats import check_format
from hostctl.provision import layout
from hostctl.provision.job import Job
from hostctl.provision.secrets import SiteRecord

FORMAT = 1
MANIFEST = "hostctl-backup.json"
SUFFIX = ".tar.zst"  # what a backup is written as
SUFFIXES = (".tar.zst", ".tar.gz")  # what is read: gzip is what older backups are
ZSTD_LEVEL = 3
DUMP_PART = 8 << 20  # bytes of a dump held in memory at a time: one part of it
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: the descriptor of the terminal a foreground run was started from (set in the task's
#: child by provision/runner.py), for the progress bar; -1: no terminal
TERMINAL = -1


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int

    def to_json(self) -> dict[str, object]:
        return {"file": str(self.path), "size": self.size}


def pattern(uri: str) -> re.Pattern[str]:
    return re.compile(re.escape(uri) + r"-(\d{8}\.\d{6})(?:_(\d+))?(?:"
                      + "|".join(re.escape(s) for s in SUFFIXES) + ")")


def of_site(job: Job, uri: str) -> list[Path]:
    """The site's backups, oldest first."""
    folder = layout.backups_dir(job.paths)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    rx = pattern(uri)
    found = []
    for name in names:
        m = rx.fullmatch(name)
        if m:
            found.append((m.group(1), int(m.group(2) or 1), folder / name))
    return [p for _, _, p in sorted(found)]


def create(job: Job, site: Context, record: SiteRecord, reason: str,
           db: Any = None, *, leave_out: frozenset[str] = frozenset()) -> Backup:
    """Archive the site's files and a dump of its database; return the file and size.

    ``db`` is the site's database service (None: the site has no database). What the
    archive leaves out of the folder is warned about and listed in the task's result
    (``backup_skipped``) and in the manifest; but not ``leave_out`` (paths relative to
    the site folder, and what is in those folders: what hostctl writes again wherever the
    backup is restored, such as a PHP site's settings file, which is its user's alone, or
    its SQLite database, which the archive holds as its dump)."""
    folder = job.paths.ensure_dir(layout.backups_dir(job.paths))
    site_path = Path(record.site_path)
    if not site_path.is_dir():
        raise OperationFailed(f"the site folder {site_path} is missing: nothing to back up")
    work = Path(tempfile.mkdtemp(prefix=".backup-", dir=folder))
    label = f"backup of {site.display_name}"
    try:
        doc: dict[str, object] = {
            "format": FORMAT, "site": site.display_name, "uri": record.uri,
            "installed": record.installed, "site_path": str(site_path),
            "platform": record.platform, "created": utcnow(), "reason": reason,
            "db_type": record.db.type if record.db else "none", "dump": "",
            "dump_parts": 0}
        tmp = work / f"archive{SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as raw:
            # a checksum of the content: damage is found when read, not loaded
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1,
                                                  write_checksum=True)
            # GNU headers (long names, large files, any bytes in a name) cost less per
            # member than PAX ones; both are read alike
            with compressor.stream_writer(raw, closefd=False) as packed, \
                    tarfile.open(fileobj=packed, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                if record.db is not None and db is not None:
                    doc["dump"] = db.dump_name
                    doc["dump_parts"] = _add_dump(tar, job, db, record.db, work, label)
                skipped = _add_tree(tar, site_path, label, leave_out)
                doc["skipped"] = [s.to_json() for s in skipped]
                data = json.dumps(doc, indent=2).encode() + b"\n"
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(data))
                try:
                    # the promise restore relies on, checked on what was written
                    plan(tar.getmembers(), doc)
                except MalformedFile as exc:
                    raise OperationFailed(f"the backup of {site.display_name} would not "
                                          f"restore, so none was made: {exc.message}") from None
            raw.flush()
            os.fsync(raw.fileno())
        final = _link_free_name(tmp, folder, record.uri)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fsync_dir(folder)
    size = final.stat().st_size
    if skipped:
        job.result["backup_skipped"] = [s.to_json() for s in skipped]
        listed = "; ".join(str(s) for s in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        job.warn(f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of "
                 f"{site_path} not in the backup (listed in its manifest): {listed}{more}")
    job.say(f"backup {final} ({_human(size)}) of {site.display_name} made for {reason}")
    return Backup(final, size)


def _add_dump(tar: tarfile.TarFile, job: Job, db: Any, creds: Any, work: Path,
              label: str) -> int:
    """The database's dump into the archive, as it comes, in parts of at most DUMP_PART
    bytes (how many is returned); a service without a stream, as one member (0)."""
    progress = Progress(f"{label}: database", 0)
    stream = getattr(db, "dump_stream", None)
    if stream is None:
        path = work / db.dump_name
        db.dump(job, creds, path)
        tar.add(path, arcname=db.dump_name)
        progress.advance(path.stat().st_size)
        progress.done()
        return 0
    parts = 0
    with stream(job, creds) as out:
        while True:
            chunk = _read_full(out, DUMP_PART)
            if not chunk and parts:
                break
            info = tarfile.TarInfo(f"{db.dump_name}.{parts:06d}")
            info.size, info.mtime, info.mode = len(chunk), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(chunk))
            parts += 1
            progress.advance(len(chunk))
            if len(chunk) < DUMP_PART:
                break
    progress.done()
    return parts


def _read_full(stream: IO[bytes], size: int) -> bytes:
    """``size`` bytes, fewer only at the end of ``stream``."""
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _walk_relative(top: str) -> Iterator[str]:
    """Every entry under ``top`` as a path relative to it, a folder before what it holds,
    names sorted within each folder, links never followed."""
    for folder, dirs, files in os.walk(top, followlinks=False):
        dirs.sort()
        rel = os.path.relpath(folder, top)
        base = "" if rel == "." else f"{rel}/"
        for name in dirs:
            yield base + name
        for name in sorted(files):
            yield base + name


def walk(top: Path) -> list[Path]:
    """Everything under ``top``, sorted, without following symbolic links."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(top, followlinks=False):
        base = Path(folder)
        found += [base / d for d in dirs] + [base / f for f in files]
    return sorted(found)


@dataclass(frozen=True)
class Skipped:
    """An entry of the site folder that a backup or a restore leaves out, and why."""

    path: str  # relative to the site folder
    kind: str
    why: str
    target: str = ""  # a symbolic link's target, as it was

    def to_json(self) -> dict[str, str]:
        doc = {"path": self.path, "type": self.kind, "why": self.why}
        if self.target:
            doc["target"] = self.target
        return doc

    def __str__(self) -> str:
        arrow = f" -> {self.target}" if self.target else ""
        return f"{self.path}{arrow} ({self.kind}: {self.why})"


_SPECIAL = {stat.S_IFIFO: ("FIFO", "a named pipe holds no data"),
            stat.S_IFSOCK: ("socket", "the program that made it makes it again"),
            stat.S_IFCHR: ("device", "a device file is not site data"),
            stat.S_IFBLK: ("device", "a device file is not site data")}


def _add_tree(tar: tarfile.TarFile, site_path: Path, label: str,
              leave_out: frozenset[str] = frozenset()) -> list[Skipped]:
    """Add the site folder under ``files/`` (but ``leave_out``); return what was left
    out."""
    entries: list[tuple[str, os.stat_result]] = []
    links: dict[str, str] = {}
    written: dict[str, str] = {}  # each link's target as the folder has it
    skipped: list[Skipped] = []
    prefixes = _prefixes(site_path)
    top_dir = str(site_path)
    # plain strings, not Path objects: a site may hold tens of thousands of entries
    for rel in _walk_relative(top_dir):
        if rel in leave_out or any(rel.startswith(f"{out}/") for out in leave_out):
            continue
        path = f"{top_dir}/{rel}"
        try:
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt in _SPECIAL:
                skipped.append(Skipped(rel, *_SPECIAL[fmt]))
                continue
            if fmt == stat.S_IFLNK:
                target = os.readlink(path)
                stored = _relative_link(rel, target, prefixes)
                if stored is None:
                    skipped.append(Skipped(rel, "symlink", "it leads outside the site "
                                           "folder", target))
                    continue
                links[rel], written[rel] = stored, target
        except FileNotFoundError:
            skipped.append(Skipped(rel, "entry", "it vanished during the backup"))
            continue
        entries.append((rel, st))
    # a link whose target, resolved over what is kept, leaves the folder stays out
    resolver = Resolver(links)
    for rel in links:
        why = resolver.outside(rel)
        if why:
            skipped.append(Skipped(rel, "symlink", why, written[rel]))
    kept_links = {rel: t for rel, t in links.items() if not resolver.outside(rel)}
    sizes = {rel: st.st_size for rel, st in entries if stat.S_ISREG(st.st_mode)}
    progress = Progress(label, sum(sizes.values()) or 1)
    top = site_path.stat()  # the folder itself may be reached through a link
    root = tarfile.TarInfo("files")
    root.type, root.mode, root.mtime = tarfile.DIRTYPE, stat.S_IMODE(top.st_mode), \
        int(top.st_mtime)
    tar.addfile(root)
    for rel, st in entries:
        if stat.S_ISLNK(st.st_mode) and rel not in kept_links:
            continue
        info = tarfile.TarInfo("files/" + rel)
        info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, kept_links[rel]
            tar.addfile(info)
        else:
            problem = _add_file(tar, info, f"{top_dir}/{rel}")
            if problem:
                skipped.append(Skipped(rel, "file", problem))
            progress.advance(sizes.get(rel, 0))
    progress.done()
    skipped.sort(key=lambda s: s.path)
    return skipped


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str) -> str:
    """Add one regular file, read through a descriptor that is checked to be one (a live
    site may change under the backup); an empty string, or why it was left out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "it vanished during the backup"
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # it became a link or a socket
            return "it changed type during the backup"
        raise OperationFailed(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "it changed type during the backup"
        info.type, info.size = tarfile.REGTYPE, st.st_size
        info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        tar.addfile(info, _Exactly(fh, st.st_size))
    return ""


class _Exactly:
    """``size`` bytes of a file that may shrink or grow while it is read: what is missing
    is padded with zeros, what grew is cut, so the member stays well formed."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) or b""
        data += bytes(n - len(data))
        self.left -= n
        return data


def _prefixes(site_path: Path) -> list[str]:
    """The spellings of the site folder an absolute link into it may use."""
    found = [os.path.normpath(str(site_path)), os.path.realpath(site_path)]
    return list(dict.fromkeys(p.rstrip("/") for p in found if p != "/"))


def _relative_link(rel: str, target: str, prefixes: Iterable[str]) -> str | None:
    """A link's target as the archive stores it: a relative one as it is; an absolute
    one under one of ``prefixes`` (the site folder; ``*/END``: any folder ending in
    ``/END``) rewritten relative to the link's folder; None for an absolute one
    elsewhere."""
    if not target.startswith("/"):
        return target
    for prefix in prefixes:
        if prefix.startswith("*"):  # any folder that ends so
            at = (target + "/").find(prefix[1:] + "/")
            start = at + len(prefix) - 1 if at >= 0 else -1
        else:
            start = len(prefix) if target == prefix or target.startswith(prefix + "/") \
                else -1
        if start >= 0:
            rest = target[start:].lstrip("/")
            return ("../" * rel.count("/") + rest).rstrip("/") or "."
    return None


#: links followed to resolve one path at most (Linux's limit: more is ELOOP)
MAX_LINKS = 40
_TOO_DEEP = "it leads through more than 40 links"


class Resolver:
    """Where symbolic links lead, resolved over one tree (the site folder as an archive
    holds it): ``links`` maps each link's path, relative to the folder, to its target.
    Resolution follows os.path.realpath's rules: a component that is a link is replaced
    by where the link leads, ``..`` goes up from where that is, a missing component is
    taken as it is. A link is refused when it leads out of the folder, into a loop, or
    through more than MAX_LINKS links: each a property of the link alone, whatever order
    links are asked about in (backup and restore ask in different ones)."""

    def __init__(self, links: Mapping[str, str]) -> None:
        self.links = links
        #: each link resolved: where it leads and how many links that follows, or why not
        self._done: dict[str, tuple[list[str], int] | str] = {}
        self._busy: list[str] = []

    def outside(self, rel: str) -> str:
        """Why the link at ``rel`` does not stay in the folder; empty if it does."""
        found = self._link(rel)
        return found if isinstance(found, str) else ""

    def _link(self, rel: str) -> tuple[list[str], int] | str | None:
        """Where ``rel`` leads; None when the nesting ran past MAX_LINKS here (not
        remembered: only the outermost link is known to be too deep)."""
        if rel in self._done:
            return self._done[rel]
        if rel in self._busy:
            return "it is part of a loop of links"
        if len(self._busy) > MAX_LINKS:
            return None
        self._busy.append(rel)
        try:
            found = self._walk(rel.split("/")[:-1], self.links[rel])
        finally:
            self._busy.pop()
        if found is None:
            if self._busy:
                return None
            found = _TOO_DEEP
        self._done[rel] = found
        return found

    def _walk(self, parts: list[str], target: str) -> tuple[list[str], int] | str | None:
        if target.startswith("/"):
            return "it is absolute and leads outside the site folder"
        parts = list(parts)
        followed = 1
        for comp in target.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    return "it leads outside the site folder"
                parts.pop()
                continue
            parts.append(comp)
            key = "/".join(parts)
            if key in self.links:
                found = self._link(key)
                if found is None or isinstance(found, str):
                    return found
                parts, more = list(found[0]), found[1]
                followed += more
                if followed > MAX_LINKS:
                    return _TOO_DEEP
        return parts, followed


def _link_free_name(tmp: Path, folder: Path, uri: str) -> Path:
    """Give the finished archive its name: the first free one (a hard link never
    replaces an existing file, so two backups in one second both keep theirs)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
    for n in range(1, 1000):
        stem = f"{uri}-{stamp}{'' if n == 1 else f'_{n}'}"
        name = f"{stem}{SUFFIX}"
        if any((folder / f"{stem}{other}").exists() for other in SUFFIXES):
            continue  # one name, whatever its compression, is one backup
        try:
            os.link(tmp, folder / name)
            return folder / name
        except FileExistsError:
            continue
    raise OperationFailed(f"no free backup name for {uri} at {stamp}")


class Progress:
    """A progress bar on the terminal a foreground task was started from; nothing (and
    nothing in the task's log) otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done_bytes = label, total, 0
        self.fd = TERMINAL
        self.last = 0.0

    def advance(self, size: int) -> None:
        self.done_bytes += size
        now = time.monotonic()
        if self.fd >= 0 and now - self.last >= 0.1:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        if not self.total:  # a stream: how much so far
            try:
                os.write(self.fd, f"\r{self.label}: {_human(self.done_bytes)}".encode())
            except OSError:
                self.fd = -1
            return
        share = min(1.0, self.done_bytes / self.total)
        bar = "#" * int(share * 30)
        try:
            os.write(self.fd, f"\r{self.label}: [{bar:<30}] {share:4.0%}".encode())
        except OSError:
            self.fd = -1

    def done(self) -> None:
        if self.fd >= 0:
            self.done_bytes = self.total or self.done_bytes
            self._draw()
            try:
                os.write(self.fd, b"\n")
            except OSError:
                pass


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# -- reading an archive -----------------------------------------------------------------


class Archive:
    """A backup archive, opened for a restore, clone or migrate."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._verified = False
        try:
            self.tar = open_tar(path)
            member = self.tar.getmember(MANIFEST)
            fh = self.tar.extractfile(member)
            if fh is None:
                raise KeyError(MANIFEST)
            doc = json.loads(fh.read())
        except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
            raise MalformedFile(f"{path} is not a hostctl backup: {exc}") from None
        if not isinstance(doc, dict):
            raise MalformedFile(f"{path}: unsupported backup format {doc!r:.60}")
        problem = check_format(doc.get("format"), FORMAT, f"{path} (its {MANIFEST})")
        if problem:
            raise MalformedFile(f"{path}: {problem.replace('format', 'backup format', 1)}")
        self.doc: dict[str, Any] = doc

    @property
    def site(self) -> str:
        return str(self.doc.get("site", ""))

    @property
    def db_type(self) -> str:
        return str(self.doc.get("db_type", "none"))

    def check(self) -> Plan:
        """What a restore would do with this archive, checked before anything is
        extracted: raises MalformedFile, naming the member and why, if it is refused."""
        self._verify()
        return plan(self.tar.getmembers(), self.doc)

    def _verify(self) -> None:
        """A zstd archive read to its end once, before anything of it is used: its
        content checksum, at the end, tells damage anywhere (a restore never loads a
        damaged dump, nor extracts damaged files)."""
        if not isinstance(self.tar, _ZstdTar) or self.tar.raw is None or self._verified:
            return
        try:
            self.tar.raw.verify()
        except (OSError, tarfile.TarError) as exc:
            raise MalformedFile(f"{self.path.name} is damaged: {exc}") from None
        self._verified = True

    def extract_files(self, dest: Path,
                      warn: Callable[[str], None] | None = None) -> list[Skipped]:
        """The site folder, into ``dest`` (which must not exist yet); return what of an
        older archive was left out (``warn`` is told, else the task's log)."""
        if dest.exists():
            raise Conflict(f"{dest} exists already")
        checked = self.check()
        if checked.skipped:
            listed = "; ".join(str(s) for s in checked.skipped[:10])
            more = (f"; and {len(checked.skipped) - 10} more"
                    if len(checked.skipped) > 10 else "")
            (warn or _log_warning)(f"{len(checked.skipped)} entr"
                                   f"{'y' if len(checked.skipped) == 1 else 'ies'} of "
                                   f"{self.path.name} left out: {listed}{more}")
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            self._extract(checked, work / "files")
            os.rename(work / "files", dest)
        except (OSError, tarfile.TarError) as exc:
            raise OperationFailed(f"cannot extract {self.path.name}: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return list(checked.skipped)

    def _extract(self, checked: Plan, top: Path) -> None:
        # folders first (private until the end), then files, then links: no entry is
        # ever written through a link, and every parent is a folder made here
        os.mkdir(top, 0o700)
        for member in checked.dirs:
            os.mkdir(top / member.name[len("files/"):], 0o700)
        for member, source in checked.files:
            path = top / member.name[len("files/"):]
            fh = self.tar.extractfile(source)
            if fh is None:
                raise tarfile.ExtractError(f"{member.name} has no data")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
                os.fchmod(fd, _file_mode(source.mode))
            os.utime(path, (member.mtime, member.mtime))
        for member, target in checked.links:
            os.symlink(target, top / member.name[len("files/"):])
        for member in reversed([checked.root, *checked.dirs]):
            path = top / member.name[len("files/"):] if member.name != "files" else top
            os.chmod(path, (member.mode & 0o755) | 0o700)
            os.utime(path, (member.mtime, member.mtime))

    def extract_dump(self, folder: Path) -> Path | None:
        """The database dump, into ``folder`` (its parts joined); None if the backup has
        none."""
        name = str(self.doc.get("dump") or "")
        if not name:
            return None
        if name not in ("database.sql", "database.sqlite"):
            raise MalformedFile(f"{self.path}: unexpected dump name {name!r}")
        parts = self.doc.get("dump_parts", 0)
        if not isinstance(parts, int) or isinstance(parts, bool) or not 0 <= parts < 10**6:
            raise MalformedFile(f"{self.path}: unexpected dump_parts {parts!r}")
        members = [name] if parts == 0 else [f"{name}.{i:06d}" for i in range(parts)]
        self._verify()
        try:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                for part in members:
                    member = self.tar.getmember(part)
                    fh = self.tar.extractfile(member) if member.isreg() else None
                    if fh is None:
                        raise MalformedFile(f"{self.path}: {part} is not a regular file")
                    shutil.copyfileobj(fh, out, 1 << 20)
        except (KeyError, OSError, tarfile.TarError) as exc:
            raise MalformedFile(f"{self.path}: cannot extract {name}: {exc}") from None
        return folder / name

    def close(self) -> None:
        self.tar.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tar(path: Path) -> tarfile.TarFile:
    """A backup archive opened for reading: zstd or (an older backup) gzip, as its first
    bytes say. Closing it closes the file."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != _ZSTD_MAGIC:
        return tarfile.open(path, "r:gz")
    raw = _ZstdReader(path)
    try:
        tar = _ZstdTar.open(fileobj=raw, mode="r:")
    except BaseException:
        raw.close()
        raise
    assert isinstance(tar, _ZstdTar)
    tar.raw = raw
    return tar


class _ZstdTar(tarfile.TarFile):
    """A tar read from a zstd stream: its reader is closed with it."""

    raw: _ZstdReader | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.raw is not None:
                self.raw.close()


class _ZstdReader(io.RawIOBase):
    """A zstd file read as the tar inside it, seekable as tarfile needs: forward by
    reading on, backward by reading again from the start (as Python's gzip does)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._open()

    def _open(self) -> None:
        self.fh = open(self.path, "rb")  # noqa: SIM115  (closed in close())
        self.reader = zstandard.ZstdDecompressor().stream_reader(self.fh,
                                                                 read_across_frames=True)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            if size is None or size < 0:
                data = self.reader.readall()
            else:
                data = _read_full(self.reader, size)
        except zstandard.ZstdError as exc:
            raise tarfile.ReadError(f"not a sound zstd stream ({exc})") from None
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def tell(self) -> int:
        return self.pos

    def verify(self) -> None:
        """Read the whole stream (its checksum at the end included), then start again."""
        while self.read(1 << 20):
            pass
        self.seek(0)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a zstd stream is not seekable from its end")
        if offset < self.pos:
            self.reader.close()  # type: ignore[no-untyped-call]  # zstandard's stub
            self.fh.close()
            self._open()
        while self.pos < offset:
            if not self.read(min(1 << 20, offset - self.pos)):
                break
        return self.pos

    def close(self) -> None:
        if not self.closed:
            self.reader.close()  # type: ignore[no-untyped-call]  # zstandard's stub
            self.fh.close()
        super().close()


@dataclass(frozen=True)
class Plan:
    """A checked archive's site folder: what a restore makes, in order."""

    root: tarfile.TarInfo
    dirs: list[tarfile.TarInfo] = field(default_factory=list)
    #: each file member with the member that holds its data (itself, or the file an
    #: older archive's hard link names)
    files: list[tuple[tarfile.TarInfo, tarfile.TarInfo]] = field(default_factory=list)
    links: list[tuple[tarfile.TarInfo, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def plan(members: list[tarfile.TarInfo], doc: Mapping[str, object]) -> Plan:
    """Check every member of the ``files/`` tree; raise MalformedFile naming the first
    refused one, or return what to extract and what an older archive leaves out."""
    root: tarfile.TarInfo | None = None
    kinds: dict[str, str] = {}
    dirs: list[tarfile.TarInfo] = []
    files: list[tuple[tarfile.TarInfo, tarfile.TarInfo]] = []
    symlinks: list[tarfile.TarInfo] = []
    skipped: list[Skipped] = []
    regular: dict[str, tarfile.TarInfo] = {}
    for member in members:
        name = member.name
        if name != "files" and not name.startswith("files/"):
            continue
        if name in kinds or name in regular:
            raise MalformedFile(f"the archive holds {name!r} twice")
        if name == "files":
            if not member.isdir():
                raise MalformedFile("the archive's files/ is not a folder")
            root = member
            kinds[name] = "dir"
            continue
        rel = name[len("files/"):]
        if any(c in ("", ".", "..") for c in rel.split("/")) or "\x00" in name:
            raise MalformedFile(f"refused member {name!r}: not a plain relative name")
        if member.isdir():
            kinds[name] = "dir"
            dirs.append(member)
        elif member.isreg():
            kinds[name] = "file"
            regular[name] = member
            files.append((member, member))
        elif member.islnk():
            source = regular.get(member.linkname)
            if source is None:
                raise MalformedFile(f"refused member {name!r}: a hard link to "
                                    f"{member.linkname!r}, which is no earlier file of "
                                    "the site folder")
            kinds[name] = "file"
            files.append((member, source))
        elif member.issym():
            kinds[name] = "link"
            symlinks.append(member)
        elif member.isfifo() or member.ischr() or member.isblk():
            kind = "FIFO" if member.isfifo() else "device"
            skipped.append(Skipped(rel, kind, "restore makes no special files"))
        else:
            raise MalformedFile(f"refused member {name!r}: unsupported type "
                                f"{member.type!r}")
    if root is None:
        raise MalformedFile("the archive holds no site folder (files/)")
    for name in kinds:
        parent = name.rpartition("/")[0]
        if name != "files" and kinds.get(parent) != "dir":
            raise MalformedFile(f"refused member {name!r}: {parent!r} is not a folder in "
                                "the archive")
    links: dict[str, str] = {}
    prefixes = _legacy_prefixes(doc)
    for member in symlinks:
        rel = member.name[len("files/"):]
        target = _relative_link(rel, member.linkname, prefixes)
        if target is not None:
            links[rel] = target
    resolver = Resolver(links)
    kept: list[tuple[tarfile.TarInfo, str]] = []
    for member in symlinks:
        rel = member.name[len("files/"):]
        why = resolver.outside(rel) if rel in links else \
            "it is absolute and leads outside the site folder"
        if why:
            skipped.append(Skipped(rel, "symlink", why, member.linkname))
        else:
            kept.append((member, links[rel]))
    dirs.sort(key=lambda m: m.name.count("/"))
    skipped.sort(key=lambda s: s.path)
    return Plan(root, dirs, files, kept, skipped)


def _legacy_prefixes(doc: Mapping[str, object]) -> list[str]:
    """Where an absolute link of an older archive may point to mean the site's own
    folder: the folder the manifest names, else any ``/.../sites/URI`` (the layout:
    older manifests do not name the folder; what matches is rewritten to point into the
    restored folder, so a wrong guess stays inside it)."""
    site_path = doc.get("site_path")
    if isinstance(site_path, str) and site_path.startswith("/"):
        return [os.path.normpath(site_path).rstrip("/")]
    uri = str(doc.get("uri") or "")
    if not uri or "/" in uri or uri in (".", ".."):
        return []
    return [f"*/sites/{uri}"]


def _file_mode(mode: int) -> int:
    """A restored file's mode: no set-id or sticky bit, no group or other write; the
    owner reads and writes; execute only where the owner had it."""
    mode = (mode & 0o755) | 0o600
    return mode if mode & 0o100 else mode & ~0o111


def _log_warning(message: str) -> None:
    # a task's stdout is its log; "warning: " is how RunContext.warn marks one there
    print(f"warning: {message}", file=sys.stdout, flush=True)


def verify(path: Path) -> Plan:
    """Open ``path`` as a backup and check it as a restore would (MalformedFile if it
    would be refused)."""
    with Archive(path) as archive:
        return archive.check()


def resolve(job: Job, uri: str, wanted: str) -> Path:
    """The backup a restore names: a file name or a path in HOME/backups; the newest of
    the site's backups when ``wanted`` is empty. Nothing outside that folder."""
    folder = layout.backups_dir(job.paths).resolve()
    if not wanted:
        mine = of_site(job, uri)
        if not mine:
            raise NotFound(f"there is no backup of {uri} in {folder}")
        return mine[-1]
    if "\x00" in wanted:
        raise InvalidInput("--file contains a NUL byte")
    path = Path(wanted) if os.path.isabs(wanted) else folder / wanted
    path = path.resolve()
    if path.parent != folder:
        raise InvalidInput(f"--file must be a backup in {folder}")
    if not path.is_file():
        raise NotFound(f"no backup {path}")
    return path


def apply_retention(job: Job, record: SiteRecord) -> list[str]:
    """Remove the site's backups that the retention settings let go; the newest stays.
    Only backups of this very installation count (the site and its install time, read
    from each archive): the last backup of a site deleted before, even under the same
    uri, or an archive that cannot be read, is never touched."""
    settings = job.config.provision
    mine = [p for p in of_site(job, record.uri) if _same_installation(p, record)]
    if len(mine) <= 1:
        return []
    keep = mine[-1:]
    rest = mine[:-1]
    doomed: list[Path] = []
    if settings.backup_keep_days > 0:
        cutoff = time.time() - settings.backup_keep_days * 86400
        doomed += [p for p in rest if p.stat().st_mtime < cutoff]
    if settings.backup_keep > 0:
        survivors = [p for p in rest if p not in doomed]
        excess = len(survivors) + len(keep) - settings.backup_keep
        if excess > 0:
            doomed += survivors[:excess]
    removed = []
    for path in doomed:
        try:
            path.unlink()
            removed.append(str(path))
            job.say(f"old backup removed: {path}")
        except OSError as exc:
            job.warn(f"cannot remove the old backup {path}: {exc.strerror}")
    return removed


def terminal_for_progress() -> int:
    """In a freshly forked task child, before its stdout and stderr become the log pipe:
    a descriptor of the terminal it was started from, or -1."""
    try:
        if os.isatty(2):
            return os.dup(2)
    except OSError:
        pass
    return -1


def _same_installation(path: Path, record: SiteRecord) -> bool:
    try:
        archive = Archive(path)
    except MalformedFile:
        return False
    try:
        return (archive.doc.get("site") == record.site
                and archive.doc.get("installed") == record.installed)
    finally:
        archive.close()
