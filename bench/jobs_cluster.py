"""The jobs of bench/cluster.py's Python peers (Celery, RQ): each runs the same ``sh -c``
command as hostctl's task types there."""

from __future__ import annotations

import subprocess

STAMP_SH = 'date +%s%N > "$1/$2"'
NAP_SH = 'sleep 0.1; : > "$1/$2"'


def stamp(where: str, name: str) -> None:
    subprocess.run(["sh", "-c", STAMP_SH, "sh", where, name], check=True)


def nap(where: str, name: str) -> None:
    subprocess.run(["sh", "-c", NAP_SH, "sh", where, name], check=True)
