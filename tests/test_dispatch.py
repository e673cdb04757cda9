"""``hostctl dispatch``: the dispatcher lock, failing queues, --force and --queue, the cron
and task_gc queues, pause and resume. Real processes and real signals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from runnerhelpers import (
    SLOW,
    add_task,
    hostctl_log,
    pid_alive,
    save_sites,
    sh_task,
    status_of,
    task_json,
    tasks_json,
    wait_exit,
    wait_for,
    write_config,
    written_in_place,
)


def slow_config(home: Path, flag: Path, **extra: object) -> None:
    write_config(home, {"tasks": {"slow": sh_task(SLOW, str(flag), max_attempts=1)},
                        **extra})


def test_second_dispatcher_exits_at_once_while_the_first_holds_the_lock(
        run_hostctl, home, procs, hostctl_process, tmp_path) -> None:
    flag = tmp_path / "flag"
    slow_config(home, flag)
    save_sites(run_hostctl, home, ["a.example"])
    slow = add_task(run_hostctl, "slow", "@a.example")
    first = procs.start("dispatch", log=tmp_path / "first.out")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")

    # the first dispatcher is blocked on the slow task: a second one that waited for the
    # lock would hit the timeout
    second = hostctl_process("dispatch", timeout=30)
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""  # cron mails nothing
    assert second.stdout == ""
    verbose = hostctl_process("-v", "dispatch", timeout=30)
    assert verbose.returncode == 0, verbose.stderr
    assert "another dispatcher is running" in verbose.stderr
    assert hostctl_log(home).count("another dispatcher is running") == 2
    assert first.poll() is None
    assert status_of(run_hostctl, slow) == "processing"

    Path(f"{flag}.go").touch()
    assert wait_exit(first, 30, "the first dispatcher") == 0
    assert status_of(run_hostctl, slow) == "success"


def test_a_dispatcher_killed_with_kill_9_never_blocks_the_next(
        run_hostctl, home, procs, hostctl_process, tmp_path) -> None:
    flag = tmp_path / "flag"
    slow_config(home, flag)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    slow = add_task(run_hostctl, "slow", "@a.example")
    first = procs.start("dispatch")
    started = wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task")
    assert started
    task_pid = int(Path(f"{flag}.started").read_text())
    os.kill(first.pid, signal.SIGKILL)
    assert wait_exit(first, 10, "the killed dispatcher") == -signal.SIGKILL

    quick = add_task(run_hostctl, "verify", "@b.example")
    res = hostctl_process("-v", "dispatch", timeout=30)
    assert res.returncode == 0, res.stderr
    assert "another dispatcher" not in res.stderr
    assert status_of(run_hostctl, quick) == "success"
    # the orphaned command (spawned, so it outlived its worker) was killed by the sweep
    wait_for(lambda: not pid_alive(task_pid), 10, "the orphaned task to be killed")
    # the cut-off task was found by the sweep: never left in processing
    doc = task_json(run_hostctl, slow)
    assert doc["status"] == "error", doc
    assert len(doc["attempts"]) == 1
    assert not Path(f"{flag}.go").exists()


def test_garbage_in_done_is_quarantined_by_task_gc_and_the_others_still_run(
        run_hostctl, home, hostctl_process, tmp_path) -> None:
    ran = tmp_path / "cron.ran"
    write_config(home, {"tasks": {"cron": sh_task('echo "$HOSTCTL_CONTEXT" >> "$0"',
                                                  str(ran))}})
    save_sites(run_hostctl, home, ["a.example"])
    verify = add_task(run_hostctl, "verify", "@a.example")
    # something task_gc cannot simply remove: a folder where a finished task file should be
    done = home / "spool" / "done"
    odd = done / "01a0000000000000beef.task"
    (odd / "inside").mkdir(parents=True)
    os.utime(odd, (time.time() - 90 * 86400,) * 2)

    res = hostctl_process("dispatch", timeout=60)
    assert res.returncode == 0, res
    assert "Traceback" not in res.stderr
    assert status_of(run_hostctl, verify) == "success"
    assert ran.read_text() == "@a.example\n"  # cron queued it, tasks ran it
    assert not odd.exists()
    quarantine = home / "spool" / "quarantine"
    assert (quarantine / odd.name / "inside").is_dir()  # set aside, not deleted
    assert "regular file" in (quarantine / f"{odd.name}.reason").read_text()


def test_a_malformed_context_file_does_not_stop_the_tasks_queue(
        run_hostctl, home, hostctl_process) -> None:
    """The cron queue lists the sites and fails on a broken context file; the tasks queue
    does not need that file and must still run."""
    write_config(home, {"tasks": {"cron": sh_task("true")}})
    save_sites(run_hostctl, home, ["a.example"])
    verify = add_task(run_hostctl, "verify", "@a.example")
    (home / "contexts" / "broken.toml").write_text("this is = = not toml\n")

    res = hostctl_process("dispatch", timeout=60)
    assert status_of(run_hostctl, verify) == "success", res.stderr
    assert res.returncode == 1, res.stderr  # the cron queue failed, and says so
    assert "cron" in res.stderr and "broken.toml" in res.stderr
    assert "queue cron failed" in hostctl_log(home)
    cron = [t for t in json.loads(run_hostctl("task", "list", "--json").out)
            if t["type"] == "cron"]
    assert [t["context"] for t in cron] == ["@a.example"]  # the good site still got its run


def test_cron_queue_picks_sites_whose_cron_ran_longest_ago_and_force(
        run_hostctl, home, tmp_path) -> None:
    ran = tmp_path / "cron.ran"
    write_config(home, {"tasks": {"cron": sh_task('echo "$HOSTCTL_CONTEXT" >> "$0"',
                                                  str(ran))}})
    save_sites(run_hostctl, home, ["c.example", "a.example", "b.example"])
    assert run_hostctl("provision-save", "@off.example", "--context_type", "site",
                       "--platform", "@plat", "--site_enabled", "false").code == 0

    def runs() -> list[str]:
        return ran.read_text().split() if ran.exists() else []

    # 3 enabled sites, batch with at least 6 threads: one site per run
    doc = {q["name"]: q for q in json.loads(run_hostctl("queue", "list", "--json").out)}
    assert doc["cron"]["total"] == 3 and doc["cron"]["calc_items"] == 1

    assert run_hostctl("dispatch").code == 0
    assert runs() == ["@a.example"]
    assert run_hostctl("dispatch").code == 0  # not due again for 600 s
    assert runs() == ["@a.example"]
    for _ in range(3):
        assert run_hostctl("dispatch", "--force").code == 0
    assert runs() == ["@a.example", "@b.example", "@c.example", "@a.example"]
    cron_tasks = [t for t in json.loads(run_hostctl("task", "list", "--json").out)
                  if t["type"] == "cron"]
    assert len(cron_tasks) == 4
    assert {t["status"] for t in cron_tasks} == {"success"}
    state = json.loads((home / "spool" / "queues.json").read_text())
    assert set(state["sites"]["cron"]) == {"@a.example", "@b.example", "@c.example"}


def test_queue_option_runs_only_that_queue(run_hostctl, home, tmp_path) -> None:
    write_config(home, {"tasks": {"cron": sh_task("true")}})
    save_sites(run_hostctl, home, ["a.example"])
    res = run_hostctl("dispatch", "--queue", "cron", "--force")
    assert res.code == 0, res
    cron = json.loads(run_hostctl("task", "list", "--json").out)
    assert [(t["type"], t["status"]) for t in cron] == [("cron", "queued")]
    state = json.loads((home / "spool" / "queues.json").read_text())
    assert set(state["last_run"]) == {"cron"}

    res = run_hostctl("dispatch", "--queue", "tasks")
    assert res.code == 0, res
    assert status_of(run_hostctl, cron[0]["id"]) == "success"

    res = run_hostctl("dispatch", "--queue", "nosuchqueue")
    assert res.code == 2
    assert "nosuchqueue" in res.err and "task_gc" in res.err


def test_force_never_runs_a_disabled_queue_and_verbose_says_why_one_did_not_run(
        run_hostctl, hostctl_process, home) -> None:
    write_config(home, {"tasks": {"cron": sh_task("true")},
                        "queues": {"cron": {"enabled": False}}})
    save_sites(run_hostctl, home, ["a.example"])
    res = hostctl_process("dispatch", "--queue", "cron", "--force")
    assert res.returncode == 0, res
    assert "queue cron did not run: disabled ([queues.cron] enabled = false)" in res.stderr
    assert run_hostctl("task", "list", "--json").out.strip() == "[]"
    assert hostctl_process("dispatch").returncode == 0
    res = hostctl_process("-v", "dispatch")
    assert res.returncode == 0, res
    assert re.search(r"queue task_gc did not run: not due: next run in \d+ s", res.stderr)
    assert "queue cron did not run: disabled" in res.stderr
    quiet = hostctl_process("dispatch")
    assert "did not run" not in quiet.stderr  # without -v: nothing to say


def test_task_gc_removes_finished_tasks_and_their_logs_past_retention(
        run_hostctl, home) -> None:
    write_config(home, {"queues": {"task_gc": {"retention_days": 30, "min_threads": 1}}})
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    ids = [add_task(run_hostctl, "verify", f"@{s}.example") for s in "abc"]
    assert run_hostctl("dispatch", "--queue", "tasks").code == 0
    queued = add_task(run_hostctl, "verify", "@a.example", "--delay", "3600")
    assert [status_of(run_hostctl, i) for i in ids] == ["success"] * 3
    done, logs = home / "spool" / "done", home / "logs"
    for i in ids:
        assert (done / f"{i}.task").exists() and (logs / f"{i}.log").exists()
    old = time.time() - 40 * 86400
    for i in ids[:2]:
        os.utime(done / f"{i}.task", (old, old))
    doc = {q["name"]: q for q in json.loads(run_hostctl("queue", "list", "--json").out)}
    assert doc["task_gc"]["pending"] == 2

    res = run_hostctl("dispatch", "--queue", "task_gc", "--force")
    assert res.code == 0, res
    for i in ids[:2]:
        assert not (done / f"{i}.task").exists()
        assert not (logs / f"{i}.log").exists()
        assert run_hostctl("task", "show", i).code == 2
    assert (done / f"{ids[2]}.task").exists() and (logs / f"{ids[2]}.log").exists()
    assert status_of(run_hostctl, ids[2]) == "success"
    assert status_of(run_hostctl, queued) == "queued"  # only finished tasks go


def test_pause_stops_dispatch_from_running_tasks_and_resume_lets_it(
        run_hostctl, home) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    res = run_hostctl("queue", "pause")
    assert res.code == 0, res
    status = json.loads(run_hostctl("queue", "status", "--json").out)
    assert status["paused"] is True
    task = add_task(run_hostctl, "verify", "@a.example")
    for argv in (("dispatch",), ("dispatch", "--force"), ("dispatch", "--queue", "tasks")):
        res = run_hostctl(*argv)
        assert res.code == 0, res
        assert status_of(run_hostctl, task) == "queued"
    assert "PAUSED" in run_hostctl("queue", "status").out

    assert run_hostctl("queue", "resume").code == 0
    assert json.loads(run_hostctl("queue", "status", "--json").out)["paused"] is False
    res = run_hostctl("dispatch")
    assert res.code == 0, res
    assert status_of(run_hostctl, task) == "success"


# -- cron and backup: ordered by the last run that succeeded, never two at once ----------


def sites_pass(run_hostctl, queue: str) -> None:
    """One run of ``queue`` (forced), then the tasks queue runs what it queued."""
    res = run_hostctl("dispatch", "--queue", queue, "--force")
    assert res.code == 0, res
    res = run_hostctl("dispatch", "--queue", "tasks", "--force")
    assert res.code in (0, 1), res  # 1: one of the tasks failed, as it was told to


def failing_site_setup(run_hostctl, home: Path, queue: str) -> None:
    """Sites a, b and c, with the ``queue`` queue enabled, serial, one site per run; the
    tasks it queues succeed on a and b and always fail on c.

    cron: a config.toml command type named ``cron`` that fails on @c.example. backup: the
    built-in type on three installed sites (SQLite, no web server), c's files removed
    behind hostctl's back, so that its backup fails for real."""
    queues = {queue: {"enabled": True, "type": "serial", "items": 1, "frequency": 86400}}
    if queue == "cron":
        script = '[ "$HOSTCTL_CONTEXT" != "@c.example" ]'
        write_config(home, {"tasks": {"cron": sh_task(script, max_attempts=1)},
                            "queues": queues})
    else:
        write_config(home, {"queues": {**queues, "cron": {"enabled": False}}})
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    if queue == "backup":
        for site in ("@a.example", "@b.example", "@c.example"):
            res = run_hostctl("provision-install", site)
            assert res.code == 0, res
        shutil.rmtree(home.parent / "www" / "sites" / "c.example")


@pytest.mark.parametrize("queue", ["cron", "backup"])
def test_a_site_whose_task_failed_is_picked_first_at_the_next_run(
        run_hostctl, home, queue) -> None:
    failing_site_setup(run_hostctl, home, queue)

    def picked() -> tuple[str, str]:
        before = {t["id"] for t in json.loads(run_hostctl("task", "list", "--json").out)}
        sites_pass(run_hostctl, queue)
        [task] = [t for t in json.loads(run_hostctl("task", "list", "--json").out)
                  if t["id"] not in before and t["type"] == queue]
        return task["context"], task["status"]

    runs = [picked() for _ in range(6)]
    # a and b (never run: by name), then c, which fails; c again at once (its run failed,
    # so it is still the one whose last good run is oldest) and fails again; then the
    # rotation goes on: one site that keeps failing does not hold the queue for itself
    assert runs == [("@a.example", "success"), ("@b.example", "success"),
                    ("@c.example", "error"), ("@c.example", "error"),
                    ("@a.example", "success"), ("@b.example", "success")], runs

    tasks = [t for t in json.loads(run_hostctl("task", "list", "--json").out)
             if t["type"] == queue]
    state = json.loads((home / "spool" / "queues.json").read_text())
    assert state["version"] == 2
    # the last pass's task is not settled yet: it is pending until the next run reads it
    assert state["pending"][queue] == {"@b.example": tasks[0]["id"]}
    assert state["failures"][queue] == {"@c.example": 2}
    times = state["sites"][queue]
    assert set(times) == {"@a.example", "@b.example", "@c.example"}
    last_a = [t for t in tasks if t["context"] == "@a.example"][0]
    assert times["@a.example"] == pytest.approx(iso(last_a["finished"]), abs=0.002)
    second_c = [t for t in tasks if t["context"] == "@c.example"][0]
    assert times["@c.example"] == pytest.approx(iso(second_c["finished"]), abs=0.002)


def test_a_site_whose_cron_task_is_still_running_is_not_given_another(
        run_hostctl, home, procs, tmp_path) -> None:
    flag = tmp_path / "flag"
    write_config(home, {
        "tasks": {"cron": sh_task(SLOW, str(flag))},
        "queues": {"cron": {"type": "serial", "items": 5, "frequency": 3600}},
    })
    save_sites(run_hostctl, home, ["a.example"])

    def cron_tasks() -> list[dict[str, object]]:
        return [t for t in json.loads(run_hostctl("task", "list", "--json").out)
                if t["type"] == "cron"]

    assert run_hostctl("dispatch", "--queue", "cron", "--force").code == 0
    [first] = cron_tasks()
    daemon = procs.start("wait-queue", "--max-runtime", "120")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the cron task to start")
    assert status_of(run_hostctl, str(first["id"])) == "processing"

    # an identical queued task would be found by the spool's de-duplication; a running
    # one is not: only the queue's own bookkeeping keeps the site from a second run
    assert run_hostctl("dispatch", "--queue", "cron", "--force").code == 0
    assert [t["id"] for t in cron_tasks()] == [first["id"]]
    assert "queued 0 cron task(s); 1 site(s) still wait for the last one" in hostctl_log(home)

    Path(f"{flag}.go").touch()
    wait_for(lambda: status_of(run_hostctl, str(first["id"])) == "success", 30,
             "the cron task to end")
    Path(f"{flag}.go").unlink()
    assert run_hostctl("dispatch", "--queue", "cron", "--force").code == 0
    assert len(cron_tasks()) == 2  # settled: the site gets its next run
    os.kill(daemon.pid, signal.SIGTERM)
    Path(f"{flag}.go").touch()
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def iso(text: str) -> float:
    from hostctl.times import parse_iso

    return parse_iso(text)


# -- the tasks queue: items minus the tasks already running ---------------------------

# touches $0/ID, waits for $0.go, writes how many tasks are on the board, leaves it
BOARD = ('touch "$0/$HOSTCTL_TASK_ID"; while [ ! -e "$0.go" ]; do sleep 0.05; done; '
         'ls "$0" | wc -l >> "$0.counts"; rm "$0/$HOSTCTL_TASK_ID"')


def test_tasks_queue_runs_up_to_items_minus_the_tasks_already_running(
        run_hostctl, home, procs, tmp_path) -> None:
    flag, board = tmp_path / "flag", tmp_path / "board"
    board.mkdir()
    write_config(home, {
        "queues": {"tasks": {"items": 3}, "cron": {"enabled": False}},
        "tasks": {"slow": sh_task(SLOW, str(flag)), "board": sh_task(BOARD, str(board))},
    })
    sites = [f"s{i}.example" for i in range(4)]
    save_sites(run_hostctl, home, ["z.example", *sites])
    slow = add_task(run_hostctl, "slow", "@z.example")
    # another runner holds one slot: a daemon busy with the slow task
    daemon = procs.start("wait-queue", "--concurrency", "1", "--max-runtime", "120")
    wait_for(lambda: Path(f"{flag}.started").exists(), 30, "the slow task to start")
    ids = [add_task(run_hostctl, "board", f"@{s}") for s in sites]

    dispatch = procs.start("dispatch", "--queue", "tasks")
    wait_for(lambda: len(os.listdir(board)) == 2, 30, "two tasks on the board")
    time.sleep(1.0)  # room for a third to start, if the dispatcher allowed one
    assert len(os.listdir(board)) == 2
    assert [status_of(run_hostctl, i) for i in ids].count("processing") == 2

    Path(f"{board}.go").touch()
    assert wait_exit(dispatch, 60, "dispatch") == 0
    assert [status_of(run_hostctl, i) for i in ids] == ["success"] * 4
    counts = [int(n) for n in Path(f"{board}.counts").read_text().split()]
    assert len(counts) == 4 and max(counts) == 2, counts
    assert "ran 4 task(s), up to 2 at once (3 items, 1 already running)" in hostctl_log(home)

    # as many running as there are items: the pass starts nothing
    write_config(home, {
        "queues": {"tasks": {"items": 1}, "cron": {"enabled": False}},
        "tasks": {"slow": sh_task(SLOW, str(flag)), "board": sh_task(BOARD, str(board))},
    })
    late = add_task(run_hostctl, "board", "@s0.example")
    assert run_hostctl("dispatch", "--queue", "tasks", "--force").code == 0
    assert "maximum number of tasks (1) already running" in hostctl_log(home)
    assert status_of(run_hostctl, late) == "queued"
    assert status_of(run_hostctl, slow) == "processing"

    Path(f"{flag}.go").touch()
    wait_for(lambda: status_of(run_hostctl, slow) == "success", 30, "the slow task to end")
    os.kill(daemon.pid, signal.SIGTERM)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_built_in_cron_and_backup_go_only_to_sites_that_want_them(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    """The built-in backup is queued for installed sites only, the built-in cron for
    installed sites whose platform's manifest has a cron command; a saved site that was
    never installed gets neither."""
    write_config(home, {"queues": {
        q: {"enabled": True, "type": "serial", "items": 10, "frequency": 60}
        for q in ("cron", "backup")}})
    save_sites(run_hostctl, home, ["bare.example", "plain.example", "app.example"])
    ran = tmp_path / "cron.ran"
    app_root = tmp_path / "app"
    app_root.mkdir()
    (app_root / "hostctl-app.toml").write_text(
        'format = 1\n[commands]\ncron = ["sh", "-c", "echo \\"$1\\" >> \\"$0\\"", '
        f'"{ran}", "{{uri}}"]\n')
    assert run_hostctl("provision-save", "@app_plat", "--context_type", "platform",
                       "--root", str(app_root), "--web_server", "@srv").code == 0
    assert run_hostctl("provision-save", "@app.example", "--platform", "@app_plat").code == 0
    for site in ("@plain.example", "@app.example"):
        res = run_hostctl("provision-install", site)
        assert res.code == 0, res

    res = run_hostctl("dispatch")
    assert res.code == 0, res
    tasks = tasks_json(run_hostctl)
    queued = sorted((t["type"], t["context"]) for t in tasks if t["type"] in ("cron", "backup"))
    assert queued == [("backup", "@app.example"), ("backup", "@plain.example"),
                      ("cron", "@app.example")], queued
    assert all(t["status"] == "success" for t in tasks), tasks
    assert ran.read_text() == "app.example\n"


def test_a_dispatch_started_as_config_toml_is_written_in_place_runs_by_the_whole_file(
        run_hostctl, home, hostctl_process) -> None:
    """An editor writing config.toml in place cuts it to nothing first: a dispatch that
    starts then waits for the file to settle, and runs the queued task by the type the
    whole file declares (read empty, the type would be unknown: the task would wait)."""
    write_config(home, {"tasks": {"hello": sh_task("echo hello")},
                        "queues": {"cron": {"enabled": False}}})
    good = (home / "config.toml").read_text()
    save_sites(run_hostctl, home, ["a.example"])
    task = add_task(run_hostctl, "hello", "@a.example")
    with written_in_place(home / "config.toml", good):
        ran = hostctl_process("dispatch")
    assert ran.returncode == 0, ran.stderr
    assert status_of(run_hostctl, task) == "success"
