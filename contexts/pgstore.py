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
from contextlib import contextmanager, suppress
from typing import Any, LiteralString

from hostctl.contexts.names import display, parse_name
from hostctl.contexts.schema import context_type
from hostctl.contexts.store import (
    Context,
    StoreRules,
    decode_document,
    document,
    host_names,
)
from hostctl.database import Session
from hostctl.errors import InvalidInput, MalformedFile

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
        self.db = Session(dsn, "contexts table")
        #: within reading(): bare name -> the context as read (None: there is none)
        self._memo: dict[str, Context | None] | None = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        if self._memo is not None:
            yield
            return
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    def prime(self, bare: str, doc: Any) -> None:
        """Within :meth:`reading`: the document of ``bare`` as another statement read it
        a moment ago (a worker's claim reads its task's context with it); else nothing."""
        if self._memo is not None and bare not in self._memo:
            with suppress(MalformedFile):  # read again, and reported, by whoever asks
                self._memo[bare] = None if doc is None else self._decode(bare, doc)

    # -- reading ----------------------------------------------------------------------

    def names(self) -> list[str]:
        return [str(n) for (n,) in self.db.rows("SELECT name FROM hostctl_contexts "
                                                "ORDER BY name")]

    def exists(self, name: str) -> bool:
        return bool(self.db.rows("SELECT 1 FROM hostctl_contexts WHERE name = %s",
                                 (parse_name(name),)))

    def of_type(self, type_name: str | None = None,
                malformed: list[MalformedFile] | None = None) -> list[Context]:
        if type_name is not None:
            context_type(type_name)
            rows = self.db.rows("SELECT name, document FROM hostctl_contexts "
                                "WHERE type = %s ORDER BY name", (type_name,))
        else:
            rows = self.db.rows("SELECT name, document FROM hostctl_contexts ORDER BY name")
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
        memo = self._memo
        if memo is not None and bare in memo:
            return memo[bare]
        rows = self.db.rows("SELECT document FROM hostctl_contexts WHERE name = %s", (bare,))
        ctx = self._decode(bare, rows[0][0]) if rows else None
        if memo is not None:
            memo[bare] = ctx
        return ctx

    @staticmethod
    def _decode(bare: str, doc: Any) -> Context:
        try:
            if not isinstance(doc, dict):
                raise InvalidInput("not a JSON object")
            return decode_document(
                bare, doc, f"context {display(bare)} in the cluster's database")
        except (InvalidInput, ValueError) as exc:
            raise MalformedFile(f"malformed context {display(bare)} in the cluster's "
                                f"database: {' '.join(str(exc).split())}") from None

    def _host_claims(self, *, rewrite: bool) -> Mapping[str, tuple[str, ...]]:
        return {str(bare): tuple(hosts) for bare, hosts in
                self.db.rows("SELECT name, hosts FROM hostctl_contexts WHERE type = 'site'")}

    # -- writing ----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # a read-modify-write reads what is stored now, and what it changes is read
        # afresh after it: whatever a reading() scope kept is forgotten, and not kept
        memo, self._memo = self._memo, None
        try:
            with self.db.transaction(_LOCK):
                yield
        finally:
            if memo is not None:
                self._memo = {}

    def _write(self, ctx: Context) -> None:
        hosts = sorted(host_names(ctx.name, ctx.schema, ctx.values)) if ctx.type == "site" \
            else []
        self.db.rows("INSERT INTO hostctl_contexts (name, type, document, hosts) "
                     "VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT (name) DO UPDATE SET "
                     "type = EXCLUDED.type, document = EXCLUDED.document, "
                     "hosts = EXCLUDED.hosts",
                     (ctx.name, ctx.type, json.dumps(document(ctx)), hosts))

    def _remove(self, bare: str) -> None:
        self.db.rows("DELETE FROM hostctl_contexts WHERE name = %s", (bare,))

    def close(self) -> None:
        self.db.close()
