"""Built-in task types, by context type (docs/provision.md tells what each does):

    server     verify
    platform   verify, delete, lock, unlock
    site       install, verify, backup, restore, delete, disable, enable, clone, migrate,
               login-reset, cron, ssl

Each function runs in a child of the worker, prints what it does (the task's log), fills
``rc.result`` and returns an exit code: 0 when all is well (warnings make the task end in
``warning``), 1 when it failed. Types that must not simply run again after their worker
was lost mid-way (they create or remove things) say so with ``rerun_on_loss=False``.

``cron`` and ``backup``, the types the periodic queues run, are the built-ins that
config.toml may replace: a ``[tasks.cron]`` or ``[tasks.backup]`` command type takes the
built-in's place (and the queue then queues that). The backups that restore, delete,
clone and migrate make first are always the built-in kind.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hostctl.contexts.store import Context, ContextStore
from hostctl.provision.tasktype import RunContext, TaskFunction, TaskType

if TYPE_CHECKING:
    from hostctl.provision.secrets import SecretStore

#: built-in types that a config.toml command type of the same name replaces: the ones the
#: periodic queues run, which an administrator may want done their own way
REPLACEABLE = frozenset({"cron", "backup"})


class _Lazy:
    """A task function named by ``module:function`` (in hostctl.provision), imported on
    first use: ``task add`` and the CLI's start-up need a type's name, options and help,
    not its code (Registry.load_functions imports it in a worker before it forks)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fn: TaskFunction | None = None

    def load(self) -> TaskFunction:
        if self._fn is None:
            module, _, name = self.target.partition(":")
            self._fn = getattr(importlib.import_module(f"hostctl.provision.{module}"), name)
        return self._fn

    def __call__(self, rc: RunContext) -> int | None:
        return self.load()(rc)


def _by_context_type(rc: RunContext) -> int | None:
    """verify and delete: the function of that name in the context type's module."""
    return _Lazy(f"{rc.context.type}:{rc.type}").load()(rc)


def _load_all() -> None:
    for module in ("server", "platform", "site"):
        importlib.import_module(f"hostctl.provision.{module}")


_by_context_type.load = _load_all  # type: ignore[attr-defined]


class _LazyWanted:
    """A periodic queue's ``wanted`` check named by ``function`` in wanted.py, imported on
    first use (it reads manifests: a periodic queue needs it, ``task add`` does not)."""

    def __init__(self, name: str) -> None:
        self.target = _Lazy(f"wanted:{name}")

    def __call__(self, ctx: Context, store: ContextStore, secrets: SecretStore) -> bool:
        check: Any = self.target.load()
        return bool(check(ctx, store, secrets))


def _type(name: str, contexts: tuple[str, ...], help_text: str, function: Any,
          timeout: float, rerun: bool = True, wanted: Any = None,
          **options: str) -> TaskType:
    if isinstance(function, str):
        function = _Lazy(function)
    return TaskType(name, contexts, help_text, options=options, function=function,
                    timeout=timeout, rerun_on_loss=rerun, wanted=wanted)


TYPES = (
    _type("verify", ("server", "platform", "site"),
          "check a context's folders, services and settings; regenerate and fix what is "
          "safe to (a site's vhost, secrets file, permissions)", _by_context_type, 600),
    _type("lock", ("platform",), "lock a platform: it accepts no new sites",
          "platform:lock", 60),
    _type("unlock", ("platform",), "unlock a platform", "platform:unlock", 60),
    _type("delete", ("platform", "site"),
          "delete a site (a backup first; vhost, database, files and context go; it must "
          "be disabled first) or a platform (refused while it has sites, unless forced)",
          _by_context_type, 3600, rerun=False,
          force="platform only; yes: also delete its sites (each backed up first)"),
    _type("install", ("site",),
          "install a site: its folder, database and user, the platform's install "
          "command, its vhost; undone entirely if a step fails", "site:install", 3600,
          rerun=False, reinstall="yes: back up and remove an installed site first"),
    _type("backup", ("site",), "archive the site's files and a database dump under "
          "HOME/backups", "site:backup_task", 3600, wanted=_LazyWanted("installed")),
    _type("restore", ("site",), "restore a backup (the current state is backed up first)",
          "site:restore", 3600, rerun=False,
          file="the backup: a file name in HOME/backups (default: the newest)"),
    _type("disable", ("site",), "disable a site: its vhost answers a 'site disabled' page",
          "site:disable", 300),
    _type("enable", ("site",), "enable a site: its vhost serves it again", "site:enable", 300),
    _type("clone", ("site",), "copy a site to a new uri: a new site context with its own "
          "files and database", "site:clone", 3600, rerun=False,
          new_uri="the copy's address", new_name="the copy's context (default: new_uri)"),
    _type("migrate", ("site",), "move a site to another platform, uri or database server; "
          "the old copy is removed", "site:migrate", 3600, rerun=False,
          platform="the platform to move to", new_uri="a new address",
          db_server="a database server to move the database to"),
    _type("login-reset", ("site",), "a one-time login link from the platform's "
          "login_link command", "site:login_reset", 300),
    _type("cron", ("site",), "run the platform's cron command for the site", "site:cron", 600,
          wanted=_LazyWanted("cron_wanted")),
    _type("ssl", ("site",), "get the site's HTTPS certificate, or renew it when it is due "
          "(ssl_enabled; the periodic ssl queue runs it)", "site:ssl", 900,
          wanted=_LazyWanted("ssl_wanted")),
)
