"""``hostctl import aegir [PATH] [--dry-run] [--json]``: Aegir 3's contexts into hostctl's
(contexts/aegir.py; docs/aegir-import.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hostctl.cli.common import JsonFlag, state
from hostctl.cli.output import emit_json
from hostctl.contexts import aegir
from hostctl.contexts.names import shown
from hostctl.runners.home import Home

app = typer.Typer(help="Import contexts from another hosting system.", no_args_is_help=True)


@app.command("aegir")
def import_aegir(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(
        metavar="PATH", show_default=False,
        help="A folder of Aegir's *.alias.drushrc.php files, or one of them (default: "
             "~aegir/.drush).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would be saved; write nothing.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Save Aegir 3's servers, platforms and sites (its provision alias files, read,
    never run) as contexts: all of them, or nothing if any file is refused."""
    st = state(ctx)
    store = Home(st.paths).store
    files = aegir.alias_files(path if path is not None else aegir.default_folder())
    try:
        found = aegir.plan(files, store)
    except aegir.Refused as exc:
        if json_:
            emit_json({"dry_run": dry_run, "imported": False, "refused": [
                {"file": f, "reason": why} for f, why in exc.problems]})
        for where, why in exc.problems:
            place = where if where.isprintable() else repr(where)
            sys.stderr.write(f"hostctl: refused: {place}: {' '.join(why.split())}\n")
        raise
    if not dry_run:
        aegir.apply(found, store)
    if json_:
        emit_json(found.to_json(dry_run=dry_run))
        return
    _show(st.quiet, found, dry_run)


_VERB = {"saved": "would save", "updated": "would update", "unchanged": "unchanged",
         "skipped": "skipped"}


def _show(quiet: bool, found: aegir.Plan, dry_run: bool) -> None:
    for e in found.entries:
        verb = _VERB[e.action] if dry_run else e.action
        extra = f" (Aegir's {shown('@' + e.renamed_from)})" if e.renamed_from else ""
        typer.echo(f"{verb} {'@' + e.name} ({e.type}){extra} from {e.source}"
                   + (f": {e.note}" if e.note else ""))
        if quiet or e.action == "skipped":
            continue
        for m in e.mapped:
            mark = " *" if m.field in e.changes and e.action == "updated" else ""
            typer.echo(f"  {m.key} -> {m.field} = {_text(m.shown_value())}{mark}")
        for d in e.dropped:
            typer.echo(f"  {d.key}: dropped: {d.reason}")
    counts = found.to_json(dry_run=dry_run)["counts"]
    assert isinstance(counts, dict)
    summary = ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    typer.echo(f"{found.files} file(s): {summary or 'nothing'}"
               + ("; dry run: nothing written" if dry_run else ""))


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value) if value else "-"
    text = str(value)
    if text == "":
        return "''"
    return text if text.isprintable() and len(text) <= 200 else shown(text, 200)
