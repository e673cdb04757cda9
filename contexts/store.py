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
context edited by hand included), and a missing or damaged index is rebuilt.
"""

from __future__ import annotations

import json
import os
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hostctl import inotify as ino
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
from hostctl.paths import Paths
from hostctl.times import utc_iso

FORMAT = 1
LOCK_TIMEOUT = 60.0
INDEX = ".hosts.json"
INDEX_FORMAT = 1
#: rewrite the index once a save has had to read this many context files afresh; below
#: that, reading them costs less than writing the whole index again
INDEX_REWRITE = 16
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
        # name -> (the file's identity when read, its context): a worker reads the same
        # context for every task on it, and parsing TOML costs ~50 us a time. Every write
        # is a rename of a new file, so a changed context has a new inode and mtime.
        self._cache: dict[str, tuple[tuple[int, int, int, int], Context]] = {}
        self._folder = str(self.folder)
        # With watch(): whole listings, kept until inotify reports any change in the
        # folder (a save, a delete, a file edited in place): an idle daemon's periodic
        # queues then list thousands of contexts without a system call per file.
        self._watch: Any = None
        self._lists: dict[str | None, tuple[list[Context], list[MalformedFile]]] = {}
        # the host name index as last read or made (see the module's docstring)
        self._index: dict[str, _Claim] | None = None
        self._index_behind = 0  # files read afresh since the index file was read or written

    def watch(self) -> bool:
        """Keep listings while the folder does not change (see above); False where inotify
        cannot watch it (no inotify, no folder yet): listings are then made every time."""
        if self._watch is not None:
            return True
        try:
            self._watch = ino.Inotify([self.folder], ino.CONTEXTS_MASK)
        except (OSError, AttributeError):
            return False
        self._lists.clear()
        return True

    def _listings_valid(self) -> bool:
        if self._watch is None:
            return False
        events = self._watch.events()
        if events:
            self._lists.clear()
            if any(mask & (ino.IN_IGNORED | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF
                           | ino.IN_Q_OVERFLOW) for _wd, mask, _name in events):
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
        if self._listings_valid() and type_name in self._lists:
            found, problems = self._lists[type_name]
        else:
            found, problems = [], []
            for bare in self.names():
                try:
                    ctx = self._read(bare)
                except MalformedFile as exc:
                    problems.append(exc)
                    continue
                if ctx is not None and (type_name is None or ctx.type == type_name):
                    found.append(ctx)
            if self._watch is not None:
                self._lists[type_name] = (found, problems)
        if problems:
            if malformed is None:
                raise problems[0]
            malformed.extend(problems)
        return list(found)

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
        passes it over)."""
        index_path = self.folder / INDEX
        old = self._index if self._index is not None else _load_index(index_path)
        fresh: dict[str, _Claim] = {}
        reread = 0
        for bare in self.names():
            try:
                st = os.stat(f"{self._folder}/{bare}.toml")
            except OSError:
                continue  # gone meanwhile, or unreadable: a listing passes it over too
            ident = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
            known = old.get(bare)
            if known is not None and known[0] == ident:
                fresh[bare] = known
                continue
            reread += 1
            try:
                ctx = self._read(bare)
            except MalformedFile:
                continue
            cached = self._cache.get(bare)
            if ctx is None or cached is None:
                continue
            # the identity of what was read: a file replaced after the stat above is
            # read again next time, never taken for the old one
            names = sorted(host_names(bare, ctx.schema, ctx.values)) if ctx.type == "site" \
                else []
            fresh[bare] = (cached[0], tuple(names))
        self._index = fresh
        self._index_behind += reread
        if rewrite and self._index_behind >= INDEX_REWRITE:
            _write_index(index_path, fresh)
            self._index_behind = 0
        return fresh

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
            ctx = _decode(bare, raw)
        except (InvalidInput, ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise MalformedFile(f"malformed context file {path}: {_one_line(exc)}") from exc
        self._cache[bare] = (key, ctx)
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


def _decode(bare: str, raw: bytes) -> Context:
    return decode_document(bare, tomllib.loads(raw.decode("utf-8")))


def decode_document(bare: str, doc: Mapping[str, Any]) -> Context:
    """A stored document read back, every value checked by its field's kind
    (InvalidInput saying what is wrong)."""
    if doc.get("format") != FORMAT:
        raise InvalidInput(f"unsupported format {doc.get('format')!r} (expected {FORMAT})")
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


_Claim = tuple[tuple[int, int, int, int], tuple[str, ...]]


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

