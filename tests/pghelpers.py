"""The test session's one PostgreSQL (``pg_server`` in conftest.py: a private server made
with initdb, run as an unprivileged user) and the databases the tests make on it, each
owned by the role ``hostctl``, the back end's."""

from __future__ import annotations

import itertools
import os

from provisionhelpers import PgCluster

#: the password of the role ``hostctl`` (a test asserts it is never shown)
SECRET = "Cl-" + os.urandom(8).hex()
_made = itertools.count(1)


def new_database(pg: PgCluster, prefix: str = "db", init: bool = False) -> str:
    """A fresh database of the ``hostctl`` role; its DSN (with the cluster's schema made
    when ``init``)."""
    name = f"{prefix}{next(_made)}"
    # as docs/cluster.md sets one up: no role but hostctl's may connect to it
    pg.psql(f"CREATE DATABASE {name} OWNER hostctl; "
            f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC")
    dsn = f"host=127.0.0.1 port={pg.port} dbname={name} user=hostctl password={SECRET}"
    if init:
        from hostctl.runners import cluster

        cluster.init(dsn)
    return dsn


def dbname(dsn: str) -> str:
    return dict(p.split("=", 1) for p in dsn.split())["dbname"]
