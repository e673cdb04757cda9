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
from hostctl.contexts.names import display, parse_name
from hostctl.contexts.routing import server_of
from hostctl.contexts.schema import field_names
from hostctl.contexts.store import ContextStore, TomlStore
from hostctl.errors import Conflict
from hostctl.paths import Paths
from hostctl.provision.registry import Registry
from hostctl.provision.registry import load as load_registry
from hostctl.provision.secrets import SecretStore
from hostctl.provision.secretstores import open_secrets
from hostctl.queues.model import DEFAULT_QUEUE, Envelope, Policy
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
    """Everything under one home, loaded on first use. ``server``: the server context this
    host is in a cluster (``--server``), over ``[cluster] server``."""

    def __init__(self, paths: Paths, server: str = "") -> None:
        self.paths = paths
        self._server = server

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
    def server(self) -> str:
        """The server this host is in its cluster (``@web1``), or "" (every server's
        tasks); InvalidInput for a name that is no context name."""
        name = self._server or self.config.cluster.server
        return display(parse_name(name)) if name else ""

    @cached_property
    def queue(self) -> QueueBackend:
        """The task queue: the cluster's when the home is in one, else the spool."""
        return self.open_queue()

    def open_queue(self) -> QueueBackend:
        """A queue object of its own: a worker keeps its own view of the queue."""
        if self.config.cluster.dsn:
            # psycopg and the cluster's queue: loaded by a home in a cluster alone
            from hostctl.contexts.pgstore import PgStore
            from hostctl.queues.pgqueue import PgQueue

            store = self.store

            def route(env: Envelope) -> str:
                return server_of(store, env.context) or DEFAULT_QUEUE

            server = self.server
            queues = ([] if not self.config.cluster.run_tasks else
                      [server, DEFAULT_QUEUE] if server else None)
            return PgQueue(self.config.cluster.dsn, self.paths.spool, self.paths.logs,
                           route=route, server=server, queues=queues,
                           prime=store.prime if isinstance(store, PgStore) else None,
                           route_by_contexts=isinstance(store, PgStore))
        return Spool(self.paths.spool, self.paths.logs,
                     self.config.spool.allow_network_filesystem)

    def check_server(self) -> None:
        """This host's server, if it names one, is a server context of the cluster
        (NotFound, Conflict): a worker for a server that does not exist would take
        nothing, silently."""
        if not self.server:
            return
        ctx = self.store.get(self.server)
        if ctx.type != "server":
            raise Conflict(f"{self.server} is a {ctx.type}, not a server: --server and "
                           "[cluster] server name the server this host is")

    def writable(self) -> QueueBackend:
        self.paths.ensure_home()
        self.queue.ensure()
        return self.queue
