"""``hostctl provision-save @NAME [--context_type TYPE] [--FIELD VALUE]... [--delete]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from hostctl.cli.common import JsonFlag, complete_context, say, state
from hostctl.cli.output import emit_json
from hostctl.cli.secretinput import HELP as SECRET_HELP
from hostctl.cli.secretinput import read_secrets
from hostctl.contexts.schema import TYPES, Kind, all_field_names
from hostctl.errors import InvalidInput
from hostctl.runners.home import Home

_BOOL_WORDS = {"1", "0", "true", "false", "yes", "no", "on", "off", "y", "n", "null"}
_FIELD_LIST = ", ".join(all_field_names())


def _bool_field(key: str) -> bool:
    return any(
        key in t.fields and t.fields[key].kind is Kind.BOOL for t in TYPES.values()
    )


def _field_spelling(key: str) -> str:
    return key.replace("-", "_")


#: the options that ask for help: these commands read them themselves, where an option
#: name goes, so that ``--language -h`` is a value, not a call for help (click would take
#: ``-h`` anywhere)
HELP_SETTINGS = {"ignore_unknown_options": True, "allow_extra_args": True,
                 "help_option_names": []}


def field_args(ctx: typer.Context, tokens: list[str], **how: Any) -> tuple[str, dict[str, str]]:
    """:func:`parse_field_args`, or the command's help (exit 0) for a ``--help`` or ``-h``
    where an option name goes."""
    try:
        return parse_field_args(tokens, **how)
    except _HelpWanted:
        typer.echo(ctx.get_help())
        raise typer.Exit(0) from None


class _HelpWanted(Exception):
    pass


def parse_field_args(
    tokens: list[str],
    flag: Callable[[str], bool] = _bool_field,
    what: str = "provision-save",
    spelling: Callable[[str], str] = _field_spelling,
) -> tuple[str, dict[str, str]]:
    """Split ``@NAME --field value --other=value`` into the name and the field changes.

    A value that starts with ``--`` must be written ``--field=--value``; a boolean field
    given alone (``--site_enabled``) means true. A field given twice is refused.
    ``spelling`` maps an option as typed to its canonical name (for context fields, the
    dashed spelling to the underscored one).
    """
    name: str | None = None
    changes: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token in ("--help", "-h"):
            raise _HelpWanted
        if token.startswith("-") and not token.startswith("--") and len(token) > 1:
            raise InvalidInput(f"unknown option {token!r} (hostctl's own options, such as "
                               "-v, -q and --home, go before the command)")
        if not token.startswith("--"):
            if name is not None:
                raise InvalidInput(f"one context at a time: got {name} and {token}")
            name = token
            continue
        key, eq, value = token[2:].partition("=")
        key = spelling(key)
        if not key:
            raise InvalidInput(f"malformed option {token!r}")
        if not eq:
            following = tokens[i] if i < len(tokens) else None
            if flag(key) and (following is None or following.lower() not in _BOOL_WORDS):
                value = "true"
            elif following is None or following.startswith("--"):
                raise InvalidInput(
                    f"--{key} needs a value (write --{key}=VALUE for a value that starts "
                    "with --)"
                )
            else:
                value = following
                i += 1
        if key in changes:
            raise InvalidInput(f"--{key} is given twice")
        changes[key] = value
    if name is None:
        raise InvalidInput(f"name the context: hostctl {what} @NAME ...")
    return name, changes


def provision_save(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(
        metavar="@NAME [--FIELD VALUE]...", help="The context, then its fields.",
        autocompletion=complete_context, show_default=False)] = None,
    context_type: Annotated[str | None, typer.Option(
        "--context_type", "--context-type", metavar="TYPE",
        help="server, platform or site; needed to create, optional to update.")] = None,
    delete: Annotated[bool, typer.Option(
        "--delete", help="Delete the context (refused while another refers to it).")] = False,
    json_: JsonFlag = False,
) -> None:
    """Create or update a context; --FIELD null resets a field to its default."""
    st = state(ctx)
    name, changes = field_args(ctx, list(args or []))
    store = Home(st.paths).store
    if delete:
        if changes or context_type:
            raise InvalidInput("--delete takes no fields")
        gone = store.delete(name)
        if json_:
            emit_json(gone.to_json())
        else:
            say(st, f"Deleted {gone.display_name} ({gone.type})")
        return
    # a secret given as - or @FILE is read here: it never is on the command line
    result = store.save(name, read_secrets(changes), context_type)
    if json_:
        emit_json(result.context.to_json())
        return
    c = result.context
    if result.created:
        say(st, f"Created {c.display_name} ({c.type})")
    elif result.changed:
        say(st, f"Updated {c.display_name} ({c.type}): {', '.join(result.changed)}")
    else:
        say(st, f"Unchanged {c.display_name} ({c.type})")


HELP_EPILOG = ("Fields: " + _FIELD_LIST + ". See 'hostctl context fields' for each type. "
               + SECRET_HELP)
