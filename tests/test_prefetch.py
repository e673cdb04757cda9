"""Claiming one task ahead (Worker.prefetch): the next task is claimed while one runs, and
started the moment that one ends; it is never held for long, never run after a cancel,
and given back (no attempt counted) when the worker stops."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pghelpers import new_database
from runnerhelpers import add_task, save_sites, sh_task, status_of, task_json
from taskhelpers import folder_of, popen_hostctl, stop, wait_for, write_config

from hostctl.paths import Paths
from hostctl.runners import lifecycle as ops
from hostctl.runners.notify import delivery_id
from hostctl.runners.worker import HOLD_AHEAD, Worker, _exited

WAIT = 'echo started; while [ ! -e "$0" ]; do sleep 0.02; done; echo done'


@pytest.fixture(params=["spool", "postgresql"])
def dsn(request: pytest.FixtureRequest) -> str:
    """The queue a test runs on: "" for the spool, else a fresh cluster database's DSN."""
    if request.param == "spool":
        return ""
    return new_database(request.getfixturevalue("pg_server"), "prefetch", init=True)


def worker_for(home: Path, clock=None) -> Worker:
    h = ops.Home(Paths(home))
    kw = {"clock": clock} if clock else {}
    worker = Worker(h.paths, h.config, h.registry, concurrency=1, queue=h.open_queue(),
                    store=h.store, secrets=h.secrets, **kw)
    worker.prefetch = True
    return worker


def configure(run_hostctl, home: Path, go: Path, sites: tuple[str, ...],
              dsn: str = "") -> None:
    """Task types ``wait`` (runs until ``go`` exists) and ``ok`` (quick), and ``sites``;
    in the cluster of ``dsn`` if given."""
    config: dict[str, Any] = {"tasks": {"wait": sh_task(WAIT, str(go)),
                                        "ok": sh_task("echo ok")}}
    if dsn:
        config["cluster"] = {"dsn": dsn}
    write_config(home, config)
    save_sites(run_hostctl, home, list(sites))


def wait_then_ok(run_hostctl, home: Path, go: Path,
                 sites: tuple[str, ...] = ("a.example", "b.example"),
                 dsn: str = "") -> tuple[str, str]:
    """A task on @a.example that runs until ``go`` exists, queued before a quick one on
    @b.example (in the cluster of ``dsn`` if given): their ids."""
    configure(run_hostctl, home, go, sites, dsn)
    return add_task(run_hostctl, "wait", "@a.example"), add_task(run_hostctl, "ok", "@b.example")


def run_out(worker: Worker) -> None:
    """Let the worker run until it runs and holds nothing (20 s at most)."""
    for _ in range(400):
        worker.wait(0.05)
        if not worker.running and not worker.held:
            return


def test_the_next_task_is_claimed_ahead_and_started_when_the_running_one_ends(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    first, second = wait_then_ok(run_hostctl, home, go)
    now = [0.0]  # a clock that stands still: the claim ahead does not expire
    worker = worker_for(home, clock=lambda: now[0])
    assert worker.step() == 1
    assert [c.task.id for c in worker.held] == [second]
    assert folder_of(home, second) == ["active"]  # claimed ...
    assert task_json(run_hostctl, second)["attempts"] == []  # ... not started
    go.touch()
    run_out(worker)  # the first ends; the one claimed ahead starts at once
    assert status_of(run_hostctl, first) == "success"
    assert status_of(run_hostctl, second) == "success"
    assert len(task_json(run_hostctl, second)["attempts"]) == 1


def test_no_task_is_claimed_ahead_of_one_whose_type_runs_long(
        run_hostctl, home: Path, tmp_path: Path, dsn: str) -> None:
    """A claim ahead would be given back before such a task ends: none is made; the
    next task is claimed as the task ends, and started in its slot before that task's
    end is recorded. A type whose last attempt ran short is claimed ahead of. The same
    on the cluster's queue."""
    go = tmp_path / "go"
    first, second = wait_then_ok(run_hostctl, home, go,
                                 ("a.example", "b.example", "c.example"), dsn)
    now = [0.0]
    worker = worker_for(home, clock=lambda: now[0])
    worker.took["wait"] = 60.0  # its last attempt ran a minute
    assert worker.step() == 1 and worker.held == []
    assert status_of(run_hostctl, second) == "queued"  # not claimed
    recorded: list[tuple[str, list[str]]] = []
    complete = worker._complete

    def spy(run) -> None:  # who runs when an end is recorded
        recorded.append((run.claim.task.id,
                         sorted(r.claim.task.id for r in worker.running.values())))
        complete(run)

    worker._complete = spy  # type: ignore[method-assign]
    go.touch()
    run_out(worker)
    assert recorded[0] == (first, sorted([first, second]))
    assert status_of(run_hostctl, first) == "success"
    assert status_of(run_hostctl, second) == "success"
    assert set(worker.took) == {"wait", "ok"}
    go.unlink()
    third = add_task(run_hostctl, "wait", "@a.example")
    fourth = add_task(run_hostctl, "ok", "@c.example")
    worker.took["wait"] = 0.01  # it ran short last time: its end may come soon
    assert worker.step() == 1 and [c.task.id for c in worker.held] == [fourth]
    go.touch()
    run_out(worker)
    assert status_of(run_hostctl, third) == "success"
    assert status_of(run_hostctl, fourth) == "success"


def test_the_next_task_is_claimed_ahead_shortly_before_the_running_one_should_end(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    """As long as the last attempt of its type ran, minus half of HOLD_AHEAD: the loop
    wakes for it; held past HOLD_AHEAD (the task ran longer this time), it goes back."""
    go = tmp_path / "go"
    first, second = wait_then_ok(run_hostctl, home, go)
    worker = worker_for(home)
    worker.took["wait"] = 0.4
    began = time.monotonic()
    assert worker.step() == 1 and worker.held == []
    while not worker.held and time.monotonic() < began + 30:
        worker.wait(None)  # output, or the moment to claim ahead
        worker.step()
    assert [c.task.id for c in worker.held] == [second]
    assert time.monotonic() - began >= 0.4 - HOLD_AHEAD  # not at its start
    while worker.held and time.monotonic() < began + 60:  # it runs on: given back
        worker.wait(None)
    assert folder_of(home, second) == ["new"] and worker.ahead_given_back
    go.touch()  # it ends: the next task is claimed as it does
    run_out(worker)
    assert status_of(run_hostctl, first) == "success"
    assert status_of(run_hostctl, second) == "success"
    assert len(task_json(run_hostctl, second)["attempts"]) == 1


def test_tasks_that_end_at_once_have_their_slots_filled_and_no_more(
        run_hostctl, home: Path, tmp_path: Path, dsn: str) -> None:
    """Two slots whose tasks end in one wake of the loop: each exit starts one task in
    its slot before that end is recorded, and never is a third started while two run
    (an ended task counts as running until its exit is seen)."""
    go = tmp_path / "go"
    sites = ("a.example", "b.example", "c.example", "d.example", "e.example")
    configure(run_hostctl, home, go, sites, dsn)
    first, second = (add_task(run_hostctl, "wait", f"@{site}") for site in sites[:2])
    more = [add_task(run_hostctl, "ok", f"@{site}") for site in sites[2:]]
    worker = worker_for(home, clock=lambda: 0.0)
    worker.concurrency = 2
    worker.took["wait"] = 60.0  # nothing claimed ahead: the exits claim
    seen: list[tuple[str, str, int]] = []
    start, complete = worker.start, worker._complete

    def spy_start(claim, queued: bool = False) -> bool:
        live = sum(r.ended_at is None for r in worker.running.values())
        seen.append(("start", claim.task.id, live))
        return start(claim, queued)

    def spy_complete(run) -> None:
        seen.append(("end", run.claim.task.id, 0))
        complete(run)

    worker.start = spy_start  # type: ignore[method-assign]
    worker._complete = spy_complete  # type: ignore[method-assign]
    assert worker.step() == 2
    go.touch()
    wait_for(lambda: all(_exited(r) for r in worker.running.values()), 30,
             "both tasks to end")  # (unseen yet: their exits come in one wake)
    seen.clear()
    worker.wait(5.0)
    kinds = [kind for kind, *_ in seen]
    assert sorted(kinds) == ["end", "end", "start", "start"], seen
    # each slot's next task started before the end of the task that had it is recorded
    assert all(kinds[:i].count("start") >= kinds[:i + 1].count("end")
               for i in range(len(kinds))), seen
    run_out(worker)
    assert all(live < 2 for kind, _id, live in seen if kind == "start"), seen
    assert {i for kind, i, _ in seen if kind == "start"} == set(more), seen
    for task_id in (first, second, *more):
        assert status_of(run_hostctl, task_id) == "success"


def test_nothing_is_claimed_as_a_task_ends_once_the_runner_may_not_claim(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    """Between two passes of its loop (a stop asked, the queue paused meanwhile), an
    ending task does not make the worker claim the next one."""
    go = tmp_path / "go"
    first, second = wait_then_ok(run_hostctl, home, go)
    worker = worker_for(home)
    worker.took["wait"] = 60.0
    assert worker.step() == 1 and worker.held == []
    worker.may_claim = lambda: False
    go.touch()
    run_out(worker)
    assert status_of(run_hostctl, first) == "success"
    assert status_of(run_hostctl, second) == "queued" and folder_of(home, second) == ["new"]


def test_a_task_claimed_ahead_is_given_back_soon_for_another_worker(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    """A one-slot dispatch runs a long task and claims the next one ahead: it gives it
    back within HOLD_AHEAD, and an idle daemon runs it while the long task still runs."""
    go = tmp_path / "go"
    write_config(home, {"queues": {"tasks": {"items": 1}},
                        "tasks": {"wait": sh_task(WAIT, str(go)), "ok": sh_task("echo ok")}})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    slow = add_task(run_hostctl, "wait", "@a.example")
    quick = add_task(run_hostctl, "ok", "@b.example")
    dispatch = popen_hostctl(home, "dispatch", "--queue", "tasks",
                             log=tmp_path / "dispatch.log")
    daemon = None
    try:
        wait_for(lambda: status_of(run_hostctl, slow) == "processing", 20, "the slow task")
        daemon = popen_hostctl(home, "wait-queue", "--concurrency", "1",
                               log=tmp_path / "daemon.log")
        wait_for(lambda: status_of(run_hostctl, quick) == "success", 20,
                 "the daemon to run the task the dispatcher had claimed ahead")
        assert status_of(run_hostctl, slow) == "processing"  # still running
        doc = task_json(run_hostctl, quick)
        assert len(doc["attempts"]) == 1  # given back unstarted: no attempt counted
        go.touch()
        assert dispatch.wait(timeout=30) == 0
        assert status_of(run_hostctl, slow) == "success"
    finally:
        go.touch()
        stop(dispatch)
        if daemon is not None:
            assert stop(daemon) == 0
    assert HOLD_AHEAD <= 0.1


def test_a_task_cancelled_while_claimed_ahead_never_runs(
        run_hostctl, home: Path, tmp_path: Path, hostctl_process) -> None:
    """... and its cancel is told to the notices that want one (as a cancel, no attempt
    having started), by the worker that finds it."""
    go, ran = tmp_path / "go", tmp_path / "ran"
    write_config(home, {"worker": {"kill_grace": 1},
                        "tasks": {"wait": sh_task(WAIT, str(go)),
                                  "mark": sh_task('echo ran > "$0"', str(ran))},
                        "notify": {"webhooks": {"panel": {
                            "url": "http://127.0.0.1:9/hook", "outcomes": ["cancelled"]}}}})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    add_task(run_hostctl, "wait", "@a.example")
    victim = add_task(run_hostctl, "mark", "@b.example")
    now = [0.0]
    worker = worker_for(home, clock=lambda: now[0])
    assert worker.step() == 1 and [c.task.id for c in worker.held] == [victim]
    # `task cancel` waits for the worker to act on it: run it beside this worker
    cancel = subprocess.Popen([*_hostctl(), "task", "cancel", victim],
                              env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: '"cancel"' in _task_file(home, victim), 20, "the cancel request")
        go.touch()
        while worker.running or worker.held:
            worker.wait(0.2)
        assert cancel.wait(timeout=30) == 0, cancel.stderr.read() if cancel.stderr else ""
    finally:
        if cancel.poll() is None:
            cancel.kill()
    doc = task_json(run_hostctl, victim)
    assert doc["status"] == "cancelled", doc
    assert doc["attempts"] == []
    assert not ran.exists()
    told = sorted(os.listdir(home / "spool" / "notify"))
    assert [n.split(".")[1] for n in told if n.endswith(".json")] == [
        delivery_id(victim, "cancel.0", "webhook", "panel")], told


def test_a_worker_that_stops_gives_its_claim_ahead_back(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    _, second = wait_then_ok(run_hostctl, home, go)
    now = [0.0]
    worker = worker_for(home, clock=lambda: now[0])
    worker.step()
    assert [c.task.id for c in worker.held] == [second]
    worker.hold_off()  # a runner that stops claiming (TERM, pause, a full disk)
    assert worker.held == [] and folder_of(home, second) == ["new"]
    go.touch()
    while worker.running:
        worker.wait(0.2)
    assert status_of(run_hostctl, second) == "queued"  # not started after the hold-off
    assert task_json(run_hostctl, second)["attempts"] == []


def _task_file(home: Path, task_id: str) -> str:
    found = list((home / "spool").glob(f"*/*{task_id}*"))
    return found[0].read_text() if found else ""


def _hostctl() -> list[str]:
    from conftest import hostctl_exe

    return [hostctl_exe()]


def _env(home: Path) -> dict[str, str]:
    import os

    return {**os.environ, "HOSTCTL_HOME": str(home)}
