"""Task types: built-in, declared in config.toml as commands, or from installed plugins.

A plugin is a distribution with an entry point in the group ``hostctl.tasks`` whose object
is a :class:`TaskType` (or a function returning one, or a list of them)::

    [project.entry-points."hostctl.tasks"]
    purge-cache = "mypkg.tasks:purge_cache"        # a TaskType

A built-in or plugin type runs its ``function`` in a child of the already-loaded worker;
a command type execs its argv directly. Either way the task's output goes to its log and
its structured result to the file named by ``$HOSTCTL_RESULT``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hostctl.config import CommandTask, Config
from hostctl.contexts.names import display, parse_name
from hostctl.contexts.store import Context, ContextStore
from hostctl.errors import InvalidInput, NotFound, NotJudgedYet
from hostctl.paths import Paths
from hostctl.queues.spool import Policy
from hostctl.queues.task import Envelope

log = logging.getLogger("hostctl")

PLUGIN_GROUP = "hostctl.tasks"


@dataclass
class RunContext:
    """What a task function gets, in the child process that runs it."""

    task_id: str
    type: str
    context: Context
    options: Mapping[str, str]
    paths: Paths
    store: ContextStore
    result: dict[str, Any] = field(default_factory=dict)

    def say(self, message: str) -> None:
        print(message, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", flush=True)
        self.result.setdefault("warnings", []).append(message)


TaskFunction = Callable[[RunContext], int | None]
#: for the periodic queues: does this context want a run of this type now? (a site that
#: is not installed needs no backup, a platform without a cron command no cron)
Wanted = Callable[[Context, ContextStore, Paths], bool]


@dataclass(frozen=True)
class TaskType:
    name: str
    context_types: tuple[str, ...]
    help: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    function: TaskFunction | None = None
    command: CommandTask | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    rerun_on_loss: bool = True  # a run cut off by a dead worker may simply run again
    source: str = "builtin"
    wanted: Wanted | None = None  # None: every enabled site (see Wanted)


class Registry:
    """Every task type known to this hostctl, by name.

    Plugin types are looked up (``plugins``, a scan of the installed distributions' entry
    points that costs tens of milliseconds) only when something needs them: a name that
    is neither built in nor in config.toml, or the whole list. A plugin cannot take the
    name of a built-in or config type, so a known name never needs the scan.
    """

    def __init__(self, types: Iterable[TaskType], config: Config,
                 plugins: Callable[[], list[TaskType]] | None = None) -> None:
        self._types = {t.name: t for t in types}
        self.config = config
        self._plugins = plugins

    @property
    def types(self) -> dict[str, TaskType]:
        """Every type, the plugins' included."""
        if self._plugins is not None:
            found, self._plugins = self._plugins(), None
            for ttype in found:
                if ttype.name in self._types:
                    log.warning("plugin task type %s ignored: the name is taken", ttype.name)
                    continue
                self._types[ttype.name] = ttype
        return self._types

    def _find(self, name: str) -> TaskType | None:
        found = self._types.get(name)
        return found if found is not None else self.types.get(name)

    def names(self) -> list[str]:
        return sorted(self.types)

    def load_functions(self) -> None:
        """Import every type's code now (a worker, before it forks children): a built-in
        type's module is otherwise loaded on its first call, which would be in each
        child, and not at all by commands that only queue tasks."""
        for ttype in self.types.values():
            load = getattr(ttype.function, "load", None)
            if load is not None:
                load()

    def get(self, name: str) -> TaskType:
        found = self._find(name)
        if found is None:
            raise InvalidInput(
                f"unknown task type {name!r}; known types: {', '.join(self.names())}"
            )
        return found

    def for_context_type(self, context_type: str) -> list[TaskType]:
        return [t for t in self.types.values() if context_type in t.context_types]

    def validate(self, env: Envelope, store: ContextStore) -> tuple[TaskType, Context]:
        """Check a request: known type, existing context of a type it applies to, declared
        options, and context options that provision-save would accept (known fields, values
        of their kind, references to existing contexts of the right type, no required field
        reset), without saving them. Raises InvalidInput or NotFound."""
        ttype = self.get(env.type)
        ctx = store.get(env.context)
        if ctx.type not in ttype.context_types:
            raise InvalidInput(
                f"a {ttype.name} task does not apply to a {ctx.type} "
                f"(it applies to: {', '.join(ttype.context_types)})"
            )
        for key, value in env.options.items():
            if key not in ttype.options:
                known = ", ".join(sorted(ttype.options)) or "none"
                raise InvalidInput(
                    f"option {key!r} is not declared by the {ttype.name} task "
                    f"(its options: {known})"
                )
            if "\x00" in value:
                raise InvalidInput(f"option {key!r} contains a NUL byte")
            try:  # the bytes of a command-line item (a 0xff byte, kept as \udcff, is)
                os.fsencode(value)
            except UnicodeEncodeError:
                raise InvalidInput(f"option {key!r} is not text a command line can carry "
                                   "(a lone surrogate)") from None
        # the context options as a save takes them, then every stored value by its kind:
        # a value saved before a rule existed fails the task naming its field
        store.check_save(ctx.name, env.context_options)
        return ttype, ctx

    def check_envelope(self, store: ContextStore) -> Callable[[Envelope], None]:
        """A spool ``check`` that refuses what can never run (unknown type or context,
        invalid options) and, for a front end's submission (one with a submitter: it came
        through the drop box), a context option outside ``[frontend] context_options``."""
        allowed = frozenset(self.config.frontend.context_options)

        def check(env: Envelope) -> None:
            if self._find(env.type) is None:  # a type this configuration has not (yet)
                raise NotJudgedYet(f"unknown task type {env.type!r}")
            try:
                self.validate(env, store)
            except NotFound as exc:
                raise InvalidInput(str(exc)) from None
            if env.submitter is not None:
                refused = sorted(k for k in env.context_options
                                 if k.replace("-", "_") not in allowed)
                if refused:
                    raise InvalidInput(
                        f"a front end may not set {refused[0]!r}; it may set: "
                        f"{', '.join(sorted(allowed)) or 'no field'}")

        return check

    def policy(self, env: Envelope) -> Policy:
        w = self.config.worker
        ttype = self._find(env.type)
        return Policy(
            max_attempts=(ttype.max_attempts if ttype and ttype.max_attempts else
                          w.max_attempts),
            rerun_on_loss=ttype.rerun_on_loss if ttype else True,
            backoff_base=w.backoff_base,
            backoff_max=w.backoff_max,
        )

    def timeout(self, ttype: TaskType) -> float:
        return ttype.timeout or self.config.worker.timeout


def load(config: Config, plugins: bool = True) -> Registry:
    from hostctl.provision import builtin

    types: dict[str, TaskType] = {t.name: t for t in builtin.TYPES}
    for name, spec in config.tasks.items():
        if name in types and name not in builtin.REPLACEABLE:
            raise InvalidInput(f"config.toml: [tasks.{name}] redefines a built-in task type")
        types[name] = TaskType(
            name=name, context_types=spec.context_types,
            help=spec.help or f"runs {spec.command[0]}", options=spec.options,
            command=spec, timeout=spec.timeout, max_attempts=spec.max_attempts,
            rerun_on_loss=spec.rerun_on_loss, source="config",
        )
    return Registry(types.values(), config, _plugin_types if plugins else None)


def _plugin_types() -> list[TaskType]:
    from importlib.metadata import entry_points

    found: list[TaskType] = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, TaskType):
                obj = obj()
            items = obj if isinstance(obj, list | tuple) else [obj]
            for item in items:
                if not isinstance(item, TaskType):
                    raise TypeError(f"{item!r} is not a TaskType")
                from dataclasses import replace

                found.append(replace(item, source=f"plugin:{ep.value}"))
        except Exception as exc:  # a broken plugin must not stop the others
            log.warning("plugin %s (%s) not loaded: %s", ep.name, ep.value, exc)
    return found


def write_result(path: str, result: Mapping[str, Any]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, default=str)
    except OSError as exc:
        print(f"hostctl: cannot write the task's result: {exc}", file=sys.stderr)


def context_values(ctx: Context, store: ContextStore) -> dict[str, str]:
    """A context's fields as strings (lists comma-joined), plus derived ones."""
    out: dict[str, str] = {"name": ctx.name, "context": display(ctx.name), "type": ctx.type}
    for key, value in ctx.effective(show_secrets=True).items():
        out[key] = _as_text(value)
    if ctx.type == "site" and isinstance(ctx.get("platform"), str):
        try:
            platform = store.get(parse_name(str(ctx.get("platform"))))
            out.setdefault("root", _as_text(platform.get("root")))
            out["root"] = _as_text(platform.get("root"))
        except (NotFound, InvalidInput):
            pass
    return out


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def secret_values(ctx: Context, store: ContextStore) -> tuple[bytes, ...]:
    """The secret field values of a context and of the contexts it refers to, longest
    first (to be redacted from task logs); values under 4 bytes are left alone."""
    from hostctl.contexts.schema import secret_field_names

    names = secret_field_names()
    found: set[bytes] = set()
    seen: set[str] = set()
    todo = [ctx]
    while todo:
        cur = todo.pop()
        if cur.name in seen:
            continue
        seen.add(cur.name)
        for key, value in cur.effective(show_secrets=True).items():
            if key in names and isinstance(value, str) and len(value.encode()) >= 4:
                found.add(value.encode())
            elif isinstance(value, str) and value.startswith("@") and len(seen) < 8:
                try:
                    todo.append(store.get(parse_name(value)))
                except (NotFound, InvalidInput):
                    pass
        if cur.type == "site":  # what install made: the site's database password
            from hostctl.provision.secrets import values

            found.update(v.encode() for v in values(store.paths, cur.name)
                         if len(v.encode()) >= 4)
    return tuple(sorted(found, key=len, reverse=True))
