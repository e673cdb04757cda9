"""The worker reaches its queue only through QueueBackend and holds a task only through
TaskClaim (queues/backend.py): a worker given a queue that offers nothing else runs tasks
to every end (success, a retry then success, error, a failed start, a foreground run), so
a backend on another engine needs only these calls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from queueproxy import NotInTheInterface, OnlyClaim, OnlyQueue, members
from runnerhelpers import add_task, save_sites, sh_task, task_json
from taskhelpers import write_config

from hostctl.paths import Paths
from hostctl.queues.backend import QueueBackend
from hostctl.queues.spool import Spool
from hostctl.runners import lifecycle as ops
from hostctl.runners.worker import Worker


def test_the_spool_implements_the_interface(home: Path) -> None:
    spool = Spool(home / "spool", home / "logs")
    assert isinstance(spool, QueueBackend)
    for name in members(QueueBackend):
        assert callable(getattr(spool, name)), name


def test_a_worker_on_the_bare_interface_runs_tasks_to_every_end(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    flag = tmp_path / "tried"
    write_config(home, {
        "worker": {"backoff_base": 0.05, "backoff_max": 0.05},
        "tasks": {
            "ok": sh_task('echo "fine on $HOSTCTL_CONTEXT"'),
            # exit 75 (try again later) the first time, then succeed
            "flaky": sh_task('if [ -e "$0" ]; then echo second; else : > "$0"; exit 75; fi',
                             str(flag)),
            "bad": sh_task("echo broken >&2; exit 3"),
            "absent": {"command": [str(tmp_path / "no-such-program")],
                       "context_types": ["site"]},
        },
    })
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example", "d.example"])
    ids = {
        "ok": add_task(run_hostctl, "ok", "@a.example"),
        "flaky": add_task(run_hostctl, "flaky", "@b.example"),
        "bad": add_task(run_hostctl, "bad", "@c.example"),
        "absent": add_task(run_hostctl, "absent", "@d.example"),
    }

    h = ops.Home(Paths(home))
    queue = OnlyQueue(Spool(h.paths.spool, h.paths.logs))
    worker = Worker(h.paths, h.config, h.registry, concurrency=2, queue=queue)  # type: ignore[arg-type]
    for _ in range(200):  # the retry is deferred 0.05 s: a few passes
        worker.run(once=True)
        if all(task_json(run_hostctl, i)["status"] not in ("queued", "processing")
               for i in ids.values()):
            break
        worker.wait(0.05)

    status = {k: task_json(run_hostctl, i) for k, i in ids.items()}
    assert status["ok"]["status"] == "success"
    assert status["flaky"]["status"] == "success"
    assert [a["outcome"] for a in status["flaky"]["attempts"]] == ["retry", "success"]
    assert status["bad"]["status"] == "error" and status["bad"]["attempts"][0]["exit_code"] == 3
    assert status["absent"]["status"] == "error"
    # everything a task's run needs went through the interface
    assert {"ensure", "sweep", "admit", "promote_due", "claim", "open_log", "result_path",
            "started", "finish", "defer", "claim.task", "claim.append",
            "claim.grew"} <= queue.used


def test_a_foreground_run_uses_only_the_interface(run_hostctl, home: Path) -> None:
    write_config(home, {"tasks": {"ok": sh_task("echo foreground")}})
    save_sites(run_hostctl, home, ["a.example"])
    h = ops.Home(Paths(home))
    env = ops.build(h, "ok", "@a.example", {}, {}, 9)
    claim = h.writable().publish_claimed(env, wait=True)
    queue = OnlyQueue(Spool(h.paths.spool, h.paths.logs))
    worker = Worker(h.paths, h.config, h.registry, queue=queue,  # type: ignore[arg-type]
                    echo=sys.stdout)
    summary = worker.run_claim(OnlyClaim(claim, queue.used))  # type: ignore[arg-type]
    assert summary.last_status == "success"
    assert task_json(run_hostctl, env.id)["status"] == "success"


def test_the_guard_catches_a_call_outside_the_interface(home: Path) -> None:
    """The proxies above would let a test pass vacuously if they let everything through."""
    queue = OnlyQueue(Spool(home / "spool", home / "logs"))
    with pytest.raises(NotInTheInterface):
        queue.dir("tmp")
    with pytest.raises(NotInTheInterface):
        OnlyClaim(object(), set()).fd  # noqa: B018


def test_a_running_task_is_heartbeaten_every_30_seconds_of_the_workers_clock(
        run_hostctl, home: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    write_config(home, {"tasks": {"slow": sh_task(
        'while [ ! -e "$0" ]; do sleep 0.02; done', str(go))}})
    save_sites(run_hostctl, home, ["a.example"])
    task_id = add_task(run_hostctl, "slow", "@a.example")
    now = [1000.0]
    h = ops.Home(Paths(home))
    queue = OnlyQueue(Spool(h.paths.spool, h.paths.logs))
    beats: list[float] = []
    real_heartbeat = queue._inner.heartbeat
    queue._inner.heartbeat = lambda claim: (beats.append(now[0]),  # type: ignore[method-assign]
                                            real_heartbeat(claim))
    worker = Worker(h.paths, h.config, h.registry, queue=queue,  # type: ignore[arg-type]
                    clock=lambda: now[0])
    assert worker.step() == 1
    [active] = (home / "spool" / "active").iterdir()
    mtime = active.stat().st_mtime_ns
    worker.wait(0.01)
    assert beats == []  # not yet: 30 s of the worker's clock have not passed
    now[0] += 30.0
    worker.wait(0.01)
    assert beats == [1030.0]
    assert active.stat().st_mtime_ns > mtime  # the spool's heartbeat touches the file
    now[0] += 10.0
    worker.wait(0.01)
    now[0] += 20.0
    worker.wait(0.01)
    assert beats == [1030.0, 1060.0]
    go.touch()
    while worker.running:
        worker.wait(0.5)
    assert task_json(run_hostctl, task_id)["status"] == "success"
