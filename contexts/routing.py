"""Where a task on a context runs, in a cluster: on the server that serves the context.

A server's tasks run on that server; a platform's on its web server (else the server it
lives on); a site's on its platform's web server (else the platform's server), where its
vhost, its PHP pool and its files are. A context on no server (or none stored) has no
server: its tasks may run on any host.
"""

from __future__ import annotations

from hostctl.contexts.store import Context, ContextStore
from hostctl.errors import HostctlError


def server_of(store: ContextStore, name: str) -> str | None:
    """The server (``@web1``) a task on ``name`` runs on, or None."""
    ctx = _get(store, name)
    if ctx is None:
        return None
    if ctx.type == "server":
        return ctx.display_name
    if ctx.type == "site":
        ctx = _get(store, str(ctx.get("platform") or ""))
        if ctx is None:
            return None
    for field in ("web_server", "server"):
        ref = ctx.get(field)
        if ref:
            return str(ref)
    return None


def _get(store: ContextStore, name: str) -> Context | None:
    if not name:
        return None
    try:
        return store.get(name)
    except HostctlError:  # gone, malformed, a bad name: the task's own check says so
        return None
