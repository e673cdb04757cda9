"""The services a server offers its sites: a web server (nginx) and a database server
(SQLite, the embedded default, PostgreSQL, or MariaDB/MySQL).

A server context names them (``http_service_type``, ``db_service_type``); ``web()`` and
``database()`` give the object that does the work, or None for ``none``. Every database
service has the same small interface (:class:`Database`): create a database and its user,
drop them, tell whether a name is taken, dump to a file and load from one, and test that
the server answers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from hostctl.contexts.store import Context
from hostctl.errors import InvalidInput
from hostctl.paths import Paths
from hostctl.provision.job import Job
from hostctl.provision.secrets import DbCredentials
from hostctl.provision.services.mariadb import Mariadb
from hostctl.provision.services.nginx import Nginx
from hostctl.provision.services.pgsql import Pgsql
from hostctl.provision.services.sqlite import Sqlite

#: at most this many characters from the site's uri (Aegir's), then a _N on a collision
DB_NAME_LENGTH = 16


class Database(Protocol):
    type: str
    server: Context
    #: the dump's file name inside a backup archive
    dump_name: str

    def taken(self, job: Job, name: str) -> bool:
        """Is there a database (or a user) of this name on the server?"""

    def create(self, job: Job, name: str) -> DbCredentials:
        """Create an empty database and its user (random password); never replaces."""

    def drop(self, job: Job, creds: DbCredentials) -> None:
        """Remove the database and its user; gone already is fine."""

    def exists(self, job: Job, creds: DbCredentials) -> bool:
        """Is the site's database there?"""

    def dump(self, job: Job, creds: DbCredentials, dest: Path) -> None:
        """Write the whole database to ``dest``."""

    def load(self, job: Job, creds: DbCredentials, src: Path) -> None:
        """Replace the database's content with a dump, all or nothing."""

    def test(self, job: Job) -> str:
        """Create and drop a test database; return what the server is."""

    def environ(self, creds: DbCredentials) -> dict[str, str]:
        """DB_TYPE, DB_NAME, DB_USER, DB_PASSWD, DB_HOST, DB_PORT, DB_PATH for the
        platform's commands."""


def database(server: Context | None, paths: Paths) -> Database | None:
    if server is None:
        return None
    kind = str(server.get("db_service_type"))
    if kind == "none":
        return None
    if kind == "sqlite":
        return Sqlite(server, paths)
    if kind == "pgsql":
        return Pgsql(server, paths)
    if kind in ("mariadb", "mysql"):
        return Mariadb(server, paths)
    raise InvalidInput(f"{server.display_name}: the {kind} database service is not "
                       "supported (use sqlite, pgsql, mariadb or none)")


def web(server: Context | None, paths: Paths) -> Nginx | None:
    if server is None:
        return None
    kind = str(server.get("http_service_type"))
    if kind == "none":
        return None
    if kind == "nginx":
        return Nginx(server, paths)
    raise InvalidInput(f"{server.display_name}: the {kind} web service is not supported "
                       "(use nginx or none)")


def suggest_name(job: Job, db: Database, uri: str, avoid: set[str] | None = None) -> str:
    """A free database name for ``uri``: its letters and digits without a leading www.,
    at most 16 characters, then _2, _3... while the name is taken."""
    base = re.sub(r"[^a-z0-9]", "", uri.lower().removeprefix("www."))[:DB_NAME_LENGTH]
    if not base or not base[0].isalpha():
        base = ("s" + base)[:DB_NAME_LENGTH]
    avoid = avoid or set()
    name, n = base, 1
    while name in avoid or db.taken(job, name):
        n += 1
        name = f"{base}_{n}"
    return name
