"""``hostctl privileged``: the privileged helper's command line (provision/privileged.py).

It is reached before the typer CLI (cli/entry.py): the helper runs as root through sudo,
so it loads no command-line library, reads no home and no environment, and takes exactly::

    hostctl privileged SETTINGS ACTION ARG...     as root (sudo): one action
    hostctl privileged SETTINGS batch             as root (sudo): several (JSON on stdin)
    hostctl privileged --sudoers SETTINGS [USER]  prints the sudoers line for USER (the
                                                  back end; default: who runs it)

The action's stdin is its content (a settings file, a pool's directives). It prints one
line of what it did; errors are one line on stderr with hostctl's exit codes.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

from hostctl.cli.output import guarded
from hostctl.errors import ExitStatus, InvalidInput, OperationFailed
from hostctl.provision import privileged

USAGE = ("usage: hostctl privileged SETTINGS ACTION ARG... (as root, through sudo) | "
         "hostctl privileged --sudoers SETTINGS [USER]")


def main(argv: list[str]) -> int:
    """Run the helper; return its exit code (errors: one line, through cli/output.py)."""
    return guarded(lambda: _run(argv), lambda: False)


def _run(argv: list[str]) -> int:
    try:
        if argv[:1] == ["--sudoers"] and len(argv) in (2, 3):
            user = argv[2] if len(argv) == 3 else pwd.getpwuid(os.getuid()).pw_name
            print(privileged.sudoers_line(Path(argv[1]), user, sys.executable))
            return ExitStatus.OK
        if len(argv) < 2 or argv[0].startswith("-"):
            raise InvalidInput(USAGE)
        if os.geteuid() != 0:
            raise InvalidInput("hostctl privileged acts only as root (through sudo)")
        settings = privileged.load(argv[0])
        caller = os.environ.get("SUDO_UID", "0") if os.getuid() == 0 else str(os.getuid())
        if caller not in ("0", str(settings.backend_ids[0])):
            who = "root" if settings.backend_user == "root" else \
                f"{settings.backend_user} (or root)"
            raise InvalidInput(f"only {who} may use this helper")
        stdin = sys.stdin.buffer.read(privileged.SETTINGS_MAX * 4 + 1) if argv[1] in (
            "settings", "pool-write", "batch") else b""
        if argv[1] == "batch":
            if argv[2:]:
                raise InvalidInput("batch takes its actions on stdin, no arguments")
            try:
                print(json.dumps({"done": privileged.run_batch(settings, stdin)}))
            except privileged.BatchFailed as exc:
                print(json.dumps({"done": exc.done, "error": exc.message}))
                raise
            return ExitStatus.OK
        print(privileged.run(settings, argv[1], argv[2:], stdin))
    except OSError as exc:
        raise OperationFailed(f"privileged {' '.join(argv[1:2])}: {exc}") from exc
    return ExitStatus.OK
