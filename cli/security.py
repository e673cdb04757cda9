"""``hostctl frontend setup`` (the drop box for a front-end group) and ``hostctl doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hostctl.cli import output, privileged
from hostctl.cli.common import JsonFlag, say, state
from hostctl.cli.output import emit_json
from hostctl.errors import HostctlError, ProblemsFound
from hostctl.paths import Paths
from hostctl.queues import dropbox
from hostctl.runners.doctor import Finding, check
from hostctl.runners.home import Home
from hostctl.text import printable

frontend_app = typer.Typer(help="The front end's door: the spool's drop box.",
                           no_args_is_help=True)


@frontend_app.command("setup")
def frontend_setup(
    ctx: typer.Context,
    group: Annotated[str, typer.Option(
        "--group", "-g", help="The front end's UNIX group (for example www-data).")],
) -> None:
    """Let GROUP submit tasks and read their receipts, and nothing else of the home."""
    st = state(ctx)
    changes = dropbox.setup(st.paths, group)
    for line in changes:
        say(st, f"changed {line}")
    say(st, f"group {group} may now submit tasks to {st.paths.home} "
            "(docs/security.md); check with `hostctl doctor`")


def doctor(
    ctx: typer.Context,
    fix: Annotated[bool, typer.Option(
        "--fix", help="Repair wrong modes, groups and (as root) owners.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Check the home's owners and modes (and the spool's file system); --fix repairs."""
    st = state(ctx)
    try:
        allow = Home(st.paths).config.spool.allow_network_filesystem
    except HostctlError:
        allow = False
    findings = check(st.paths, fix=fix, allow_network=allow)
    findings += _privileged_findings(st.paths, fix)
    findings += _cluster_findings(st.paths, fix)
    left = [f for f in findings if not f.fixed]
    if json_:
        emit_json([f.to_json() for f in findings])
    else:
        for f in findings:
            why = f" (not fixed, {f.cannot_fix})" if f.cannot_fix else ""
            typer.echo(f"{'fixed' if f.fixed else 'PROBLEM'}: {printable(str(f.path))}: "
                       f"{printable(f.problem)}{why}")
        if not findings:
            say(st, f"{st.paths.home}: owners and modes are as they should be")
    if left:
        raise ProblemsFound(f"{len(left)} problem(s) found"
                            + ("; each says why it is not fixed" if fix
                               else "; `hostctl doctor --fix` repairs what it can"))


def _privileged_findings(paths: Paths, fix: bool) -> list[Finding]:
    """For each server that runs PHP sites: what keeps its privileged helper from working
    or from being safe (provision/services/php.py)."""
    # the web and database services' code: loaded by doctor alone
    from hostctl.provision.services.php import PhpFpm

    found: list[Finding] = []
    try:
        servers = Home(paths).store.of_type("server")
    except HostctlError:
        return found
    seen: set[tuple[str, str]] = set()
    for server in servers:
        if server.get("php_service_type") != "php-fpm":
            continue
        php = PhpFpm(server, paths)
        key = (str(php.settings_path), str(server.get("privileged_command") or ""))
        if key in seen:
            continue
        seen.add(key)
        for path, problem in php.problems(_helper_code()):
            found.append(Finding(path, f"{server.display_name}: {problem}", False,
                                 "doctor changes nothing outside the home" if fix else ""))
    return found


def _cluster_findings(paths: Paths, fix: bool) -> list[Finding]:
    """For a home in a cluster: its database reachable, holding this host's schema."""
    try:
        dsn = Home(paths).config.cluster.dsn
    except HostctlError:
        return []
    if not dsn:
        return []
    from hostctl.runners import cluster  # the database's code: for a cluster home alone

    why = "doctor changes nothing outside the home" if fix else ""
    try:
        found = cluster.status(dsn)
    except HostctlError as exc:
        return [Finding(paths.config_file, f"[cluster] dsn: {exc.message}", False, why)]
    if found.ready:
        return []
    have = ", ".join(f"{k} {v}" for k, v in sorted(found.schema.items())) or "none"
    return [Finding(paths.config_file, f"the cluster's database {found.database} holds "
                    f"schema {have}, not this host's: run `hostctl cluster init`", False, why)]


def _helper_code() -> list[Path]:
    """The files of the command line that sudo runs for the privileged helper (the
    console script's module, which imports this one's parent, is found, not imported)."""
    from importlib.util import find_spec

    entry = find_spec("hostctl.cli.entry")
    return [Path(f) for f in (output.__file__, privileged.__file__,
                              entry.origin if entry else None) if f]
