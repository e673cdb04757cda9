"""A site's secrets file: ``HOME/secrets/SITE.toml``, mode 0600, in a 0700 folder.

It holds what the site's install made and what only the back end may know: the database
and its credentials. It is the proof that a site is installed: install writes it last of
its own steps (and removes it when it rolls back), delete removes it. The context file
never holds a database password; task logs have every value of this file redacted.

Format (version 1)::

    format = 1
    site = "@example.com"
    installed = "2026-11-22T10:00:00Z"
    platform = "@platform_app"        # where its files are: ROOT/sites/URI
    uri = "example.com"
    site_path = "/var/www/app/sites/example.com"
    web_server = "@server_master"     # "" when no web server serves it
    unix_user = "hs-example-com"      # a PHP site's own user (absent for a static site)
    salt = "..."                      # a PHP site's random secret (SITE_SALT)

    [db]                               # absent when the site has no database
    type = "pgsql"                     # or "sqlite"
    server = "@server_db"
    name = "examplecom"
    user = "examplecom"                # "" for SQLite
    password = "..."                   # "" for SQLite
    path = ""                          # the SQLite file
"""

from __future__ import annotations

import os
import secrets as _random
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from hostctl.contexts.names import display
from hostctl.contexts.store import stamp_of
from hostctl.errors import MalformedFile, OperationFailed
from hostctl.files import write_atomic
from hostctl.formats import check_format
from hostctl.paths import Paths
from hostctl.provision import layout

FORMAT = 1


def new_password() -> str:
    """A random password: 32 URL-safe characters (192 bits)."""
    return _random.token_urlsafe(24)


@dataclass(frozen=True)
class DbCredentials:
    type: str
    server: str
    name: str
    user: str = ""
    password: str = ""
    path: str = ""


@dataclass(frozen=True)
class SiteRecord:
    site: str  # the context name, with its @
    installed: str
    platform: str
    uri: str
    site_path: str
    web_server: str = ""
    db: DbCredentials | None = None
    unix_user: str = ""  # a PHP site's own UNIX user ("" for a static site)
    salt: str = ""  # a PHP site's random secret, kept for its life (SITE_SALT)

    def with_(self, **changes: object) -> SiteRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


def read(paths: Paths, site: str) -> SiteRecord | None:
    """The site's record (``site`` without its @), or None if it is not installed."""
    path = layout.secrets_file(paths, site)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MalformedFile(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return from_document(tomllib.loads(raw.decode("utf-8")), path)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise MalformedFile(f"malformed secrets file {path}: {exc}") from exc


def from_document(doc: Mapping[str, Any], where: object = None) -> SiteRecord:
    """A stored record read back (ValueError, KeyError or TypeError if it is not one;
    NewerFormat, naming ``where``, for a record a newer hostctl wrote)."""
    problem = check_format(doc.get("format"), FORMAT,
                           where or f"the secrets record of {doc.get('site')}")
    if problem:
        raise ValueError(problem)
    db = doc.get("db")
    creds = DbCredentials(**{k: str(v) for k, v in db.items()}) if db else None
    return SiteRecord(
        site=str(doc["site"]), installed=str(doc["installed"]),
        platform=str(doc["platform"]), uri=str(doc["uri"]),
        site_path=str(doc["site_path"]), web_server=str(doc.get("web_server", "")),
        db=creds, unix_user=str(doc.get("unix_user", "")), salt=str(doc.get("salt", "")))


def document(record: SiteRecord) -> dict[str, Any]:
    """A record as stored, whatever the storage (a TOML file, a row's JSON)."""
    doc: dict[str, Any] = {"format": FORMAT}
    doc.update({k: v for k, v in asdict(record).items() if k != "db"})
    doc["site"] = display(record.site.lstrip("@"))
    if record.db is not None:
        doc["db"] = asdict(record.db)
    return doc


def write(paths: Paths, record: SiteRecord) -> Path:
    """Write (or replace) the site's record atomically, mode 0600."""
    import tomli_w  # here: only writes need it (a task add loads this module, never writes)

    bare = record.site.lstrip("@")
    folder = paths.ensure_dir(layout.secrets_dir(paths))
    os.chmod(folder, 0o700)
    path = layout.secrets_file(paths, bare)
    try:
        write_atomic(path, tomli_w.dumps(document(record)).encode(), mode=0o600)
    except OSError as exc:
        raise OperationFailed(f"cannot write {path}: {exc.strerror}") from exc
    return path


def remove(paths: Paths, site: str) -> None:
    try:
        layout.secrets_file(paths, site).unlink()
    except FileNotFoundError:
        pass


def values(paths: Paths, site: str) -> list[str]:
    """The secret values of a site's record (for redaction); [] if it has none or the
    file cannot be read."""
    try:
        return secret_values(read(paths, site))
    except MalformedFile:
        return []


def secret_values(record: SiteRecord | None) -> list[str]:
    """What of a record must never be shown: its database password, its salt."""
    if record is None:
        return []
    return [v for v in (record.db.password if record.db else "", record.salt) if v]


class SecretStore(Protocol):
    """Where the sites' records are kept: the files under the home (:class:`FileSecrets`),
    or, for a home in a cluster, its database (provision/pgsecrets.py)."""

    def read(self, site: str) -> SiteRecord | None:
        """The site's record (``site`` without its @), None if it is not installed."""

    def write(self, record: SiteRecord) -> str:
        """Store (or replace) the record whole; return where it went (for a message)."""

    def remove(self, site: str) -> None: ...

    def values(self, site: str) -> list[str]:
        """The record's secret values, for redaction ([] if there is none, or it cannot
        be read)."""

    def installed(self, site: str) -> bool:
        """Whether the site has a record (the proof that it is installed), cheaply: a
        periodic queue asks it of every site."""


class FileSecrets:
    """The records as files: ``HOME/secrets/SITE.toml`` (see the module docstring)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._folder = str(layout.secrets_dir(paths))  # installed(): asked of every site

    def read(self, site: str) -> SiteRecord | None:
        return read(self.paths, site)

    def write(self, record: SiteRecord) -> str:
        return f"secrets file {write(self.paths, record)} (0600)"

    def remove(self, site: str) -> None:
        remove(self.paths, site)

    def values(self, site: str) -> list[str]:
        return values(self.paths, site)

    def installed(self, site: str) -> bool:
        return os.path.exists(f"{self._folder}/{site.lstrip('@')}.toml")

    def stamp(self) -> str | None:
        """A word that changes whenever a site is installed or its record removed (the
        folder's identity; see contexts.store.stamp_of)."""
        return stamp_of(self._folder)
