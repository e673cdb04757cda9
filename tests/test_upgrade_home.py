"""``hostctl upgrade-home`` and the formats of the home and its records (docs/upgrade.md).

``fixtures/home-0.1.0.tar.gz`` is a home that hostctl 0.1.0 wrote through its command line,
before the home had a format of its own: a config.toml with command task types, two
servers, a platform and two sites (one installed: its secrets record, its SQLite
database and a backup), finished tasks (success, error, cancelled), two deferred ones (one
asked to be tried again, one added with --delay), five queued ones and a front end's drop
in spool/incoming/ not admitted yet.
"""

from __future__ import annotations

import json
import os
import signal
import tarfile
from pathlib import Path

import pytest
from runnerhelpers import SH, SLOW, hostctl_log, wait_exit
from taskhelpers import wait_for

from hostctl.errors import ExitStatus, NewerFormat
from hostctl.formats import HOME_FORMAT, HOME_MARKER, home_format
from hostctl.paths import Paths
from hostctl.runners.home import Home
from hostctl.runners.upgrade import STEPS, Step, upgrade

FIXTURE = Path(__file__).parent / "fixtures" / "home-0.1.0.tar.gz"
QUEUED = ["01a2471e6e292a96ca98", "01a2471e6edc034df8bd", "01a2471e6f5f2fa2d151",
          "01a2471e6fe111b1627b"]
DROP = "01a2471e7000aabbccdd"
DEFERRED = ["01a2471e5ce2240ba1a0", "01a2471e6d9b55a45387"]
FINISHED = {"01a2471e5b7e477a34bb": "success", "01a2471e5bf96e76e8c7": "success",
            "01a2471e5c6d7e32a34f": "error", "01a2471e6ba504baf677": "success",
            "01a2471e6c411e228bdf": "cancelled"}
NEWER = "a newer hostctl wrote it; upgrade hostctl"


def old_home(home: Path) -> Path:
    """The 0.1.0 home, unpacked as this test's home."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(home.parent, filter="data")
    assert (home / "contexts").is_dir() and not (home / HOME_MARKER).exists()
    return home


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every name under ``root`` (dot-files too), with its mode and, for a file, its
    bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(root))] = (st.st_mode, data)
    return out


def records(root: Path) -> dict[str, bytes]:
    """The records themselves: contexts, secrets, task files, backups, logs."""
    return {str(p.relative_to(root)): p.read_bytes()
            for top in ("contexts", "secrets", "spool/new", "spool/deferred", "spool/done",
                        "backups", "config.toml")
            for p in ([root / top] if top.endswith(".toml") else (root / top).rglob("*"))
            if p.is_file()}


def tasks(run_hostctl) -> dict[str, dict]:
    res = run_hostctl("task", "list", "--limit", "1000", "--json")
    assert res.code == 0, res
    listed = json.loads(res.out)
    assert len({t["id"] for t in listed}) == len(listed)
    return {t["id"]: t for t in listed}


def one_line_refusal(res, *words: str) -> None:
    assert res.code == ExitStatus.USAGE, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    for word in (*words, NEWER):
        assert word in lines[0], res.err


# -- upgrading hostctl 0.1.0's home ---------------------------------------------------------


def test_a_0_1_0_home_is_format_1_and_still_usable_before_its_upgrade(run_hostctl, home):
    old_home(home)
    assert home_format(home) == 1
    assert set(tasks(run_hostctl)) >= {*QUEUED, *DEFERRED, *FINISHED}
    # a write does not mark it: only upgrade-home does, after its checks
    assert run_hostctl("provision-save", "@example.com", "--language", "it").code == 0
    assert not (home / HOME_MARKER).exists()


def test_upgrade_home_migrates_the_0_1_0_home_and_every_queued_task_then_runs_once(
        run_hostctl, home):
    old_home(home)
    contexts = run_hostctl("context", "list", "--json")
    shown = run_hostctl("context", "show", "@example.com", "--json", "--show-secrets")
    before_tasks = tasks(run_hostctl)
    before = records(home)

    res = run_hostctl("upgrade-home", "--json")
    assert res.code == 0, res
    report = json.loads(res.out)
    assert (report["format_found"], report["format"], report["current"]) == (1, 2, False)
    assert [(s["from"], s["to"]) for s in report["steps"]] == [(1, 2)]
    assert "read 5 context(s), 1 secrets record(s), 11 task(s)" in report["steps"][0]["did"][0]
    assert (home / HOME_MARKER).read_text().endswith("format = 2\n")
    assert (home / HOME_MARKER).stat().st_mode & 0o777 == 0o600
    assert home_format(home) == HOME_FORMAT

    # nothing of the records changed; everything reads back equal
    assert records(home) == before
    assert run_hostctl("context", "list", "--json").out == contexts.out
    assert run_hostctl("context", "show", "@example.com", "--json",
                       "--show-secrets").out == shown.out
    assert tasks(run_hostctl) == before_tasks

    # the queue runs on: every queued task (and the front end's drop) once
    res = run_hostctl("wait-queue", "--once")
    assert res.code == 0, res
    after = tasks(run_hostctl)
    assert set(after) == set(before_tasks) | {DROP}
    for task_id in [*QUEUED, DROP]:
        assert (after[task_id]["status"], len(after[task_id]["attempts"])) == ("success", 1), \
            after[task_id]
    for task_id, status in FINISHED.items():
        assert after[task_id] == before_tasks[task_id]
        assert after[task_id]["status"] == status
    for task_id in DEFERRED:  # due or not yet, depending on today's date: never lost
        assert after[task_id]["status"] in ("queued", "success"), after[task_id]
    assert run_hostctl("context", "show", "@example.com", "--json").code == 0
    fields = json.loads(run_hostctl("context", "show", "@example.com", "--json").out)
    assert fields["fields"]["language"] == "de"  # the queued task's context option


def test_a_second_upgrade_does_nothing(run_hostctl, home):
    old_home(home)
    assert run_hostctl("upgrade-home").code == 0
    before = snapshot(home)
    res = run_hostctl("upgrade-home")
    assert res.code == 0, res
    assert "format 2" in res.out and "nothing to upgrade" in res.out
    assert snapshot(home) == before
    res = run_hostctl("upgrade-home", "--json")
    assert json.loads(res.out)["current"] is True and json.loads(res.out)["steps"] == []


def test_dry_run_says_what_it_would_do_and_writes_nothing(run_hostctl, home):
    old_home(home)
    before = snapshot(home)
    res = run_hostctl("upgrade-home", "--dry-run")
    assert res.code == 0, res
    assert "would upgrade" in res.out and f"would write {home / HOME_MARKER}" in res.out
    assert "nothing was written" in res.out
    assert snapshot(home) == before
    res = run_hostctl("upgrade-home", "--dry-run", "--json")
    assert json.loads(res.out)["dry_run"] is True
    assert snapshot(home) == before


def test_a_new_home_is_made_in_the_current_format(run_hostctl, home):
    assert run_hostctl("provision-save", "@srv", "--context_type", "server").code == 0
    assert home_format(home) == HOME_FORMAT
    assert "nothing to upgrade" in run_hostctl("upgrade-home").out


def test_a_home_holding_only_its_config_gets_the_marker_on_its_first_write(run_hostctl, home):
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text("[worker]\nconcurrency = 2\n")
    assert run_hostctl("provision-save", "@srv", "--context_type", "server").code == 0
    assert (home / HOME_MARKER).is_file()


# -- newer than this hostctl: refused, untouched ---------------------------------------------


def test_a_newer_home_is_refused_by_every_command_and_left_byte_for_byte(run_hostctl, home):
    old_home(home)
    assert run_hostctl("upgrade-home").code == 0
    (home / HOME_MARKER).write_text("format = 3\n")
    before = snapshot(home)
    for argv in (["upgrade-home"], ["upgrade-home", "--dry-run"], ["task", "list"],
                 ["context", "list"], ["context", "show", "@example.com"],
                 ["provision-save", "@new", "--context_type", "server"],
                 ["task", "add", "verify", "@server_master"], ["dispatch"],
                 ["wait-queue", "--once"], ["queue", "status"], ["doctor"],
                 ["provision-verify", "@server_master"]):
        one_line_refusal(run_hostctl(*argv), f"{home / HOME_MARKER} is format 3",
                         f"reads format {HOME_FORMAT} at most")
    assert snapshot(home) == before


def _newer_context(home: Path) -> Path:
    path = home / "contexts" / "server_db.toml"
    path.write_text(path.read_text().replace("format = 1", "format = 2", 1))
    return path


def _newer_secrets(home: Path) -> Path:
    path = home / "secrets" / "example.com.toml"
    path.write_text(path.read_text().replace("format = 1", "format = 4", 1))
    return path


def _newer_task(home: Path) -> Path:
    path = home / "spool" / "new" / "401a2471e6edc034df8bd.task"
    path.write_bytes(path.read_bytes().replace(b'"format":1', b'"format":2', 1))
    return path


def _newer_tally(home: Path) -> Path:
    path = sorted((home / "spool" / "tally").glob("*.json"))[0]
    doc = json.loads(path.read_bytes())
    path.write_text(json.dumps({**doc, "version": 2}))
    return path


@pytest.mark.parametrize("make", [_newer_context, _newer_secrets, _newer_task, _newer_tally])
def test_upgrade_refuses_a_home_holding_a_newer_record_and_writes_nothing(
        run_hostctl, home, make):
    old_home(home)
    path = make(home)
    before = snapshot(home)
    one_line_refusal(run_hostctl("upgrade-home"), str(path))
    one_line_refusal(run_hostctl("upgrade-home", "--dry-run"), str(path))
    assert snapshot(home) == before


def test_newer_records_are_refused_by_their_readers_and_never_quarantined(
        run_hostctl, hostctl_process, home):
    old_home(home)
    assert run_hostctl("upgrade-home").code == 0
    context = _newer_context(home)
    one_line_refusal(run_hostctl("context", "show", "@server_db"), str(context), "format 2")
    one_line_refusal(run_hostctl("context", "list"), str(context))
    context.write_text(context.read_text().replace("format = 2", "format = 1", 1))
    secrets = _newer_secrets(home)
    data = secrets.read_bytes()
    res = run_hostctl("provision-verify", "@example.com")  # a task: it ends in error, saying why
    assert res.code == ExitStatus.ERROR and f"{secrets} is format 4" in res.err, res
    assert NEWER in res.err and secrets.read_bytes() == data
    secrets.write_text(secrets.read_text().replace("format = 4", "format = 1", 1))

    # a task file: a list passes over it, saying so; the runners leave it where it lies,
    # and run the rest
    task = _newer_task(home)
    data = task.read_bytes()
    listed = hostctl_process("task", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = {doc["id"] for doc in json.loads(listed.stdout)}
    assert "01a2471e6edc034df8bd" not in ids and QUEUED[0] in ids
    assert f"{task} is format 2" in listed.stderr and NEWER in listed.stderr
    res = run_hostctl("wait-queue", "--once")
    assert res.code == 0, res
    assert f"{task} is format 2" in hostctl_log(home)
    assert task.read_bytes() == data
    assert not any((home / "spool" / "quarantine").iterdir())
    assert run_hostctl("task", "show", QUEUED[0], "--json").code == 0
    assert json.loads(run_hostctl("task", "show", QUEUED[0], "--json").out)["status"] == \
        "success"


def test_newer_backup_and_application_manifests_are_refused(home, tmp_path):
    import io

    from hostctl.provision import app
    from hostctl.provision.backup import MANIFEST, Archive

    backup = tmp_path / "example.com-20990101.000000.tar.gz"
    with tarfile.open(backup, "w:gz") as tar:
        data = json.dumps({"format": 2, "site": "@example.com"}).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(NewerFormat, match=f"{backup} .*is format 2, .* reads format 1 at"):
        Archive(backup)
    manifest = tmp_path / app.MANIFEST
    manifest.write_text("format = 2\n")
    with pytest.raises(NewerFormat, match=f"{manifest} is format 2"):
        app._parse({"format": 2}, manifest)


# -- an upgrade cut short ----------------------------------------------------------------


def test_a_marker_write_cut_short_leaves_format_1_and_the_next_upgrade_finishes(
        run_hostctl, home):
    old_home(home)
    # write_atomic's temporary file, half written, never renamed into place
    leftover = home / f".{HOME_MARKER}.k3x9q1.tmp"
    leftover.write_text("form")
    assert home_format(home) == 1
    assert run_hostctl("task", "list").code == 0
    res = run_hostctl("upgrade-home")
    assert res.code == 0, res
    assert "removed 1 temporary file(s) of an earlier upgrade cut short" in res.out
    assert not leftover.exists() and home_format(home) == 2


def test_steps_run_in_order_and_a_step_cut_short_is_finished_by_the_next_run(home):
    """The driver with a next format's step: the marker moves one step at a time, after
    the step's work; a step that fails leaves the home in the format before it, and runs
    again (idempotent) at the next upgrade."""
    old_home(home)
    done = home / "step-2-work"
    calls: list[str] = []

    def step_two(h: Home, dry_run: bool) -> list[str]:
        if dry_run:  # the upgrade's reading first: nothing to refuse here
            return ["would do step 2"]
        calls.append("run")
        if not done.exists():
            done.write_text("half")  # one atomic change of its work ...
        if len(calls) == 1:
            raise OSError("power cut")  # ... and then the crash, before the marker
        return ["did step 2"]

    steps = (*STEPS, Step(2, "the next format's step", step_two))
    with pytest.raises(OSError):
        upgrade(Home(Paths(home)), steps=steps, target=3)
    assert home_format(home) == 2  # step 1 is done and marked; step 2 is not
    report = upgrade(Home(Paths(home)), steps=steps, target=3)
    assert [(s.from_format, s.to_format) for s in report.steps] == [(2, 3)]
    assert home_format(home) == 3 and done.read_text() == "half" and len(calls) == 2
    assert upgrade(Home(Paths(home)), steps=steps, target=3).current


# -- upgrading a running installation --------------------------------------------------------


def test_stopping_wait_queue_upgrading_and_starting_again_loses_no_task_and_runs_none_twice(
        run_hostctl, home, procs, tmp_path):
    old_home(home)
    gate = tmp_path / "slow"
    with open(home / "config.toml", "a") as fh:
        fh.write(f'\n[tasks.slow]\ncommand = {json.dumps([SH, "-c", SLOW, str(gate)])}\n'
                 'context_types = ["site"]\n')
    slow = run_hostctl("task", "add", "slow", "@other.example.org", "--priority", "9").out.strip()
    more = [run_hostctl("task", "add", "hello", "@other.example.org").out.strip(),
            run_hostctl("task", "add", "note", "@other.example.org",
                        "--context-option", "language=it").out.strip()]
    daemon = procs.start("wait-queue", "--concurrency", "1", "--max-runtime", "300")
    wait_for(lambda: Path(f"{gate}.started").exists(), 60, "the slow task to start")

    # while it runs, the upgrade is refused, naming what runs
    res = run_hostctl("upgrade-home")
    assert res.code == ExitStatus.USAGE and f"wait-queue (pid {daemon.pid})" in res.err, res
    assert not (home / HOME_MARKER).exists()

    # systemd's stop: TERM; the running task runs to its end, nothing else starts
    os.kill(daemon.pid, signal.SIGTERM)
    (Path(f"{gate}.go")).touch()
    assert wait_exit(daemon, 60, "wait-queue after TERM") == 0
    stopped = tasks(run_hostctl)
    assert (stopped[slow]["status"], len(stopped[slow]["attempts"])) == ("success", 1)
    waiting = [t for t in [*QUEUED, *more] if stopped[t]["status"] == "queued"]
    assert waiting, "the daemon was stopped with tasks still queued"

    res = run_hostctl("upgrade-home")
    assert res.code == 0, res
    assert home_format(home) == HOME_FORMAT

    daemon = procs.start("wait-queue", "--max-runtime", "300")
    wait_for(lambda: all(tasks(run_hostctl)[t]["status"] == "success"
                         for t in [*QUEUED, *more, DROP] if t in tasks(run_hostctl)) and
             DROP in tasks(run_hostctl), 60, "every queued task to end")
    os.kill(daemon.pid, signal.SIGTERM)
    assert wait_exit(daemon, 60, "wait-queue after TERM") == 0
    after = tasks(run_hostctl)
    assert set(after) == set(stopped) | {DROP}
    for task_id in [slow, *QUEUED, *more, DROP]:
        assert (after[task_id]["status"], len(after[task_id]["attempts"])) == ("success", 1), \
            after[task_id]
