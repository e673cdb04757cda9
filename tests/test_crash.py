"""kill -9 of a worker in the middle of a task: the next sweep recovers the task at once
(its file lock is gone, not some age), counts the cut-off run as an attempt with the
reason, and brings the task to a final status; nothing of the task's process group stays
behind (the sweep kills it before the task runs again). Real processes, real flocks, real
signals."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from taskhelpers import (
    folder_of,
    group_members,
    pid_alive,
    popen_reaped,
    save_sites,
    show,
    show_process,
    stop,
    wait_for,
    write_config,
)

# The command records its own pid and a background child's pid, then waits. A second
# attempt (the marker exists) succeeds at once.
SCRIPT = (
    'if [ -e "$1/$2.again" ]; then echo "second run"; exit 0; fi; '
    'touch "$1/$2.again"; '
    'sleep 300 & echo "$$ $!" > "$1/$2.pids"; '
    'echo "first run, waiting"; wait'
)


def config(home: Path) -> None:
    write_config(home, {
        "worker": {"backoff_base": 0, "backoff_max": 0, "kill_grace": 1},
        "tasks": {
            "rerun": {"command": ["sh", "-c", SCRIPT, "sh", "{root}", "{name}"],
                      "context_types": ["site"], "rerun_on_loss": True, "max_attempts": 3},
            "once": {"command": ["sh", "-c", SCRIPT, "sh", "{root}", "{name}"],
                     "context_types": ["site"], "rerun_on_loss": False},
        },
    })


def running_pids(root: Path, site: str) -> tuple[int, int]:
    """(the command's pid, its background child's pid), once both are written."""
    path = root / f"{site}.pids"

    def read() -> tuple[int, int] | None:
        try:
            a, b = path.read_text().split()
            return int(a), int(b)
        except (OSError, ValueError):
            return None

    return wait_for(read, 30, f"the task on {site} to start")


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[bytes] | int]]:
    """Reapers to stop and stray pids to kill when the test ends, pass or fail."""
    items: list[subprocess.Popen[bytes] | int] = []
    yield items
    for item in items:
        if isinstance(item, int):
            if pid_alive(item):
                os.kill(item, signal.SIGKILL)
        else:
            stop(item)


def kill_worker_mid_task(run_hostctl, home: Path, root: Path, task_type: str, site: str,
                         runner: tuple[str, ...], cleanup: list) -> tuple[str, int, int, float]:
    """Queue a task, start ``runner`` (under a reaping subreaper, as under init), SIGKILL it
    while the task runs; return the task id, the command's pid, its background child's pid
    and the moment of the kill."""
    res = run_hostctl("task", "add", task_type, f"@{site}")
    assert res.code == 0, res.err
    task_id = res.out.strip()
    reaper, worker = popen_reaped(home, *runner, log=home.parent / f"{site}.worker.log")
    cleanup.append(reaper)
    cmd_pid, child_pid = running_pids(root, site)
    cleanup.append(child_pid)
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "processing" and len(doc["attempts"]) == 1
    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not pid_alive(worker), 10, "the worker to die")
    # a command task is spawned without PR_SET_PDEATHSIG: what is left of it is killed by
    # the sweep that recovers the task (each test checks that); until a sweep runs, the
    # task still shows as processing
    assert folder_of(home, task_id) == ["active"]
    return task_id, cmd_pid, child_pid, killed_at


def test_killed_wait_queue_task_is_recovered_by_the_next_dispatch_and_runs_again(
        run_hostctl, hostctl_process, home: Path, cleanup: list) -> None:
    config(home)
    root = save_sites(run_hostctl, home, ["crash.example"])
    task_id, cmd_pid, child_pid, killed_at = kill_worker_mid_task(
        run_hostctl, home, root, "rerun", "crash.example", ("wait-queue", "--max-runtime", "60"),
        cleanup)
    # a command task outlives its worker (no PR_SET_PDEATHSIG): the sweep must kill it
    assert pid_alive(cmd_pid)

    res = hostctl_process("dispatch", timeout=60)
    recovered_after = time.monotonic() - killed_at
    assert res.returncode == 0, res.stderr
    print(f"\ncrash: kill -9 of wait-queue -> task recovered and finished by the next "
          f"dispatch {recovered_after:.2f} s after the kill")

    doc = show_process(hostctl_process, task_id)
    assert doc["status"] == "success" and doc["status_code"] == 1, doc
    first, second = doc["attempts"]
    assert first["outcome"] == "lost" and first["finished"]
    assert "died" in first["reason"] and str(first["attempt"]) in first["reason"]
    assert second["outcome"] == "success" and second["exit_code"] == 0
    assert "second run" in (home / "logs" / f"{task_id}.log").read_text()

    # nothing of the first attempt's process group is left running
    wait_for(lambda: not pid_alive(cmd_pid), 5, f"the killed task's command {cmd_pid} to be gone")
    wait_for(lambda: not pid_alive(child_pid), 5,
             f"the killed task's background child {child_pid} to be gone")
    assert group_members(cmd_pid) == []


def test_killed_worker_task_without_rerun_ends_in_error_with_the_reason(
        run_hostctl, hostctl_process, home: Path, cleanup: list) -> None:
    config(home)
    root = save_sites(run_hostctl, home, ["once.example"])
    task_id, cmd_pid, child_pid, killed_at = kill_worker_mid_task(
        run_hostctl, home, root, "once", "once.example", ("wait-queue", "--max-runtime", "60"),
        cleanup)

    # the sweep at the start of a worker finds it
    res = hostctl_process("wait-queue", "--once", timeout=60)
    recovered_after = time.monotonic() - killed_at
    assert res.returncode == 0, res.stderr
    print(f"\ncrash: kill -9 of wait-queue -> task ended in error by the next worker start "
          f"{recovered_after:.2f} s after the kill")

    doc = show_process(hostctl_process, task_id)
    assert doc["status"] == "error" and doc["status_code"] == 2, doc
    [attempt] = doc["attempts"]
    assert attempt["outcome"] == "lost" and "died" in attempt["reason"]
    assert "died" in doc["reason"]
    assert folder_of(home, task_id) == ["done"]
    assert "second run" not in (home / "logs" / f"{task_id}.log").read_text()  # not rerun
    wait_for(lambda: not pid_alive(cmd_pid), 5, f"the killed task's command {cmd_pid} to be gone")
    wait_for(lambda: not pid_alive(child_pid), 5,
             f"the killed task's background child {child_pid} to be gone")
    assert group_members(cmd_pid) == []


def test_killed_dispatch_does_not_block_the_next_one(run_hostctl, hostctl_process,
                                                     home: Path, cleanup: list) -> None:
    config(home)
    root = save_sites(run_hostctl, home, ["disp.example"])
    task_id, cmd_pid, _, killed_at = kill_worker_mid_task(
        run_hostctl, home, root, "rerun", "disp.example", ("dispatch",), cleanup)

    res = hostctl_process("dispatch", timeout=60)
    assert res.returncode == 0, res.stderr
    doc = show_process(hostctl_process, task_id)
    assert doc["status"] == "success", doc
    assert [a["outcome"] for a in doc["attempts"]] == ["lost", "success"]
    wait_for(lambda: not pid_alive(cmd_pid), 5, "the first attempt's command to be gone")


def test_a_task_never_stays_processing_after_its_worker_died(
        run_hostctl, hostctl_process, home: Path, cleanup: list) -> None:
    """A foreground provision-TYPE killed with -9: the next sweep ends its run as lost."""
    config(home)
    root = save_sites(run_hostctl, home, ["fg.example"])
    reaper, proc = popen_reaped(home, "provision-once", "@fg.example",
                                log=home.parent / "fg.log")
    cleanup.append(reaper)
    cmd_pid, child_pid = running_pids(root, "fg.example")
    cleanup.append(child_pid)
    [name] = os.listdir(home / "spool" / "active")
    task_id = name[1:21]
    os.kill(proc, signal.SIGKILL)
    wait_for(lambda: not pid_alive(proc), 10, "the foreground hostctl to die")
    res = hostctl_process("task", "list", "--status", "processing", "--json", timeout=30)
    assert task_id in res.stdout  # no sweep yet

    res = hostctl_process("dispatch", timeout=60)
    assert res.returncode == 0, res.stderr
    doc = show_process(hostctl_process, task_id)
    assert doc["status"] == "error" and doc["attempts"][0]["outcome"] == "lost"
    res = hostctl_process("task", "list", "--status", "processing", "--json", timeout=30)
    assert res.returncode == 0 and task_id not in res.stdout
    wait_for(lambda: not pid_alive(cmd_pid), 5, "the command to be gone")
    wait_for(lambda: not pid_alive(child_pid), 5, "the background child to be gone")
    assert group_members(cmd_pid) == []


def test_a_task_group_is_known_by_its_leaders_start_window() -> None:
    """The sweep signals a group only while its leader's start time lies in the window the
    worker recorded around the spawn: a pid reused by another process is left alone."""
    from hostctl.process import boot_ticks, is_task_group

    earliest = boot_ticks()
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "sleep 30"], dict(os.environ), setsid=True)
    latest = boot_ticks(up=True)
    try:
        started = {"pgid": pid, "pgid_start": earliest, "pgid_start_by": latest}
        assert is_task_group(started)
        # the same pid, recorded as started before this process began: another process's
        assert not is_task_group({**started, "pgid_start": earliest - 1000,
                                  "pgid_start_by": earliest - 900})
        assert not is_task_group({**started, "pgid_start": latest + 1, "pgid_start_by": None})
        assert not is_task_group({"pgid": 1})  # never init
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
