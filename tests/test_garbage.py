"""Garbage in the spool: files in incoming/ (the drop box) and new/ that are not valid
tasks are moved to quarantine/ with a NAME.reason file beside them (docs/spool.md), never
run, counted by ``queue status``; a valid task queued after them still runs. Also: the
shell example of docs/spool.md, run as a front end would run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from taskhelpers import REPO, ids_in, save_sites, show_process, write_config

from hostctl.queues.model import new_id

QUARANTINE = "quarantine"  # where docs/spool.md says garbage goes, with NAME.reason
DROP_QUARANTINE = "rejected"  # docs/spool.md: refused drops from incoming/ go there


def note_config(home: Path) -> None:
    write_config(home, {"tasks": {"note": {
        "command": ["sh", "-c", 'echo "$1" >> "$2"', "sh", "{task_id}", "{root}/ran"],
        "context_types": ["site"],
    }}})


def submission(**fields: object) -> bytes:
    doc = {"id": new_id(), "type": "note", "context": "@good.example", **fields}
    return (json.dumps(doc) + "\n").encode()


def garbage(outside: Path) -> tuple[dict[str, tuple[bytes | None, str]], Path]:
    """({name: (content, a word its reason must contain)}, a symlink's target); content
    None stands for a symlink to a valid submission outside the spool."""
    valid = submission()
    target = outside / "target.task"
    target.write_bytes(submission(id=new_id()))
    return {
        "not-json": (b"this is {not json\n", "JSON"),
        "truncated": (valid[: len(valid) // 2], "JSON"),
        "oversized": (submission(options={"x": "y" * (70 * 1024)}), "bytes"),
        "unknown-type": (submission(type="nope-not-a-type"), "nope-not-a-type"),
        "unknown-context": (submission(context="@ghost.example"), "ghost.example"),
        "symlink": (None, ""),
    }, target


def drop(folder: Path, name: str, content: bytes) -> None:
    tmp = folder / f".{name}"
    tmp.write_bytes(content)
    os.rename(tmp, folder / name)


def quarantined(home: Path, where: str = QUARANTINE) -> dict[str, str]:
    folder = home / "spool" / where
    if not folder.is_dir():
        return {}
    return {n: (folder / f"{n}.reason").read_text() if (folder / f"{n}.reason").exists()
            else "" for n in os.listdir(folder) if not n.endswith(".reason")}


def check_quarantine(home: Path, expected: dict[str, str], where: str = QUARANTINE) -> None:
    found = quarantined(home, where)
    for name, word in expected.items():
        matches = [n for n in found if n == name or n.startswith(f"{name}.")]
        assert matches, f"{name} is not in {where}/ (found: {sorted(found)})"
        reason = found[matches[0]]
        assert reason.strip(), f"{name} has no reason beside it"
        assert word in reason, (name, reason)


@pytest.fixture
def site(run_hostctl, home: Path) -> Path:
    note_config(home)
    return save_sites(run_hostctl, home, ["good.example"])


def test_garbage_dropped_into_incoming_is_rejected_and_a_valid_drop_still_runs(
        site: Path, home: Path, hostctl_process, tmp_path: Path) -> None:
    res = hostctl_process("wait-queue", "--once")  # the backend has run once: spool exists
    assert res.returncode == 0, res.stderr
    incoming = home / "spool" / "incoming"
    outside = tmp_path / "outside"
    outside.mkdir()
    files, target = garbage(outside)
    for name, (content, _) in files.items():
        if content is None:
            os.symlink(target, incoming / f"{name}.task")
        else:
            drop(incoming, f"{name}.task", content)
    good_id = new_id()
    drop(incoming, f"zz-{good_id}.task", submission(id=good_id))

    res = hostctl_process("dispatch")
    assert res.returncode == 0, res.stderr

    assert os.listdir(incoming) == []
    check_quarantine(home, {f"{n}.task": w for n, (_, w) in files.items()}, DROP_QUARANTINE)
    assert target.read_bytes()  # the link was moved, not followed
    ran = (site / "ran").read_text().split()
    assert ran == [good_id], "only the valid submission may run"
    assert show_process(hostctl_process, good_id)["status"] == "success"
    status = json.loads(hostctl_process("queue", "status", "--json").stdout)
    assert status["counts"]["rejected"] == len(files)
    assert status["counts"]["quarantined"] == 0
    assert {q["file"] for q in status["rejected"]} >= {f"{n}.task" for n in files}


def test_garbage_in_new_is_quarantined_and_the_queue_goes_on(
        site: Path, home: Path, run_hostctl, hostctl_process, tmp_path: Path) -> None:
    bad_id = new_id()
    res = run_hostctl("task", "add", "note", "@good.example")
    assert res.code == 0, res.err
    good_id = res.out.strip()
    new = home / "spool" / "new"
    outside = tmp_path / "outside"
    outside.mkdir()
    files, target = garbage(outside)
    names = {}
    for n, (name, (content, _)) in enumerate(files.items()):
        # names that sort before the valid task: garbage is met first
        task_id = bad_id[:-2] + f"{n:02x}"
        fname = f"0{task_id}.task"
        if name in ("unknown-type", "unknown-context", "oversized") and content:
            doc = json.loads(content)
            doc.update(id=task_id, priority=9)
            content = (json.dumps(doc) + "\n").encode()
        names[name] = fname
        if content is None:
            os.symlink(target, new / fname)
        else:
            (new / fname).write_bytes(content)
    (new / "stray-name.task").write_bytes(submission(id=new_id(), priority=9))

    res = hostctl_process("dispatch")
    assert res.returncode == 0, res.stderr

    # a type this configuration does not know is not garbage: the task waits for it
    assert os.listdir(new) == [names["unknown-type"]]
    check_quarantine(home, {names[n]: w for n, (_, w) in files.items() if n != "unknown-type"})
    check_quarantine(home, {"stray-name.task": ""})
    assert (site / "ran").read_text().split() == [good_id]
    done = ids_in(home, "done")
    assert good_id in done
    # besides it, only what the periodic cron queue queued for the site (built-in cron)
    assert all(show_process(hostctl_process, i)["type"] == "cron"
               for i in done if i != good_id)
    res = hostctl_process("queue", "status")
    assert res.returncode == 0 and "quarantined" in res.stdout
    status = json.loads(hostctl_process("queue", "status", "--json").stdout)
    assert status["counts"]["quarantined"] == len(files)  # unknown-type waits; stray-name


def test_malformed_deferred_and_active_files_are_quarantined(
        site: Path, home: Path, run_hostctl, hostctl_process) -> None:
    res = run_hostctl("task", "add", "note", "@good.example")
    good_id = res.out.strip()
    spool = home / "spool"
    (spool / "deferred" / "not-a-due-time.task").write_bytes(submission())
    (spool / "active" / f"5{new_id()}.task").write_bytes(b"\x00\x01 garbage\n")
    res = hostctl_process("dispatch")
    assert res.returncode == 0, res.stderr
    check_quarantine(home, {"not-a-due-time.task": "", })
    assert os.listdir(spool / "active") == []
    assert len(quarantined(home)) == 2
    assert (site / "ran").read_text().split() == [good_id]


@pytest.mark.parametrize("folder", ["new", "active"])
def test_a_fifo_or_folder_in_the_spool_is_quarantined_not_fatal(
        site: Path, home: Path, run_hostctl, hostctl_process, folder: str) -> None:
    res = run_hostctl("task", "add", "note", "@good.example", "--priority", "0")
    assert res.code == 0, res.err
    good_id = res.out.strip()
    where = home / "spool" / folder
    fifo, subdir = f"5{new_id()}.task", f"5{new_id()}.task"
    os.mkfifo(where / fifo)
    (where / subdir).mkdir()

    res = hostctl_process("dispatch", timeout=60)
    assert res.returncode == 0, res.stderr
    assert "internal error" not in res.stderr
    check_quarantine(home, {fifo: "", subdir: ""})
    assert (site / "ran").read_text().split() == [good_id]


def shell_example() -> str:
    text = (REPO / "docs" / "spool.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/spool.md has no sh example"
    [block] = [b for b in blocks if "incoming" in b]
    return block


def test_the_documented_shell_drop_runs_to_success(run_hostctl, home: Path,
                                                   hostctl_process) -> None:
    save_sites(run_hostctl, home, ["example.com"])
    res = hostctl_process("wait-queue", "--once")  # the backend has run: the spool exists
    assert res.returncode == 0, res.stderr
    script = shell_example()
    proc = subprocess.run(["bash", "-euc", script], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "HOSTCTL_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{20}", task_id), proc.stdout
    assert (home / "spool" / "incoming" / f"{task_id}.task").exists()

    res = hostctl_process("dispatch")
    assert res.returncode == 0, res.stderr
    doc = show_process(hostctl_process, task_id)
    assert doc["status"] == "success" and doc["status_code"] == 1, doc
    assert doc["type"] == "verify" and doc["context"] == "@example.com"
    assert os.listdir(home / "spool" / "incoming") == []
