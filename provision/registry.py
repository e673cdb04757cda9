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

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from hostctl.config import Config
from hostctl.contexts.store import Context, ContextStore
from hostctl.errors import InvalidInput, NotFound, NotJudgedYet
from hostctl.provision import builtin
from hostctl.provision.tasktype import TaskType

if TYPE_CHECKING:
    from hostctl.provision.tasktype import TaskRequest

log = logging.getLogger("hostctl")

PLUGIN_GROUP = "hostctl.tasks"


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

    def validate(self, env: TaskRequest, store: ContextStore) -> tuple[TaskType, Context]:
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
        # a value saved before a rule existed fails the task naming its field (without
        # options, the context just read is the one checked: no second read)
        if env.context_options:
            store.check_save(ctx.name, env.context_options)
        else:
            store.check_actionable(ctx)
        return ttype, ctx

    def check_envelope(self, store: ContextStore) -> Callable[[TaskRequest], None]:
        """A spool ``check`` that refuses what can never run (unknown type or context,
        invalid options) and, for a front end's submission (one with a submitter: it came
        through the drop box), a context option outside ``[frontend] context_options``."""
        allowed = frozenset(self.config.frontend.context_options)

        def check(env: TaskRequest) -> None:
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

    def find(self, name: str) -> TaskType | None:
        """The type of that name, or None (no error: a queued task's type may be gone)."""
        return self._find(name)

    def timeout(self, ttype: TaskType) -> float:
        return ttype.timeout or self.config.worker.timeout


def load(config: Config, plugins: bool = True) -> Registry:
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
                found.append(replace(item, source=f"plugin:{ep.value}"))
        except Exception as exc:  # a broken plugin must not stop the others
            log.warning("plugin %s (%s) not loaded: %s", ep.name, ep.value, exc)
    return found
