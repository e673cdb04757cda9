"""``hostctl metrics``: the queue's figures for Prometheus (runners/metrics.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hostctl.cli.common import state
from hostctl.errors import OperationFailed
from hostctl.files import write_atomic
from hostctl.runners import metrics as figures
from hostctl.runners.home import Home


def metrics(
    ctx: typer.Context,
    write: Annotated[Path | None, typer.Option(
        "--write", metavar="FILE",
        help="Replace FILE with them at once instead (a node exporter's textfile "
             "collector reads *.prom files).")] = None,
) -> None:
    """Print the queue's figures in Prometheus's text format: attempts by task type and
    outcome, their durations, queue depths, the oldest ready task's age, workers alive,
    what was set aside, each periodic queue's last run."""
    text = figures.render(figures.collect(Home(state(ctx).paths)))
    if write is None:
        typer.echo(text, nl=False)
        return
    try:
        write_atomic(write, text.encode(), mode=0o644, durable=False)
    except OSError as exc:
        raise OperationFailed(f"cannot write {write}: {exc.strerror or exc}") from None
