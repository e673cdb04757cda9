"""The context store: its interface (:class:`ContextStore`) and its implementation as one
TOML file per context under ``HOME/contexts/`` (:class:`TomlStore`).

File format (version 1)::

    format = 1
    name = "@example.com"
    type = "site"
    created = "2026-11-22T10:00:00Z"
    updated = "2026-11-22T10:05:00Z"

    [fields]            # only the fields set explicitly; the rest take their defaults
    platform = "@platform_app"
    aliases = ["www.example.com"]

Protocol: every write (create, update, delete) holds ``contexts/.lock`` (an flock, released
by the kernel if the writer dies) around its whole read-modify-write, so concurrent
``provision-save`` calls serialise and none loses another's change; one lock for the store
also keeps references whole (a platform cannot be deleted while a site that names it is
being saved). Files are replaced atomically (temp file, fsync, rename), so readers take no
lock and never see half a file.

No two sites may claim one host name (a uri or an alias). A save that gives a site names
checks them, under the lock, against every other site's; so that this does not read every
context file on every save, ``contexts/.hosts.json`` keeps each context file's identity
(inode, mtime, size, ctime) and the names it claims. It is only a cache: an entry counts
while its file's identity (one ``stat``) is unchanged, any other file is read again (a
context edited by hand included), and a missing or damaged index is rebuilt. A process
that saves many contexts (a bulk ``provision-save``, an import) watches the folder with
inotify once it holds many files: after its first pass it reads only the files that
inotify names, never a ``stat`` of every file on every save.

Listings (``context list``, the periodic queues) read ``contexts/.cache/listing.json``
(in a folder of its own, so that writing it never changes the identity of ``contexts/``):
the CRC-32 of the rest in hex on a line, one line of JSON, then the JSON rendering of every
context, back to back (UTF-8)::

    0123abcd
    {"format": 1, "folder": [INODE, MTIME_NS, CTIME_NS] or null,
     "contexts": [[NAME, [INODE, MTIME_NS, SIZE, CTIME_NS], TYPE, CREATED, UPDATED,
                   {FIELD: VALUE, ...}, BYTES], ...  [NAME, null], ...]}
    {RENDERING OF THE FIRST CONTEXT}{RENDERING OF THE NEXT}...

An entry counts while its file's identity (one ``stat``) is unchanged; any other file is
read again. ``folder`` is the folder's identity when the names were listed: while it is
unchanged no file was created, removed or renamed there, and the names need not be listed
again. A file (or the folder) changed less than two seconds before it was read may change
again within one tick of the file system's clock without changing its identity: it is
recorded without an identity (``[NAME, null]``: read again next time). The cache is
written atomically, by a listing that had to read files afresh, and only by the home's
owner; a missing, damaged or foreign-format cache is rebuilt, and a file is never read
through it once it changed.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from hostctl import __version__
from hostctl import inotify as ino
from hostctl.contexts import schema as schema_module
from hostctl.contexts.names import display, is_valid, parse_name
from hostctl.contexts.schema import NULL, TYPES, ContextType, Value, context_type
from hostctl.errors import (
    Conflict,
    InvalidInput,
    MalformedFile,
    NotFound,
    OperationFailed,
)
from hostctl.files import write_atomic
from hostctl.formats import check_format
from hostctl.paths import Paths
from hostctl.times import utc_iso

FORMAT = 1
LOCK_TIMEOUT = 60.0
INDEX = ".hosts.json"
INDEX_FORMAT = 1
#: rewrite the index once a save has had to read this many context files afresh; below
#: that, reading them costs less than writing the whole index again
INDEX_REWRITE = 16
#: from this many context files on, a process that checks host names twice watches the
#: folder (inotify) instead of taking a ``stat`` of every file each time
INDEX_WATCH_FROM = 256
LISTING = ".cache/listing.json"
LISTING_FORMAT = 1
_renderer: str | None = None


def _renderer_id() -> str:
    """What a cached rendering depends on besides its file: this hostctl's version and
    the code that renders a context (its schema: fields, defaults, which are secret). A
    cache another hostctl wrote is rebuilt, never shown: an upgrade that makes a field
    secret must not print it from a cache."""
    global _renderer
    if _renderer is None:
        digest = sha256(__version__.encode())
        for source in (schema_module.__file__, __file__):
            try:
                digest.update(Path(str(source)).read_bytes())
            except (OSError, TypeError):
                digest.update(str(source).encode())
        _renderer = digest.hexdigest()[:16]
    return _renderer
#: a file changed less than this before it was read may change again within one tick of
#: the file system's clock without changing its identity: it is not cached
RACY_NS = 2_000_000_000
SECRET_MASK = "********"


def utcnow() -> str:
    """Now, as contexts record it (whole seconds)."""
    return utc_iso(digits=0)


@dataclass(frozen=True)
class Context:
    """A context as stored: its explicitly set fields; defaults are filled on access."""

    name: str  # bare, without '@'
    type: str
    values: Mapping[str, Value]
    created: str
    updated: str

    @property
    def display_name(self) -> str:
        return display(self.name)

    @property
    def schema(self) -> ContextType:
        return TYPES[self.type]

    def get(self, field: str) -> Value | None:
        if field in self.values:
            return self.values[field]
        return self.schema.field(field).default_for(self.name)

    def effective(self, show_secrets: bool = False) -> dict[str, Value | None]:
        """Every field of the type, set or default; secrets masked unless asked for."""
        out: dict[str, Value | None] = {}
        for name, spec in self.schema.fields.items():
            value = self.get(name)
            if spec.secret and value and not show_secrets:
                value = SECRET_MASK
            out[name] = value
        return out

    def refers_to(self, bare: str) -> list[str]:
        """The reference fields of this context that name ``bare``."""
        target = display(bare)
        return [f.name for f in self.schema.references() if self.values.get(f.name) == target]

    def to_json(self, show_secrets: bool = False) -> dict[str, object]:
        return {
            "name": self.display_name,
            "type": self.type,
            "created": self.created,
            "updated": self.updated,
            "fields": self.effective(show_secrets),
        }


def render(ctx: Context) -> str:
    """The context as ``context show --json`` prints it (secrets masked), without the
    final newline: what a listing keeps of it."""
    return json.dumps(ctx.to_json(), indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class Listed:
    """A context in a listing, with its :func:`render` (kept by the listing cache, so
    that a listing of thousands of contexts does not render each one again)."""

    context: Context
    json: str


def listing(store: ContextStore, type_name: str | None = None) -> list[Listed]:
    """The contexts (of one type) by name, each with its rendering; from the store's
    listing cache where it has one."""
    if isinstance(store, TomlStore):
        return store.listing(type_name)
    return [Listed(c, render(c)) for c in store.of_type(type_name)]


@dataclass(frozen=True)
class SaveResult:
    context: Context
    created: bool
    changed: tuple[str, ...]


@dataclass(frozen=True)
class TakeReport:
    """What :meth:`StoreRules.take` did: the contexts it stored, those already there."""

    taken: tuple[str, ...]
    already: tuple[str, ...]

    def to_json(self) -> dict[str, list[str]]:
        return {"taken": [display(n) for n in self.taken],
                "already": [display(n) for n in self.already]}


class ContextStore(Protocol):
    """Where contexts are kept: what the core and the runners may ask of it. The TOML
    files under the home (:class:`TomlStore`) are one implementation; in a cluster the
    contexts cannot live in one host's folder, and another implementation keeps them."""

    def get(self, name: str) -> Context:
        """The context (NotFound if there is none; MalformedFile if it cannot be read)."""

    def exists(self, name: str) -> bool: ...

    def of_type(self, type_name: str | None = None,
                malformed: list[MalformedFile] | None = None) -> list[Context]:
        """The contexts (of one type), by name; an unreadable one raises MalformedFile,
        or, given a ``malformed`` list, is added to it and passed over."""

    def names(self) -> list[str]:
        """Bare names of the stored contexts, sorted."""

    def referrers(self, name: str) -> list[Context]:
        """The contexts that refer to this one."""

    def save(self, name: str, changes: Mapping[str, str], type_name: str | None = None,
             *, create_only: bool = False) -> SaveResult:
        """Create or update a context (``provision-save``), all validated first; saves
        never lose one another's changes."""

    def check_save(self, name: str, changes: Mapping[str, str]) -> Context:
        """What :meth:`save` would make of an existing context, without saving it."""

    def check_actionable(self, ctx: Context) -> None:
        """InvalidInput if a stored value of ``ctx`` (or of a context it refers to) breaks
        a rule of its kind."""

    def delete(self, name: str) -> Context:
        """Remove a context; refused while another refers to it."""

    def watch(self) -> bool:
        """Keep listings until the contexts change (a long-lived reader); False where the
        store cannot tell, and lists afresh each time."""

    def take(self, contexts: Iterable[Context]) -> TakeReport:
        """Store contexts from another store as they are (moving a home into a cluster
        and out of it), each checked as a save checks it."""

    def reading(self) -> AbstractContextManager[None]:
        """A scope in which each context is read from storage at most once (a worker's
        check and preparation of a task see one state of it); writes are never served
        from it. Nested scopes are one."""


class StoreRules(ABC):
    """What every context store does the same way, on top of its storage: the validation
    of a save (kinds, required fields, references, one host name per site), the refusal
    to delete what is referred to, the checks a task makes. A store gives the storage
    (the abstract methods below), and runs every write's read-modify-write under
    :meth:`_locked`."""

    def get(self, name: str) -> Context:
        bare = parse_name(name)
        ctx = self._read(bare)
        if ctx is None:
            raise NotFound(f"no context {display(bare)}")
        return ctx

    def referrers(self, name: str) -> list[Context]:
        bare = parse_name(name)
        return [c for c in self.of_type() if c.name != bare and c.refers_to(bare)]

    def reading(self) -> AbstractContextManager[None]:
        return nullcontext()  # reading a file again costs next to nothing

    # -- writing ----------------------------------------------------------------------

    def save(
        self,
        name: str,
        changes: Mapping[str, str],
        type_name: str | None = None,
        *,
        create_only: bool = False,
    ) -> SaveResult:
        """Create or update a context (provision-save).

        ``changes`` maps field names (either spelling) to command-line strings; the string
        ``null`` resets a field to its default. Everything is validated before anything is
        written: one bad value and the file is left as it was. With ``create_only`` a
        context of that name that exists (checked under the lock, so no other save can
        slip in between) is a Conflict, never an update.
        """
        bare = parse_name(name)
        wanted = context_type(type_name) if type_name is not None else None
        # Validate once before taking the lock: a refused save writes nothing at all,
        # not even the lock file of a fresh home. The lock-held pass below is the one
        # that counts.
        self._build(bare, changes, wanted, self._read(bare))
        with self._locked():
            old = self._read(bare)
            if old is not None and create_only:
                raise Conflict(f"{display(bare)} exists already")
            ctx, changed = self._build(bare, changes, wanted, old, locked=True)
            self._write(ctx)
        return SaveResult(ctx, created=old is None, changed=tuple(changed))

    def check_save(self, name: str, changes: Mapping[str, str]) -> Context:
        """What ``save(name, changes)`` would make of an existing context, validated as it
        validates (kinds, required fields, references, host names), without writing
        anything; then :meth:`check_actionable` on the result: a task checks its request
        with this, so a value saved before a rule existed fails it naming the field."""
        bare = parse_name(name)
        old = self._read(bare)
        if old is not None and not changes:
            ctx = old  # nothing to build: a reference to a context gone since is no error
        else:
            ctx = self._build(bare, changes, None, old)[0]
        self.check_actionable(ctx)
        return ctx

    def check_actionable(self, ctx: Context) -> None:
        """Raise InvalidInput naming the context and field if a stored value of ``ctx``, or
        of a context it refers to (its platform, its servers), breaks a rule of its kind:
        one saved before the rule existed, or written by hand. ``context show`` still
        shows such a value; a task cannot act on it."""
        seen: set[str] = set()
        todo = [ctx]
        while todo:
            one = todo.pop()
            if one.name in seen:
                continue
            seen.add(one.name)
            try:
                for key, value in one.values.items():
                    one.schema.fields[key].validate(value)
                if one.type == "site" and "uri" not in one.values:
                    one.schema.fields["uri"].validate(one.name)
            except InvalidInput as exc:
                raise InvalidInput(f"{one.display_name}: {exc} (correct it with "
                                   f"provision-save {one.display_name})") from None
            for spec in one.schema.references():
                target = one.values.get(spec.name)
                if isinstance(target, str):
                    try:
                        other = self._read(parse_name(target))
                    except MalformedFile:
                        continue  # reported as malformed by whoever needs it
                    if other is not None:
                        todo.append(other)

    def delete(self, name: str) -> Context:
        """Remove a context; refused while another context refers to it."""
        bare = parse_name(name)
        if self._read(bare) is None:
            raise NotFound(f"no context {display(bare)}")
        with self._locked():
            ctx = self._read(bare)
            if ctx is None:
                raise NotFound(f"no context {display(bare)}")
            users = [c for c in self.of_type() if c.name != bare and c.refers_to(bare)]
            if users:
                names = ", ".join(
                    f"{u.display_name} ({', '.join(u.refers_to(bare))})" for u in users
                )
                raise Conflict(f"cannot delete {display(bare)}: it is referred to by {names}")
            self._remove(bare)
        return ctx

    def take(self, contexts: Iterable[Context]) -> TakeReport:
        """Store contexts read from another store (``cluster import`` and ``export``) as
        they are: names, values and times. Under one lock, servers first, then platforms,
        then sites, each checked as a save checks it (references, host names) against
        what is here and what came before it. A context already here with the same type
        and values is left alone; one that differs is a Conflict naming it. Where the
        storage has transactions (the database), a refusal writes nothing at all."""
        rank = {name: n for n, name in enumerate(TYPES)}
        taken: list[str] = []
        already: list[str] = []
        with self._locked():
            for ctx in sorted(contexts, key=lambda c: (rank[c.type], c.name)):
                here = self._read(ctx.name)
                if here is not None:
                    if here.type != ctx.type or dict(here.values) != dict(ctx.values):
                        raise Conflict(f"{ctx.display_name} is on both sides and differs; "
                                       "make them agree (or delete one) first")
                    already.append(ctx.name)
                    continue
                self._check_complete(ctx.name, ctx.schema, ctx.values)
                if ctx.type == "site":
                    self._check_site_names(ctx.name, ctx.schema, ctx.values)
                    self._check_host_names(ctx.name, ctx.schema, ctx.values, locked=True)
                self._write(ctx)
                taken.append(ctx.name)
        return TakeReport(tuple(taken), tuple(already))

    # -- validation -------------------------------------------------------------------

    def _build(
        self,
        bare: str,
        changes: Mapping[str, str],
        wanted: ContextType | None,
        old: Context | None,
        *,
        locked: bool = False,
    ) -> tuple[Context, list[str]]:
        if old is None and wanted is None:
            raise InvalidInput(
                f"{display(bare)} does not exist; give --context_type "
                f"({', '.join(TYPES)}) to create it"
            )
        if old is not None and wanted is not None and wanted.name != old.type:
            raise Conflict(
                f"{display(bare)} is a {old.type}, not a {wanted.name}; "
                "delete it first to change its type"
            )
        schema = wanted if old is None else old.schema
        assert schema is not None
        values = dict(old.values) if old else {}
        changed = []
        for key, raw in changes.items():
            spec = schema.field(key)
            if raw == NULL:
                values.pop(spec.name, None)
            else:
                values[spec.name] = spec.parse(raw)
            changed.append(spec.name)
        self._check_complete(bare, schema, values)
        if schema.name == "site" and (old is None or {"uri", "aliases"} & set(changed)):
            self._check_site_names(bare, schema, values)
            self._check_host_names(bare, schema, values, locked=locked)
        now = utcnow()
        ctx = Context(
            name=bare,
            type=schema.name,
            values=values,
            created=old.created if old else now,
            updated=now,
        )
        return ctx, changed

    def _check_complete(self, bare: str, schema: ContextType, values: Mapping[str, Value]) -> None:
        missing = [f.name for f in schema.fields.values() if f.required and f.name not in values]
        if missing:
            raise InvalidInput(
                f"a {schema.name} needs " + ", ".join(f"--{m}" for m in missing)
            )
        for spec in schema.references():
            target = values.get(spec.name)
            if not isinstance(target, str):
                continue
            target_bare = parse_name(target)
            if target_bare == bare:
                raise InvalidInput(f"--{spec.name}: a context cannot refer to itself")
            other = self._read(target_bare)
            if other is None:
                raise NotFound(f"--{spec.name}: no context {target}")
            if other.type != spec.ref_type:
                raise InvalidInput(
                    f"--{spec.name}: {target} is a {other.type}, not a {spec.ref_type}"
                )

    @staticmethod
    def _check_site_names(bare: str, schema: ContextType, values: Mapping[str, Value]) -> None:
        """A site's own names: a uri that is a host name (its context name, when the uri
        is not set), and aliases that are other names than its uri (refused, not
        dropped: what is saved is what is served)."""
        uri = values.get("uri")
        if uri is None:
            try:
                schema.fields["uri"].parse(bare)
            except InvalidInput:
                raise InvalidInput(f"--uri: the site's name {bare} is not a host name; give "
                                   "the site a --uri") from None
            uri = bare
        aliases = values.get("aliases") or []
        if isinstance(aliases, list) and str(uri).lower() in (a.lower() for a in aliases):
            raise InvalidInput(f"--aliases: {uri} is the site's own uri, not an alias of it "
                               "(give --uri and --aliases together to swap them)")

    def _check_host_names(self, bare: str, schema: ContextType,
                          values: Mapping[str, Value], *, locked: bool = False) -> None:
        """No two sites may claim one host name (a uri or an alias), whoever saves: nginx
        would serve the name from one of them and only warn. Under the contexts lock when
        it counts (save), so that two saves cannot both take a name."""
        mine = host_names(bare, schema, values)
        for other, hosts in self._host_claims(rewrite=locked).items():
            if other == bare:
                continue
            taken = mine.intersection(hosts)
            if taken:
                name = sorted(taken)[0]
                raise Conflict(f"the host name {name} is taken by {display(other)} "
                               "(its uri or an alias); no two sites may have one name")

    # -- the storage ------------------------------------------------------------------

    @abstractmethod
    def names(self) -> list[str]:
        """Bare names of the stored contexts, sorted."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def of_type(self, type_name: str | None = None,
                malformed: list[MalformedFile] | None = None) -> list[Context]: ...

    @abstractmethod
    def watch(self) -> bool: ...

    @abstractmethod
    def _read(self, bare: str) -> Context | None:
        """The stored context, None if there is none; MalformedFile if it cannot be read."""

    @abstractmethod
    def _write(self, ctx: Context) -> None:
        """Store ``ctx`` whole (under :meth:`_locked`)."""

    @abstractmethod
    def _remove(self, bare: str) -> None:
        """Forget the context (under :meth:`_locked`)."""

    @abstractmethod
    def _locked(self) -> AbstractContextManager[None]:
        """Hold the store's one write lock (for a whole read-modify-write)."""

    @abstractmethod
    def _host_claims(self, *, rewrite: bool) -> Mapping[str, tuple[str, ...]]:
        """Every site's host names (its uri and aliases, lower-cased), by bare name."""


class TomlStore(StoreRules):
    """The contexts as TOML files under one home (see the module's docstring)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.folder = paths.contexts
        # name -> (the file's identity when read, its context, when it was read (ns)): a
        # worker reads the same context for every task on it, and parsing TOML costs
        # ~50 us a time. Every write is a rename of a new file, so a changed context has a
        # new inode and mtime.
        self._cache: dict[str, tuple[_Ident, Context, int]] = {}
        self._folder = str(self.folder)
        # With watch(): the whole listing, kept until inotify reports any change in the
        # folder (a save, a delete, a file edited in place): an idle daemon's periodic
        # queues then list thousands of contexts without a system call per file.
        self._watch: Any = None
        self._lists: tuple[list[Context], list[MalformedFile]] | None = None
        # the host name index as last read or made (see the module's docstring), and the
        # inotify watch that tells which files to look at again (a process saving many)
        self._index: dict[str, _Claim] | None = None
        self._index_behind = 0  # files read afresh since the index file was read or written
        self._index_watch: Any = None

    def watch(self) -> bool:
        """Keep listings while the folder does not change (see above); False where inotify
        cannot watch it (no inotify, no folder yet): listings are then made every time."""
        if self._watch is not None:
            return True
        try:
            self._watch = ino.Inotify([self.folder], ino.CONTEXTS_MASK)
        except (OSError, AttributeError):
            return False
        self._lists = None
        return True

    def _listings_valid(self) -> bool:
        if self._watch is None:
            return False
        events = self._watch.events()
        if events:
            self._lists = None
            if any(mask & _LOST for _wd, mask, _name in events):
                self._watch.close()  # the folder itself went, or events were lost
                self._watch = None
                return False
        return True

    # -- reading ----------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self.paths.context_file(parse_name(name)).exists()

    def of_type(
        self, type_name: str | None = None, malformed: list[MalformedFile] | None = None
    ) -> list[Context]:
        """The contexts (of one type), by name. A malformed file raises MalformedFile, or,
        when a ``malformed`` list is given, is added to it and passed over."""
        if type_name is not None:
            context_type(type_name)
        if self._listings_valid() and self._lists is not None:
            found, problems = self._lists
        else:
            entries, problems = self._list_all()
            found = [e.context for e in entries if e.context is not None]
            if self._watch is not None:
                self._lists = (found, problems)
        _report(problems, malformed)
        return [c for c in found if type_name is None or c.type == type_name]

    def listing(self, type_name: str | None = None,
                malformed: list[MalformedFile] | None = None) -> list[Listed]:
        """:meth:`of_type`, each context with its :func:`render`: through the listing
        cache, one file and a ``stat`` per context (see the module's docstring)."""
        if type_name is not None:
            context_type(type_name)
        entries, problems = self._list_all()
        _report(problems, malformed)
        return [Listed(e.context, e.text.decode()) for e in entries
                if e.context is not None and (type_name is None or e.context.type == type_name)]

    def _list_all(self) -> tuple[list[_Entry], list[MalformedFile]]:
        """Every readable context with its rendering, in name order, and the files that
        do not read; the listing cache is believed for each file whose identity it
        holds, and written again (by the home's owner) when it had to read others."""
        started = time.time_ns()
        try:
            folder_st = os.stat(self._folder)
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise OperationFailed(f"cannot read {self.folder}: {exc.strerror}") from exc
        folder = (folder_st.st_ino, folder_st.st_mtime_ns, folder_st.st_ctime_ns)
        # the folder's identity is recorded only once it is old enough that a change
        # after the names were listed cannot keep it (see RACY_NS)
        record = folder if folder_st.st_ctime_ns < started - RACY_NS else None
        cache_path = self.folder / LISTING
        old_folder, old = _load_listing(cache_path)
        names = list(old) if old_folder is not None and old_folder == folder else self.names()
        changed = record != old_folder or len(names) != len(old)
        found: list[_Entry] = []
        rows: list[tuple[str, _Entry]] = []  # what the cache is to hold
        problems: list[MalformedFile] = []
        try:
            dir_fd = os.open(self._folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise OperationFailed(f"cannot read {self.folder}: {exc.strerror}") from exc
        try:
            for bare in names:
                known = old.get(bare)
                try:
                    st: os.stat_result | None = os.stat(f"{bare}.toml", dir_fd=dir_fd)
                except FileNotFoundError:
                    changed = True  # gone since the names were listed
                    continue
                except OSError:
                    st = None  # _read below says what is wrong with it
                if (st is not None and known is not None and known.context is not None
                        and known.ident == _ident(st)):
                    found.append(known)
                    rows.append((bare, known))
                    continue
                entry = self._entry(bare, started, problems)
                if entry is None:
                    changed = True
                    continue
                if entry.context is not None:
                    found.append(entry)
                rows.append((bare, entry))
                changed = changed or known is None or known.ident != entry.ident
        finally:
            os.close(dir_fd)
        if changed and os.geteuid() == folder_st.st_uid:
            _write_listing(cache_path, record, rows)
        return found, problems

    def _entry(self, bare: str, started: int, problems: list[MalformedFile]) -> _Entry | None:
        """The listing's entry for a file read afresh (None: it is gone)."""
        try:
            ctx = self._read(bare)
        except MalformedFile as exc:
            problems.append(exc)
            return _Entry(None, None, b"")
        cached = self._cache.get(bare)
        if ctx is None or cached is None:
            return None
        ident = cached[0]  # the identity of what was read, not of a later stat
        # changed shortly before it was read (in this listing, or long before it, in
        # this process): an edit in place within one clock tick keeps the identity
        racy = ident[3] >= min(started, cached[2]) - RACY_NS
        return _Entry(None if racy else ident, ctx, render(ctx).encode())

    def stamp(self) -> str | None:
        """See :func:`stamp_of`: a word that changes whenever a context file is created,
        replaced (every save), renamed or removed; not when one is edited in place."""
        return stamp_of(self._folder)

    def names(self) -> list[str]:
        """Bare names of the stored contexts, sorted; stray files are passed over."""
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OperationFailed(f"cannot read {self.folder}: {exc.strerror}") from exc
        stems = (e[: -len(".toml")] for e in entries if e.endswith(".toml"))
        return sorted(s for s in stems if is_valid(s))

    def _claims(self, *, rewrite: bool) -> dict[str, _Claim]:
        """Every context's file identity and the host names it claims (a site's uri and
        aliases; nothing for the other types), from the index where a file is unchanged,
        else read afresh. With ``rewrite`` (under the lock) the index is written again
        when many files had to be read. A malformed file claims nothing (as a listing
        passes it over). Where the folder is watched (a process that checks many saves),
        only the files inotify named since the last pass are looked at."""
        index_path = self.folder / INDEX
        old = self._index if self._index is not None else _load_index(index_path)
        touched = self._index_touched()
        if touched is None:  # a pass over every file
            self._watch_index()  # first: a change during the pass is reported too
            names = self.names()
            if len(names) < INDEX_WATCH_FROM:
                self._unwatch_index()
            fresh: dict[str, _Claim] = {}
        else:
            names = sorted(touched)
            fresh = dict(old)
        reread = 0
        for bare in names:
            try:
                st = os.stat(f"{self._folder}/{bare}.toml")
            except OSError:
                fresh.pop(bare, None)
                continue  # gone meanwhile, or unreadable: a listing passes it over too
            known = old.get(bare)
            if known is not None and known[0] == _ident(st):
                fresh[bare] = known
                continue
            reread += 1
            fresh.pop(bare, None)
            try:
                ctx = self._read(bare)
            except MalformedFile:
                continue
            cached = self._cache.get(bare)
            if ctx is None or cached is None:
                continue
            # the identity of what was read: a file replaced after the stat above is
            # read again next time, never taken for the old one
            names_of = sorted(host_names(bare, ctx.schema, ctx.values)) \
                if ctx.type == "site" else []
            fresh[bare] = (cached[0], tuple(names_of))
        self._index = fresh
        self._index_behind += reread
        if rewrite and self._index_behind >= INDEX_REWRITE:
            _write_index(index_path, fresh)
            self._index_behind = 0
        return fresh

    def _index_touched(self) -> set[str] | None:
        """The context files inotify named since the index was last made; None when every
        file is to be looked at (no watch, no index yet, or events were lost)."""
        if self._index_watch is None or self._index is None:
            return None
        events = self._index_watch.events()
        if any(mask & _LOST for _wd, mask, _name in events):
            self._unwatch_index()
            return None
        return {name[: -len(".toml")] for _wd, _mask, name in events
                if name.endswith(".toml") and is_valid(name[: -len(".toml")])}

    def _watch_index(self) -> None:
        if self._index_watch is None:
            try:
                self._index_watch = ino.Inotify([self.folder], ino.CONTEXTS_MASK)
            except (OSError, AttributeError):
                self._index_watch = None  # no inotify, or no folder yet: passes over all

    def _unwatch_index(self) -> None:
        if self._index_watch is not None:
            self._index_watch.close()
            self._index_watch = None

    def _host_claims(self, *, rewrite: bool) -> Mapping[str, tuple[str, ...]]:
        return {bare: claim[1] for bare, claim in self._claims(rewrite=rewrite).items()}

    def _remove(self, bare: str) -> None:
        path = self.paths.context_file(bare)
        try:
            path.unlink()
        except OSError as exc:
            raise OperationFailed(f"cannot delete {path}: {exc.strerror}") from exc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout  # here: ~25 ms to import, for writes only

        self.paths.ensure_dir(self.folder)
        lock = FileLock(self.folder / ".lock", mode=0o600, timeout=LOCK_TIMEOUT)
        try:
            lock.acquire()
        except Timeout:
            raise OperationFailed(
                f"another hostctl has held {self.folder / '.lock'} for {LOCK_TIMEOUT:.0f} s"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _read(self, bare: str) -> Context | None:
        cached = self._cache.get(bare)
        if cached is not None:  # one stat, not an open, for a context read before
            try:
                st = os.stat(f"{self._folder}/{bare}.toml")
            except FileNotFoundError:
                self._cache.pop(bare, None)
                return None
            except OSError as exc:
                raise MalformedFile(f"cannot read {self.paths.context_file(bare)}: "
                                    f"{exc.strerror}") from exc
            if cached[0] == (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns):
                return cached[1]
        path = self.paths.context_file(bare)
        read_at = time.time_ns()
        try:
            # non-blocking: a FIFO put there by hand is malformed, not a hang
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            self._cache.pop(bare, None)
            return None
        except OSError as exc:
            raise MalformedFile(f"cannot read {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            key = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
            raw = _read_all(fd, st.st_size)
        except OSError as exc:
            raise MalformedFile(f"cannot read {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        try:
            ctx = _decode(bare, raw, path)
        except (InvalidInput, ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise MalformedFile(f"malformed context file {path}: {_one_line(exc)}") from exc
        self._cache[bare] = (key, ctx, read_at)
        return ctx

    def _write(self, ctx: Context) -> None:
        import tomli_w  # here: only writes need it

        path = self.paths.context_file(ctx.name)
        try:
            write_atomic(path, tomli_w.dumps(document(ctx)).encode())
        except OSError as exc:
            raise OperationFailed(f"cannot write {path}: {exc.strerror}") from exc


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, max(size + 1, 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def document(ctx: Context) -> dict[str, Any]:
    """A context as stored, whatever the storage (a TOML file, a row's JSON)."""
    return {
        "format": FORMAT,
        "name": ctx.display_name,
        "type": ctx.type,
        "created": ctx.created,
        "updated": ctx.updated,
        "fields": dict(ctx.values),
    }


def _decode(bare: str, raw: bytes, where: Path) -> Context:
    return decode_document(bare, tomllib.loads(raw.decode("utf-8")), where)


def decode_document(bare: str, doc: Mapping[str, Any], where: object = None) -> Context:
    """A stored document read back, every value checked by its field's kind
    (InvalidInput saying what is wrong; NewerFormat, naming ``where``, for a document a
    newer hostctl wrote)."""
    problem = check_format(doc.get("format"), FORMAT, where or f"context {display(bare)}")
    if problem:
        raise InvalidInput(problem)
    if doc.get("name") != display(bare):
        raise InvalidInput(f"it names {doc.get('name')!r}, not {display(bare)}")
    type_name = doc.get("type")
    if not isinstance(type_name, str) or type_name not in TYPES:
        raise InvalidInput(f"unknown type {type_name!r}")
    schema = TYPES[type_name]
    fields = doc.get("fields", {})
    if not isinstance(fields, dict):
        raise InvalidInput("[fields] is not a table")
    values: dict[str, Value] = {}
    for key, value in fields.items():
        if key not in schema.fields:
            raise InvalidInput(f"unknown field {key!r} for a {type_name}")
        try:
            values[key] = schema.fields[key].check(value)
        except InvalidInput as exc:
            raise InvalidInput(f"field {key!r}: {exc}") from None
    for stamp in ("created", "updated"):
        if not isinstance(doc.get(stamp), str):
            raise InvalidInput(f"{stamp!r} is missing")
    return Context(bare, type_name, values, doc["created"], doc["updated"])


def host_names(bare: str, schema: ContextType, values: Mapping[str, Value]) -> set[str]:
    """A site's uri (its name when unset) and aliases, lower-cased."""
    uri = values.get("uri", schema.fields["uri"].default_for(bare))
    aliases = values.get("aliases") or []
    names = {str(uri).lower()} if uri else set()
    if isinstance(aliases, list):
        names.update(a.lower() for a in aliases)
    return names


_Ident = tuple[int, int, int, int]  # inode, mtime, size, ctime: a file as read
_Claim = tuple[_Ident, tuple[str, ...]]
#: inotify's word that the folder itself went, or that events were lost
_LOST = ino.IN_IGNORED | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF | ino.IN_Q_OVERFLOW


def stamp_of(path: str | Path) -> str | None:
    """The identity of a file or folder (inode, mtime, ctime) as one word, "-" if there is
    none; None if it cannot be trusted: it changed less than RACY_NS ago, and may change
    again within one tick of the file system's clock without changing its times."""
    now = time.time_ns()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "-"
    except OSError:
        return None
    if st.st_ctime_ns >= now - RACY_NS:
        return None
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _ident(st: os.stat_result) -> _Ident:
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


class _Entry(NamedTuple):
    """A name in the listing: the identity of the file its context was read from (None:
    read it again next time), the context (None: the file does not read), its
    :func:`render` as UTF-8."""

    ident: _Ident | None
    context: Context | None
    text: bytes


def _report(problems: list[MalformedFile], malformed: list[MalformedFile] | None) -> None:
    if problems:
        if malformed is None:
            raise problems[0]
        malformed.extend(problems)


def _load_listing(path: Path) -> tuple[tuple[int, int, int] | None, dict[str, _Entry]]:
    """The listing cache: the folder's recorded identity and the entries by name, in
    order; nothing at all if it is missing or damaged in any way (it is rebuilt)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO: damaged
        try:
            raw = _read_all(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        start = raw.index(b"\n") + 1
        if int(raw[:start], 16) != zlib.crc32(memoryview(raw)[start:]):
            return None, {}
        end = raw.index(b"\n", start)
        doc = json.loads(raw[start:end])
        if doc["format"] != LISTING_FORMAT or doc.get("renderer") != _renderer_id():
            return None, {}
        folder = doc["folder"]
        if folder is not None:
            folder = (folder[0], folder[1], folder[2])
        out: dict[str, _Entry] = {}
        pos = end + 1
        for item in doc["contexts"]:
            if len(item) == 2:
                bare, ident = item
                if type(bare) is not str or ident is not None:
                    return None, {}
                out[bare] = _Entry(None, None, b"")
                continue
            # an identity of the wrong shape never equals a file's: that file is read
            bare, ident, type_name, created, updated, values, size = item
            if (type(bare) is not str or type(created) is not str
                    or type(updated) is not str or type(values) is not dict
                    or type(size) is not int or size < 0 or type_name not in TYPES):
                return None, {}
            out[bare] = _Entry(tuple(ident), Context(bare, type_name, values, created, updated),
                               raw[pos:pos + size])
            pos += size
        if pos != len(raw):
            return None, {}
        return folder, out
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError):
        return None, {}


def _write_listing(path: Path, folder: tuple[int, int, int] | None,
                   rows: list[tuple[str, _Entry]]) -> None:
    items: list[list[Any]] = []
    texts: list[bytes] = []
    for bare, e in rows:
        if e.ident is None or e.context is None:
            items.append([bare, None])
            continue
        c = e.context
        items.append([bare, list(e.ident), c.type, c.created, c.updated, dict(c.values),
                      len(e.text)])
        texts.append(e.text)
    head = json.dumps({"format": LISTING_FORMAT, "renderer": _renderer_id(),
                       "folder": list(folder) if folder else None,
                       "contexts": items}, separators=(",", ":"))
    rest = b"".join([head.encode(), b"\n", *texts])
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        # a cache: not worth an fsync, and not worth failing a listing for
        write_atomic(path, b"%08x\n" % zlib.crc32(rest) + rest, durable=False)
    except OSError:
        pass


def _load_index(path: Path) -> dict[str, _Claim]:
    """The host name index, or nothing if it is missing or damaged (it is rebuilt)."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != INDEX_FORMAT:
            return {}
        out: dict[str, _Claim] = {}
        for bare, (ident, names) in doc["contexts"].items():
            if (isinstance(bare, str) and isinstance(ident, list) and len(ident) == 4
                    and all(type(i) is int for i in ident) and isinstance(names, list)
                    and all(isinstance(n, str) for n in names)):
                out[bare] = ((ident[0], ident[1], ident[2], ident[3]), tuple(names))
        return out
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return {}


def _write_index(path: Path, claims: Mapping[str, _Claim]) -> None:
    doc = {"format": INDEX_FORMAT,
           "contexts": {bare: [list(ident), list(names)]
                        for bare, (ident, names) in claims.items()}}
    try:
        # a cache: not worth an fsync, and not worth failing a save for
        write_atomic(path, json.dumps(doc, separators=(",", ":")).encode(), durable=False)
    except OSError:
        pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

