"""Which store keeps a home's sites' records: the files under the home (secrets.py), or,
for a home in a cluster, the cluster's database (pgsecrets.py)."""

from __future__ import annotations

from collections.abc import Iterable

from hostctl.contexts.names import display
from hostctl.errors import Conflict
from hostctl.paths import Paths
from hostctl.provision.secrets import FileSecrets, SecretStore, SiteRecord


def open_secrets(paths: Paths, dsn: str) -> SecretStore:
    """The home's records: the cluster's database when it is in one, else its files."""
    if dsn:
        # psycopg and the cluster's code: loaded by a home in a cluster alone
        from hostctl.provision.pgsecrets import PgSecrets

        return PgSecrets(dsn)
    return FileSecrets(paths)


def plan_take(source: SecretStore, target: SecretStore,
              sites: Iterable[str]) -> tuple[list[SiteRecord], list[str]]:
    """What copying the sites' records from ``source`` to ``target`` would do: the records
    to write, and the sites whose record is there already, the same. A record that is on
    both sides and differs is a Conflict, before anything is written."""
    write: list[SiteRecord] = []
    same: list[str] = []
    for site in sorted(sites):
        record = source.read(site)
        if record is None:
            continue
        there = target.read(site)
        if there is None:
            write.append(record)
        elif there == record:
            same.append(site)
        else:
            raise Conflict(f"the record of {display(site)} is on both sides and differs; "
                           "make them agree first")
    return write, same
