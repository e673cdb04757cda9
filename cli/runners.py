"""``hostctl dispatch`` and ``hostctl wait-queue``: the runners that drain the queue."""

from __future__ import annotations

from typing import Annotated

import typer

from hostctl.cli.common import say, state
from hostctl.queues import tasks as ops


def dispatch(ctx: typer.Context) -> None:
    """One pass: sweep lost tasks, admit dropped ones, run every ready task, exit."""
    st = state(ctx)
    summary = ops.drain(ops.Home(st.paths))
    say(st, _line(summary))


def wait_queue(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Drain what is due, then exit.")] = False,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, max=256, help="Tasks at once (default: from config).")] = None,
) -> None:
    """Run queued tasks as they come (with --once: drain and exit)."""
    st = state(ctx)
    summary = ops.drain(ops.Home(st.paths), concurrency)
    say(st, _line(summary))


def _line(summary: ops.Summary) -> str:
    ended = ", ".join(f"{n} {k}" for k, n in sorted(summary.finished.items())) or "none ended"
    return f"ran {summary.started} task(s): {ended}"
