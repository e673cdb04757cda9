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
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from taskhelpers import (
    ids_in,
    pid_alive,
    popen_hostctl,
    save_sites,
    stop,
    wait_for,
    write_config,
)

from hostctl.queues.model import Envelope, new_id
from hostctl.queues.spool import Spool
from hostctl.times import utc_iso

pytestmark = pytest.mark.skipif(shutil.which("flock") is None,
                                reason="needs flock(1) from util-linux")

# $1 root, $2 task id, $3 context, $4 seconds to hold (the first run of a task holds $5).
# The locks are held on by a job in a process group of its own (as a shell with job
# control makes it), so that every stop in the storm has to reach all of the run's
# session; the tests after the storm hold such a job long enough to show it.
GUARDED = r'''
exec 8>"$1/task-$2.lock"; flock -n 8 || echo "task $2" >> "$1/overlap"
exec 9>"$1/ctx-$3.lock"; flock -n 9 || echo "context $3" >> "$1/overlap"
echo "$2 $$" >> "$1/ran"
if [ "$(grep -c "^$2 " "$1/ran")" = 1 ]; then t=$5; else t=$4; fi
"$6" -c 'import os, sys, time; os.setpgid(0, 0); time.sleep(float(sys.argv[1]))' "$t" &
wait
'''


def guarded_type(first: float, later: float) -> dict[str, object]:
    return {"command": ["sh", "-c", GUARDED, "sh", "{root}", "{task_id}", "{name}",
                        str(later), str(first), sys.executable],
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



# A run whose background job has a process group of its own (a shell with job control, a
# program that calls setpgid): its process group is not all of it, its session is. The
# first run leaves the job behind and waits; a later run ends at once.
LEAVER = ('if [ -e "$1/$2.again" ]; then exit 0; fi; touch "$1/$2.again"; '
          f'{shlex.quote(sys.executable)} -c "import os, time; os.setpgid(0, 0); '
          'time.sleep(300)" & echo "$$ $!" > "$1/$2.pids"; wait')


def leaver_type(**extra: object) -> dict[str, object]:
    return {"command": ["sh", "-c", LEAVER, "sh", "{root}", "{name}"],
            "context_types": ["site"], "max_attempts": 3, **extra}


def leaver_pids(root: Path, site: str) -> tuple[int, int]:
    def read() -> tuple[int, int] | None:
        try:
            a, b = (root / f"{site}.pids").read_text().split()
            return int(a), int(b)
        except (OSError, ValueError):
            return None

    cmd, job = wait_for(read, 30, f"the run on {site} to start its job")
    wait_for(lambda: os.getpgid(job) == job, 30, "the job to have its own process group")
    assert os.getsid(job) == cmd
    return cmd, job


def test_the_sweep_stops_all_of_a_dead_workers_run_not_only_its_process_group(
        run_hostctl, home: Path) -> None:
    write_config(home, {"worker": {"backoff_base": 0, "backoff_max": 0},
                        "queues": {"cron": {"enabled": False}},
                        "tasks": {"leaver": leaver_type()}})
    root = save_sites(run_hostctl, home, ["a.example"])
    task = run_hostctl("task", "add", "leaver", "@a.example").out.strip()
    worker = popen_hostctl(home, "wait-queue", "--max-runtime", "120")
    try:
        cmd, job = leaver_pids(root, "a.example")
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    try:
        assert pid_alive(cmd) and pid_alive(job)  # a spawned command outlives its worker
        assert run_hostctl("dispatch").code == 0  # recovers the task, runs it again
        # the sweep stopped the whole run before the task ran again, not only its group
        assert not pid_alive(job) and not pid_alive(cmd)
        doc = json.loads(run_hostctl("task", "show", task, "--json").out)
        assert [a["outcome"] for a in doc["attempts"]] == ["lost", "success"], doc
    finally:
        for pid in (cmd, job):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_stopped_run_leaves_no_process_behind(run_hostctl, home: Path, how: str) -> None:
    """A timeout or a cancel stops all of the run (its session), before the next task
    may run on the context."""
    extra = {"timeout": 1} if how == "timeout" else {}
    write_config(home, {"worker": {"kill_grace": 1},
                        "queues": {"cron": {"enabled": False}},
                        "tasks": {"leaver": leaver_type(**extra)}})
    root = save_sites(run_hostctl, home, ["a.example"])
    task = run_hostctl("task", "add", "leaver", "@a.example").out.strip()
    worker = popen_hostctl(home, "wait-queue", "--max-runtime", "120")
    cmd, job = leaver_pids(root, "a.example")
    try:
        if how == "cancel":
            assert run_hostctl("task", "cancel", task).code == 0
        status = wait_for(lambda: (s := json.loads(run_hostctl(
            "task", "show", task, "--json").out)["status"]) not in ("processing",) and s,
            30, "the run to be stopped")
        assert status == ("error" if how == "timeout" else "cancelled"), status
        assert not pid_alive(job) and not pid_alive(cmd)
    finally:
        stop(worker)
        for pid in (cmd, job):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


# A plugin type (a function run in a forked child of the worker) whose function runs the
# guarded command as a program of its own and waits for it: the forked child dies with
# its worker (PR_SET_PDEATHSIG, or it sees at once that its parent is gone); a program it
# had started would not, and is stopped by the sweep. Each run holds OVERLAP_HOLD s.
PLUGIN = """
import os, subprocess, sys
from hostctl.provision.tasktype import TaskType


def _run(rc):
    hold = os.environ["OVERLAP_HOLD"]
    return subprocess.call(["sh", "-c", os.environ["OVERLAP_SCRIPT"], "sh",
                            os.environ["OVERLAP_ROOT"], rc.task_id, rc.context.name,
                            hold, hold, sys.executable])


guarded = TaskType("fn-guarded", ("site",), "a function that runs a program",
                   function=_run)
"""


def test_a_function_type_whose_worker_died_right_after_the_fork_never_runs_twice_at_once(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    info = plugins / "hostctl_overlapplugin-0.1.dist-info"
    info.mkdir(parents=True)
    (plugins / "hostctl_overlapplugin.py").write_text(PLUGIN)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hostctl-overlapplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[hostctl.tasks]\nfn-guarded = hostctl_overlapplugin:guarded\n")
    write_config(home, {"worker": {"backoff_base": 0.05, "backoff_max": 0.1},
                        "queues": {"cron": {"enabled": False}}})
    root = save_sites(run_hostctl, home, ["a.example"])
    env = {"PYTHONPATH": os.pathsep.join(
               p for p in (str(plugins), os.environ.get("PYTHONPATH", "")) if p),
           "OVERLAP_ROOT": str(root), "OVERLAP_SCRIPT": GUARDED}
    sp = Spool(home / "spool", home / "logs")
    task = sp.publish(Envelope(new_id(), "fn-guarded", "@a.example", {}, {}, 5, utc_iso()),
                      dedup=False)[0]

    dying = popen_hostctl(home, "wait-queue", "--once", env={
        **env, "OVERLAP_HOLD": "120", "HOSTCTL_TEST_DIE_AFTER_SPAWN": "1"})
    assert dying.wait(timeout=60) == -signal.SIGKILL
    assert [e["event"] for e in events(home, task)] == ["spawn"]
    try:
        deadline = time.monotonic() + 120
        doc = json.loads(run_hostctl("task", "show", task, "--json").out)
        while doc.get("status") != "success" and time.monotonic() < deadline:
            rerun = popen_hostctl(home, "wait-queue", "--once",
                                  env={**env, "OVERLAP_HOLD": "0"})
            assert rerun.wait(timeout=120) == 0
            doc = json.loads(run_hostctl("task", "show", task, "--json").out)
            time.sleep(0.05)
        assert [a["outcome"] for a in doc["attempts"]] == ["lost", "success"], doc
        ran = runs(root)
        assert ran and {t for t, _ in ran} == {task}
        assert not [pid for _, pid in ran if pid_alive(pid)]  # nothing of the lost run
        assert overlaps(root) == ""
    finally:
        for _, pid in runs(root):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
