"""Faults, through real parts: a disk that is really full (a small tmpfs), a machine that is
really loaded (the kernel's 1-minute load average), a spool on a network file system (as
the kernel reports it in a private mount namespace) and option values that look like flags
or shell syntax."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from asuser import Users, can_make_users, frontend_users, hostctl_as
from conftest import hostctl_exe
from runnerhelpers import (
    Procs,
    daemon_pids,
    hostctl_log,
    save_sites,
    tasks_json,
    wait_exit,
    wait_for,
    write_config,
)
from taskhelpers import ids_in, show

from hostctl.files import NETWORK_FILESYSTEMS, filesystem_type

SH = shutil.which("sh") or "/bin/sh"
ENOSPC_TEXT = os.strerror(errno.ENOSPC)


def run_process(home: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``hostctl argv`` as a real process on ``home``."""
    return subprocess.run([hostctl_exe(), *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HOSTCTL_HOME": str(home)})


def one_line_error(stderr: str) -> str:
    """The single ``hostctl: error: ...`` line that stderr must consist of."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hostctl: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def spool_files(home: Path) -> dict[str, list[str]]:
    """Every name in every spool folder (dot-names included) but locks/ and catalog/ (a
    cache: a compaction cut short by the full disk leaves its log renamed, for the next
    one to fold)."""
    out = {}
    for folder in sorted((home / "spool").iterdir()):
        if folder.is_dir() and folder.name not in ("locks", "catalog"):
            out[folder.name] = sorted(os.listdir(folder))
    return out


# -- disk full: a real, small tmpfs ------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, mode: str = "0700") -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at ``mount_point`` (made here); unmounted after, whatever
    happened. Skips the test where no tmpfs can be mounted."""
    mount_point.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command: cannot make a small real file system")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode={mode}", "tmpfs",
                          str(mount_point)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root and CAP_SYS_ADMIN needed): "
                    f"{res.stderr.strip()}")
    try:
        yield mount_point
    finally:
        res = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if res.returncode != 0:  # something still holds a file there: detach it anyway
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
            pytest.fail(f"the tmpfs was still busy at teardown: {res.stderr.strip()}")


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test; HOSTCTL_HOME points inside it."""
    with small_tmpfs(tmp_path / "disk") as mount_point:
        monkeypatch.setenv("HOSTCTL_HOME", str(mount_point / "home"))
        yield mount_point


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the file system with one file until the kernel says ENOSPC; then give back
    ``leave`` bytes. Returns the filler."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
        assert os.statvfs(disk).f_bavail > 0
    return filler


def quick_type(home: Path) -> None:
    """A quick command task type for the sites (it writes nothing but its log line)."""
    write_config(home, {"tasks": {"quick": {"command": [SH, "-c", "echo quick run"],
                                            "context_types": ["site"]}}})


def test_a_full_disk_refuses_new_tasks_cleanly_and_keeps_the_queued_ones(
        run_hostctl, disk: Path) -> None:
    home = disk / "home"
    quick_type(home)
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    queued = [run_hostctl("task", "add", "quick", f"@{s}.example").out.strip()
              for s in ("a", "b")]
    assert all(len(i) == 20 for i in queued), queued
    before = spool_files(home)
    ctx_file = home / "contexts" / "c.example.toml"
    ctx_bytes = ctx_file.read_bytes()
    contexts_before = sorted(os.listdir(home / "contexts"))

    filler = fill(disk)

    # task add: one line, exit 1 (an operation that failed at run time), nothing left
    for extra in ([], ["--delay", "60"], ["--priority", "9"]):
        res = run_hostctl("task", "add", "quick", "@c.example", *extra)
        assert res.code == 1, (extra, res)
        assert res.out == ""
        line = one_line_error(res.err)
        assert ENOSPC_TEXT in line, line
        assert spool_files(home) == before, extra  # no file in new/ or deferred/,
        # tmp/ is clean, no new key in keys/
    # the same for a task run in the foreground
    res = run_hostctl("provision-quick", "@c.example")
    assert res.code == 1, res
    assert ENOSPC_TEXT in one_line_error(res.err)
    assert spool_files(home) == before

    # provision-save: one line, exit 1, the file byte for byte as it was, no temp file
    res = run_hostctl("provision-save", "@c.example", "--language", "fr",
                      "--admin_email", "ops@example.org")
    assert res.code == 1, res
    assert ENOSPC_TEXT in one_line_error(res.err)
    assert ctx_file.read_bytes() == ctx_bytes
    assert sorted(os.listdir(home / "contexts")) == contexts_before

    # the tasks queued before are still there, queued, untouched
    listed = {t["id"]: t for t in tasks_json(run_hostctl)}
    assert sorted(listed) == sorted(queued)
    assert all(t["status"] == "queued" and t["attempts"] == [] for t in listed.values())

    # a worker that comes by while the disk is full (cron's dispatch, say) must not burn
    # the queue: the tasks cannot even get a log, so they wait for room
    res = run_process(home, "wait-queue", "--once")
    assert res.returncode == 0, res.stderr
    assert "internal error" not in res.stderr
    listed = {t["id"]: t for t in tasks_json(run_hostctl)}
    assert [listed[i]["status"] for i in queued] == ["queued", "queued"], listed
    assert all(listed[i]["attempts"] == [] for i in queued), listed
    assert ids_in(home, "new") == sorted(queued)

    # room again: they run, and new tasks are accepted
    filler.unlink()
    res = run_process(home, "dispatch")
    assert res.returncode == 0, res.stderr
    for task_id in queued:
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "success", doc
        log = run_hostctl("task", "log", task_id).out
        assert "quick run" in log
    res = run_hostctl("task", "add", "quick", "@c.example")
    assert res.code == 0, res.err
    res = run_hostctl("provision-save", "@c.example", "--language", "fr")
    assert res.code == 0, res.err


def test_a_daemon_on_a_full_disk_keeps_the_task_and_runs_it_when_there_is_room(
        run_hostctl, disk: Path, tmp_path: Path) -> None:
    """Freeing space wakes nothing up: the daemon must look again by itself, well before
    its once-a-minute housekeeping."""
    home = disk / "home"
    quick_type(home)
    save_sites(run_hostctl, home, ["a.example"])
    task_id = run_hostctl("task", "add", "quick", "@a.example").out.strip()
    filler = fill(disk)
    procs = Procs(home)
    try:
        daemon = procs.start("wait-queue", "--max-runtime", "300", log=tmp_path / "wq.out")
        log = home / "logs" / f"{task_id}.log"
        wait_for(lambda: log.exists() or daemon.poll() is not None, 60,
                 "the daemon to try the task")
        assert daemon.poll() is None, (tmp_path / "wq.out").read_text()
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "queued" and doc["attempts"] == [], doc
        filler.unlink()
        wait_for(lambda: show(run_hostctl, task_id)["status"] != "queued", 45,
                 "the daemon to run the task once there is room")
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "success" and len(doc["attempts"]) == 1, doc
        assert "quick run" in log.read_text()
        os.kill(daemon.pid, signal.SIGTERM)
        assert wait_exit(daemon, 60, "wait-queue after TERM") == 0
    finally:
        procs.cleanup()


def test_a_full_disk_prints_no_traceback(run_hostctl, disk: Path) -> None:
    home = disk / "home"
    quick_type(home)
    save_sites(run_hostctl, home, ["a.example"])
    run_hostctl("task", "add", "quick", "@a.example")
    fill(disk)
    res = run_process(home, "wait-queue", "--once")
    assert res.returncode == 0
    assert "Traceback" not in res.stderr, res.stderr
    # hostctl.log cannot be written: said once, in one line
    assert res.stderr.count("hostctl.log: No space left on device") == 1, res.stderr


FLOOD = ("import os, sys\n"
         "line = b'x' * 1023 + b'\\n'\n"
         "for _ in range(int(sys.argv[2])):\n"
         "    os.write(1, line)\n"
         "os.unlink(sys.argv[1])\n"
         "print('room again', flush=True)\n")


def test_a_log_that_fills_the_disk_ends_its_task_in_error_and_the_worker_goes_on(
        run_hostctl, disk: Path) -> None:
    """The task prints 2 MiB on a disk with 64 KiB free; then it frees the disk (so that
    the next task has room) and exits 0. Its log could not be written: error."""
    home = disk / "home"
    filler = disk / "filler"
    write_config(home, {"tasks": {
        "flood": {"command": [sys.executable, "-c", FLOOD, str(filler), "2048"],
                  "context_types": ["site"]},
        "quick": {"command": [SH, "-c", "echo quick run"], "context_types": ["site"]},
    }})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    flood = run_hostctl("task", "add", "flood", "@a.example", "--priority", "9").out.strip()
    after = run_hostctl("task", "add", "quick", "@b.example").out.strip()
    fill(disk, leave=64 * 1024)

    res = run_process(home, "wait-queue", "--once", "--concurrency", "1")
    assert res.returncode == 0, res.stderr
    assert "internal error" not in res.stderr
    assert not filler.exists()  # the flood ran to its end

    doc = show(run_hostctl, flood)
    assert doc["status"] == "error", doc
    assert doc["attempts"][-1]["exit_code"] == 0  # the command itself was happy
    assert "cannot write the task's log" in doc["reason"], doc["reason"]
    assert ENOSPC_TEXT in doc["reason"]
    log = (home / "logs" / f"{flood}.log").read_bytes()
    assert log.startswith(b"--- hostctl: attempt 1 of flood")
    assert b"x" * 1023 in log  # what fitted was kept

    doc = show(run_hostctl, after)
    assert doc["status"] == "success", doc  # the worker went on with the next task
    assert "quick run" in run_hostctl("task", "log", after).out
    assert ids_in(home, "active") == [] and ids_in(home, "new") == []


def test_a_task_file_that_cannot_grow_on_a_full_disk_is_not_torn_and_not_lost(
        run_hostctl, disk: Path) -> None:
    """The task file ends 40 bytes short of a page and the disk has two pages left, which
    the context's lock record and the task's log take: the spawn event cannot be written
    whole. The worker must not
    crash, must not leave a torn line that would swallow the next event, and the task must
    run once there is room."""
    home = disk / "home"
    write_config(home, {"tasks": {
        "pad": {"command": [SH, "-c", "echo padded run"], "context_types": ["site"],
                "options": {"pad": "filler"}},
        "quick": {"command": [SH, "-c", "echo quick run"], "context_types": ["site"]},
    }})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    probe = run_hostctl("task", "add", "pad", "@b.example", "--option", "pad=x").out.strip()
    page = os.statvfs(disk).f_bsize
    size = (home / "spool" / "new" / f"4{probe}.task").stat().st_size
    assert run_hostctl("task", "cancel", probe).code == 0
    pad = "x" * (1 + page - 40 - size)
    padded = run_hostctl("task", "add", "pad", "@a.example", "--priority", "9", "--option",
                         f"pad={pad}").out.strip()
    path = home / "spool" / "new" / f"0{padded}.task"
    assert path.stat().st_size == page - 40
    after = run_hostctl("task", "add", "quick", "@b.example").out.strip()
    # one page for the context lock file's holder record, one for the task's log
    filler = fill(disk, leave=2 * page)

    res = run_process(home, "wait-queue", "--once", "--concurrency", "1")
    assert res.returncode == 0, res.stderr
    assert "internal error" not in res.stderr
    for task_id in (padded, after):
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "queued" and doc["attempts"] == [], doc
    assert path.read_bytes().endswith(b"\n") and path.stat().st_size == page - 40
    log = run_hostctl("task", "log", padded).out
    assert "attempt 1 of pad" in log  # the log had room: its start was what failed
    assert "padded run" not in log  # and it did not run

    filler.unlink()
    res = run_process(home, "wait-queue", "--once")
    assert res.returncode == 0, res.stderr
    for task_id in (padded, after):
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "success" and len(doc["attempts"]) == 1, doc
    lines = (home / "spool" / "done" / f"{padded}.task").read_bytes().splitlines()
    assert [json.loads(line).get("event") for line in lines[1:]] == ["spawn", "start", "end"]
    assert "padded run" in run_hostctl("task", "log", padded).out


# -- disk full: what a front end dropped --------------------------------------------------


def drop_file(home: Path, task_type: str, context: str, publish: bool = True
              ) -> tuple[str, str, Path]:
    """Drop a submission by the documented protocol (as root, so uid 0 is its submitter);
    return its id, its receipt and its path. Without ``publish`` it keeps its dot-name
    (the rename that publishes it is the caller's)."""
    from hostctl.queues.model import new_id

    task_id, receipt = new_id(), secrets.token_hex(16)
    doc = {"id": task_id, "type": task_type, "context": context, "receipt": receipt}
    incoming = home / "spool" / "incoming"
    tmp = incoming / f".{task_id}"
    tmp.write_text(json.dumps(doc) + "\n")
    if not publish:
        return task_id, receipt, tmp
    final = incoming / f"{task_id}.task"
    os.rename(tmp, final)
    return task_id, receipt, final


def identity(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def admission_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if f"cannot admit incoming/{name}" in line]


def test_a_full_disk_during_admission_leaves_the_drop_and_the_runners_go_on(
        run_hostctl, disk: Path) -> None:
    home = disk / "home"
    quick_type(home)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    queued = run_hostctl("task", "add", "quick", "@a.example").out.strip()
    # a bad drop first (its reason cannot be written), then a good one (nor its task)
    bad_id, bad_receipt, bad = drop_file(home, "no-such-type", "@b.example")
    task_id, receipt, drop = drop_file(home, "quick", "@b.example")
    dropped = {p: identity(p) for p in (bad, drop)}
    before = spool_files(home)
    filler = fill(disk)

    for argv in (("--verbose", "dispatch"), ("wait-queue", "--once")):
        res = run_process(home, *argv)
        assert res.returncode == 0, (argv, res.stderr)
        assert "Traceback" not in res.stderr and "internal error" not in res.stderr
        lines = admission_lines(res.stderr, "")
        assert len(lines) == 1, (argv, res.stderr)  # one line, not one per drop or retry
        assert ENOSPC_TEXT in lines[0] and f"incoming/{bad.name}" in lines[0], lines
        assert "it and 1 more stay in incoming/" in lines[0], lines
        # untouched: the same files, not copied, not rejected, no receipt, no temp file
        assert {p: identity(p) for p in dropped} == dropped
        assert spool_files(home) == before, argv
    # the dispatch went on with its queues after the failed admission
    res = run_process(home, "--verbose", "dispatch", "--force")
    assert re.search(r"queue tasks: ", res.stderr), res.stderr
    assert show(run_hostctl, queued)["status"] == "queued"

    # room again: the next pass admits it and runs it, with the one queued before
    filler.unlink()
    res = run_process(home, "dispatch")
    assert res.returncode == 0, res.stderr
    assert os.listdir(home / "spool" / "incoming") == []
    for done in (queued, task_id):
        assert show(run_hostctl, done)["status"] == "success"
    assert show(run_hostctl, task_id)["submitter"] == os.getuid()
    doc = json.loads((home / "spool" / "outbox" / f"{receipt}.json").read_text())
    assert (doc["id"], doc["status"]) == (task_id, "success")
    reason = (home / "spool" / "rejected" / f"{bad.name}.reason").read_text()
    assert "unknown task type 'no-such-type'" in reason
    doc = json.loads((home / "spool" / "outbox" / f"{bad_receipt}.json").read_text())
    assert (doc["id"], doc["rejected"]) == (bad_id, True)


def test_a_daemon_survives_a_full_disk_during_admission_and_admits_later(
        run_hostctl, disk: Path, tmp_path: Path) -> None:
    home = disk / "home"
    quick_type(home)
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    out = tmp_path / "wq.out"
    procs = Procs(home)
    try:
        daemon = procs.start("wait-queue", "--max-runtime", "300", log=out)
        wait_for(lambda: daemon.pid in daemon_pids(home) or daemon.poll() is not None, 60,
                 "wait-queue to register")
        first, first_receipt, tmp = drop_file(home, "quick", "@a.example", publish=False)
        filler = fill(disk)
        final = tmp.with_name(f"{first}.task")
        os.rename(tmp, final)  # published on the full disk: the daemon sees it at once
        wait_for(lambda: admission_lines(out.read_text(), final.name)
                 or daemon.poll() is not None, 60, "the daemon to try the drop")
        assert daemon.poll() is None, out.read_text()
        assert final.exists() and os.listdir(home / "spool" / "new") == []
        assert not (home / "spool" / "outbox" / f"{first_receipt}.json").exists()

        # room again; the next drop (or the next housekeeping round) takes both
        filler.unlink()
        second, second_receipt, _ = drop_file(home, "quick", "@b.example")

        def ran(receipt: str) -> bool:
            try:
                doc = json.loads((home / "spool" / "outbox" / f"{receipt}.json").read_text())
            except (OSError, ValueError):
                return False
            return bool(doc["status"] == "success")

        wait_for(lambda: ran(first_receipt) and ran(second_receipt), 60,
                 "both drops to be admitted and run")
        assert os.listdir(home / "spool" / "incoming") == []
        assert daemon.poll() is None
        os.kill(daemon.pid, signal.SIGTERM)
        assert wait_exit(daemon, 60, "wait-queue after TERM") == 0
    finally:
        procs.cleanup()


@pytest.fixture
def fe_disk(tmp_path: Path) -> Iterator[tuple[Users, Path]]:
    """Front-end users and a 1 MiB tmpfs they can reach (inside their base folder)."""
    if can_make_users():
        pytest.skip(can_make_users())
    with frontend_users(1) as users, small_tmpfs(users.base / "disk", "0711") as mount:
        yield users, mount


def test_a_front_end_task_add_on_a_full_disk_fails_cleanly_and_leaves_nothing(
        fe_disk: tuple[Users, Path]) -> None:
    users, disk = fe_disk
    home = disk / "home"
    fe = users.members[0]
    backend = ("--home", str(home))
    assert hostctl_as(None, *backend, "frontend", "setup", "--group", users.group).code == 0
    quick_type(home)
    for argv in (("@srv", "--context_type", "server"),
                 ("@plat", "--context_type", "platform", "--root", str(disk)),
                 ("@a.example", "--context_type", "site", "--platform", "@plat")):
        assert hostctl_as(None, *backend, "provision-save", *argv).code == 0
    env: dict[str, str | None] = {"HOSTCTL_HOME": str(home)}
    first = hostctl_as(fe, "task", "add", "quick", "@a.example", env=env)
    assert first.code == 0, first
    incoming = home / "spool" / "incoming"
    before = sorted(os.listdir(incoming))
    assert before == [f"{first.out.strip()}.task"]
    filler = fill(disk)

    res = hostctl_as(fe, "task", "add", "quick", "@a.example", env=env)
    assert res.code == 1 and res.out == "", res
    line = one_line_error(res.err)
    assert "cannot submit the task" in line and ENOSPC_TEXT in line, line
    assert sorted(os.listdir(incoming)) == before  # no dot-file, no second drop
    assert os.listdir(fe.receipts) == [first.out.strip()]  # no receipt for it kept

    filler.unlink()
    assert hostctl_as(None, *backend, "dispatch").code == 0
    doc = json.loads(hostctl_as(fe, "task", "show", first.out.strip(), "--json",
                                env=env).out)
    assert doc["status"] == "success", doc
    assert hostctl_as(fe, "task", "add", "quick", "@a.example", env=env).code == 0


# -- overload: the real 1-minute load average --------------------------------------------

MIN_LOAD = 0.2  # the load the tests need at least (busy loops make it if the machine idles)
MARGIN = 20  # the threshold is 1/20 of the current load: decaying that far takes minutes


@pytest.fixture
def load() -> Iterator[float]:
    """The current 1-minute load average, at least MIN_LOAD: if the machine is idle,
    busy loops (one per CPU) run until the test ends. The kernel's average decays by at
    most a factor e^(-t/60) in t seconds, so a threshold of load/MARGIN stays below the
    load for more than two minutes, whatever else the machine does."""
    busy: list[subprocess.Popen[bytes]] = []
    try:
        if os.getloadavg()[0] < MIN_LOAD:
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(os.cpu_count() or 1)]
            wait_for(lambda: os.getloadavg()[0] >= MIN_LOAD, 90,
                     f"the 1-minute load average to reach {MIN_LOAD}", interval=0.5)
        yield os.getloadavg()[0]
    finally:
        for proc in busy:
            proc.kill()
            proc.wait(timeout=10)


def below(load: float) -> float:
    """A max_load (a multiple of the CPU count) surely below the current load."""
    return load / MARGIN / (os.cpu_count() or 1)


WAIT_NOTE = "queued tasks wait"


def touch_type(marks: Path) -> dict[str, object]:
    return {"command": [SH, "-c", 'echo ran > "$0/$HOSTCTL_TASK_ID"', str(marks)],
            "context_types": ["site"]}


def test_overload_keeps_tasks_queued_in_a_running_daemon_until_the_limit_allows(
        run_hostctl, home: Path, tmp_path: Path, load: float) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    limit = below(load)
    write_config(home, {"worker": {"max_load": limit}, "tasks": {"touch": touch_type(marks)}})
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    ids = [run_hostctl("task", "add", "touch", f"@{s}.example").out.strip() for s in "ab"]
    procs = Procs(home)
    try:
        daemon = procs.start("wait-queue", "--max-runtime", "300", log=tmp_path / "wq.out")
        wait_for(lambda: daemon.pid in daemon_pids(home) or daemon.poll() is not None, 60,
                 "wait-queue to register")
        wait_for(lambda: WAIT_NOTE in hostctl_log(home), 60, "the overload warning")
        # a task queued while it waits wakes the daemon, which still starts nothing
        ids.append(run_hostctl("task", "add", "touch", "@c.example").out.strip())
        # two reloads in a row: the daemon has looked at the queue at least once after
        # the third task was queued (its loop is single-threaded)
        for n in (1, 2):
            write_config(home, {"worker": {"max_load": limit / n},
                                "tasks": {"touch": touch_type(marks)}})
            os.kill(daemon.pid, signal.SIGHUP)
            # (the daemon follows config.toml too: the write and the signal may make two)
            wait_for(lambda n=n: hostctl_log(home).count("config reloaded") >= n, 60,
                     f"reload {n}")
        assert daemon.poll() is None
        # (the daemon's periodic queues may queue tasks of their own, cron's for one)
        tasks = {t["id"]: t for t in tasks_json(run_hostctl) if t["type"] == "touch"}
        assert sorted(tasks) == sorted(ids)
        assert all(t["status"] == "queued" and t["attempts"] == [] for t in tasks.values())
        assert os.listdir(marks) == []
        text = hostctl_log(home)
        assert text.count(WAIT_NOTE) == 1, text  # said once, not at every look
        assert " ERROR " not in text, text

        # the limit is raised above the load (config + HUP): they all run
        write_config(home, {"worker": {"max_load": 1000},
                            "tasks": {"touch": touch_type(marks)}})
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(lambda: all(show(run_hostctl, i)["status"] == "success" for i in ids), 90,
                 "the queued tasks to run")
        assert sorted(os.listdir(marks)) == sorted(ids)
        os.kill(daemon.pid, signal.SIGTERM)
        assert wait_exit(daemon, 60, "wait-queue after TERM") == 0
    finally:
        procs.cleanup()


def test_overload_holds_a_one_pass_worker_and_zero_turns_the_check_off(
        run_hostctl, home: Path, tmp_path: Path, load: float) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    write_config(home, {"worker": {"max_load": below(load)},
                        "tasks": {"touch": touch_type(marks)}})
    save_sites(run_hostctl, home, ["a.example"])
    task_id = run_hostctl("task", "add", "touch", "@a.example").out.strip()
    for argv in (("wait-queue", "--once"), ("dispatch",)):
        res = run_process(home, *argv)
        assert res.returncode == 0, (argv, res.stderr)
        doc = show(run_hostctl, task_id)
        assert doc["status"] == "queued" and doc["attempts"] == [], (argv, doc)
    assert os.listdir(marks) == []
    assert WAIT_NOTE in hostctl_log(home)

    # 0 = never wait, however loaded the machine is
    write_config(home, {"worker": {"max_load": 0}, "tasks": {"touch": touch_type(marks)}})
    assert os.getloadavg()[0] > 0
    res = run_process(home, "wait-queue", "--once")
    assert res.returncode == 0, res.stderr
    assert show(run_hostctl, task_id)["status"] == "success"
    assert os.listdir(marks) == [task_id]


@pytest.mark.parametrize(("table", "key", "value", "want"), [
    ("worker", "max_load", '"high"', "max_load must be a number (times the CPU count), "),
    ("worker", "max_load", "-1", "max_load must be a number (times the CPU count), "),
    ("worker", "max_load", "true", "max_load must be a number (times the CPU count), "),
    ("queues.task_gc", "retention_days", '"a month"', "retention_days must be a number of days"),
    ("worker", "timeout", '"long"', "timeout must be a number of seconds, "),
])
def test_a_bad_number_in_config_says_what_it_must_be(
        run_hostctl, home: Path, table: str, key: str, value: str, want: str) -> None:
    home.mkdir()
    (home / "config.toml").write_text(f"[{table}]\n{key} = {value}\n")
    res = run_hostctl("task", "list")
    assert res.code == 2, res
    line = one_line_error(res.err)
    assert want in line, line
    if key != "timeout":
        assert "seconds" not in line, line


# -- network file systems ----------------------------------------------------------------


def escape(path: str) -> str:
    """A path as /proc/self/mountinfo writes it (octal escapes)."""
    return re.sub(r"[ \t\n\\]", lambda m: f"\\{ord(m.group()):03o}", path)


def mountinfo_line(n: int, mount_point: str, fstype: str, source: str = "none") -> str:
    return (f"{n} 1 0:{n} / {escape(mount_point)} rw,relatime shared:{n} - {fstype} "
            f"{source} rw\n")


def test_filesystem_type_takes_the_longest_mount_point_and_unescapes(tmp_path: Path) -> None:
    base = tmp_path / "m"
    spaced = base / "nfs" / "local disk"
    for folder in (base / "nfs" / "sub", spaced / "x", base / "nfsdata", base / "tab\there"):
        folder.mkdir(parents=True)
    (base / "link").symlink_to(base / "nfs" / "sub")
    mi = tmp_path / "mountinfo"
    mi.write_text(
        mountinfo_line(20, "/", "ext4", "/dev/sda1")
        + "garbage line without the separator\n"
        + mountinfo_line(21, str(base / "nfs"), "nfs4", "server:/export")
        + mountinfo_line(22, str(spaced), "xfs", "/dev/sdb1")
        + mountinfo_line(23, str(base / "tab\there"), "cifs", "//server/share")
        # an optional field more and a mount point with a backslash
        + f"24 1 0:24 / {escape(str(base / 'back'))}\\134slash rw shared:1 master:2 - "
          "fuse.sshfs u@h: rw\n"
    )
    assert filesystem_type(base / "nfs", str(mi)) == "nfs4"
    assert filesystem_type(base / "nfs" / "sub", str(mi)) == "nfs4"
    assert filesystem_type(spaced, str(mi)) == "xfs"  # nested: the longest one wins
    assert filesystem_type(spaced / "x", str(mi)) == "xfs"
    assert filesystem_type(base / "nfsdata", str(mi)) == "ext4"  # a prefix is not a parent
    assert filesystem_type(base / "tab\there", str(mi)) == "cifs"
    assert filesystem_type(Path(str(base / "back") + "\\slash") / "y", str(mi)) == "fuse.sshfs"
    assert filesystem_type(base / "link", str(mi)) == "nfs4"  # symlinks are followed
    assert filesystem_type(Path("/"), str(mi)) == "ext4"
    assert filesystem_type(base, str(tmp_path / "missing")) is None
    # the same mount point mounted over: the last (visible) one counts
    mi.write_text(mountinfo_line(20, "/", "ext4") + mountinfo_line(21, str(base), "nfs")
                  + mountinfo_line(22, str(base), "tmpfs"))
    assert filesystem_type(base / "x", str(mi)) == "tmpfs"
    assert {"nfs", "nfs4", "cifs", "smb3", "fuse.sshfs"} <= NETWORK_FILESYSTEMS


def in_namespace(mountinfo: Path, home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``hostctl argv`` in a private mount namespace where the kernel's mount table, as
    this very process reads it (/proc/self/mountinfo), is ``mountinfo``: the shell
    bind-mounts the file over its own /proc/PID/mountinfo, then execs hostctl, which keeps
    the pid."""
    script = 'mount --bind "$0" /proc/$$/mountinfo && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", SH, "-c", script, str(mountinfo),
         *argv], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOSTCTL_HOME": str(home)})


@pytest.fixture
def fake_mounts(tmp_path: Path) -> Path:
    """A copy of the real mount table; tests add lines to it. Skips when no private mount
    namespace can be made here."""
    mi = tmp_path / "mountinfo"
    mi.write_text(Path("/proc/self/mountinfo").read_text() + mountinfo_line(999, "/x", "nfs"))
    if not shutil.which("unshare"):
        pytest.skip("no unshare: cannot make a private mount namespace")
    res = in_namespace(mi, tmp_path, "cat", "/proc/self/mountinfo")
    if res.returncode != 0 or res.stdout != mi.read_text():
        pytest.skip(f"cannot bind a file over /proc/self/mountinfo in a private mount "
                    f"namespace: {res.stderr.strip()}")
    return mi


@pytest.mark.parametrize("fstype", ["nfs4", "cifs"])
def test_the_spool_refuses_a_network_file_system_unless_allowed(
        run_hostctl, home: Path, tmp_path: Path, fake_mounts: Path, fstype: str) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    real = fake_mounts.read_text()
    # a network mount beside the home changes nothing
    fake_mounts.write_text(real + mountinfo_line(1000, str(tmp_path / "homes"), fstype))
    res = in_namespace(fake_mounts, home, hostctl_exe(), "task", "add", "verify", "@a.example")
    assert res.returncode == 0, res.stderr
    first = res.stdout.strip()

    fake_mounts.write_text(real + mountinfo_line(1000, str(tmp_path), fstype, "srv:/h"))
    before = spool_files(home)
    for argv in (("task", "add", "verify", "@a.example", "--priority", "7"),
                 ("wait-queue", "--once"), ("dispatch",), ("provision-verify", "@a.example")):
        res = in_namespace(fake_mounts, home, hostctl_exe(), *argv)
        assert res.returncode == 1, (argv, res)
        line = one_line_error(res.stderr)
        assert f"on a {fstype} file system" in line and "allow_network_filesystem" in line
        assert res.stdout == "", argv
        assert spool_files(home) == before, argv  # nothing queued, nothing run

    write_config(home, {"spool": {"allow_network_filesystem": True}})
    res = in_namespace(fake_mounts, home, hostctl_exe(), "task", "add", "verify",
                       "@a.example", "--priority", "7")
    assert res.returncode == 0, res.stderr
    second = res.stdout.strip()
    res = in_namespace(fake_mounts, home, hostctl_exe(), "wait-queue", "--once")
    assert res.returncode == 0, res.stderr
    assert [show(run_hostctl, i)["status"] for i in (first, second)] == ["success"] * 2


@pytest.mark.parametrize("fstype", ["nfs4", "cifs"])
def test_doctor_reports_a_spool_on_a_network_file_system_unless_allowed(
        run_hostctl, home: Path, tmp_path: Path, fake_mounts: Path, fstype: str) -> None:
    save_sites(run_hostctl, home, ["a.example"])
    assert run_hostctl("task", "add", "verify", "@a.example").code == 0
    real = fake_mounts.read_text()
    fake_mounts.write_text(real + mountinfo_line(1000, str(tmp_path / "homes"), fstype))
    res = in_namespace(fake_mounts, home, hostctl_exe(), "doctor")
    assert res.returncode == 0 and "as they should be" in res.stdout, res  # only beside it

    fake_mounts.write_text(real + mountinfo_line(1000, str(tmp_path), fstype, "srv:/h"))
    problem = f"on a {fstype} file system: file locks are not reliable there"
    res = in_namespace(fake_mounts, home, hostctl_exe(), "doctor")
    assert res.returncode == 1, res
    assert res.stdout.splitlines() == [f"PROBLEM: {home / 'spool'}: {problem}"], res.stdout
    assert "1 problem(s) found" in one_line_error(res.stderr)
    res = in_namespace(fake_mounts, home, hostctl_exe(), "doctor", "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout) == [{"path": str(home / "spool"), "problem": problem,
                                       "fixed": False}]
    res = in_namespace(fake_mounts, home, hostctl_exe(), "doctor", "--fix")
    assert res.returncode == 1 and res.stdout.startswith("PROBLEM: "), res  # not fixable

    write_config(home, {"spool": {"allow_network_filesystem": True}})
    os.chmod(home / "config.toml", 0o600)
    res = in_namespace(fake_mounts, home, hostctl_exe(), "doctor", "--json")
    assert (res.returncode, json.loads(res.stdout)) == (0, []), res


# -- hostile option values ---------------------------------------------------------------

# Writes its argv and $HOSTCTL_OPTION_VAL to the file named by its first argument.
DUMP = ("import json, os, sys; json.dump({'argv': sys.argv[2:], "
        "'env': os.environ.get('HOSTCTL_OPTION_VAL')}, open(sys.argv[1], 'w'))")

HOSTILE = ["--force", "-rf /", "-rf", "$(touch {mark}/subst)", "; touch {mark}/semi",
           "`touch {mark}/tick`", "| touch {mark}/pipe", "&& touch {mark}/and",
           "> {mark}/redirect", "a b", "'\"", "'", '"', "line one\nline two", "\n",
           "@a.example", "@", "", " ", "-", "--", "--val=other", "*", "~", "$HOME",
           "{root}", "{option.val}", "%s%n", "\\", "tab\there", "é ☃", "=", "k=v"]


@pytest.fixture
def dump_home(run_hostctl, home: Path, tmp_path: Path) -> Path:
    """A home with @a.example and a ``dump`` type; returns the folder it dumps into."""
    out = tmp_path / "dumps"
    out.mkdir()
    write_config(home, {"tasks": {"dump": {
        "command": [sys.executable, "-c", DUMP, f"{out}/{{task_id}}.json", "{option.val}",
                    "--val={option.val}"],
        "context_types": ["site"], "options": {"val": "any value"}}}})
    save_sites(run_hostctl, home, ["a.example"])
    return out


def hostile_values(mark: Path) -> list[str]:
    mark.mkdir()
    (mark / "keep").write_text("still here")
    return [raw.replace("{mark}", str(mark)) for raw in HOSTILE]


def check_dump(dumps: Path, task_id: str, value: str) -> None:
    got = json.loads((dumps / f"{task_id}.json").read_text())
    assert got == {"argv": [value, f"--val={value}"], "env": value}, repr(value)


def check_untouched(mark: Path) -> None:
    assert sorted(os.listdir(mark)) == ["keep"]  # no shell ever ran a value
    assert (mark / "keep").read_text() == "still here"


def test_hostile_option_values_reach_a_queued_task_as_single_argv_items(
        run_hostctl, home: Path, tmp_path: Path, dump_home: Path) -> None:
    values = hostile_values(tmp_path / "mark")
    ids = {}
    for value in values:
        res = run_hostctl("task", "add", "dump", "@a.example", "--option", f"val={value}")
        assert res.code == 0, (value, res)
        ids[value] = res.out.strip()
        assert show(run_hostctl, ids[value])["options"] == {"val": value}
    assert len(set(ids.values())) == len(values)
    res = run_process(home, "wait-queue", "--once")
    assert res.returncode == 0, res.stderr
    for value, task_id in ids.items():
        assert show(run_hostctl, task_id)["status"] == "success", repr(value)
        check_dump(dump_home, task_id, value)
    check_untouched(tmp_path / "mark")


def test_hostile_option_values_reach_a_foreground_task_as_single_argv_items(
        run_hostctl, home: Path, tmp_path: Path, dump_home: Path) -> None:
    values = hostile_values(tmp_path / "mark")
    for value in values:
        forms = [[f"--val={value}"]]
        if not value.startswith("-"):  # a value starting with - needs the --val=... form
            forms.append(["--val", value])
        for form in forms:
            res = run_hostctl("provision-dump", "@a.example", *form)
            assert res.code == 0, (form, res)
            task_id = re.search(r"\(task ([0-9a-f]{20})\)", res.err)
            assert task_id, (form, res.err)
            check_dump(dump_home, task_id.group(1), value)
    check_untouched(tmp_path / "mark")


def test_an_option_value_that_looks_like_the_help_flag_is_a_value(
        run_hostctl, dump_home: Path) -> None:
    res = run_hostctl("provision-dump", "@a.example", "--val", "-h")
    task_id = re.search(r"\(task ([0-9a-f]{20})\)", res.err)
    assert res.code == 0 and task_id, res
    check_dump(dump_home, task_id.group(1), "-h")
