"""A storm: eight real ``hostctl wait-queue`` processes drain one spool of 2,000 tasks,
while ``hostctl dispatch`` runs again and again beside them (sweeps racing with claims).

Each task is a command that takes a per-context flock without waiting (``flock -n``) and
appends its id to one file: every id must be there exactly once (no task lost, none run
twice), and no task may find its context's lock taken (at most one task per context).
Run with ``-s`` to see the throughput.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from taskhelpers import ids_in, popen_hostctl, save_sites, stop, wait_for, write_config

from hostctl.queues.model import Envelope, Policy, new_id
from hostctl.queues.spool import Spool
from hostctl.times import utc_iso

TASKS = 2000
PROCESSES = 8
SITES = 50
PER_PROCESS = 1


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock(1) from util-linux")
def test_storm_of_workers_runs_every_task_exactly_once(run_hostctl, home: Path) -> None:
    write_config(home, {
        "worker": {"concurrency": PER_PROCESS},
        # dispatch: up to 3 tasks at once; no periodic cron tasks among the counted ones
        "queues": {"tasks": {"items": 3}, "cron": {"enabled": False}},
        "tasks": {"stamp": {
            "command": ["flock", "-n", "{root}/ctx-{name}.lock",
                        "sh", "-c", 'echo "$1" >> "$2"', "sh", "{task_id}", "{root}/ids"],
            "context_types": ["site"],
        }},
    })
    sites = [f"s{n:02d}.example" for n in range(SITES)]
    root = save_sites(run_hostctl, home, sites)

    sp = Spool(home / "spool", home / "logs")
    published = []
    for n in range(TASKS):
        env = Envelope(new_id(), "stamp", f"@{sites[n % SITES]}", {}, {}, n % 10, utc_iso())
        task_id, created = sp.publish(env, dedup=False)
        assert created
        published.append(task_id)
    assert len(ids_in(home, "new")) == TASKS

    logs = [home.parent / f"worker{n}.log" for n in range(PROCESSES)]
    began = time.monotonic()
    # cron's dispatch runs tasks beside the daemons (it holds the dispatcher lock, so the
    # daemons skip their periodic queues), and sweeps race with the claims all along
    dispatch = popen_hostctl(home, "dispatch", log=home.parent / "dispatch.log")
    workers = []
    sweeps = 0
    try:
        wait_for(lambda: ids_in(home, "active") or dispatch.poll() is not None, 30,
                 "dispatch to start")
        workers += [popen_hostctl(home, "wait-queue", "--max-runtime", "120", log=log)
                    for log in logs]
        deadline = began + 100
        while len(os.listdir(home / "spool" / "done")) < TASKS:
            dead = [w.pid for w in workers if w.poll() is not None]
            assert not dead, f"workers {dead} exited early"
            assert time.monotonic() < deadline, (
                f"only {len(os.listdir(home / 'spool' / 'done'))} of {TASKS} done")
            assert sp.sweep(lambda _env: Policy()) == [], "a live task was taken as lost"
            sweeps += 1
            time.sleep(0.05)
        elapsed = time.monotonic() - began
    finally:
        codes = [stop(w, timeout=30) for w in workers]
        dispatched = dispatch.wait(timeout=60)
    assert codes == [0] * PROCESSES, [log.read_text()[-2000:] for log in logs]
    assert dispatched == 0, (home.parent / "dispatch.log").read_text()

    print(f"\nstorm: {TASKS} tasks, {PROCESSES} wait-queue processes x {PER_PROCESS} slot(s) "
          f"plus one dispatch and {sweeps} sweeps, {SITES} contexts: {elapsed:.2f} s, "
          f"{TASKS / elapsed:.0f} tasks/s")

    lines = (root / "ids").read_text().split()
    counts = Counter(lines)
    twice = sorted(i for i, c in counts.items() if c > 1)
    missing = sorted(set(published) - set(counts))
    assert not twice, f"{len(twice)} tasks ran more than once, e.g. {twice[:3]}"
    assert not missing, f"{len(missing)} tasks never ran, e.g. {missing[:3]}"
    assert set(counts) == set(published)
    assert sorted(ids_in(home, "done")) == sorted(published)
    for folder in ("new", "deferred", "active"):
        assert ids_in(home, folder) == [], folder
    assert os.listdir(home / "spool" / "quarantine") == []
    statuses = Counter(t.status.label for t in sp.tasks_in(("done",)))
    assert statuses == {"success": TASKS}, statuses
    attempts = Counter(len(t.attempts) for t in sp.tasks_in(("done",)))
    assert attempts == {1: TASKS}, attempts
    by_worker = Counter(t.events[0].get("worker") for t in sp.tasks_in(("done",)))
    print(f"tasks run per process: {sorted(by_worker.values(), reverse=True)}")
    assert dispatch.pid in by_worker, "dispatch ran no task beside the daemons"
    assert set(by_worker) <= {dispatch.pid, *(w.pid for w in workers)}

