"""What every command shares: the per-invocation state, output helpers, completions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import typer

from hostctl.paths import Paths, resolve_home


@dataclass(frozen=True)
class State:
    """Resolved once by the root command and handed to every sub-command."""

    paths: Paths
    verbose: int = 0
    quiet: bool = False


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if isinstance(obj, State):
        return obj
    return State(Paths(resolve_home(None)))


JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


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
    from hostctl.contexts.store import ContextStore
    from hostctl.errors import HostctlError

    try:
        home = ctx.find_root().params.get("home")
        store = ContextStore(Paths(resolve_home(home)))
        prefix = incomplete.removeprefix("@")
        return [f"@{n}" for n in store.names() if n.startswith(prefix)]
    except (HostctlError, OSError):
        return []
