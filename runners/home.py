"""The composition root: everything under one home, each part made on first use.

:class:`Home` is where the ground (paths, settings), the core (the context store, the task
registry, the queue backend) and the runners (the worker) are put together; the CLI and
every runner receive one and ask it for what they need.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from hostctl import config as config_mod
from hostctl.contexts.schema import field_names
from hostctl.contexts.store import ContextStore, TomlStore
from hostctl.paths import Paths
from hostctl.provision.registry import Registry
from hostctl.provision.registry import load as load_registry
from hostctl.provision.secrets import SecretStore
from hostctl.provision.secretstores import open_secrets
from hostctl.queues.model import Envelope, Policy
from hostctl.queues.spool import Spool

if TYPE_CHECKING:  # the seam: only its type is needed to compose
    from hostctl.queues.backend import QueueBackend


def open_store(paths: Paths, config: config_mod.Config) -> ContextStore:
    """The contexts: the cluster's database when the home is in one (``[cluster] dsn``),
    else the TOML files under the home."""
    if config.cluster.dsn:
        # psycopg and the cluster's code: loaded by a home in a cluster alone
        from hostctl.contexts.pgstore import PgStore

        return PgStore(config.cluster.dsn)
    return TomlStore(paths)


def retry_policy(registry: Registry) -> Callable[[Envelope], Policy]:
    """The queue's retry rules for a task: its type's (attempts, whether a run cut off by
    a dead worker may simply run again) over ``[worker]``'s (attempts, backoff)."""
    w = registry.config.worker

    def policy(env: Envelope) -> Policy:
        ttype = registry.find(env.type)
        return Policy(
            max_attempts=(ttype.max_attempts if ttype and ttype.max_attempts else
                          w.max_attempts),
            rerun_on_loss=ttype.rerun_on_loss if ttype else True,
            backoff_base=w.backoff_base,
            backoff_max=w.backoff_max,
        )

    return policy


class Home:
    """Everything under one home, loaded on first use."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    @cached_property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.paths.config_file, field_names())

    @cached_property
    def registry(self) -> Registry:
        return load_registry(self.config)

    @cached_property
    def policy(self) -> Callable[[Envelope], Policy]:
        return retry_policy(self.registry)

    @cached_property
    def store(self) -> ContextStore:
        return open_store(self.paths, self.config)

    @cached_property
    def secrets(self) -> SecretStore:
        """The sites' records: the cluster's database, or the files under the home."""
        return open_secrets(self.paths, self.config.cluster.dsn)

    @cached_property
    def queue(self) -> QueueBackend:
        """The task queue (the one backend there is: the spool under the home)."""
        return self.open_queue()

    def open_queue(self) -> QueueBackend:
        """A queue object of its own: a worker keeps its own view of the queue."""
        return Spool(self.paths.spool, self.paths.logs,
                     self.config.spool.allow_network_filesystem)

    def writable(self) -> QueueBackend:
        self.paths.ensure_home()
        self.queue.ensure()
        return self.queue
