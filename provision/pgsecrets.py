"""The sites' records of a cluster, in its PostgreSQL database: one row per site.

Table ``hostctl_secrets`` (made by ``hostctl cluster init``; :data:`SCHEMA`) holds what a
site's secrets file holds (provision/secrets.py's ``document()``): its database and
credentials, its salt. No role but the table's owner, the back end's, may read it; the
front end never has a database role at all.
"""

from __future__ import annotations

import json
from typing import Any, LiteralString

from hostctl.contexts.names import display
from hostctl.database import Session
from hostctl.errors import MalformedFile
from hostctl.provision.secrets import SiteRecord, document, from_document, secret_values

SCHEMA: LiteralString = """
CREATE TABLE hostctl_secrets (
    site text PRIMARY KEY,
    document jsonb NOT NULL
);
REVOKE ALL ON hostctl_secrets FROM PUBLIC"""


class PgSecrets:
    """The records in the cluster's database."""

    def __init__(self, dsn: str) -> None:
        self.db = Session(dsn, "secrets table")

    def read(self, site: str) -> SiteRecord | None:
        bare = site.lstrip("@")
        rows = self.db.rows("SELECT document FROM hostctl_secrets WHERE site = %s", (bare,))
        return _record(bare, rows[0][0]) if rows else None

    def write(self, record: SiteRecord) -> str:
        self.db.rows("INSERT INTO hostctl_secrets (site, document) VALUES (%s, %s::jsonb) "
                     "ON CONFLICT (site) DO UPDATE SET document = EXCLUDED.document",
                     (record.site.lstrip("@"), json.dumps(document(record))))
        return "the site's record in the cluster's database"

    def remove(self, site: str) -> None:
        self.db.rows("DELETE FROM hostctl_secrets WHERE site = %s", (site.lstrip("@"),))

    def installed(self, site: str) -> bool:
        return bool(self.db.rows("SELECT 1 FROM hostctl_secrets WHERE site = %s",
                                 (site.lstrip("@"),)))

    def values(self, site: str) -> list[str]:
        try:
            return secret_values(self.read(site))
        except MalformedFile:
            return []


def _record(bare: str, doc: Any) -> SiteRecord:
    try:
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return from_document(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedFile(f"malformed secrets of {display(bare)} in the cluster's "
                            f"database: {' '.join(str(exc).split())}") from None
