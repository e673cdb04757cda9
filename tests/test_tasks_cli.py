"""The task lifecycle through the CLI: task add|list|show|log|retry|cancel, queue status,
provision-TYPE, retries with backoff, timeouts, refusals (SPEC: Tasks, Output and exit
codes). Tasks run through the real runners (wait-queue, dispatch)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from taskhelpers import (
    build_template,
    folder_of,
    ids_in,
    pid_alive,
    popen_hostctl,
    show,
    stop,
    use_template,
    wait_for,
    write_config,
)

SITES = ["a.example", "b.example", "c.example", "d.example"]


def tasks_config(home: Path, **worker: object) -> None:
    write_config(home, {
        "worker": {"backoff_base": 0.05, "backoff_max": 0.1, "kill_grace": 1, **worker},
        "tasks": {
            "note": {"command": ["sh", "-c", 'echo "$1" >> "$2"; echo "noted $1"', "sh",
                                 "{name}", "{root}/ran"],
                     "context_types": ["site"], "options": {"tag": "a tag"}},
            "fail": {"command": ["sh", "-c", "echo failing; exit 3"],
                     "context_types": ["site"]},
            "tempfail": {"command": ["sh", "-c", 'echo x >> "$1/tries"; exit 75', "sh",
                                     "{root}"],
                         "context_types": ["site"], "max_attempts": 3},
            "slow": {"command": ["sh", "-c",
                                 'echo $$ > "$1/slow.pid"; trap "echo got TERM >> $1/term; '
                                 'exit 143" TERM; echo line one; sleep 60 & wait',
                                 "sh", "{root}"],
                     "context_types": ["site"]},
            "stubborn": {"command": ["sh", "-c",
                                     "trap '' TERM; echo $$ > \"$1/stubborn.pid\"; "
                                     "while :; do sleep 0.2; done", "sh", "{root}"],
                         "context_types": ["site"]},
            "sleepy": {"command": ["sh", "-c", "echo napping; sleep 30"],
                       "context_types": ["site"], "timeout": 1},
            "stream": {"command": ["sh", "-c",
                                   'echo first line; while [ ! -e "$1/go" ]; do sleep 0.02; '
                                   'done; echo second line', "sh", "{root}"],
                       "context_types": ["site"]},
            "chatty": {"command": ["sh", "-c",
                                   "for i in 1 2 3; do echo chunk $i; sleep 0.3; done"],
                       "context_types": ["site"]},
            "result": {"command": ["sh", "-c",
                                   'printf \'{"url": "https://%s/", "warnings": []}\' "$1" '
                                   '> "$HOSTCTL_RESULT"', "sh", "{uri}"],
                       "context_types": ["site"]},
            "warn": {"command": ["sh", "-c",
                                 'echo \'{"warnings": ["disk 91% full"]}\' > "$HOSTCTL_RESULT"'],
                     "context_types": ["site"]},
            "servertask": {"command": ["true"], "context_types": ["server"]},
        },
    })


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("template"), SITES)


@pytest.fixture
def root(run_hostctl, home: Path, template: Path) -> Path:
    tasks_config(home)
    return use_template(template, home, run_hostctl)


def add(run_hostctl, *argv: str) -> str:
    res = run_hostctl("task", "add", *argv)
    assert res.code == 0, res.err
    task_id = res.out.strip()
    assert re.fullmatch(r"[0-9a-f]{20}", task_id), res.out
    return task_id


def drain(run_hostctl, *extra: str) -> None:
    """Run what is ready, as ``hostctl wait-queue --once`` (in this process)."""
    res = run_hostctl("wait-queue", "--once", *extra)
    assert res.code == 0, res.err


# -- task add ---------------------------------------------------------------------------

def test_task_add_prints_the_id_and_queues_it(root: Path, run_hostctl, home: Path) -> None:
    task_id = add(run_hostctl, "note", "@a.example", "--option", "tag=x")
    doc = show(run_hostctl, task_id)
    assert doc["id"] == task_id and doc["status"] == "queued" and doc["status_code"] == 0
    assert doc["type"] == "note" and doc["context"] == "@a.example"
    assert doc["options"] == {"tag": "x"} and doc["priority"] == 5
    assert doc["created"].endswith("Z") and doc["started"] is None and doc["attempts"] == []
    assert folder_of(home, task_id) == ["new"]


def test_identical_queued_task_dedups_to_the_same_id(root: Path, run_hostctl) -> None:
    first = add(run_hostctl, "note", "a.example", "--option", "tag=1")
    res = run_hostctl("task", "add", "note", "@a.example", "--option", "tag=1")
    assert res.code == 0 and res.out.strip() == first
    assert "already queued" in res.err
    other = add(run_hostctl, "note", "@a.example", "--option", "tag=2")
    assert other != first
    res = run_hostctl("task", "list", "--json")
    assert sorted(t["id"] for t in json.loads(res.out)) == sorted([first, other])


def test_task_add_json_gives_the_task_object(root: Path, run_hostctl) -> None:
    res = run_hostctl("task", "add", "note", "@a.example", "--json", "--priority", "8")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["status"] == "queued" and doc["priority"] == 8 and len(doc["id"]) == 20
    for key in ("id", "type", "context", "status", "status_code", "options",
                "context_options", "priority", "created", "started", "finished",
                "attempts"):
        assert key in doc


def test_delay_makes_it_deferred(root: Path, run_hostctl, home: Path) -> None:
    task_id = add(run_hostctl, "note", "@a.example", "--delay", "600")
    assert folder_of(home, task_id) == ["deferred"]
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "queued" and doc["due"]
    drain(run_hostctl)
    assert show(run_hostctl, task_id)["status"] == "queued"
    assert not (root / "ran").exists()


def test_priority_then_first_queued_first_run(root: Path, run_hostctl) -> None:
    plan = [("a.example", 5), ("b.example", 5), ("c.example", 9), ("d.example", 0)]
    for site, prio in plan:
        add(run_hostctl, "note", f"@{site}", "--priority", str(prio))
        time.sleep(0.003)
    drain(run_hostctl, "--concurrency", "1")
    assert (root / "ran").read_text().split() == ["c.example", "a.example", "b.example",
                                                  "d.example"]


@pytest.mark.parametrize("argv, word", [
    (("nope", "@a.example"), "nope"),
    (("note", "@ghost.example"), "ghost"),
    (("servertask", "@a.example"), "site"),
    (("note", "@a.example", "--option", "undeclared=1"), "undeclared"),
    (("note", "@a.example", "--option", "noequals"), "KEY=VALUE"),
    (("note", "@a.example", "--priority", "10"), "priority"),
    (("note", "@a.example", "--context-option", "no_such_field=1"), "no_such_field"),
    (("note", "@Bad Name"), ""),
])
def test_invalid_requests_are_refused_and_nothing_is_queued(root: Path, run_hostctl,
                                                            home: Path, argv, word) -> None:
    res = run_hostctl("task", "add", *argv)
    assert res.code == 2, (res.out, res.err)
    assert res.out == "" and word in res.err and "Traceback" not in res.err
    for folder in ("new", "deferred", "active", "done"):
        assert ids_in(home, folder) == []


def test_provision_refuses_unknown_type_context_and_wrong_type(root: Path, run_hostctl,
                                                              home: Path) -> None:
    for argv in (("provision-nope", "@a.example"), ("provision-note", "@ghost.example"),
                 ("provision-servertask", "@a.example"),
                 ("provision-note", "@a.example", "--undeclared", "1")):
        res = run_hostctl(*argv)
        assert res.code == 2, (argv, res.out, res.err)
    for folder in ("new", "deferred", "active", "done"):
        assert ids_in(home, folder) == []
    assert not (root / "ran").exists()


# -- list, show, log --------------------------------------------------------------------

def test_task_list_filters_and_json(root: Path, run_hostctl) -> None:
    ok = add(run_hostctl, "note", "@a.example")
    bad = add(run_hostctl, "fail", "@b.example")
    drain(run_hostctl)
    queued = add(run_hostctl, "note", "@c.example", "--delay", "600")

    def ids(*argv: str) -> list[str]:
        res = run_hostctl("task", "list", *argv, "--json")
        assert res.code == 0, res.err
        docs = json.loads(res.out)
        assert isinstance(docs, list)
        return [d["id"] for d in docs]

    assert sorted(ids()) == sorted([ok, bad, queued])
    assert ids("--status", "success") == [ok]
    assert ids("--status", "error") == [bad]
    assert ids("--status", "queued") == [queued]
    assert ids("--status", "processing") == []
    assert ids("--context", "@b.example") == [bad]
    assert ids("--context", "c.example", "--status", "queued") == [queued]
    res = run_hostctl("task", "list")
    assert res.code == 0 and ok in res.out and "success" in res.out
    res = run_hostctl("task", "list", "--status", "bogus")
    assert res.code == 2 and "bogus" in res.err


def test_task_show_attempts_and_exit_codes(root: Path, run_hostctl) -> None:
    ok = add(run_hostctl, "note", "@a.example")
    bad = add(run_hostctl, "fail", "@b.example")
    drain(run_hostctl)
    doc = show(run_hostctl, ok)
    assert doc["status"] == "success" and doc["status_code"] == 1
    [a] = doc["attempts"]
    assert a["attempt"] == 1 and a["exit_code"] == 0 and a["outcome"] == "success"
    assert a["started"] <= a["finished"] and doc["finished"] == a["finished"]
    doc = show(run_hostctl, bad)
    assert doc["status"] == "error" and doc["status_code"] == 2
    [a] = doc["attempts"]
    assert a["exit_code"] == 3 and "status 3" in a["reason"]
    res = run_hostctl("task", "show", bad)
    assert res.code == 0 and "error" in res.out and "exit 3" in res.out
    res = run_hostctl("task", "show", "0123456789abcdef0123")
    assert res.code == 2
    res = run_hostctl("task", "show", "../etc")
    assert res.code == 2


def test_structured_result_and_warnings(root: Path, run_hostctl) -> None:
    res_id = add(run_hostctl, "result", "@a.example")
    warn_id = add(run_hostctl, "warn", "@b.example")
    drain(run_hostctl)
    doc = show(run_hostctl, res_id)
    assert doc["status"] == "success"
    assert doc["result"] == {"url": "https://a.example/", "warnings": []}
    doc = show(run_hostctl, warn_id)
    assert doc["status"] == "warning" and doc["status_code"] == 3
    assert doc["result"]["warnings"] == ["disk 91% full"]
    res = run_hostctl("provision-warn", "@c.example")
    assert res.code == 0, res.err  # a warning is a success for the exit code


def test_task_log_has_the_output_and_trailer(root: Path, run_hostctl) -> None:
    task_id = add(run_hostctl, "note", "@a.example")
    drain(run_hostctl)
    res = run_hostctl("task", "log", task_id)
    assert res.code == 0
    assert "noted a.example" in res.out and task_id in res.out
    assert res.out.rstrip().splitlines()[-1].startswith("--- hostctl:")


def test_task_log_follow_ends_when_the_task_ends(root: Path, run_hostctl, home: Path) -> None:
    task_id = add(run_hostctl, "chatty", "@a.example")
    worker = popen_hostctl(home, "wait-queue", "--once")
    try:
        wait_for(lambda: show(run_hostctl, task_id)["status"] == "processing", 20,
                 "the task to start")
        follow = subprocess.run(
            [*_exe(), "task", "log", task_id, "--follow"], capture_output=True, text=True,
            timeout=30, env={**os.environ, "HOSTCTL_HOME": str(home)})
        assert follow.returncode == 0, follow.stderr
        assert show(run_hostctl, task_id)["status"] == "success"
        for n in (1, 2, 3):
            assert f"chunk {n}" in follow.stdout
        assert "--- hostctl:" in follow.stdout.rstrip().splitlines()[-1]
        assert worker.wait(timeout=20) == 0  # --once: nothing more to run
    finally:
        stop(worker)


def test_the_log_is_written_line_by_line_while_the_task_runs(
        root: Path, run_hostctl, home: Path) -> None:
    task_id = add(run_hostctl, "stream", "@a.example")
    log = home / "logs" / f"{task_id}.log"
    worker = popen_hostctl(home, "wait-queue", "--once")
    try:
        wait_for(lambda: log.exists() and "first line\n" in log.read_text(), 20,
                 "the first line in the log while the task runs")
        assert show(run_hostctl, task_id)["status"] == "processing"
        assert "second line" not in log.read_text()
        (root / "go").touch()
        wait_for(lambda: show(run_hostctl, task_id)["status"] == "success", 20,
                 "the task to end")
        text = log.read_text()
        assert text.index("first line") < text.index("second line")
        assert worker.wait(timeout=20) == 0  # --once: nothing more to run
    finally:
        (root / "go").touch()
        stop(worker)


def _exe() -> list[str]:
    from conftest import hostctl_exe

    return [hostctl_exe()]


# -- retry, exit 75, timeout ------------------------------------------------------------

def test_task_retry_requeues_under_the_same_id_keeping_history(
        root: Path, run_hostctl) -> None:
    task_id = add(run_hostctl, "fail", "@a.example")
    res = run_hostctl("task", "retry", task_id)
    assert res.code == 2  # still queued
    drain(run_hostctl)
    assert show(run_hostctl, task_id)["status"] == "error"
    res = run_hostctl("task", "retry", task_id)
    assert res.code == 0, res.err
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "queued" and len(doc["attempts"]) == 1
    drain(run_hostctl)
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "error" and len(doc["attempts"]) == 2
    assert run_hostctl("task", "retry", "0123456789abcdef0123").code == 2


def test_exit_75_is_retried_with_backoff_up_to_max_attempts(
        root: Path, run_hostctl, home: Path) -> None:
    task_id = add(run_hostctl, "tempfail", "@a.example")
    drain(run_hostctl)
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "queued" and doc["due"], doc  # deferred, with backoff
    assert folder_of(home, task_id) == ["deferred"]
    assert doc["attempts"][0]["outcome"] == "retry" and doc["attempts"][0]["exit_code"] == 75
    assert doc["due"] > doc["attempts"][0]["finished"]  # backoff: not at once

    def finished() -> bool:
        drain(run_hostctl)
        return show(run_hostctl, task_id)["status"] != "queued"

    wait_for(finished, 30, "the retries to end", interval=0.1)
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "error", doc
    assert [a["outcome"] for a in doc["attempts"]] == ["retry", "retry", "error"]
    assert all(a["exit_code"] == 75 for a in doc["attempts"])
    assert "no attempts left" in doc["reason"]
    assert (root / "tries").read_text().split() == ["x", "x", "x"]


def test_per_type_timeout_is_enforced(root: Path, run_hostctl) -> None:
    task_id = add(run_hostctl, "sleepy", "@a.example")
    began = time.monotonic()
    drain(run_hostctl)
    assert time.monotonic() - began < 25  # stopped, not waited for
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "error", doc
    assert "timed out" in doc["reason"] and "timed out" in doc["attempts"][0]["reason"]


# -- cancel -----------------------------------------------------------------------------

def test_cancel_a_queued_task_never_runs(root: Path, run_hostctl) -> None:
    task_id = add(run_hostctl, "note", "@a.example")
    res = run_hostctl("task", "cancel", task_id)
    assert res.code == 0, res.err
    doc = show(run_hostctl, task_id)
    assert doc["status"] == "cancelled" and doc["status_code"] == 4
    drain(run_hostctl)
    assert not (root / "ran").exists()
    assert show(run_hostctl, task_id)["attempts"] == []
    assert run_hostctl("task", "cancel", task_id).code == 2  # already ended


def test_cancel_a_running_task_sends_term(root: Path, run_hostctl, home: Path) -> None:
    task_id = add(run_hostctl, "slow", "@a.example")
    worker = popen_hostctl(home, "wait-queue", "--max-runtime", "60")
    try:
        pid = int(wait_for(lambda: (root / "slow.pid").exists()
                           and (root / "slow.pid").read_text().strip(), 20, "the task"))
        wait_for(lambda: "line one" in (home / "logs" / f"{task_id}.log").read_text(), 10,
                 "the task's output")
        res = run_hostctl("task", "cancel", task_id)
        assert res.code == 0, res.err
        wait_for(lambda: show(run_hostctl, task_id)["status"] != "processing", 15,
                 "the task to end")
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "cancelled" and doc["status_code"] == 4, doc
        assert "got TERM" in (root / "term").read_text()
        assert doc["attempts"][0]["outcome"] == "cancelled"
        wait_for(lambda: not pid_alive(pid), 5, "the command to be gone")
    finally:
        assert stop(worker) == 0


def test_cancel_kills_a_command_that_ignores_term(root: Path, run_hostctl,
                                                  home: Path) -> None:
    task_id = add(run_hostctl, "stubborn", "@a.example")
    worker = popen_hostctl(home, "wait-queue", "--max-runtime", "60")
    try:
        pid = int(wait_for(lambda: (root / "stubborn.pid").exists()
                           and (root / "stubborn.pid").read_text().strip(), 20, "the task"))
        res = run_hostctl("task", "cancel", task_id)  # kill_grace = 1
        assert res.code == 0, res.err
        wait_for(lambda: show(run_hostctl, task_id)["status"] != "processing", 15,
                 "the task to end")
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "cancelled", doc
        assert "signal 9" in doc["attempts"][0]["reason"] or "SIGKILL" in doc["reason"]
        wait_for(lambda: not pid_alive(pid), 5, "the command to be killed")
    finally:
        assert stop(worker) == 0


# -- queue status, provision-TYPE --------------------------------------------------------

def test_queue_status_counts_and_oldest_age(root: Path, run_hostctl) -> None:
    add(run_hostctl, "note", "@a.example")
    add(run_hostctl, "fail", "@b.example")
    drain(run_hostctl)
    add(run_hostctl, "note", "@c.example")
    add(run_hostctl, "note", "@d.example", "--delay", "600")
    time.sleep(0.3)
    res = run_hostctl("queue", "status", "--json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    counts = doc["counts"]
    assert counts["queued"] == 2 and counts["success"] == 1 and counts["error"] == 1
    assert counts["processing"] == 0 and counts["deferred"] == 1
    assert doc["oldest_queued_age"] >= 0.3
    res = run_hostctl("queue", "status")
    assert res.code == 0 and "oldest queued task" in res.out


def test_provision_runs_in_the_foreground_with_spec_exit_codes(
        root: Path, run_hostctl, home: Path, hostctl_process) -> None:
    proc = hostctl_process("provision-note", "@a.example", "--tag", "t1")
    assert proc.returncode == 0, proc.stderr
    assert "noted a.example" in proc.stdout  # the task's output on the terminal
    assert (root / "ran").read_text().split() == ["a.example"]
    [done] = ids_in(home, "done")
    assert show(run_hostctl, done)["options"] == {"tag": "t1"}
    res = run_hostctl("provision-fail", "@a.example")
    assert res.code == 1 and "error" in res.err and "status 3" in res.err
    res = run_hostctl("provision-sleepy", "@b.example")
    assert res.code == 1 and "timed out" in res.err
    res = run_hostctl("provision-tempfail", "@c.example")
    assert res.code == 1  # the foreground run does not wait for backoff: it failed


def test_provision_help_lists_command_types(root: Path, run_hostctl) -> None:
    res = run_hostctl("--help")
    assert res.code == 0
    for name in ("provision-note", "provision-verify", "provision-slow"):
        assert name in res.out


def test_provision_ctrl_c_like_sigint_cancels(root: Path, home: Path, run_hostctl) -> None:
    proc = popen_hostctl(home, "provision-slow", "@d.example")
    try:
        wait_for(lambda: (root / "slow.pid").exists(), 20, "the task to start")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130
    [task_id] = ids_in(home, "done")
    assert show(run_hostctl, task_id)["status"] == "cancelled"


def _hostctl(home: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_exe(), *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOSTCTL_HOME": str(home)})


def test_task_wait_blocks_until_the_tasks_end_and_exits_with_the_worst(
        root: Path, run_hostctl, home: Path) -> None:
    ok = add(run_hostctl, "note", "@a.example")
    bad = add(run_hostctl, "fail", "@b.example")
    slow = add(run_hostctl, "stream", "@c.example")
    waiter = subprocess.Popen([*_exe(), "task", "wait", ok, bad], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HOSTCTL_HOME": str(home)})
    time.sleep(0.5)
    assert waiter.poll() is None  # nothing has run: it waits
    worker = popen_hostctl(home, "wait-queue")
    try:
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 1, err  # one of them failed
        lines = out.splitlines()
        assert sorted(lines) == sorted([f"task {ok}: success",
                                        f"task {bad}: error: exited with status 3: failing"]), out
        assert _hostctl(home, "task", "wait", ok).returncode == 0
        # --timeout: the task still runs, 124 and which ones
        res = _hostctl(home, "task", "wait", slow, ok, "--timeout", "0.5")
        assert res.returncode == 124, res
        assert slow in res.stderr and ok not in res.stderr
        (root / "go").touch()
        res = _hostctl(home, "task", "wait", slow, "--json")
        assert res.returncode == 0, res
        [doc] = json.loads(res.stdout)
        assert (doc["id"], doc["status"]) == (slow, "success")
        # a cancelled task: the cancel's code, as provision-TYPE gives it
        gone = add(run_hostctl, "slow", "@d.example")
        wait_for(lambda: show(run_hostctl, gone)["status"] == "processing", 20, "the start")
        assert run_hostctl("task", "cancel", gone).code == 0
        assert _hostctl(home, "task", "wait", gone).returncode == 130
        assert _hostctl(home, "task", "log", gone, "--follow").returncode == 130
        assert _hostctl(home, "task", "log", bad, "--follow").returncode == 1
        assert _hostctl(home, "task", "log", bad).returncode == 0  # not following: shown
    finally:
        stop(worker)
        waiter.kill()


def test_task_wait_refuses_an_unknown_id_before_waiting(root: Path, run_hostctl) -> None:
    queued = add(run_hostctl, "note", "@a.example")
    for bad in ("0" * 20, "not-an-id"):
        res = run_hostctl("task", "wait", queued, bad)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res
    res = run_hostctl("task", "wait")
    assert res.code == 2


def test_task_list_is_newest_first_with_filters_a_limit_and_reasons(
        root: Path, run_hostctl, home: Path) -> None:
    ids = [add(run_hostctl, "note", f"@{s}") for s in SITES[:3]]
    failed = add(run_hostctl, "fail", "@d.example")
    assert run_hostctl("wait-queue", "--once").code == 0
    listed = json.loads(run_hostctl("task", "list", "--json").out)
    assert [d["id"] for d in listed] == [failed, *reversed(ids)]
    text = run_hostctl("task", "list")
    header, first = text.out.splitlines()[:2]
    assert header.split()[-1] == "REASON" and first.startswith(failed)
    assert first.rstrip().endswith("exited with status 3: failing"), first
    # --limit: the newest N, and a word on stderr that there are more
    res = run_hostctl("task", "list", "--limit", "2", "--json")
    assert [d["id"] for d in json.loads(res.out)] == [failed, ids[2]]
    assert "--limit 0" in res.err
    res = run_hostctl("task", "list", "--limit", "4", "--json")
    assert len(json.loads(res.out)) == 4 and res.err == ""
    assert run_hostctl("-q", "task", "list", "--limit", "1").err == ""
    # --type, --status, --context
    assert [d["id"] for d in json.loads(
        run_hostctl("task", "list", "--type", "note", "--json").out)] == list(reversed(ids))
    assert [d["id"] for d in json.loads(run_hostctl(
        "task", "list", "--status", "error", "--json").out)] == [failed]
    assert [d["id"] for d in json.loads(run_hostctl(
        "task", "list", "--context", "@b.example", "--json").out)] == [ids[1]]
    # --since: an age or a time; nothing made in the future, everything in the last hour
    assert len(json.loads(run_hostctl("task", "list", "--since", "1h", "--json").out)) == 4
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    assert json.loads(run_hostctl("task", "list", "--since", later, "--json").out) == []
    for bad in (("--since", "yesterday"), ("--limit", "-1"), ("--status", "nope")):
        res = run_hostctl("task", "list", *bad)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1, (bad, res)
    # the table shows the newest 100 unless told; --json, every task
    for _ in range(97):
        add(run_hostctl, "note", "@a.example", "--priority", "1", "-o", f"tag={_}")
    table_rows = run_hostctl("task", "list")
    assert len(table_rows.out.splitlines()) == 101 and "--limit 0" in table_rows.err
    assert len(json.loads(run_hostctl("task", "list", "--json").out)) == 101


def test_a_failed_tasks_reason_says_what_failed(root: Path, run_hostctl, home: Path) -> None:
    """The error its result gave, else the last line it printed, after how it ended."""
    write_config(home, {"tasks": {
        "said": {"command": ["sh", "-c", "echo working; echo 'no space left on disk' >&2; "
                             "echo; exit 4"], "context_types": ["site"]},
        "reported": {"command": ["sh", "-c", 'echo noise; printf \'{"error": "the '
                                 'database refused: access denied"}\' > "$HOSTCTL_RESULT";'
                                 ' exit 1'], "context_types": ["site"]},
        "silent": {"command": ["sh", "-c", "exit 5"], "context_types": ["site"]}}})
    said = add(run_hostctl, "said", "@a.example")
    reported = add(run_hostctl, "reported", "@b.example")
    silent = add(run_hostctl, "silent", "@c.example")
    assert run_hostctl("wait-queue", "--once").code == 0
    assert show(run_hostctl, said)["reason"] == "exited with status 4: no space left on disk"
    assert show(run_hostctl, reported)["reason"] == \
        "exited with status 1: the database refused: access denied"
    assert show(run_hostctl, silent)["reason"] == "exited with status 5"


def test_task_show_prints_a_result_as_json_never_as_python(root: Path, run_hostctl,
                                                           home: Path) -> None:
    write_config(home, {"tasks": {"rich": {"command": ["sh", "-c", 'printf \'{"urls": '
                                                       '["https://a.example/"], "ok": true, '
                                                       '"note": "fine", "none": null}\' '
                                                       '> "$HOSTCTL_RESULT"'],
                                           "context_types": ["site"]}}})
    task_id = add(run_hostctl, "rich", "@a.example")
    assert run_hostctl("wait-queue", "--once").code == 0
    out = run_hostctl("task", "show", task_id).out
    assert '    urls: ["https://a.example/"]' in out
    assert "    ok: true" in out and "    note: fine" in out and "    none: null" in out
    assert "['" not in out and "True" not in out and "None" not in out


def test_provision_type_takes_json_and_quiet(root: Path, run_hostctl, home: Path) -> None:
    res = run_hostctl("provision-note", "@a.example", "--json", "--tag", "x")
    assert res.code == 0, res
    doc = json.loads(res.out)  # stdout: the task's document alone
    assert (doc["type"], doc["status"], doc["options"]) == ("note", "success", {"tag": "x"})
    assert "noted a.example" in res.err and "hostctl: note on @a.example: success" in res.err
    res = run_hostctl("-q", "provision-note", "@b.example")
    assert res.code == 0 and "hostctl: note on" not in res.err, res
    assert "noted b.example" in res.out  # what the task says is its result
    res = run_hostctl("-q", "provision-fail", "@c.example", "--json")
    assert res.code == 1 and json.loads(res.out)["status"] == "error"
    assert "hostctl: fail on @c.example: error" in res.err  # what went wrong is said


def test_quiet_leaves_the_id_alone_when_an_identical_task_is_queued(
        root: Path, run_hostctl) -> None:
    first = add(run_hostctl, "note", "@a.example")
    again = run_hostctl("task", "add", "note", "@a.example")
    assert again.out.strip() == first and "already queued" in again.err
    quiet = run_hostctl("-q", "task", "add", "note", "@a.example")
    assert (quiet.code, quiet.out.strip(), quiet.err) == (0, first, "")
