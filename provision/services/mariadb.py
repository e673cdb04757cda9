"""MariaDB (or MySQL), through its own client programs: ``mariadb`` and ``mariadb-dump``
(``mysql`` and ``mysqldump`` where those are what is installed).

The server context gives the administrator's connection. With neither ``db_host`` nor
``db_passwd`` set, hostctl connects as Debian sets MariaDB up: through the local UNIX
socket (``/run/mysqld/mysqld.sock``), as the account named after the back end's own user,
with ``unix_socket`` authentication (``CREATE USER hostctl@localhost IDENTIFIED VIA
unix_socket; GRANT ALL ON *.* TO hostctl@localhost WITH GRANT OPTION`` once, as root);
``db_host`` may name the socket's folder. Otherwise TCP to ``db_host`` (localhost with a
password and no host) as ``db_user`` (default ``root``).

Each site gets a database and a user of the same name, ``'NAME'@'localhost'`` (the socket,
and TCP from the same host) and ``'NAME'@'127.0.0.1'``, with a random password and every
privilege on that database only.

Secrets never reach a command line or an environment: each run of a client program gets
an option file (``[client]`` user, password, host or socket, port), mode 0600 in a private
temporary folder, named by ``--defaults-extra-file`` and removed when the program ends.

Every value in that file is quoted and escaped (a ``#`` would otherwise start a comment
and cut a password short), and the file sets ``default-character-set=utf8mb4`` so text
is never converted on its way through a client program.

A dump is ``mariadb-dump --single-transaction --routines --triggers --events
--hex-blob`` as the site's user (binary columns as hex: the dump is plain text, whatever
the data). A load streams the dump from its file into a new database first, so a dump
that does not load in full never touches the site's database. Then:

- when neither database holds views, triggers, routines or events (most sites), the old
  database's tables are swapped for the new ones in one ``RENAME TABLE``, atomic in
  MariaDB: readers see the old tables or the new ones, never a mix;
- otherwise (MariaDB moves neither views nor tables with triggers from one database to
  another), the site's database is first dumped as it is to a private file, emptied and
  loaded from the dump again; should that fail, it is emptied again and loaded from the
  copy of what it held, and the task fails saying so. Not atomic for readers, but the
  database ends with the new content or the old, never a part.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hostctl.contexts.store import Context
from hostctl.errors import InvalidInput, OperationFailed
from hostctl.paths import Paths
from hostctl.provision.job import Job, streamed
from hostctl.provision.secrets import DbCredentials, new_password

DEFAULT_PORT = 3306
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def client(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}",
                                                                        os.X_OK) else None)
        if found:
            return found
    raise OperationFailed(f"no {names[0]} program (install MariaDB's client programs)")


def ident(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a database name hostctl makes")
    return f"`{name}`"


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quoted(name: str) -> str:
    """Any identifier, as a table name read back from a loaded dump may be anything."""
    return "`" + name.replace("`", "``") + "`"


def option(text: str) -> str:
    """A value for an option file: double-quoted, with the escapes the client programs
    read there, so ``#``, quotes, blanks at either end and line breaks stay in it."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


class Mariadb:
    type = "mariadb"
    dump_name = "database.sql"

    def __init__(self, server: Context, paths: Paths) -> None:
        self.server = server
        self.paths = paths
        configured = str(server.get("db_host") or "")
        self.password = str(server.get("db_passwd") or "")
        port = server.get("db_port")
        self.port = int(port) if isinstance(port, int) else DEFAULT_PORT
        self.socket = ""
        self.host = configured or ("localhost" if self.password else "")
        if not self.host or self.host.startswith("/"):
            path = self.host or DEFAULT_SOCKET
            self.socket = os.path.join(path, "mysqld.sock") if os.path.isdir(path) else path
            self.host = ""
        self.admin = str(server.get("db_user") or ("" if self.socket else "root"))

    @property
    def where(self) -> str:
        return self.socket or f"{self.host}:{self.port}"

    # -- connections ------------------------------------------------------------------

    @contextmanager
    def _options(self, user: str, password: str) -> Iterator[str]:
        """An option file for one run of a client program (see the module docstring)."""
        folder = tempfile.mkdtemp(prefix="hostctl-my-")
        try:
            lines = ["[client]", "default-character-set=utf8mb4"]
            if user:
                lines.append(f"user={option(user)}")
            if password:
                lines.append(f"password={option(password)}")
            if self.socket:
                lines += [f"socket={option(self.socket)}", "protocol=socket"]
            else:
                lines += [f"host={option(self.host)}", f"port={self.port}", "protocol=tcp"]
            path = os.path.join(folder, "client.cnf")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _sql(self, job: Job, sql: str, what: str, creds: DbCredentials | None = None,
             database: str = "") -> list[str]:
        user, password = ((creds.user, creds.password) if creds is not None
                          else (self.admin, self.password))
        job.hide(self.password, password)
        with self._options(user, password) as options:
            argv = [client("mariadb", "mysql"), f"--defaults-extra-file={options}",
                    "--batch", "--skip-column-names"]
            ran = job.run([*argv, *([database] if database else [])], stdin=sql, what=what)
        return [line for line in ran.output.splitlines() if line.strip()]

    def _users(self, name: str) -> list[str]:
        return [f"{literal(name)}@{literal(h)}" for h in ("localhost", "127.0.0.1")]

    # -- the interface ------------------------------------------------------------------

    def taken(self, job: Job, name: str) -> bool:
        rows = self._sql(job, "SELECT 'db' FROM information_schema.schemata WHERE "
                              f"schema_name = {literal(name)} UNION ALL SELECT 'user' FROM "
                              f"mysql.user WHERE user = {literal(name)};",
                         f"looking for {name} on {self.server.display_name}")
        return bool(rows)

    def exists(self, job: Job, creds: DbCredentials) -> bool:
        return bool(self._sql(job, "SELECT 1 FROM information_schema.schemata WHERE "
                                   f"schema_name = {literal(creds.name)};",
                              f"looking for {creds.name}"))

    def create(self, job: Job, name: str) -> DbCredentials:
        password = new_password()
        job.hide(password)
        users = self._users(name)
        statements = [f"CREATE DATABASE {ident(name)} CHARACTER SET utf8mb4;"]
        for user in users:
            statements += [f"CREATE USER {user} IDENTIFIED BY {literal(password)};",
                           f"GRANT ALL PRIVILEGES ON {ident(name)}.* TO {user};"]
        try:
            self._sql(job, "\n".join(statements), f"creating the database {name}")
        except BaseException:
            self._drop(job, name, name)  # DDL is not transactional: undo what was made
            raise
        job.say(f"database {name} and its user created on {self.server.display_name} "
                f"({self.where})")
        return DbCredentials(type=self.type, server=self.server.display_name, name=name,
                             user=name, password=password)

    def _drop(self, job: Job, name: str, user: str) -> None:
        drops = [f"DROP DATABASE IF EXISTS {ident(name)};"]
        if user:
            drops += [f"DROP USER IF EXISTS {u};" for u in self._users(user)]
        self._sql(job, "\n".join(drops), f"dropping the database {name}")

    def drop(self, job: Job, creds: DbCredentials) -> None:
        self._drop(job, creds.name, creds.user)
        job.say(f"database {creds.name} and its user dropped")

    @contextmanager
    def dump_stream(self, job: Job, creds: DbCredentials) -> Iterator[IO[bytes]]:
        """mariadb-dump's SQL, read as it comes (a backup streams it into the archive)."""
        job.hide(self.password, creds.password)
        with self._options(creds.user, creds.password) as options, streamed(
                job, [client("mariadb-dump", "mysqldump"), f"--defaults-extra-file={options}",
                      "--single-transaction", "--routines", "--triggers", "--events",
                      "--hex-blob", "--skip-comments", creds.name],
                what=f"dumping {creds.name}") as out:
            yield out

    def dump(self, job: Job, creds: DbCredentials, dest: Path) -> None:
        self._dump(job, creds, dest, creds.name)

    def _dump(self, job: Job, creds: DbCredentials | None, dest: Path, name: str) -> None:
        user, password = ((creds.user, creds.password) if creds is not None
                          else (self.admin, self.password))
        job.hide(self.password, password)
        with self._options(user, password) as options:
            job.run([client("mariadb-dump", "mysqldump"), f"--defaults-extra-file={options}",
                     "--single-transaction", "--routines", "--triggers", "--events",
                     "--hex-blob", "--skip-comments", f"--result-file={dest}", name],
                    what=f"dumping {name}")

    def _feed(self, job: Job, src: Path, database: str, what: str) -> None:
        """Run the statements of the file ``src`` in ``database``, as the administrator.

        The file is the client's standard input as it is, bytes and all: a dump need not
        be UTF-8, nor fit in memory."""
        job.hide(self.password)
        with self._options(self.admin, self.password) as options, \
                open(src, "rb") as source:
            argv = [client("mariadb", "mysql"), f"--defaults-extra-file={options}",
                    "--batch", database]
            try:
                proc = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=job.environ())
            except OSError as exc:
                raise OperationFailed(f"{what}: cannot run {argv[0]}: {exc.strerror}") \
                    from None
            try:
                out, _ = proc.communicate()
            except BaseException:  # stopped: the client must not go on loading alone
                proc.kill()
                proc.wait()
                raise
        if proc.returncode != 0:
            lines = [ln for ln in job.redact(out.decode("utf-8", "replace")).splitlines()
                     if ln.strip()]
            raise OperationFailed(f"{what} exited with status {proc.returncode}"
                                  + (f": {lines[-1].strip()}" if lines else ""))

    def _empty(self, job: Job, name: str) -> None:
        """Drop and make again the database ``name`` (grants on it are kept: MariaDB
        holds them by name)."""
        self._sql(job, f"DROP DATABASE IF EXISTS {ident(name)};\n"
                       f"CREATE DATABASE {ident(name)} CHARACTER SET utf8mb4;",
                  f"emptying {name}")

    def _tables(self, job: Job, name: str) -> list[str]:
        return self._sql(job, "SELECT table_name FROM information_schema.tables WHERE "
                              f"table_schema = {literal(name)} AND table_type = 'BASE TABLE';",
                         f"listing {name}")

    def _fixed(self, job: Job, name: str) -> bool:
        """Whether ``name`` holds anything RENAME TABLE cannot take to another database:
        views, triggers (and the tables they are on), routines or events."""
        where = literal(name)
        return bool(self._sql(
            job, "SELECT 1 FROM information_schema.views WHERE table_schema = "
                 f"{where} UNION ALL SELECT 1 FROM information_schema.triggers WHERE "
                 f"trigger_schema = {where} UNION ALL SELECT 1 FROM "
                 f"information_schema.routines WHERE routine_schema = {where} UNION ALL "
                 f"SELECT 1 FROM information_schema.events WHERE event_schema = {where};",
            f"looking at what {name} holds"))

    def load(self, job: Job, creds: DbCredentials, src: Path) -> None:
        fresh = f"{creds.name[:56]}_load"
        self._empty(job, fresh)
        try:
            self._feed(job, src, fresh, f"loading {src.name} into {creds.name}")
            if self._fixed(job, fresh) or self._fixed(job, creds.name):
                self._reload(job, creds, src)
            else:
                self._swap(job, creds.name, fresh)
        finally:
            self._sql(job, f"DROP DATABASE IF EXISTS {ident(fresh)};", f"dropping {fresh}")
        job.say(f"database {creds.name} loaded from {src.name}")

    def _swap(self, job: Job, name: str, fresh: str) -> None:
        """The tables of ``fresh`` in place of those of ``name``, in one RENAME TABLE."""
        trash = f"{name[:56]}_old"
        moves = ([f"{ident(name)}.{quoted(t)} TO {ident(trash)}.{quoted(t)}"
                  for t in self._tables(job, name)]
                 + [f"{ident(fresh)}.{quoted(t)} TO {ident(name)}.{quoted(t)}"
                    for t in self._tables(job, fresh)])
        sql = f"DROP DATABASE IF EXISTS {ident(trash)};\nCREATE DATABASE {ident(trash)};\n"
        if moves:
            sql += "RENAME TABLE " + ", ".join(moves) + ";\n"
        sql += f"DROP DATABASE {ident(trash)};"
        self._sql(job, sql, f"putting the loaded tables in place of {name}'s")

    def _reload(self, job: Job, creds: DbCredentials, src: Path) -> None:
        """Load ``src`` into the emptied database itself, the old content kept aside in a
        private file until the new one is in (see the module docstring)."""
        folder = tempfile.mkdtemp(prefix="hostctl-my-")
        try:
            kept = Path(folder) / "before.sql"
            self._dump(job, None, kept, creds.name)
            self._empty(job, creds.name)
            try:
                self._feed(job, src, creds.name, f"loading {src.name} into {creds.name}")
            except BaseException as exc:
                self._empty(job, creds.name)
                self._feed(job, kept, creds.name, f"putting {creds.name} back as it was")
                if isinstance(exc, OperationFailed):
                    raise OperationFailed(f"{exc.message} ({creds.name} is as it was)") \
                        from None
                raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def test(self, job: Job) -> str:
        name = f"hostctl_verify_{os.getpid()}"
        try:
            rows = self._sql(job, f"CREATE DATABASE {ident(name)};\nSELECT VERSION();",
                             "creating a test database")
        except BaseException:
            try:  # the first failure is the one to report, not the cleanup's
                self._sql(job, f"DROP DATABASE IF EXISTS {ident(name)};",
                          "dropping the test database")
            except OperationFailed:
                pass
            raise
        self._sql(job, f"DROP DATABASE IF EXISTS {ident(name)};", "dropping the test database")
        return f"MariaDB {rows[-1] if rows else ''} at {self.where}".replace("  ", " ")

    def environ(self, creds: DbCredentials) -> dict[str, str]:
        return {"DB_TYPE": "mariadb", "DB_NAME": creds.name, "DB_USER": creds.user,
                "DB_PASSWD": creds.password, "DB_HOST": self.host or "localhost",
                "DB_PORT": str(self.port), "DB_PATH": self.socket}
