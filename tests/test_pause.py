"""``hostctl queue pause`` and ``resume`` (Aegir's hosting-pause): pause waits for the
running tasks to finish, does not wait for a task whose worker died, and no runner (dispatch,
wait-queue, wait-queue --once) starts a task while the queue is paused. Real processes,
real signals, real locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from runnerhelpers import (
    SLOW,
    Procs,
    add_task,
    hostctl_log,
    pid_alive,
    save_sites,
    sh_task,
    status_of,
    task_json,
    wait_exit,
    wait_for,
    wait_housekeeping,
    write_config,
)


def slow_setup(run_hostctl, home: Path, flag: Path, **task: object) -> tuple[str, str]:
    """A slow task on @a.example and a quick one queued behind it on the same context (so
    that no runner can start it before the slow one ends); their ids."""
    write_config(home, {"tasks": {"slow": sh_task(SLOW, str(flag), **task)},
                        "queues": {"cron": {"enabled": False}}})
    save_sites(run_hostctl, home, ["a.example"])
    return (add_task(run_hostctl, "slow", "@a.example"),
            add_task(run_hostctl, "verify", "@a.example"))


def paused_flag(home: Path) -> Path:
    return home / "spool" / "paused"


def output(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def start_pause(procs: Procs, home: Path, log: Path, *argv: str) -> subprocess.Popen[bytes]:
    """``queue pause`` in the background, once it has paused the queue."""
    proc = procs.start("queue", "pause", *argv, log=log)
    wait_for(lambda: paused_flag(home).exists() or proc.poll() is not None, 30,
             "queue pause to pause the queue")
    return proc


def still_waits(proc: subprocess.Popen[bytes]) -> bool:
    """Has ``proc`` not ended within a while (it had every chance to)?"""
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return True
    return False


def test_pause_waits_for_the_task_a_dispatch_runs_and_the_dispatch_starts_no_more(
        run_hostctl, home, procs, tmp_path) -> None:
    flag = tmp_path / "flag"
    slow, behind = slow_setup(run_hostctl, home, flag)
    dispatch = procs.start("dispatch")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")

    log = tmp_path / "pause.out"
    pause = start_pause(procs, home, log)
    assert still_waits(pause), output(log)
    assert status_of(run_hostctl, slow) == "processing"

    Path(f"{flag}.go").touch()
    assert wait_exit(pause, 30, "queue pause after the task ended") == 0
    assert "Waited for 1 running task(s) to finish" in output(log)
    assert "Paused" in output(log)
    assert status_of(run_hostctl, slow) == "success"
    # the dispatcher was draining: it stopped starting tasks as soon as the queue paused
    assert wait_exit(dispatch, 30, "dispatch") == 0
    assert status_of(run_hostctl, behind) == "queued"
    assert run_hostctl("dispatch").code == 0
    assert status_of(run_hostctl, behind) == "queued"

    assert run_hostctl("queue", "resume").code == 0
    assert run_hostctl("dispatch", "--force").code == 0  # the tasks queue ran a moment ago
    assert status_of(run_hostctl, behind) == "success"


def test_pause_waits_for_the_task_a_daemon_runs_and_the_daemon_starts_no_more(
        run_hostctl, home, procs, tmp_path) -> None:
    flag = tmp_path / "flag"
    slow, behind = slow_setup(run_hostctl, home, flag)
    daemon = procs.start("wait-queue", "--max-runtime", "120", "--housekeeping-every", "0.2")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")

    log = tmp_path / "pause.out"
    pause = start_pause(procs, home, log)
    assert still_waits(pause), output(log)

    Path(f"{flag}.go").touch()
    assert wait_exit(pause, 30, "queue pause after the task ended") == 0
    assert "Waited for 1 running task(s) to finish" in output(log)
    assert status_of(run_hostctl, slow) == "success"
    # unpaused, the daemon would have claimed the task behind at once (the slow task's
    # exit woke it); two housekeeping passes later it still has not
    wait_housekeeping(run_hostctl, daemon.pid, rounds=2)
    assert daemon.poll() is None
    assert status_of(run_hostctl, behind) == "queued"

    assert run_hostctl("queue", "resume").code == 0
    wait_for(lambda: status_of(run_hostctl, behind) == "success", 20,
             "the held task to run after resume")
    os.kill(daemon.pid, signal.SIGTERM)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_pause_no_wait_returns_while_the_task_runs(run_hostctl, home, procs, tmp_path) -> None:
    flag = tmp_path / "flag"
    slow, behind = slow_setup(run_hostctl, home, flag)
    dispatch = procs.start("dispatch")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")

    res = run_hostctl("queue", "pause", "--no-wait")
    assert res.code == 0, res
    assert "1 running task(s) still run to their end" in res.out
    assert paused_flag(home).exists()
    assert status_of(run_hostctl, slow) == "processing"
    assert json.loads(run_hostctl("queue", "status", "--json").out)["paused"] is True

    Path(f"{flag}.go").touch()
    assert wait_exit(dispatch, 30, "dispatch") == 0
    assert status_of(run_hostctl, slow) == "success"
    assert status_of(run_hostctl, behind) == "queued"


def test_pause_does_not_wait_for_a_task_whose_worker_died(
        run_hostctl, home, procs, tmp_path) -> None:
    """The task's file is still in active/, but no process holds its lock: pause must not
    spin on it until some dispatch sweeps; it recovers it itself, as the sweep would."""
    flag = tmp_path / "flag"
    slow, behind = slow_setup(run_hostctl, home, flag, max_attempts=1)
    dispatch = procs.start("dispatch")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")
    task_pid = int(Path(f"{flag}.started").read_text())
    os.kill(dispatch.pid, signal.SIGKILL)
    assert wait_exit(dispatch, 10, "the killed dispatcher") == -signal.SIGKILL
    assert status_of(run_hostctl, slow) == "processing"  # nobody swept yet

    log = tmp_path / "pause.out"
    pause = start_pause(procs, home, log)
    try:
        assert wait_exit(pause, 30, "queue pause with only a dead task running") == 0
    finally:
        if pid_alive(task_pid):
            os.kill(task_pid, signal.SIGKILL)
    text = output(log)
    assert "Waited for" not in text
    assert "died during attempt 1" in text, text
    doc = task_json(run_hostctl, slow)
    assert doc["status"] == "error", doc  # its only attempt was cut off
    assert "died during attempt 1" in doc["attempts"][0]["reason"]
    wait_for(lambda: not pid_alive(task_pid), 10, "the orphaned command to be killed")
    assert status_of(run_hostctl, behind) == "queued"
    assert paused_flag(home).exists()


def test_wait_queue_once_starts_nothing_while_paused(run_hostctl, home, hostctl_process) -> None:
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    ids = [add_task(run_hostctl, "verify", f"@{s}.example") for s in "ab"]
    assert run_hostctl("queue", "pause").code == 0
    res = hostctl_process("wait-queue", "--once", timeout=60)
    assert res.returncode == 0, res.stderr
    assert [status_of(run_hostctl, i) for i in ids] == ["queued", "queued"]
    assert "wait-queue --once ran 0 task(s)" in hostctl_log(home)

    assert run_hostctl("queue", "resume").code == 0
    assert not paused_flag(home).exists()
    res = hostctl_process("wait-queue", "--once", timeout=60)
    assert res.returncode == 0, res.stderr
    assert [status_of(run_hostctl, i) for i in ids] == ["success", "success"]
