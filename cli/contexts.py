"""``hostctl context list|show``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hostctl.cli.common import JsonFlag, complete_context, state, table
from hostctl.cli.output import emit_json
from hostctl.contexts.schema import TYPES, Field, Kind, context_type
from hostctl.contexts.store import Context, listing
from hostctl.runners.home import Home

app = typer.Typer(help="List and show contexts (servers, platforms, sites).",
                  no_args_is_help=True)


def _summary(ctx: Context) -> str:
    key = {"server": "remote_host", "platform": "root", "site": "uri"}[ctx.type]
    parts = [str(ctx.get(key))]
    if ctx.type == "site":
        parts.append(f"on {ctx.get('platform')}")
    return " ".join(parts)


def _complete_type(incomplete: str) -> list[str]:
    return [t for t in TYPES if t.startswith(incomplete)]


@app.command("list")
def list_(
    ctx: typer.Context,
    type_: Annotated[str | None, typer.Option(
        "--type", help="Only contexts of this type: server, platform or site.",
        autocompletion=_complete_type)] = None,
    json_: JsonFlag = False,
) -> None:
    """List the contexts, sorted by name."""
    found = listing(Home(state(ctx).paths).store, type_)
    if json_:
        sys.stdout.write(_json_list([one.json for one in found]) + "\n")  # as emit_json
    elif found:
        typer.echo(table([(c.display_name, c.type, _summary(c))
                          for c in (one.context for one in found)],
                         ("NAME", "TYPE", "DETAIL")))


def _json_list(items: list[str]) -> str:
    """The list of rendered objects, as ``json.dump(..., indent=2)`` writes it (each
    rendering is a whole document at indent 2; in a list it is indented once more:
    JSON strings never hold a raw newline)."""
    if not items:
        return "[]"
    return "[\n" + ",\n".join("  " + item.replace("\n", "\n  ") for item in items) + "\n]"


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The context, as @NAME.",
                                        autocompletion=complete_context)],
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Print secret fields instead of masking them.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Show one context with every field, defaults included."""
    found = Home(state(ctx).paths).store.get(name)
    if json_:
        emit_json(found.to_json(show_secrets))
        return
    values = found.effective(show_secrets)
    rows = [(k, _text(v) + ("" if k in found.values else "  (default)"))
            for k, v in values.items()]
    typer.echo(f"{found.display_name} ({found.type})")
    typer.echo(table(rows, ("FIELD", "VALUE")))


def _text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value) if value else "-"
    return str(value)


@app.command("fields")
def fields(
    type_: Annotated[str | None, typer.Argument(
        metavar="[TYPE]", help="server, platform or site (default: all three).",
        autocompletion=_complete_type, show_default=False)] = None,
    json_: JsonFlag = False,
) -> None:
    """List the fields each context type takes, with kind and default."""
    types = [context_type(type_)] if type_ else list(TYPES.values())
    if json_:
        emit_json({t.name: [_field_json(f) for f in t.fields.values()] for t in types})
        return
    for t in types:
        typer.echo(f"{t.name}: {t.help}")
        rows = [(f"--{f.name}", _kind(f), _default(f), f.help) for f in t.fields.values()]
        typer.echo(table(rows, ("FIELD", "KIND", "DEFAULT", "MEANING")))
        typer.echo("")


def _kind(f: Field) -> str:
    if f.kind is Kind.REF:
        return f"@{f.ref_type}"
    if f.kind is Kind.CHOICE:
        return "|".join(f.choices)
    return str(f.kind.value) + (" secret" if f.secret else "")


def _default(f: Field) -> str:
    if f.required:
        return "(required)"
    if callable(f.default):
        return "(derived)"
    return _text(f.default)


def _field_json(f: Field) -> dict[str, object]:
    return {
        "name": f.name,
        "kind": f.kind.value,
        "help": f.help,
        "required": f.required,
        "secret": f.secret,
        "default": None if callable(f.default) else f.default,
        "choices": list(f.choices),
        "ref_type": f.ref_type or None,
    }
