"""``hostctl task list`` (and what else reads the whole queue) with 100,000 finished tasks.

Usage (from the repository)::

    python3 bench/task_list.py              # 100,000 tasks, 5 runs of each command
    python3 bench/task_list.py --tasks 10000 --runs 3

A throw-away home gets the tasks as the spool keeps them (``done/ID.task``: a submission,
a claim, a start and an end, as a worker writes them; one in 100 a ``backup``, the rest
``verify``), written directly so that the set-up takes seconds. Each command is then run
as a whole process (the CLI's start-up included), and its median, minimum and maximum
wall time printed beside the floor, ``hostctl --version`` (Python and hostctl's start-up).
Reported, never judged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def fill(home: Path, n: int) -> None:
    from hostctl.queues.model import Envelope, Task, encode_task, new_id
    from hostctl.times import utc_iso

    done = home / "spool" / "done"
    done.mkdir(parents=True, mode=0o700)
    start = time.time() - n  # one a second, ending now
    for i in range(n):
        created = start + i
        env = Envelope(new_id(created), "backup" if i % 100 == 0 else "verify",
                       f"@site{i % 1000}.example", {}, {}, 5, utc_iso(created))
        at = utc_iso(created + 0.5)
        events = ({"event": "claim", "at": at, "pid": 1, "host": "bench"},
                  {"event": "start", "at": at, "attempt": 1, "pid": 2, "worker": 1},
                  {"event": "end", "at": at, "outcome": "error" if i % 50 == 0 else
                   "success", "exit": 0, "reason": "", "result": {}})
        task = Task(env, events, "done")
        (done / f"{env.id}.task").write_bytes(encode_task(task))


def timed(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        times.append((time.perf_counter() - t0) * 1000)
        if res.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(argv)}: {res.stderr.decode()[-500:]}")
    return {"median_ms": round(statistics.median(times), 1),
            "min_ms": round(min(times), 1), "max_ms": round(max(times), 1)}


def served(exe: str, env: dict[str, str], runs: int) -> dict[str, Any]:
    """``hostctl serve`` on the same home: each page's answer time, and the server's
    resident memory and CPU time after them."""
    import http.client
    import re

    proc = subprocess.Popen([exe, "serve", "--listen", "127.0.0.1:0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            raise SystemExit(f"serve did not start: {line}")
        port = int(found[1])
        out: dict[str, Any] = {}
        for path in ("/", "/api/status", "/metrics"):
            times = []
            for _ in range(runs):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                t0 = time.perf_counter()
                conn.request("GET", path)
                res = conn.getresponse()
                res.read()
                times.append((time.perf_counter() - t0) * 1000)
                conn.close()
                if res.status != 200:
                    raise SystemExit(f"serve {path}: {res.status}")
            out[f"serve GET {path}"] = {"median_ms": round(statistics.median(times), 1),
                                        "min_ms": round(min(times), 1),
                                        "max_ms": round(max(times), 1)}
        stat = Path(f"/proc/{proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", stat)[1])  # type: ignore[index]
        ticks = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")
        out["serve resident memory after them"] = {"rss_mib": round(rss / 1024, 1),
                                                   "cpu_s": round(cpu, 2)}
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("hostctl"))
    with tempfile.TemporaryDirectory(prefix="hostctl-bench-list-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        fill(home, args.tasks)
        print(f"{args.tasks} finished tasks written in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        env = {**os.environ, "HOSTCTL_HOME": str(home)}
        commands = {
            "hostctl --version (the floor)": ["--version"],
            "task list (the newest 100)": ["task", "list"],
            "task list --status error (the newest 100 of them)":
                ["task", "list", "--status", "error"],
            "task list --type backup --limit 10": ["task", "list", "--type", "backup",
                                                   "--limit", "10"],
            "task list --since 1h": ["task", "list", "--since", "1h"],
            "task list --limit 0 --json (every task)": ["task", "list", "--limit", "0",
                                                       "--json"],
            "task show (the oldest)": ["task", "show", sorted(
                os.listdir(home / "spool" / "done"))[0].removesuffix(".task")],
            "queue status": ["queue", "status"],
            "metrics": ["metrics"],
        }
        out = {}
        for label, argv in commands.items():
            out[label] = timed([exe, *argv], env, args.runs)
            print(f"{label:55} median {out[label]['median_ms']:8.1f} ms  "
                  f"(min {out[label]['min_ms']}, max {out[label]['max_ms']})")
        for label, figures in served(exe, env, args.runs).items():
            out[label] = figures
            print(f"{label:55} {figures}")
    if args.json:
        Path(args.json).write_text(json.dumps({"tasks": args.tasks, "runs": out}, indent=2)
                                   + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
