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

A dump is ``mariadb-dump --single-transaction --routines --triggers --events`` as the
site's user. A load goes into a new database first; only when it has all gone in are the
old database's tables swapped for the new ones in one ``RENAME TABLE`` (atomic in
MariaDB), so a failed load leaves the site's database as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hostctl.contexts.store import Context
from hostctl.errors import InvalidInput, OperationFailed
from hostctl.paths import Paths
from hostctl.provision.job import Job
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
            lines = ["[client]"]
            if user:
                lines.append(f"user={user}")
            if password:
                lines.append(f"password={password}")
            if self.socket:
                lines += [f"socket={self.socket}", "protocol=socket"]
            else:
                lines += [f"host={self.host}", f"port={self.port}", "protocol=tcp"]
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

    def dump(self, job: Job, creds: DbCredentials, dest: Path) -> None:
        job.hide(creds.password)
        with self._options(creds.user, creds.password) as options:
            job.run([client("mariadb-dump", "mysqldump"), f"--defaults-extra-file={options}",
                     "--single-transaction", "--routines", "--triggers", "--events",
                     "--skip-comments", f"--result-file={dest}", creds.name],
                    what=f"dumping {creds.name}")

    def load(self, job: Job, creds: DbCredentials, src: Path) -> None:
        fresh = f"{creds.name[:56]}_load"
        self._sql(job, f"DROP DATABASE IF EXISTS {ident(fresh)};\n"
                       f"CREATE DATABASE {ident(fresh)} CHARACTER SET utf8mb4;",
                  f"making {fresh}")
        try:
            self._sql(job, src.read_text(errors="surrogateescape"),
                      f"loading {src.name} into {creds.name}", database=fresh)
            tables = self._sql(job, "SELECT table_name FROM information_schema.tables "
                                    f"WHERE table_schema = {literal(fresh)};",
                               f"listing {fresh}")
            old = self._sql(job, "SELECT table_name FROM information_schema.tables "
                                 f"WHERE table_schema = {literal(creds.name)};",
                            f"listing {creds.name}")
            trash = f"{creds.name[:56]}_old"
            moves = ([f"{ident(creds.name)}.`{t}` TO {ident(trash)}.`{t}`" for t in old]
                     + [f"{ident(fresh)}.`{t}` TO {ident(creds.name)}.`{t}`"
                        for t in tables])
            sql = (f"DROP DATABASE IF EXISTS {ident(trash)};\n"
                   f"CREATE DATABASE {ident(trash)};\n")
            if moves:
                sql += "RENAME TABLE " + ", ".join(moves) + ";\n"
            sql += f"DROP DATABASE {ident(trash)};"
            self._sql(job, sql, f"putting the loaded tables in place of {creds.name}'s")
        finally:
            self._sql(job, f"DROP DATABASE IF EXISTS {ident(fresh)};", f"dropping {fresh}")
        job.say(f"database {creds.name} loaded from {src.name}")

    def test(self, job: Job) -> str:
        name = f"hostctl_verify_{os.getpid()}"
        try:
            rows = self._sql(job, f"CREATE DATABASE {ident(name)};\nSELECT VERSION();",
                             "creating a test database")
        finally:
            self._sql(job, f"DROP DATABASE IF EXISTS {ident(name)};",
                      "dropping the test database")
        return f"MariaDB {rows[-1] if rows else ''} at {self.where}".replace("  ", " ")

    def environ(self, creds: DbCredentials) -> dict[str, str]:
        return {"DB_TYPE": "mariadb", "DB_NAME": creds.name, "DB_USER": creds.user,
                "DB_PASSWD": creds.password, "DB_HOST": self.host or "localhost",
                "DB_PORT": str(self.port), "DB_PATH": self.socket}
