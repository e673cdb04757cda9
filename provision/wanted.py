"""The periodic queues' checks: does this site want a run of that type now? A site that
is not installed needs no backup, a platform without a cron command no cron, a site
without HTTPS from the ACME CA no certificate renewal (see TaskType.wanted).
"""

from __future__ import annotations

import os

from hostctl.contexts.names import parse_name
from hostctl.contexts.store import Context, ContextStore
from hostctl.provision import app
from hostctl.provision.secrets import SecretStore


def installed(ctx: Context, store: ContextStore, secrets: SecretStore) -> bool:
    return secrets.installed(ctx.name)


_HAS_CRON: dict[tuple[str, int, int, int], bool] = {}  # manifest identity -> has cron


def cron_wanted(ctx: Context, store: ContextStore, secrets: SecretStore) -> bool:
    """Installed, on a platform whose manifest has a cron command (each manifest parsed
    again only when it changes: a periodic queue asks for every site)."""
    if not installed(ctx, store, secrets):
        return False
    platform = store.get(parse_name(str(ctx.get("platform"))))
    path, _ = app.manifest_path(platform)
    try:
        st = os.stat(path)
        key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is not None and key in _HAS_CRON:
        return _HAS_CRON[key]
    found = "cron" in app.load(platform).commands
    if key is not None:
        _HAS_CRON[key] = found
    return found


def ssl_wanted(ctx: Context, store: ContextStore, secrets: SecretStore) -> bool:
    """Installed, HTTPS asked for, its certificate from the ACME CA (not the operator's)."""
    return bool(ctx.get("ssl_enabled")) and not ctx.get("ssl_key") and \
        installed(ctx, store, secrets)
