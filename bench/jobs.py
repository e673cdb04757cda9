"""The jobs the Python peers (rq, huey) run: each starts the same command as hostctl's task
types, so every queue is timed up to the same ``exec``."""

from __future__ import annotations

import subprocess

from common import NOOP_ARGV, STAMP_ARGV


def stamp(path: str) -> None:
    """Run the stamp command, its output into ``path``."""
    with open(path, "wb") as out:
        subprocess.run(STAMP_ARGV, stdout=out, check=True)


def noop() -> None:
    subprocess.run(NOOP_ARGV, check=True)


def hold(path: str) -> None:
    """Print a stamp, then keep running for 2 s (to be killed in the middle)."""
    with open(path, "wb") as out:
        subprocess.run(["sh", "-c", f"{STAMP_ARGV[0]} +%s%N; exec sleep 2"], stdout=out,
                       check=True)
