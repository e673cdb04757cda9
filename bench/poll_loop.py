"""A stand-in for Aegir's queue daemon (hosting_queued): once a second it looks for queued
tasks and runs each. A task is a file in FOLDER holding JSON ``{"argv": [...], "out":
PATH}``; the command's output goes to PATH.

Usage: python3 poll_loop.py FOLDER [INTERVAL_SECONDS]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def run_once(folder: str) -> int:
    ran = 0
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        with open(path, "rb") as fh:
            task = json.loads(fh.read())
        with open(task["out"], "wb") as out:
            subprocess.run(task["argv"], stdout=out, check=False)
        os.unlink(path)
        ran += 1
    return ran


def main() -> int:
    folder = sys.argv[1]
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        run_once(folder)
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
