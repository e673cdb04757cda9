"""Never two runs at once: not of one task, not on one context, whenever a worker dies.

The worst moment for a worker to die is right after it spawned a task's command and
before it recorded the `start` event: the command runs, and nothing on disk says so. The
worker records a `spawn` event (the intent) before the command can run; the sweep that
finds a `spawn` without its `start` stops whatever the dead worker spawned for that task
before the task can run again. The commands below check it from their own side: each run
takes the task's and the context's flock without waiting, and writes down any overlap.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from taskhelpers import ids_in, pid_alive, popen_hostctl, save_sites, wait_for, write_config

from hostctl.queues.spool import Spool
from hostctl.queues.task import Envelope, new_id, utc_iso

pytestmark = pytest.mark.skipif(shutil.which("flock") is None,
                                reason="needs flock(1) from util-linux")

# $1 root, $2 task id, $3 context, $4 seconds to hold (the first run of a task holds $5)
GUARDED = r'''
exec 8>"$1/task-$2.lock"; flock -n 8 || echo "task $2" >> "$1/overlap"
exec 9>"$1/ctx-$3.lock"; flock -n 9 || echo "context $3" >> "$1/overlap"
echo "$2 $$" >> "$1/ran"
if [ "$(grep -c "^$2 " "$1/ran")" = 1 ]; then sleep "$5"; else sleep "$4"; fi
'''


def guarded_type(first: float, later: float) -> dict[str, object]:
    return {"command": ["sh", "-c", GUARDED, "sh", "{root}", "{task_id}", "{name}",
                        str(later), str(first)],
            "context_types": ["site"], "max_attempts": 20}


def runs(root: Path) -> list[tuple[str, int]]:
    try:
        lines = (root / "ran").read_text().split("\n")
    except FileNotFoundError:
        return []
    return [(a, int(b)) for a, b in (ln.split() for ln in lines if ln.strip())]


def overlaps(root: Path) -> str:
    try:
        return (root / "overlap").read_text()
    except FileNotFoundError:
        return ""


def events(home: Path, task_id: str) -> list[dict[str, object]]:
    for folder in ("active", "done", "new", "deferred"):
        for name in os.listdir(home / "spool" / folder):
            if task_id in name:
                text = (home / "spool" / folder / name).read_text().splitlines()
                return [json.loads(line) for line in text[1:] if line.strip()]
    raise AssertionError(f"task {task_id} is nowhere")


def test_a_worker_killed_right_after_the_spawn_leaves_nothing_running(
        run_hostctl, home: Path) -> None:
    write_config(home, {"worker": {"backoff_base": 0.05, "backoff_max": 0.1},
                        "queues": {"cron": {"enabled": False}},
                        "tasks": {"guarded": guarded_type(first=120, later=0)}})
    root = save_sites(run_hostctl, home, ["a.example"])
    task = run_hostctl("task", "add", "guarded", "@a.example").out.strip()

    dying = popen_hostctl(home, "wait-queue", "--once",
                          env={"HOSTCTL_TEST_DIE_AFTER_SPAWN": "1"})
    assert dying.wait(timeout=60) == -signal.SIGKILL
    first = wait_for(lambda: runs(root), 30, "the spawned command to run")[0][1]
    assert pid_alive(first)  # running, and nothing on disk says so but the intent
    kinds = [e["event"] for e in events(home, task)]
    assert kinds == ["spawn"], kinds

    assert run_hostctl("dispatch").code == 0  # its sweep finds the lost spawn
    wait_for(lambda: not pid_alive(first), 10, "the orphaned command to be stopped")
    doc = json.loads(run_hostctl("task", "show", task, "--json").out)
    assert doc["attempts"][0]["outcome"] == "lost", doc

    deadline = time.monotonic() + 60
    while doc["status"] != "success" and time.monotonic() < deadline:
        assert run_hostctl("wait-queue", "--once").code == 0
        doc = json.loads(run_hostctl("task", "show", task, "--json").out)
        time.sleep(0.05)
    assert doc["status"] == "success", doc
    assert overlaps(root) == ""
    assert [t for t, _ in runs(root)] == [task, task]


def test_a_storm_of_kills_never_runs_a_task_or_a_context_twice_at_once(
        run_hostctl, home: Path) -> None:
    """Daemons and a dispatch loop on one spool, daemons killed with kill -9 at random,
    and some of them at the worst moment (right after a spawn), for ~25 s."""
    rng = random.Random(11)
    write_config(home, {"worker": {"concurrency": 2, "backoff_base": 0.05,
                                   "backoff_max": 0.2},
                        "queues": {"tasks": {"items": 3}, "cron": {"enabled": False}},
                        "tasks": {"guarded": guarded_type(first=0.3, later=0.05)}})
    sites = [f"s{n}.example" for n in range(8)]
    root = save_sites(run_hostctl, home, sites)
    sp = Spool(home / "spool", home / "logs")
    ids = []
    for n in range(240):
        env = Envelope(new_id(), "guarded", f"@{sites[n % len(sites)]}", {}, {}, 5,
                       utc_iso())
        ids.append(sp.publish(env, dedup=False)[0])

    procs: list = []

    def spawn_daemon(worst: bool) -> None:
        extra = {"HOSTCTL_TEST_DIE_AFTER_SPAWN": "1"} if worst else {}
        procs.append(popen_hostctl(home, "wait-queue", "--max-runtime", "120", env=extra))

    kills = 0
    try:
        for _ in range(4):
            spawn_daemon(worst=False)
        began = time.monotonic()
        while len(os.listdir(home / "spool" / "done")) < len(ids):
            assert time.monotonic() - began < 120, (
                f"{len(os.listdir(home / 'spool' / 'done'))} of {len(ids)} done")
            live = [p for p in procs if p.poll() is None]
            if time.monotonic() - began < 25 and live and rng.random() < 0.5:
                victim = rng.choice(live)
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                kills += 1
            for _ in range(4 - len([p for p in procs if p.poll() is None])):
                spawn_daemon(worst=time.monotonic() - began < 25 and rng.random() < 0.3)
            if rng.random() < 0.3:
                popen_hostctl(home, "dispatch").wait(timeout=60)
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    assert kills > 10, kills
    assert overlaps(root) == ""
    assert sorted(ids_in(home, "done")) == sorted(ids)  # nothing lost
    ran = {t for t, _ in runs(root)}
    statuses = {}
    for task_id in ids:
        kinds = [e.get("event") for e in events(home, task_id)]
        end = [e for e in events(home, task_id) if e.get("event") == "end"][-1]
        statuses[end["outcome"]] = statuses.get(end["outcome"], 0) + 1
        assert end["outcome"] in ("success", "lost"), (task_id, kinds, end)
        assert task_id in ran or end["outcome"] == "lost", (task_id, kinds)
    assert statuses.get("success", 0) > len(ids) // 2, statuses
