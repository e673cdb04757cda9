"""``provision-TYPE``: a task run now, in the foreground, through the same queue and runner
as a queued one (so it waits for a task running on its context, and is recorded alike)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TextIO

from hostctl.contexts.routing import server_of
from hostctl.errors import Conflict
from hostctl.queues.model import Task
from hostctl.runners.home import Home
from hostctl.runners.lifecycle import build
from hostctl.runners.worker import Summary, Worker


def run_now(home: Home, type_name: str, context: str, options: Mapping[str, str],
            echo: TextIO | None = None,
            notice: Callable[[str], object] = lambda _text: None) -> tuple[Task, Summary]:
    """Run a task in the foreground (provision-TYPE), through the same queue and runner."""
    env = build(home, type_name, context, options, {}, 9)
    if home.config.cluster.dsn and home.server:
        serves = server_of(home.store, env.context)
        if serves not in (None, home.server):
            raise Conflict(f"{env.context} is served by {serves}, and this host is "
                           f"{home.server}: run it there, or queue it (hostctl task add)")
    queue = home.writable()
    worker = Worker.of(home, echo=echo)
    # a dead worker's task found on the context is recovered by its type's rules, and
    # its end gets its notices, as a sweep's would
    queue.recovery(home.policy, worker.notices)
    if queue.context_busy(env.context):
        notice(f"waiting for the task running on {env.context}")
    claim = queue.publish_claimed(env, wait=True)
    summary = worker.run_claim(claim)
    return queue.get(env.id), summary
