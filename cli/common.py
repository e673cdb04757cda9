"""What every command shares: the per-invocation state, output helpers, completions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from hostctl.cli import grammar as g
from hostctl.cli.begin import State
from hostctl.errors import HostctlError
from hostctl.paths import Paths, resolve_home
from hostctl.runners.home import Home


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if isinstance(obj, State):
        return obj
    return State(Paths(resolve_home(None)))


JsonFlag = Annotated[bool, typer.Option(*g.JSON.names, help=g.JSON.help)]


def say(st: State, text: str) -> None:
    """Human output that --quiet silences."""
    if not st.quiet:
        typer.echo(text)


def table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def complete_context(ctx: typer.Context, incomplete: str) -> list[str]:
    """Context names from the home the command line names (or the default one)."""
    try:
        home = ctx.find_root().params.get("home")
        store = Home(Paths(resolve_home(home))).store
        prefix = incomplete.removeprefix("@")
        return [f"@{n}" for n in store.names() if n.startswith(prefix)]
    except (HostctlError, OSError):
        return []
