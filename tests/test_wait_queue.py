"""``hostctl wait-queue``: pickup without polling, max runtime, --once, --concurrency,
signals (TERM, a second TERM, HUP), liveness, pause/resume, and two daemons plus dispatch
on one spool running 500 tasks exactly once. Real processes and real signals."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from runnerhelpers import (
    Procs,
    add_task,
    context_switches,
    daemon_pids,
    daemon_record,
    group_members,
    hostctl_exe,
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

from hostctl.paths import Paths
from hostctl.runners import lifecycle as ops

# touches $0.started (its pid inside), waits for $0.go; a TERM is written down in $0.term
BLOCKING = ('trap \'echo TERM >> "$0.term"; exit 143\' TERM; echo $$ > "$0.started"; '
            'while [ ! -e "$0.go" ]; do sleep 0.05; done; echo finished')


def start_daemon(procs: Procs, home: Path, *argv: str, log: Path | None = None,
                 exe: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start wait-queue and wait until it has registered and done its first pass."""
    proc = procs.start("wait-queue", *argv, log=log, exe=exe)
    wait_for(lambda: proc.pid in daemon_pids(home) or proc.poll() is not None, 30,
             "wait-queue to register")
    assert proc.poll() is None, "wait-queue exited at once"
    wait_for(lambda: f"wait-queue {proc.pid} started" in hostctl_log(home), 30,
             "wait-queue's start line")
    return proc


def term(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)


def alive_daemons(run_hostctl) -> list[int]:
    res = run_hostctl("queue", "status", "--json")
    assert res.code == 0, res
    return [d["pid"] for d in json.loads(res.out)["daemons"] if d["alive"]]


def test_picks_up_a_new_task_at_once_and_sleeps_in_the_kernel_when_idle(
        run_hostctl, home, procs, tmp_path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    write_config(home, {"tasks": {"stamp": sh_task('date +%s.%N > "$0/$HOSTCTL_TASK_ID"',
                                                   str(stamps))}})
    save_sites(run_hostctl, home, ["a.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    time.sleep(0.5)  # let it settle into its wait

    h = ops.Home(Paths(home))
    published = time.time()
    task_id = ops.add(h, "stamp", "@a.example", {}, {}).task.id
    stamp = stamps / task_id
    wait_for(lambda: stamp.exists() and stamp.read_text().strip(), 20,
             "the task's command to start")
    latency = float(stamp.read_text()) - published
    wait_for(lambda: status_of(run_hostctl, task_id) == "success", 20, "success")

    time.sleep(0.5)
    before = context_switches(daemon.pid)
    time.sleep(3.0)
    idle = context_switches(daemon.pid) - before
    print(f"pickup latency (published -> command started): {latency * 1000:.1f} ms; "
          f"idle context switches over 3 s: {idle}")
    assert daemon.poll() is None
    assert idle < 20, f"wait-queue woke up {idle} times in 3 idle seconds: it polls"
    # without inotify it would wait for its once-a-minute rescan
    assert latency < 10
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_max_runtime_exits_0_and_liveness_follows_the_daemon(
        run_hostctl, home, procs) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    assert alive_daemons(run_hostctl) == []
    begun = time.monotonic()
    daemon = start_daemon(procs, home, "--max-runtime", "2")
    assert alive_daemons(run_hostctl) == [daemon.pid]
    res = run_hostctl("queue", "status")
    assert f"wait-queue pid {daemon.pid}: alive" in res.out
    assert "no wait-queue daemon is alive" not in res.out

    assert wait_exit(daemon, 30, "wait-queue --max-runtime 2") == 0
    assert time.monotonic() - begun >= 1.5  # it did wait out its runtime
    assert alive_daemons(run_hostctl) == []
    assert "no wait-queue daemon is alive" in run_hostctl("queue", "status").out


def test_sigint_stops_it_like_term(run_hostctl, home, procs) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    os.kill(daemon.pid, signal.SIGINT)
    assert wait_exit(daemon, 30, "wait-queue after INT") == 0
    assert alive_daemons(run_hostctl) == []


def test_a_daemon_killed_with_kill_9_is_not_shown_alive(run_hostctl, home, procs) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    assert alive_daemons(run_hostctl) == [daemon.pid]
    os.kill(daemon.pid, signal.SIGKILL)
    wait_exit(daemon, 10, "the killed daemon")
    assert alive_daemons(run_hostctl) == []


def test_once_drains_what_is_due_and_exits(run_hostctl, home, hostctl_process) -> None:
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    ids = [add_task(run_hostctl, "verify", f"@{s}.example") for s in "abc"]
    ids.append(add_task(run_hostctl, "verify", "@srv"))
    later = add_task(run_hostctl, "verify", "@plat", "--delay", "3600")
    res = hostctl_process("wait-queue", "--once", timeout=60)
    assert res.returncode == 0, res.stderr
    assert [status_of(run_hostctl, i) for i in ids] == ["success"] * 4
    assert status_of(run_hostctl, later) == "queued"


def test_concurrency_option_bounds_the_tasks_running_at_once(
        run_hostctl, home, procs, tmp_path) -> None:
    board = tmp_path / "running"
    board.mkdir()
    script = ('touch "$0/$HOSTCTL_TASK_ID"; ls "$0" | wc -l >> "$0.counts"; sleep 0.6; '
              'rm "$0/$HOSTCTL_TASK_ID"')
    write_config(home, {"worker": {"concurrency": 1},
                        "tasks": {"busy": sh_task(script, str(board))}})
    sites = [f"s{i}.example" for i in range(7)]
    save_sites(run_hostctl, home, sites)
    ids = [add_task(run_hostctl, "busy", f"@{s}") for s in sites]
    daemon = start_daemon(procs, home, "--concurrency", "3", "--max-runtime", "120")
    wait_for(lambda: all(status_of(run_hostctl, i) == "success" for i in ids), 60,
             "every task to succeed")
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0
    counts = [int(n) for n in Path(f"{board}.counts").read_text().split()]
    assert len(counts) == len(ids)
    assert max(counts) == 3, counts


def test_first_term_lets_the_running_task_finish_and_exits_0(
        run_hostctl, home, procs, tmp_path) -> None:
    flag = tmp_path / "flag"
    write_config(home, {"tasks": {"block": sh_task(BLOCKING, str(flag))}})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    task = add_task(run_hostctl, "block", "@a.example")
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the task to start")

    term(daemon)
    wait_for(lambda: "stopping:" in hostctl_log(home), 10, "the daemon to note the TERM")
    # it claims nothing new while it stops
    other = add_task(run_hostctl, "verify", "@b.example")
    time.sleep(0.5)
    assert daemon.poll() is None, "wait-queue left before its task finished"
    assert status_of(run_hostctl, task) == "processing"

    Path(f"{flag}.go").touch()
    assert wait_exit(daemon, 30, "wait-queue after its task") == 0
    assert status_of(run_hostctl, task) == "success"
    assert not Path(f"{flag}.term").exists()  # the task itself got no signal
    assert status_of(run_hostctl, other) == "queued"


def test_second_term_stops_the_running_task_and_queues_it_again(
        run_hostctl, home, procs, tmp_path) -> None:
    flag = tmp_path / "flag"
    write_config(home, {"worker": {"kill_grace": 5},
                        "tasks": {"block": sh_task(BLOCKING, str(flag))}})
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "block", "@a.example")
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the task to start")
    task_pid = int(Path(f"{flag}.started").read_text())

    term(daemon)
    wait_for(lambda: "stopping:" in hostctl_log(home), 10, "the daemon to note the TERM")
    assert daemon.poll() is None
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after a second TERM") == 0
    # the task's process group got TERM (its trap ran) and is gone
    assert Path(f"{flag}.term").read_text() == "TERM\n"
    wait_for(lambda: not group_members(task_pid), 10, "the task's group to end")
    assert not Path(f"{flag}.go").exists()

    doc = task_json(run_hostctl, task)
    assert doc["status"] == "queued", doc  # to run again later (its type allows it)
    assert len(doc["attempts"]) == 1
    attempt = doc["attempts"][0]
    assert attempt["outcome"] == "lost"
    assert "wait-queue was stopped" in attempt["reason"]


def test_hup_rereads_the_config(run_hostctl, home, procs, tmp_path) -> None:
    marker = tmp_path / "late.ran"
    write_config(home, {})
    save_sites(run_hostctl, home, ["a.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120")

    write_config(home, {"tasks": {"late": sh_task('echo "$HOSTCTL_CONTEXT" > "$0"',
                                                  str(marker))}})
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: "config reloaded" in hostctl_log(home), 10, "the reload")
    assert daemon.poll() is None
    task = add_task(run_hostctl, "late", "@a.example")
    wait_for(lambda: status_of(run_hostctl, task) == "success", 20, "the new type to run")
    assert marker.read_text() == "@a.example\n"
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_a_broken_config_on_hup_keeps_the_old_one(run_hostctl, home, procs) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    (home / "config.toml").write_text("[worker\nnot toml")
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in hostctl_log(home), 10, "the refusal")
    assert daemon.poll() is None
    (home / "config.toml").unlink()
    task = add_task(run_hostctl, "verify", "@a.example")
    wait_for(lambda: status_of(run_hostctl, task) == "success", 20, "the task to run")
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_pause_holds_tasks_and_resume_releases_them(run_hostctl, home, procs) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    assert run_hostctl("queue", "pause").code == 0
    task = add_task(run_hostctl, "verify", "@a.example")
    time.sleep(1.5)
    assert status_of(run_hostctl, task) == "queued"
    assert run_hostctl("queue", "resume").code == 0
    # the daemon's own rescan comes once a minute: resume must not wait for it
    wait_for(lambda: status_of(run_hostctl, task) == "success", 10,
             "the held task to run after resume")
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_a_malformed_context_file_does_not_bring_the_daemon_down(
        run_hostctl, home, procs) -> None:
    write_config(home, {"tasks": {"cron": sh_task("true")}})
    save_sites(run_hostctl, home, ["a.example"])
    (home / "contexts" / "broken.toml").write_text("this is = = not toml\n")
    daemon = procs.start("wait-queue", "--max-runtime", "120")
    task = add_task(run_hostctl, "verify", "@a.example")
    wait_for(lambda: status_of(run_hostctl, task) != "queued" or daemon.poll() is not None,
             20, "the task to start")
    assert daemon.poll() is None, "wait-queue died on one malformed context file"
    wait_for(lambda: status_of(run_hostctl, task) == "success", 20, "the task to succeed")
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_two_daemons_and_dispatch_run_500_tasks_exactly_once(
        run_hostctl, home, procs, tmp_path) -> None:
    out = tmp_path / "ran"
    n_tasks, n_sites = 500, 25
    write_config(home, {
        "worker": {"concurrency": 2},
        # the built-in cron type would add tasks of its own to the count
        "queues": {"tasks": {"frequency": 1, "items": 3}, "cron": {"enabled": False}},
        "tasks": {"append": sh_task('echo "$HOSTCTL_TASK_ID" >> "$0"', str(out),
                                    options={"n": "sequence number"})},
    })
    sites = [f"s{i:02d}.example" for i in range(n_sites)]
    save_sites(run_hostctl, home, sites)

    h = ops.Home(Paths(home))
    ids: list[str] = []

    def publish(numbers: range) -> None:
        for i in numbers:
            added = ops.add(h, "append", f"@{sites[i % n_sites]}", {"n": str(i)}, {},
                            priority=i % 10)
            assert added.created
            ids.append(added.task.id)

    # half the tasks wait in the queue; a dispatcher and two daemons start together and
    # compete for them while the other half is published
    publish(range(n_tasks // 2))
    runners = [procs.start("dispatch")]
    daemons = [procs.start("wait-queue", "--max-runtime", "300") for _ in range(2)]
    publish(range(n_tasks // 2, n_tasks))
    assert len(set(ids)) == n_tasks

    done = home / "spool" / "done"
    deadline = time.monotonic() + 120
    while len(os.listdir(done)) < n_tasks:
        assert time.monotonic() < deadline, f"only {len(os.listdir(done))} tasks finished"
        assert all(d.poll() is None for d in daemons), "a wait-queue died"
        if runners[-1].poll() is not None:
            assert runners[-1].returncode == 0
            runners.append(procs.start("dispatch"))
        time.sleep(0.1)
    assert wait_exit(runners[-1], 60, "dispatch") == 0
    for daemon in daemons:
        term(daemon)
    for daemon in daemons:
        assert wait_exit(daemon, 30, "wait-queue after TERM") == 0

    lines = out.read_text().split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    dupes = [i for i, n in Counter(lines).items() if n > 1]
    assert not dupes, f"run more than once: {dupes[:5]}"
    assert len(lines) == n_tasks
    assert set(lines) == set(ids)

    listed = json.loads(run_hostctl("task", "list", "--json").out)
    assert len(listed) == n_tasks
    assert Counter(t["status"] for t in listed) == {"success": n_tasks}
    assert all(len(t["attempts"]) == 1 for t in listed)

    ran_by: Counter[int] = Counter()
    for task_id in ids:
        events = [json.loads(line) for line in (done / f"{task_id}.task").read_text()
                  .splitlines()[1:]]
        starts = [e for e in events if e.get("event") == "start"]
        assert len(starts) == 1, (task_id, events)
        ran_by[starts[0]["worker"]] += 1
    print(f"tasks per runner: {dict(ran_by)}; daemons {[d.pid for d in daemons]}, "
          f"dispatchers {[r.pid for r in runners]}")
    assert len(ran_by) >= 2
    assert not any(pid_alive(d.pid) for d in daemons)


# -- the second TERM: TERM to the groups, KILL after the grace period ------------------

# writes a TERM down in $0.term and goes on: only KILL ends it
STUBBORN = ('trap \'echo TERM >> "$0.term"\' TERM; echo $$ > "$0.started"; '
            'while :; do sleep 0.05; done')


def test_second_term_kills_a_task_that_ignores_term_after_the_grace_period(
        run_hostctl, home, procs, tmp_path) -> None:
    again, once = tmp_path / "again", tmp_path / "once"
    grace = 3.0
    write_config(home, {"worker": {"kill_grace": grace, "concurrency": 2},
                        "queues": {"cron": {"enabled": False}},
                        "tasks": {"stubborn": sh_task(STUBBORN, str(again)),
                                  "fragile": sh_task(STUBBORN, str(once),
                                                     rerun_on_loss=False)}})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    rerun = add_task(run_hostctl, "stubborn", "@a.example")
    no_rerun = add_task(run_hostctl, "fragile", "@b.example")
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    for flag in (again, once):
        wait_for(lambda f=flag: Path(f"{f}.started").exists(), 30, "both tasks to start")
    pids = [int(Path(f"{f}.started").read_text()) for f in (again, once)]

    term(daemon)
    wait_for(lambda: "stopping:" in hostctl_log(home), 10, "the daemon to note the TERM")
    assert daemon.poll() is None
    begun = time.monotonic()
    term(daemon)
    for flag in (again, once):
        wait_for(lambda f=flag: Path(f"{f}.term").exists(), 10, "the tasks' groups to get TERM")
    # both ignored it: their groups still run, until the KILL after the grace period
    assert all(group_members(pid) for pid in pids)
    assert daemon.poll() is None
    assert wait_exit(daemon, 30, "wait-queue after the grace period") == 0
    assert time.monotonic() - begun >= grace - 0.05
    for pid in pids:
        wait_for(lambda p=pid: not group_members(p), 10, "the killed groups to be gone")
    for flag in (again, once):
        assert Path(f"{flag}.term").read_text() == "TERM\n"  # one TERM each, then KILL

    doc = task_json(run_hostctl, rerun)
    assert doc["status"] == "queued", doc  # its type may simply run again
    [attempt] = doc["attempts"]
    assert attempt["outcome"] == "lost"
    assert "wait-queue was stopped" in attempt["reason"]
    assert "SIGKILL" in attempt["reason"], attempt
    doc = task_json(run_hostctl, no_rerun)
    assert doc["status"] == "error", doc  # its type must not: a person checks it
    [attempt] = doc["attempts"]
    assert attempt["outcome"] == "lost"
    assert "wait-queue was stopped" in attempt["reason"]
    assert "SIGKILL" in attempt["reason"], attempt
    log = (home / "logs" / f"{rerun}.log").read_text()
    assert "wait-queue was stopped; sending TERM" in log


# -- liveness in queue status -----------------------------------------------------------


def test_the_daemons_count_is_current_between_housekeeping_passes(
        run_hostctl, home, procs) -> None:
    """Its record says each task it started at once, not at the next pass (an hour)."""
    write_config(home, {"queues": {"cron": {"enabled": False}}})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120",
                          "--housekeeping-every", "3600")
    assert daemon_record(run_hostctl, daemon.pid)["tasks_run"] == 0
    ids = [add_task(run_hostctl, "verify", f"@{s}.example") for s in "ab"]
    wait_for(lambda: all(status_of(run_hostctl, i) == "success" for i in ids), 30,
             "the tasks to run")
    assert daemon_record(run_hostctl, daemon.pid)["tasks_run"] == 2
    term(daemon)


def test_queue_status_shows_the_daemons_tasks_run_and_last_seen(
        run_hostctl, home, procs) -> None:
    write_config(home, {"queues": {"cron": {"enabled": False}}})  # only the tasks below run
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120",
                          "--housekeeping-every", "0.3")
    first = daemon_record(run_hostctl, daemon.pid)
    assert first is not None
    assert first["alive"] is True and first["host"] == os.uname().nodename
    assert first["tasks_run"] == 0
    assert iso(first["started"]) <= iso(first["last_seen"]) <= time.time()

    ids = [add_task(run_hostctl, "verify", f"@{s}.example") for s in "abc"]
    wait_for(lambda: all(status_of(run_hostctl, i) == "success" for i in ids), 30,
             "the tasks to run")
    counted = wait_for(lambda: (d := daemon_record(run_hostctl, daemon.pid))
                       and d["tasks_run"] == 3 and d, 30, "tasks_run to reach 3")
    assert counted["started"] == first["started"]
    assert iso(counted["last_seen"]) > iso(first["last_seen"])
    later = wait_housekeeping(run_hostctl, daemon.pid, rounds=2)
    assert iso(later["last_seen"]) > iso(counted["last_seen"])
    assert later["tasks_run"] == 3  # nothing more ran
    text = run_hostctl("queue", "status").out
    assert f"wait-queue pid {daemon.pid}: alive" in text and "3 task(s) run" in text

    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0
    assert daemon_record(run_hostctl, daemon.pid) is None


def iso(text: str) -> float:
    from hostctl.times import parse_iso

    return parse_iso(text)


# -- periodic queues inside the daemon -------------------------------------------------


@contextmanager
def dispatcher_lock(home: Path) -> Iterator[None]:
    """Hold the dispatcher lock, as a running ``dispatch`` does."""
    h = ops.Home(Paths(home))
    path = h.writable().dir("locks") / "dispatch.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cron_config(home: Path, ran: Path, frequency: float) -> None:
    write_config(home, {
        "tasks": {"cron": sh_task('echo "$HOSTCTL_CONTEXT" >> "$0"', str(ran))},
        "queues": {"cron": {"type": "serial", "frequency": frequency, "items": 5}},
    })


def test_the_daemon_runs_a_due_periodic_queue_under_the_dispatcher_lock(
        run_hostctl, home, procs, tmp_path) -> None:
    ran = tmp_path / "cron.ran"
    cron_config(home, ran, 2)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    state = home / "spool" / "queues.json"

    with dispatcher_lock(home):
        daemon = start_daemon(procs, home, "--max-runtime", "120",
                              "--housekeeping-every", "0.3")
        wait_housekeeping(run_hostctl, daemon.pid, rounds=3)
        # three passes with the cron queue due, and the lock held by "a dispatcher": none
        # of them ran it
        assert not ran.exists()
        assert "cron" not in json.loads(state.read_text() if state.exists() else "{}").get(
            "last_run", {})
        assert "queue cron:" not in hostctl_log(home)

    wait_for(lambda: ran.exists() and sorted(ran.read_text().split())
             == ["@a.example", "@b.example"], 20, "the daemon to run the cron queue")
    assert f"[{daemon.pid}] INFO queue cron: queued 2 cron task(s)" in hostctl_log(home)
    assert json.loads(state.read_text())["last_run"]["cron"] > 0
    cron = [t for t in json.loads(run_hostctl("task", "list", "--json").out)
            if t["type"] == "cron"]
    wait_for(lambda: all(status_of(run_hostctl, t["id"]) == "success" for t in cron), 20,
             "the cron tasks to succeed")
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


LOG_LINE = re.compile(r"^(\S+ \S+) \[(\d+)\] INFO queue cron: queued ", re.M)


def test_dispatch_and_the_daemon_never_run_a_periodic_queue_twice_in_one_period(
        run_hostctl, home, procs, hostctl_process, tmp_path) -> None:
    ran = tmp_path / "cron.ran"
    frequency = 2.0
    cron_config(home, ran, frequency)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120",
                          "--housekeeping-every", "0.1")
    # dispatchers one after the other, as fast as they go, while the daemon looks every
    # 0.1 s: both compete for every period of the cron queue
    dispatchers = 0
    end = time.monotonic() + 3.5 * frequency
    while time.monotonic() < end:
        res = hostctl_process("dispatch", "--queue", "cron", timeout=60)
        assert res.returncode == 0, res.stderr
        dispatchers += 1
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0

    runs = [(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), int(pid))
            for stamp, pid in LOG_LINE.findall(hostctl_log(home))]
    by = Counter("daemon" if pid == daemon.pid else "dispatch" for _, pid in runs)
    print(f"cron queue runs: {dict(by)}; {dispatchers} dispatch processes")
    assert dispatchers >= 5
    assert 3 <= len(runs) <= 5, runs
    gaps = [b[0] - a[0] for a, b in zip(runs, runs[1:], strict=False)]
    assert all(gap > frequency / 2 for gap in gaps), gaps  # once per period, by either
    cron = [t for t in json.loads(run_hostctl("task", "list", "--json").out)
            if t["type"] == "cron"]
    assert Counter(t["context"] for t in cron) == {"@a.example": len(runs),
                                                   "@b.example": len(runs)}


# -- housekeeping: the sweep and the rescan, on their clock ---------------------------


@contextmanager
def own_signal_handlers() -> Iterator[None]:
    """Give this (pytest's) process its signal handlers back after a WaitQueue ran in it."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_step_sweeps_and_rescans_only_when_its_housekeeping_is_due(
        run_hostctl, home) -> None:
    from hostctl.queues import dropbox
    from hostctl.runners.daemon import WaitQueue

    save_sites(run_hostctl, home, ["a.example", "b.example"])
    h = ops.Home(Paths(home))
    spool = h.writable()
    paused = spool.root / "paused"
    paused.touch()  # no task starts: what moves below is the housekeeping's doing alone
    wq = WaitQueue(h, clock=lambda: 5000.0, housekeeping_every=30)
    with own_signal_handlers():
        wq.start()
        try:
            wq.step(5000.0)  # the first pass does the housekeeping
            assert wq.wake_in(5000.0) == 30
            record = spool.root / "workers" / f"{os.getpid()}.json"
            seen = record.read_bytes()

            # a submission in incoming/ (the wake-up that reports it is never read here:
            # the loop's wait is not called) and a task whose worker died after its claim
            dropped = dropbox.submit(h.paths, "verify", "@a.example", {}, {}).id
            lost = ops.add(h, "verify", "@b.example", {}, {}).task.id
            [name] = os.listdir(spool.dir("new"))
            os.rename(spool.dir("new") / name, spool.dir("active") / name)

            wq.step(5029.9)
            assert len(os.listdir(spool.dir("incoming"))) == 1
            assert status_of(run_hostctl, lost) == "processing"
            assert record.read_bytes() == seen
            assert wq.wake_in(5029.9) == pytest.approx(0.1)

            wq.step(5030.0)
            assert os.listdir(spool.dir("incoming")) == []
            assert status_of(run_hostctl, dropped) == "queued"  # admitted by the rescan
            assert status_of(run_hostctl, lost) == "queued"  # recovered by the sweep
            assert record.read_bytes() != seen  # liveness
            assert wq.wake_in(5030.0) == 30

            # resumed, the next step claims what the housekeeping found
            paused.unlink()
            wq.step(5030.5)
            assert wq.worker is not None and len(wq.worker.running) == 2
            while wq.worker.running:
                wq.worker.wait(1.0)
            assert [status_of(run_hostctl, i) for i in (dropped, lost)] == ["success"] * 2
        finally:
            wq._close()


@contextmanager
def daemon_here(h: ops.Home, **kw: Any) -> Iterator[tuple[Any, Any]]:
    """wait-queue's daemon in this process (its signal handlers given back after), its
    first pass made: it and its worker."""
    from hostctl.runners.daemon import WaitQueue

    wq = WaitQueue(h, housekeeping_every=30, **kw)
    with own_signal_handlers():
        wq.start()
        try:
            assert wq.worker is not None
            wq.step(wq.clock())
            yield wq, wq.worker
        finally:
            wq._close()


@pytest.mark.parametrize("change", ["pause", "config", "hup"])
def test_a_task_that_ends_between_two_passes_frees_no_slot_the_next_pass_would_not(
        run_hostctl, home, tmp_path, change) -> None:
    """The next task starts in an ended task's slot before the daemon's next pass (see
    Worker._start_next), so the daemon's own conditions are asked there: the queue
    paused, config.toml changed or a HUP since the pass, and nothing starts."""
    from hostctl.runners.dispatcher import pause

    flag = tmp_path / "flag"
    config = {"tasks": {"slow": sh_task(BLOCKING, str(flag))},
              "queues": {"cron": {"enabled": False}}}
    write_config(home, config)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    slow = add_task(run_hostctl, "slow", "@a.example")
    h = ops.Home(Paths(home))
    with daemon_here(h, concurrency=1) as (wq, worker):
        assert len(worker.running) == 1
        wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")
        # ready on another context: it would start the moment the slot frees
        behind = add_task(run_hostctl, "verify", "@b.example")
        if change == "pause":
            pause(h, wait=False)
        elif change == "config":
            write_config(home, config)  # the same text, written again: a change
        else:
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: wq.reload_requested, 10, "the HUP to be recorded")
        Path(f"{flag}.go").touch()
        while worker.running:
            worker.wait(1.0)
        assert status_of(run_hostctl, slow) == "success"
        assert status_of(run_hostctl, behind) == "queued"


def test_config_toml_caught_halfway_through_a_write_is_not_taken(run_hostctl, home) -> None:
    """An editor that writes config.toml in place leaves it empty (or cut short) for a
    moment: read then, it would be a home with no task types (or one that left its
    cluster: wait-queue would exit). The daemon takes a change once the file has stood
    SETTLE seconds unchanged, and wakes for it then."""
    from hostctl.config import SETTLE

    config = {"tasks": {"block": sh_task(BLOCKING, "/nonexistent/flag")},
              "queues": {"cron": {"enabled": False}}}
    write_config(home, config)
    good = (home / "config.toml").read_text()
    with daemon_here(ops.Home(Paths(home))) as (wq, worker):
        (home / "config.toml").write_text("")  # the write, caught halfway
        wq.step(wq.clock())
        assert not wq.reload_requested and "block" in worker.registry.names()
        assert 0 < wq.wake_in(wq.clock()) <= SETTLE
        (home / "config.toml").write_text(good + '\n[worker]\nconcurrency = 3\n')
        wq.step(wq.clock())
        assert worker.concurrency == 2
        time.sleep(SETTLE + 0.1)
        wq.step(wq.clock())  # settled: taken
        assert worker.concurrency == 3 and "block" in worker.registry.names()
        assert wq.wake_in(wq.clock()) > SETTLE
        # dated an hour ahead of the clock (a clock set back): taken once seen unchanged
        # for SETTLE seconds here
        (home / "config.toml").write_text(good + '\n[worker]\nconcurrency = 4\n')
        ahead = time.time() + 3600
        os.utime(home / "config.toml", (ahead, ahead))
        wq.step(wq.clock())
        assert worker.concurrency == 3 and 0 < wq.wake_in(wq.clock()) <= SETTLE
        time.sleep(SETTLE + 0.1)
        wq.step(wq.clock())
        assert worker.concurrency == 4


def test_when_config_toml_counts_as_settled(tmp_path: Path) -> None:
    """A file changed a moment ago is not settled yet, one dated ahead of the clock counts
    as just changed (never longer: whoever watches it stand takes it), and a link whose
    target is being written anew (missing for a moment) counts from the change of the
    target's folder, not from the link's."""
    from hostctl.config import SETTLE, unsettled_for, wait_settled

    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    assert 0 < unsettled_for(cfg) <= SETTLE
    ahead = time.time() + 3600
    os.utime(cfg, (ahead, ahead))
    assert unsettled_for(cfg) == SETTLE
    began = time.monotonic()
    assert wait_settled(cfg)  # seen unchanged here for SETTLE seconds
    assert time.monotonic() - began >= SETTLE
    target = tmp_path / "etc"
    target.mkdir()
    (target / "config.toml").write_text("")
    link = tmp_path / "home" / "config.toml"
    link.parent.mkdir()
    link.symlink_to(target / "config.toml")
    time.sleep(SETTLE + 0.1)
    assert unsettled_for(link) == 0
    (target / "config.toml").unlink()  # its target being written anew
    assert 0 < unsettled_for(link) <= SETTLE
    assert not wait_settled(link, patience=0.2)


def no_inotify(tmp_path: Path) -> list[str]:
    """A command prefix that runs the command in a user namespace of its own whose inotify
    instance limit is 0, as when the user's instances ran out: inotify_init1 fails with
    EMFILE there, and nowhere else. Skips the test where user namespaces are not allowed."""
    prefix = ["unshare", "--user", "--map-root-user", "sh", "-c",
              'echo 0 > /proc/sys/user/max_inotify_instances && exec "$0" "$@"']
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0 or probe.stdout.strip() != "EMFILE":
        pytest.skip(f"no user namespace with an inotify limit here: {probe.stderr.strip()}")
    return prefix


PROBE = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
print("EMFILE" if libc.inotify_init1(0) < 0 and ctypes.get_errno() == errno.EMFILE else "ok")
"""


def test_without_inotify_the_rescan_finds_what_is_queued(
        run_hostctl, home, procs, tmp_path) -> None:
    from hostctl.queues import dropbox

    prefix = no_inotify(tmp_path)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120", "--housekeeping-every", "1",
                          exe=[*prefix, hostctl_exe()])
    assert "no inotify (" in hostctl_log(home)

    h = ops.Home(Paths(home))
    queued = add_task(run_hostctl, "verify", "@a.example")
    dropped = dropbox.submit(h.paths, "verify", "@b.example", {}, {}).id
    # no wake-up comes: the once-a-second rescan finds both (the default, once a minute,
    # would not within this test's time)
    done = home / "spool" / "done"
    wait_for(lambda: all((done / f"{i}.task").exists() for i in (queued, dropped)), 20,
             "the rescan to find and run both tasks")
    assert [status_of(run_hostctl, i) for i in (queued, dropped)] == ["success"] * 2
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0
