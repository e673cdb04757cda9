"""Site backups: one gzipped tar archive per backup, under ``HOME/backups``.

Name: ``URI-YYYYmmdd.HHMMSS.tar.gz`` (UTC), ``URI-YYYYmmdd.HHMMSS_2.tar.gz`` and so on when
that name is taken (Aegir's). Mode 0600. Inside::

    hostctl-backup.json     what it is: format, site, uri, platform, created, db type,
                            the dump's name, why it was made
    database.sql            pg_dump's plain SQL (PostgreSQL), or
    database.sqlite         a copy made with SQLite's backup API
    files/...               the site folder (ROOT/sites/URI), modes and times kept

An archive is written under a temporary name and linked to its final one only when it is
complete, so a name in the folder is always a whole backup. Restoring reads members
through tarfile's ``data`` filter (no absolute paths, nothing outside the target, no
devices) and only from ``files/`` and the dump.

Retention (``[provision] backup_keep_days``, ``backup_keep``) is applied by the backup
task to the site's own backups; the newest is always kept, and backups of sites that are
gone (the one delete left, for instance) are never touched.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostctl.contexts.store import Context, utcnow
from hostctl.errors import Conflict, InvalidInput, MalformedFile, NotFound, OperationFailed
from hostctl.files import fsync_dir
from hostctl.provision import layout
from hostctl.provision.job import Job
from hostctl.provision.secrets import SiteRecord

FORMAT = 1
MANIFEST = "hostctl-backup.json"
SUFFIX = ".tar.gz"
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
    return re.compile(re.escape(uri) + r"-(\d{8}\.\d{6})(?:_(\d+))?" + re.escape(SUFFIX))


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
           db: Any = None) -> Backup:
    """Archive the site's files and a dump of its database; return the file and size.

    ``db`` is the site's database service (None: the site has no database)."""
    folder = job.paths.ensure_dir(layout.backups_dir(job.paths))
    site_path = Path(record.site_path)
    if not site_path.is_dir():
        raise OperationFailed(f"the site folder {site_path} is missing: nothing to back up")
    work = Path(tempfile.mkdtemp(prefix=".backup-", dir=folder))
    try:
        dump_name = ""
        if record.db is not None and db is not None:
            dump_name = db.dump_name
            db.dump(job, record.db, work / dump_name)
        doc = {"format": FORMAT, "site": site.display_name, "uri": record.uri,
               "installed": record.installed,
               "platform": record.platform, "created": utcnow(), "reason": reason,
               "db_type": record.db.type if record.db else "none", "dump": dump_name}
        tmp = work / "archive.tar.gz"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                data = json.dumps(doc, indent=2).encode() + b"\n"
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(data))
                if dump_name:
                    tar.add(work / dump_name, arcname=dump_name)
                _add_tree(tar, site_path, f"backup of {site.display_name}")
            raw.flush()
            os.fsync(raw.fileno())
        final = _link_free_name(tmp, folder, record.uri)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fsync_dir(folder)
    size = final.stat().st_size
    job.say(f"backup {final} ({_human(size)}) of {site.display_name} made for {reason}")
    return Backup(final, size)


def walk(top: Path) -> list[Path]:
    """Everything under ``top``, sorted, without following symbolic links."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(top, followlinks=False):
        base = Path(folder)
        found += [base / d for d in dirs] + [base / f for f in files]
    return sorted(found)


def _add_tree(tar: tarfile.TarFile, site_path: Path, label: str) -> None:
    entries = walk(site_path)
    sizes = {e: st.st_size for e in entries
             if (st := e.lstat()) and not os.path.islink(e) and e.is_file()}
    progress = Progress(label, sum(sizes.values()) or 1)
    tar.add(site_path, arcname="files", recursive=False)
    for entry in entries:
        tar.add(entry, arcname="files/" + str(entry.relative_to(site_path)), recursive=False)
        progress.advance(sizes.get(entry, 0))
    progress.done()


def _link_free_name(tmp: Path, folder: Path, uri: str) -> Path:
    """Give the finished archive its name: the first free one (a hard link never
    replaces an existing file, so two backups in one second both keep theirs)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
    for n in range(1, 1000):
        name = f"{uri}-{stamp}{'' if n == 1 else f'_{n}'}{SUFFIX}"
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
        share = min(1.0, self.done_bytes / self.total)
        bar = "#" * int(share * 30)
        try:
            os.write(self.fd, f"\r{self.label}: [{bar:<30}] {share:4.0%}".encode())
        except OSError:
            self.fd = -1

    def done(self) -> None:
        if self.fd >= 0:
            self.done_bytes = self.total
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
        try:
            self.tar = tarfile.open(path, "r:gz")
            member = self.tar.getmember(MANIFEST)
            fh = self.tar.extractfile(member)
            if fh is None:
                raise KeyError(MANIFEST)
            doc = json.loads(fh.read())
        except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
            raise MalformedFile(f"{path} is not a hostctl backup: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise MalformedFile(f"{path}: unsupported backup format {doc!r:.60}")
        self.doc: dict[str, Any] = doc

    @property
    def site(self) -> str:
        return str(self.doc.get("site", ""))

    @property
    def db_type(self) -> str:
        return str(self.doc.get("db_type", "none"))

    def extract_files(self, dest: Path) -> None:
        """The site folder, into ``dest`` (which must not exist yet)."""
        if dest.exists():
            raise Conflict(f"{dest} exists already")
        members = [m for m in self.tar.getmembers()
                   if m.name == "files" or m.name.startswith("files/")]
        if not members:
            raise MalformedFile(f"{self.path} holds no site folder")
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            self.tar.extractall(work, members=members, filter="data")
            os.rename(work / "files", dest)
        except (OSError, tarfile.TarError) as exc:
            raise OperationFailed(f"cannot extract {self.path.name}: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def extract_dump(self, folder: Path) -> Path | None:
        """The database dump, into ``folder``; None if the backup has none."""
        name = str(self.doc.get("dump") or "")
        if not name:
            return None
        if name not in ("database.sql", "database.sqlite"):
            raise MalformedFile(f"{self.path}: unexpected dump name {name!r}")
        try:
            self.tar.extract(name, folder, filter="data")
        except (KeyError, OSError, tarfile.TarError) as exc:
            raise MalformedFile(f"{self.path}: cannot extract {name}: {exc}") from None
        return folder / name

    def close(self) -> None:
        self.tar.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
