"""A printed id is never lost: a running wait-queue follows config.toml, a task whose type
it does not know waits queued instead of being quarantined, and a quarantined task stays
visible to `task show` with its reason and can be queued again with `task retry`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from runnerhelpers import (
    add_task,
    hostctl_log,
    save_sites,
    sh_task,
    status_of,
    task_json,
    wait_exit,
    wait_for,
    write_config,
)
from test_wait_queue import start_daemon, term


def _late(marker: Path) -> dict[str, object]:
    return {"tasks": {"late": sh_task('echo "$HOSTCTL_CONTEXT" >> "$0"', str(marker))}}


@pytest.mark.parametrize("how", ["replaced", "in-place"])
def test_a_type_added_while_wait_queue_runs_runs_without_a_signal(
        run_hostctl, home: Path, procs, tmp_path: Path, how: str) -> None:
    marker = tmp_path / "late.ran"
    write_config(home, {"tasks": {"other": sh_task("true")}})
    save_sites(run_hostctl, home, ["a.example"])
    daemon = start_daemon(procs, home, "--max-runtime", "120")

    if how == "replaced":  # as an editor that writes a new file and renames it does
        write_config(home, _late(marker))
    else:  # written over, the same inode
        import tomli_w

        with open(home / "config.toml", "r+b") as f:
            f.truncate(0)
            f.write(tomli_w.dumps(_late(marker)).encode())
    # `task add` reads the new file and prints an id at once; no SIGHUP is ever sent
    task = add_task(run_hostctl, "late", "@a.example")
    wait_for(lambda: status_of(run_hostctl, task) == "success", 30,
             "the task of the new type to run")
    assert marker.read_text() == "@a.example\n"
    assert os.listdir(home / "spool" / "quarantine") == []
    assert "config reloaded" in hostctl_log(home)
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_a_task_whose_type_is_unknown_waits_queued_and_runs_once_it_is_known(
        run_hostctl, home: Path, procs, tmp_path: Path) -> None:
    marker = tmp_path / "late.ran"
    write_config(home, _late(marker))
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    waiting = add_task(run_hostctl, "late", "@a.example", "--priority", "9")
    write_config(home, {})  # the type is gone from the configuration

    # a one-pass runner: the task stays queued (not quarantined); the others still run
    other = add_task(run_hostctl, "verify", "@b.example")
    assert run_hostctl("dispatch").code == 0
    assert status_of(run_hostctl, other) == "success"
    doc = task_json(run_hostctl, waiting)
    assert doc["status"] == "queued", doc
    assert doc["attempts"] == []
    assert os.listdir(home / "spool" / "quarantine") == []
    assert "waits in the queue: unknown task type 'late'" in hostctl_log(home)

    # a daemon on a configuration without the type: the same, and no busy loop over it
    daemon = start_daemon(procs, home, "--max-runtime", "120")
    second = add_task(run_hostctl, "verify", "@b.example")
    wait_for(lambda: status_of(run_hostctl, second) == "success", 30, "the verify to run")
    assert status_of(run_hostctl, waiting) == "queued"
    assert hostctl_log(home).count("waits in the queue: unknown task type 'late'") == 2

    write_config(home, _late(marker))  # the type is back: the waiting task runs
    wait_for(lambda: status_of(run_hostctl, waiting) == "success", 30,
             "the waiting task to run")
    assert marker.read_text() == "@a.example\n"
    term(daemon)
    assert wait_exit(daemon, 30, "wait-queue after TERM") == 0


def test_a_quarantined_task_is_shown_with_its_reason_and_can_be_queued_again(
        run_hostctl, home: Path) -> None:
    save_sites(run_hostctl, home, ["a.example", "gone.example"])
    task = add_task(run_hostctl, "verify", "@gone.example")
    assert run_hostctl("provision-save", "@gone.example", "--delete").code == 0
    assert run_hostctl("dispatch").code == 0  # its context is gone: it cannot run

    assert os.listdir(home / "spool" / "new") == []
    doc = task_json(run_hostctl, task)
    assert doc["status"] == "error", doc
    assert doc["reason"].startswith("quarantined: "), doc
    assert "gone.example" in doc["reason"]
    res = run_hostctl("task", "show", task)
    assert res.code == 0 and "quarantined" in res.out, res
    listed = json.loads(run_hostctl("task", "list", "--status", "error", "--json").out)
    assert [d["id"] for d in listed] == [task]
    assert json.loads(run_hostctl("queue", "status", "--json").out)["counts"]["quarantined"] == 1

    # still refused while it cannot run: it is checked again when claimed
    save_sites(run_hostctl, home, ["gone.example"])
    res = run_hostctl("task", "retry", task)
    assert res.code == 0, res
    assert status_of(run_hostctl, task) == "queued"
    assert os.listdir(home / "spool" / "quarantine") == []  # its reason went with it
    assert run_hostctl("wait-queue", "--once").code == 0
    doc = task_json(run_hostctl, task)
    assert doc["status"] == "success", doc


def test_every_quarantined_task_file_is_found_by_its_id(run_hostctl, home: Path) -> None:
    """Whatever name a task file has in quarantine/, `task show ID` answers: with the task
    when it still reads as one, else with the reason it was set aside (exit 2)."""
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    ids = [add_task(run_hostctl, "verify", f"@{site}") for site in
           ("a.example", "b.example", "c.example")]
    new = home / "spool" / "new"
    quarantine = home / "spool" / "quarantine"
    by_id = {n[1:21]: n for n in os.listdir(new)}
    # 1. under its own name; 2. under a name that says nothing of its id; 3. garbled
    os.rename(new / by_id[ids[0]], quarantine / by_id[ids[0]])
    (quarantine / f"{by_id[ids[0]]}.reason").write_text("set aside by hand\n")
    os.rename(new / by_id[ids[1]], quarantine / "stray-name.task")
    (quarantine / "stray-name.task.reason").write_text("a name that is not a task's\n")
    (new / by_id[ids[2]]).write_bytes(b'{"id": "' + ids[2].encode() + b'", garbled\n')
    assert run_hostctl("dispatch").code == 0

    for task_id, why in ((ids[0], "set aside by hand"), (ids[1], "not a task's")):
        doc = task_json(run_hostctl, task_id)
        assert doc["status"] == "error" and why in doc["reason"], doc
    res = run_hostctl("task", "show", ids[2])
    assert res.code == 2, res
    assert "quarantine/" in res.err and "not a readable task" in res.err, res
    assert run_hostctl("task", "retry", ids[2]).code == 2  # nothing to queue again
    for task_id in ids[:2]:
        assert run_hostctl("task", "retry", task_id).code == 0
    assert run_hostctl("wait-queue", "--once").code == 0
    assert [status_of(run_hostctl, i) for i in ids[:2]] == ["success", "success"]
