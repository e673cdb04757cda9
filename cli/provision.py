"""``hostctl provision-TYPE @NAME [--OPTION VALUE]...``: run a task now, in the foreground.

One command per known task type (built-in, config.toml, plugins), made when the command
line names it, so that the home's config decides which exist.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from hostctl.cli.common import complete_context, state
from hostctl.cli.output import emit_json
from hostctl.cli.save import HELP_SETTINGS, field_args
from hostctl.contexts.schema import FALSE_WORDS, TRUE_WORDS
from hostctl.errors import ExitStatus, HostctlError, InvalidInput
from hostctl.runners.home import Home

PREFIX = "provision-"


def provision_task(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(
        metavar="@NAME [--OPTION VALUE]...", help="The context, then the task's options.",
        autocompletion=complete_context, show_default=False)] = None,
) -> int:
    st = state(ctx)
    home = Home(st.paths)
    type_name = (ctx.info_name or "").removeprefix(PREFIX)
    declared = {k.replace("-", "_"): k for k in _declared_options(home, type_name)}
    # --json is hostctl's own, unless the task type declares an option of that name
    own_json = "json" not in declared
    name, options = field_args(
        ctx, list(args or []), flag=lambda key: own_json and key == "json",
        what=f"{PREFIX}{type_name}",
        spelling=lambda key: declared.get(key.replace("-", "_"), key))
    json_ = own_json and _flag("json", options.pop("json", "false"))
    from hostctl.runners.foreground import run_now  # the worker: loaded only to run one

    # with --json, stdout holds the task's document alone: its output goes to stderr
    task, summary = run_now(
        home, type_name, name, options, echo=sys.stderr if json_ else sys.stdout,
        notice=lambda text: None if st.quiet else print(f"hostctl: {text}", file=sys.stderr))
    label = task.status.label
    if json_:
        emit_json(task.to_json())
    if label != "success" or not st.quiet:  # -q: only what went wrong
        print(f"hostctl: {type_name} on {task.envelope.context}: {label} (task {task.id})"
              + (f": {task.reason}" if task.reason and label != "success" else ""),
              file=sys.stderr)
    return ExitStatus.of_outcome(label)


def _flag(name: str, value: str) -> bool:
    """A flag of hostctl's own among a task's options: alone, or =true/=false."""
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise InvalidInput(f"--{name} is hostctl's own flag: it takes no value but true or "
                       f"false, not {value!r}")


def _declared_options(home: Home, type_name: str) -> list[str]:
    """The option names the task type declares, as written (``dry-run`` stays dashed)."""
    try:
        return list(home.registry.get(type_name).options)
    except HostctlError:
        return []


def make_command(type_name: str, help_text: str, options: dict[str, str]) -> Any:
    """A click command for one task type, from the generic provision_task."""
    sub = typer.Typer(add_completion=False, rich_markup_mode=None)
    epilog = ("Options: " + ", ".join(f"--{k}" + (f" ({v})" if v else "")
                                      for k, v in options.items()) + ". " if options else ""
              ) + ("--json: print the task as task show --json gives it (its output then "
                   "goes to stderr)." if "json" not in options else "")
    sub.command(
        f"{PREFIX}{type_name}",
        help=help_text,
        epilog=epilog,
        context_settings=HELP_SETTINGS,
    )(provision_task)
    return typer.main.get_command(sub)
