"""The contexts of a cluster, in its PostgreSQL database: one row per context.

Table ``hostctl_contexts`` (made by ``hostctl cluster init``; :data:`SCHEMA`)::

    name      text PRIMARY KEY   the bare name
    type      text               server, platform or site
    document  jsonb              what a context file holds (contexts/store.py's document())
    hosts     text[]             a site's host names (its uri and aliases, lower-cased)

The rules are the file store's (``StoreRules``): the same validation, references and
host-name check. Every write's read-modify-write runs in one transaction holding one
advisory lock (the database's counterpart of ``contexts/.lock``), so saves from any host
of the cluster serialise and none loses another's change; readers take no lock. A row
that does not read as a context (written by hand) is malformed, as a broken file is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg

from hostctl.contexts.names import display, parse_name
from hostctl.contexts.schema import context_type
from hostctl.contexts.store import (
    Context,
    StoreRules,
    decode_document,
    document,
    host_names,
)
from hostctl.database import open_connection, parse_dsn, said, shown
from hostctl.errors import InvalidInput, MalformedFile, OperationFailed

SCHEMA: LiteralString = """
CREATE TABLE hostctl_contexts (
    name text PRIMARY KEY,
    type text NOT NULL,
    document jsonb NOT NULL,
    hosts text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX hostctl_contexts_type ON hostctl_contexts (type)"""
#: pg_advisory_xact_lock key of the contexts' write lock ("hostctxs" in ASCII)
_LOCK = 0x686F7374_63747873


class PgStore(StoreRules):
    """The contexts in the cluster's database."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._in_write = False  # inside _locked: a lost connection is not retried

    # -- the connection --------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """One connection, made on first use and again after it broke (a restarted
        server); autocommit, so that a read holds nothing and a write block is one
        transaction of its own."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = open_connection(self.dsn, autocommit=True)
        return self._conn

    def _rows(self, query: LiteralString, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement. A connection found lost (the server restarted since the
        last statement) is made again and the statement run once more, outside a write:
        inside one, the transaction is gone with it, and the write fails whole."""
        for again in (True, False):
            try:
                with self._connection().cursor() as cur:
                    cur.execute(query, params)
                    return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError as exc:
                if not (again and self._lost()) or self._in_write:
                    raise self._failed(exc) from None
            except psycopg.Error as exc:
                raise self._failed(exc) from None
        raise AssertionError("unreachable")

    def _lost(self) -> bool:
        return self._conn is not None and self._conn.broken

    def _failed(self, exc: psycopg.Error) -> OperationFailed:
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return OperationFailed(f"the cluster's database {shown(self.dsn)} has no "
                                   "contexts table: run `hostctl cluster init`")
        password = parse_dsn(self.dsn).get("password")
        return OperationFailed(f"the cluster's database {shown(self.dsn)}: "
                               f"{said(exc, password)}")

    # -- reading ----------------------------------------------------------------------

    def names(self) -> list[str]:
        return [str(n) for (n,) in self._rows("SELECT name FROM hostctl_contexts "
                                              "ORDER BY name")]

    def exists(self, name: str) -> bool:
        return bool(self._rows("SELECT 1 FROM hostctl_contexts WHERE name = %s",
                               (parse_name(name),)))

    def of_type(self, type_name: str | None = None,
                malformed: list[MalformedFile] | None = None) -> list[Context]:
        if type_name is not None:
            context_type(type_name)
            rows = self._rows("SELECT name, document FROM hostctl_contexts WHERE type = %s "
                              "ORDER BY name", (type_name,))
        else:
            rows = self._rows("SELECT name, document FROM hostctl_contexts ORDER BY name")
        found: list[Context] = []
        problems: list[MalformedFile] = []
        for bare, doc in rows:
            try:
                found.append(self._decode(str(bare), doc))
            except MalformedFile as exc:
                problems.append(exc)
        if problems:
            if malformed is None:
                raise problems[0]
            malformed.extend(problems)
        return found

    def watch(self) -> bool:
        return False  # every listing is one query: nothing to keep

    def _read(self, bare: str) -> Context | None:
        rows = self._rows("SELECT document FROM hostctl_contexts WHERE name = %s", (bare,))
        return self._decode(bare, rows[0][0]) if rows else None

    @staticmethod
    def _decode(bare: str, doc: Any) -> Context:
        try:
            if not isinstance(doc, dict):
                raise InvalidInput("not a JSON object")
            return decode_document(bare, doc)
        except (InvalidInput, ValueError) as exc:
            raise MalformedFile(f"malformed context {display(bare)} in the cluster's "
                                f"database: {' '.join(str(exc).split())}") from None

    def _host_claims(self, *, rewrite: bool) -> Mapping[str, tuple[str, ...]]:
        return {str(bare): tuple(hosts) for bare, hosts in
                self._rows("SELECT name, hosts FROM hostctl_contexts WHERE type = 'site'")}

    # -- writing ----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One transaction holding the contexts' write lock. A connection found lost as
        the transaction begins is made again; one lost during it fails the write whole
        (the server rolled it back)."""
        self._rows("SELECT 1")  # a lost connection is noticed (and made again) here
        conn = self._connection()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                self._in_write = True
                try:
                    yield
                finally:
                    self._in_write = False
        except psycopg.Error as exc:
            raise self._failed(exc) from None

    def _write(self, ctx: Context) -> None:
        hosts = sorted(host_names(ctx.name, ctx.schema, ctx.values)) if ctx.type == "site" \
            else []
        self._rows("INSERT INTO hostctl_contexts (name, type, document, hosts) "
                   "VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT (name) DO UPDATE SET "
                   "type = EXCLUDED.type, document = EXCLUDED.document, "
                   "hosts = EXCLUDED.hosts",
                   (ctx.name, ctx.type, json.dumps(document(ctx)), hosts))

    def _remove(self, bare: str) -> None:
        self._rows("DELETE FROM hostctl_contexts WHERE name = %s", (bare,))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
