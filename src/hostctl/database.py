"""The cluster's PostgreSQL, as every part of hostctl reaches it (psycopg 3).

A DSN is a libpq connection string or URI (``[cluster] dsn``). Its password is never
printed: :func:`shown` is what a message says of a DSN, and a connection error is said
without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo as libpq

from hostctl.errors import InvalidInput, OperationFailed

CONNECT_TIMEOUT = 10


def parse_dsn(dsn: str) -> dict[str, str]:
    """The connection parameters of a DSN; InvalidInput (saying nothing of its password)
    when libpq cannot read it."""
    if not dsn.strip():
        raise InvalidInput("no cluster: set [cluster] dsn in config.toml or "
                           "HOSTCTL_CLUSTER_DSN")
    try:
        params = libpq.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise InvalidInput("[cluster] dsn is not a PostgreSQL connection string "
                           "(key=value pairs or a postgresql:// URI)") from None
    return {k: str(v) for k, v in params.items() if v is not None}


def shown(dsn: str) -> str:
    """A DSN as messages show it: where and who, never a password."""
    p = parse_dsn(dsn)
    where = p.get("host", "localhost") + (f":{p['port']}" if "port" in p else "")
    return f"{p.get('user', '(default user)')}@{where}/{p.get('dbname', '(default database)')}"


def open_connection(dsn: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A new connection; OperationFailed, in one line without the password, when it
    cannot be made."""
    params = parse_dsn(dsn)
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    params.setdefault("application_name", "hostctl")
    try:
        return psycopg.connect(libpq.make_conninfo("", **params), autocommit=autocommit)
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot reach the cluster's database {shown(dsn)}: "
                              f"{said(exc, params.get('password'))}") from None


def said(exc: BaseException, password: str | None = None) -> str:
    """A database error in one line, without the password."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return reason.replace(password, "********") if password else reason


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection, in one transaction committed at the end of the block (rolled back on
    an error); OperationFailed, in one line without the password, for any failure."""
    conn = open_connection(dsn)
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise OperationFailed(f"the cluster's database {shown(dsn)}: "
                              f"{' '.join(str(exc).split())}") from None
    finally:
        conn.close()
