"""PostgreSQL, through its own client programs: ``psql`` and ``pg_dump``.

The server context gives the administrator's connection: ``db_host``, ``db_port``,
``db_user`` and ``db_passwd``. With none of ``db_host`` and ``db_passwd`` set, hostctl
connects as Debian sets PostgreSQL up: through the local UNIX socket, as the database role
named after the back end's own user, with peer authentication (``sudo -u postgres
createuser --createdb --createrole hostctl`` once); ``db_host`` may also name the folder
of the server's socket. With a password and no ``db_host``: TCP to localhost, as
``db_user`` (default ``postgres``). Each site gets a database and a login role of the same
name, owner of that database; nobody else may connect to it. Sites (and hostctl acting as
a site's role) always connect with the role's password, over TCP: to ``db_host`` when it
is a host name, else to localhost.

Secrets never reach a command line: the programs get the password in ``PGPASSWORD`` (a
process's environment is readable by its own user only), and SQL goes to ``psql`` on its
standard input. A new role's password is sent as a SCRAM-SHA-256 verifier computed here,
so that not even the server's statement log holds the password itself.

A dump is ``pg_dump --no-owner --no-privileges`` (plain SQL) made as the site's role. A
load goes into a new database, as the site's role, in one transaction; only when it has
all gone in is the new database renamed over the old one, so a failed load leaves the
site's database as it was.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import os
import shutil
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from hostctl.contexts.store import Context
from hostctl.errors import OperationFailed
from hostctl.paths import Paths
from hostctl.provision.job import Job, streamed
from hostctl.provision.secrets import DbCredentials, new_password

DEFAULT_PORT = 5432
SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def client(program: str) -> str:
    """A PostgreSQL client program: on PATH, else the newest of Debian's versions."""
    found = shutil.which(program)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if versions:
        return versions[-1]
    raise OperationFailed(f"no {program} program (install PostgreSQL's client programs)")


class Pgsql:
    type = "pgsql"
    dump_name = "database.sql"

    def __init__(self, server: Context, paths: Paths) -> None:
        self.server = server
        self.paths = paths
        configured = str(server.get("db_host") or "")
        self.password = str(server.get("db_passwd") or "")
        # "": libpq's own default, the local socket; a folder: the socket in it
        self.host = configured or ("localhost" if self.password else "")
        local = not self.host or self.host.startswith("/")
        self.site_host = "localhost" if local else self.host
        port = server.get("db_port")
        self.port = int(port) if isinstance(port, int) else DEFAULT_PORT
        # over the socket, peer authentication: the role named after this user
        self.admin = str(server.get("db_user") or ("" if local else "postgres"))

    # -- connections ------------------------------------------------------------------

    def _env(self, user: str, password: str, database: str,
             host: str | None = None) -> dict[str, str]:
        env = {"PGPORT": str(self.port), "PGDATABASE": database, "PGCONNECT_TIMEOUT": "10",
               "PGAPPNAME": "hostctl"}
        host = self.host if host is None else host
        if host:
            env["PGHOST"] = host
        if user:
            env["PGUSER"] = user
        if password:
            env["PGPASSWORD"] = password
        return env

    @property
    def where(self) -> str:
        return f"{self.host or 'the local socket'}:{self.port}"

    def _admin(self, database: str = "postgres") -> dict[str, str]:
        return self._env(self.admin, self.password, database)

    def _site(self, creds: DbCredentials, database: str | None = None) -> dict[str, str]:
        return self._env(creds.user, creds.password, database or creds.name, self.site_host)

    def _psql(self, job: Job, sql: str, env: dict[str, str], what: str) -> list[str]:
        job.hide(self.password, env.get("PGPASSWORD", ""))
        ran = job.run([client("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                       "-f", "-"], env=env, stdin=sql, what=what)
        return [line for line in ran.output.splitlines() if line.strip()]

    # -- the interface ------------------------------------------------------------------

    def taken(self, job: Job, name: str) -> bool:
        rows = self._psql(job, f"SELECT 'db' FROM pg_database WHERE datname = {literal(name)}"
                               f" UNION ALL SELECT 'role' FROM pg_roles "
                               f"WHERE rolname = {literal(name)};",
                          self._admin(), f"looking for {name} on {self.server.display_name}")
        return bool(rows)

    def exists(self, job: Job, creds: DbCredentials) -> bool:
        rows = self._psql(job, "SELECT 1 FROM pg_database WHERE datname = "
                               f"{literal(creds.name)};",
                          self._admin(), f"looking for {creds.name}")
        return bool(rows)

    def create(self, job: Job, name: str) -> DbCredentials:
        password = new_password()
        job.hide(password)
        creds = DbCredentials(type=self.type, server=self.server.display_name, name=name,
                              user=name, password=password)
        # the administrator joins the role: one that is no superuser (CREATEDB and
        # CREATEROLE, as `createuser --createdb --createrole` makes it) must be, to give
        # the role a database (one transaction: both, or neither)
        self._psql(job, f"BEGIN;\nCREATE ROLE {ident(name)} LOGIN "
                        f"PASSWORD {literal(scram_verifier(password))};\n"
                        f"GRANT {ident(name)} TO CURRENT_USER;\nCOMMIT;",
                   self._admin(), f"creating the role {name}")
        try:
            self._create_database(job, name, name)
        except BaseException:
            try:  # the database went with its failure (below): its role goes too
                self._psql(job, f"DROP ROLE IF EXISTS {ident(name)};", self._admin(),
                           f"dropping the role {name}")
            except OperationFailed as exc:
                job.warn(f"the role {name} could not be dropped: {exc}")
            raise
        job.say(f"database {name} and its role created on {self.server.display_name} "
                f"({self.where})")
        return creds

    def _create_database(self, job: Job, name: str, owner: str) -> None:
        # CREATE DATABASE cannot run inside a transaction block: one statement a run
        self._psql(job, f"CREATE DATABASE {ident(name)} OWNER {ident(owner)} "
                        "TEMPLATE template0 ENCODING 'UTF8';",
                   self._admin(), f"creating the database {name}")
        try:
            self._psql(job, f"REVOKE ALL ON DATABASE {ident(name)} FROM PUBLIC;\n"
                            f"GRANT ALL ON DATABASE {ident(name)} TO {ident(owner)};",
                       self._admin(), f"granting {name} to its role only")
        except BaseException:
            # a database anyone may connect to is never left behind
            try:
                self._drop_database(job, name)
            except OperationFailed as exc:
                job.warn(f"the database {name} could not be dropped: {exc}")
            raise

    def _drop_database(self, job: Job, name: str) -> None:
        self._psql(job, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = {literal(name)} AND pid <> pg_backend_pid();",
                   self._admin(), f"closing the connections to {name}")
        self._psql(job, f"DROP DATABASE IF EXISTS {ident(name)};", self._admin(),
                   f"dropping the database {name}")

    def drop(self, job: Job, creds: DbCredentials) -> None:
        self._drop_database(job, creds.name)
        if creds.user:
            self._psql(job, f"DROP ROLE IF EXISTS {ident(creds.user)};", self._admin(),
                       f"dropping the role {creds.user}")
        job.say(f"database {creds.name} and its role dropped")

    def dump_stream(self, job: Job, creds: DbCredentials) -> AbstractContextManager[IO[bytes]]:
        """pg_dump's plain SQL, read as it comes (a backup streams it into the archive)."""
        job.hide(creds.password)
        return streamed(job, [client("pg_dump"), "--no-owner", "--no-privileges",
                              "--format=plain"], env=self._site(creds),
                        what=f"pg_dump of {creds.name}")

    def dump(self, job: Job, creds: DbCredentials, dest: Path) -> None:
        job.hide(creds.password)
        job.run([client("pg_dump"), "--no-owner", "--no-privileges", "--format=plain",
                 "--file", str(dest)], env=self._site(creds),
                what=f"pg_dump of {creds.name}")
        os.chmod(dest, 0o600)

    def load(self, job: Job, creds: DbCredentials, src: Path) -> None:
        fresh = f"{creds.name}__load"
        self._drop_database(job, fresh)  # what a load cut off earlier left
        self._create_database(job, fresh, creds.user)
        try:
            job.run([client("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                     "--single-transaction", "-f", str(src)],
                    env=self._site(creds, fresh), what=f"loading {src.name} into {creds.name}")
            self._swap(job, creds.name, fresh)
        except BaseException:
            self._drop_database(job, fresh)
            raise

    def _swap(self, job: Job, name: str, fresh: str) -> None:
        old = f"{name}__old"
        self._drop_database(job, old)
        for attempt in range(5):
            try:
                # both renames or neither; a client that connects in between makes the
                # rename fail: close the connections again and retry
                self._psql(job, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                f"WHERE datname IN ({literal(name)}, {literal(fresh)}) "
                                "AND pid <> pg_backend_pid();\n"
                                f"BEGIN;\nALTER DATABASE {ident(name)} RENAME TO {ident(old)};\n"
                                f"ALTER DATABASE {ident(fresh)} RENAME TO {ident(name)};\n"
                                "COMMIT;", self._admin(), f"putting the load in place of {name}")
                break
            except OperationFailed:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self._drop_database(job, old)

    def test(self, job: Job) -> str:
        rows = self._psql(job, "SELECT version();", self._admin(),
                          f"connecting to {self.server.display_name}")
        name = f"hostctl_verify_{os.getpid()}"
        self._drop_database(job, name)
        self._psql(job, f"CREATE DATABASE {ident(name)};", self._admin(),
                   "creating a test database")
        self._drop_database(job, name)
        return (rows[0] if rows else "PostgreSQL") + f" at {self.where}"

    def environ(self, creds: DbCredentials) -> dict[str, str]:
        return {"DB_TYPE": "pgsql", "DB_NAME": creds.name, "DB_USER": creds.user,
                "DB_PASSWD": creds.password, "DB_HOST": self.site_host, "DB_PORT": str(self.port),
                "DB_PATH": ""}

