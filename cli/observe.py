"""``hostctl metrics`` (the queue's figures for Prometheus, runners/metrics.py) and
``hostctl serve`` (them and a status page over HTTP, runners/serve.py)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from hostctl.cli.common import state
from hostctl.errors import OperationFailed
from hostctl.files import write_atomic
from hostctl.runners import metrics as figures
from hostctl.runners import serve as serve_mod
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


def serve(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(
        "--listen", metavar="ADDR",
        help="HOST:PORT, [V6]:PORT or unix:PATH (default 127.0.0.1:8470; port 0: any "
             "free one).")] = serve_mod.DEFAULT_LISTEN,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", metavar="FILE",
        help="A private file holding the token every request must carry (needed off "
             "loopback; or HOSTCTL_SERVE_TOKEN).")] = None,
) -> None:
    """Serve /metrics and a read-only status page over HTTP until stopped (TERM, INT)."""
    server = serve_mod.StatusServer(state(ctx).paths, serve_mod.parse_listen(listen),
                                    serve_mod.read_token(token_file))

    def stop(_signo: int, _frame: object) -> None:
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = server.address
    url = where if where.startswith("unix:") else f"http://{where}/"
    typer.echo(f"hostctl: serving {url} (read-only)", err=True)
    try:
        server.serve_forever()
    finally:
        server.close()
