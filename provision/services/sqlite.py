"""SQLite, the embedded default: one database file per site, no server, no user.

The files are ``HOME/databases/SERVER/NAME.sqlite`` (0600, in a 0700 folder), owned by
the back-end user: the platform's commands, run by hostctl, use them. A backup streams
the database file into its archive while a read transaction holds SQLite's shared lock
(one consistent state, even while the site writes; a database in WAL mode is copied with
the backup API first); a load copies a dump into a new file beside the database and
renames it over the old one, so the database is the old one or the new one, never a mix.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hostctl.contexts.store import Context
from hostctl.errors import InvalidInput, OperationFailed
from hostctl.files import fsync_dir
from hostctl.paths import Paths
from hostctl.provision import layout
from hostctl.provision.job import Job
from hostctl.provision.secrets import DbCredentials

#: how long a backup's read waits for a site's writers (SQLite's busy timeout, seconds):
#: a writer committing all the time keeps taking the lock a rollback-journal reader
#: needs, and the 5 s default is not always enough for the reader's turn to come
BUSY_TIMEOUT = 60.0

_SIDE_FILES = ("-journal", "-wal", "-shm")


class Sqlite:
    type = "sqlite"
    dump_name = "database.sqlite"

    def __init__(self, server: Context, paths: Paths) -> None:
        self.server = server
        self.paths = paths
        self.folder = layout.sqlite_dir(paths, server)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.sqlite"

    def taken(self, job: Job, name: str) -> bool:
        return self.path(name).exists()

    def exists(self, job: Job, creds: DbCredentials) -> bool:
        return Path(creds.path).is_file()

    def create(self, job: Job, name: str) -> DbCredentials:
        self.paths.ensure_dir(self.folder)
        path = self.path(name)
        try:
            # an empty file is an empty SQLite database; O_EXCL: never take another's
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            raise OperationFailed(f"the database file {path} exists already") from None
        except OSError as exc:
            raise OperationFailed(f"cannot create {path}: {exc.strerror}") from exc
        job.say(f"database {name} created: {path}")
        return DbCredentials(type=self.type, server=self.server.display_name, name=name,
                             path=str(path))

    def drop(self, job: Job, creds: DbCredentials) -> None:
        for suffix in ("", *_SIDE_FILES):
            try:
                os.unlink(creds.path + suffix)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OperationFailed(f"cannot remove {creds.path}{suffix}: "
                                      f"{exc.strerror}") from exc
        job.say(f"database {creds.name} dropped")

    @contextmanager
    def dump_stream(self, job: Job, creds: DbCredentials) -> Iterator[IO[bytes]]:
        """The database file itself, read while a read transaction holds SQLite's shared
        lock: no writer can change the file until it has been read, so what is read is
        one consistent state (a backup streams it into its archive, never staged). A
        database in WAL mode keeps recent commits beside the file: it is copied with the
        backup API into a private temporary file first, and that copy is read."""
        path = Path(creds.path)
        if not path.is_file():
            raise OperationFailed(f"the database file {path} is missing")
        # read-write where the back end may: a writer that died mid-transaction left a
        # journal that the first reader must roll back (a read-only one cannot)
        mode = "rw" if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK) \
            else "ro"
        try:
            db = sqlite3.connect(f"{path.absolute().as_uri()}?mode={mode}", uri=True,
                                 isolation_level=None, timeout=BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise OperationFailed(f"cannot open {path}: {exc}") from exc
        try:
            journal = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if journal == "wal":
                db.close()
                folder = self.paths.ensure_dir(self.paths.home / "backups")
                with tempfile.TemporaryDirectory(prefix=".dump-", dir=folder) as tmp:
                    copy = Path(tmp) / self.dump_name
                    self.dump(job, creds, copy)
                    with open(copy, "rb") as fh:
                        yield fh
                return
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the shared lock
            with open(path, "rb") as fh:
                yield fh
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OperationFailed(f"cannot read {path}: {exc}") from exc
        finally:
            db.close()

    def dump(self, job: Job, creds: DbCredentials, dest: Path) -> None:
        if not self.exists(job, creds):
            raise OperationFailed(f"the database file {creds.path} is missing")
        try:
            _copy(Path(creds.path), dest)
        except sqlite3.Error as exc:
            raise OperationFailed(f"cannot dump {creds.path}: {exc}") from exc

    def load(self, job: Job, creds: DbCredentials, src: Path) -> None:
        target = Path(creds.path)
        tmp = target.with_name(f".{target.name}.load")
        try:
            _copy(src, tmp)
            with sqlite3.connect(tmp) as db:
                check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise OperationFailed(f"the dump {src.name} is not a sound SQLite database")
            os.replace(tmp, target)
            for suffix in _SIDE_FILES:  # the old database's journal is not the new one's
                try:
                    os.unlink(str(target) + suffix)
                except FileNotFoundError:
                    pass
            fsync_dir(target.parent)
        except sqlite3.Error as exc:
            raise OperationFailed(f"cannot load {src.name} into {creds.name}: {exc}") from exc
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass

    def test(self, job: Job) -> str:
        self.paths.ensure_dir(self.folder)
        path = self.folder / f".verify-{os.getpid()}.sqlite"
        try:
            with sqlite3.connect(path) as db:
                db.execute("CREATE TABLE t (x INTEGER)")
                db.execute("INSERT INTO t VALUES (1)")
                if db.execute("SELECT x FROM t").fetchone() != (1,):
                    raise OperationFailed("SQLite gave back another value than it stored")
            return f"SQLite {sqlite3.sqlite_version} in {self.folder}"
        except sqlite3.Error as exc:
            raise OperationFailed(f"SQLite cannot write in {self.folder}: {exc}") from exc
        finally:
            for suffix in ("", *_SIDE_FILES):
                try:
                    os.unlink(str(path) + suffix)
                except FileNotFoundError:
                    pass

    def environ(self, creds: DbCredentials) -> dict[str, str]:
        return {"DB_TYPE": "sqlite", "DB_NAME": creds.name, "DB_USER": "", "DB_PASSWD": "",
                "DB_HOST": "", "DB_PORT": "", "DB_PATH": creds.path}


def _copy(src: Path, dest: Path) -> None:
    """Copy an SQLite database with the backup API; ``dest`` is made 0600 and fsynced."""
    if not src.is_file():
        raise InvalidInput(f"{src} is not a file")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.close(fd)
    source = sqlite3.connect(f"{src.absolute().as_uri()}?mode=ro", uri=True,
                             timeout=BUSY_TIMEOUT)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    fd = os.open(dest, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
