"""``hostctl wait-queue``: pickup without polling, max runtime, --once, --concurrency,
signals (TERM, a second TERM, HUP), liveness, pause/resume, and two daemons plus dispatch
on one spool running 500 tasks exactly once. Real processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from runnerhelpers import (
    Procs,
    add_task,
    context_switches,
    daemon_pids,
    group_members,
    hostctl_log,
    pid_alive,
    save_sites,
    sh_task,
    status_of,
    task_json,
    wait_exit,
    wait_for,
    write_config,
)

from hostctl.paths import Paths
from hostctl.queues import tasks as ops

# touches $0.started (its pid inside), waits for $0.go; a TERM is written down in $0.term
BLOCKING = ('trap \'echo TERM >> "$0.term"; exit 143\' TERM; echo $$ > "$0.started"; '
            'while [ ! -e "$0.go" ]; do sleep 0.05; done; echo finished')


@pytest.fixture
def procs(home: Path):
    p = Procs(home)
    yield p
    p.cleanup()


def start_daemon(procs: Procs, home: Path, *argv: str, log: Path | None = None
                 ) -> subprocess.Popen[bytes]:
    """Start wait-queue and wait until it has registered and done its first pass."""
    proc = procs.start("wait-queue", *argv, log=log)
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
        "queues": {"tasks": {"frequency": 1, "items": 3}},
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
