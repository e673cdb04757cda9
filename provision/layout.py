"""Where the provision tasks keep their files under the home.

::

    HOME/
      backups/                 0700  site archives: URI-YYYYmmdd.HHMMSS[_N].tar.zst (0600)
      secrets/                 0700  one SITE.toml per installed site (0600): its database
                                     credentials and what its install created
      databases/SERVER/        0700  SQLite databases of a server: NAME.sqlite (0600)
      config/SERVER/           0711  generated service config (unless the server's
        nginx/vhost.d/         0755  config_path says where): one SITE.conf per site,
                                     for the server's nginx.conf to include

A site's own files live in its platform, in ``ROOT/sites/URI`` (Aegir's layout).
"""

from __future__ import annotations

from pathlib import Path

from hostctl.contexts.store import Context
from hostctl.paths import Paths


def backups_dir(paths: Paths) -> Path:
    return paths.home / "backups"


def secrets_dir(paths: Paths) -> Path:
    return paths.home / "secrets"


def secrets_file(paths: Paths, site: str) -> Path:
    return secrets_dir(paths) / f"{site}.toml"


def server_config_dir(paths: Paths, server: Context) -> Path:
    configured = server.get("config_path")
    if isinstance(configured, str) and configured:
        return Path(configured)
    return paths.home / "config" / server.name


def sqlite_dir(paths: Paths, server: Context) -> Path:
    return paths.home / "databases" / server.name


def site_path(root: str | Path, uri: str) -> Path:
    return Path(root) / "sites" / uri
