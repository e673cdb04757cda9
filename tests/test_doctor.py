"""``hostctl doctor``: a clean home passes; each wrong mode, group or owner is one finding
(exit 1, one line each, ``--json``), and ``doctor --fix`` repairs it so that doctor passes
again. The home has a front-end drop box that real front-end users have used: a task run,
a rejected submission and a drop not yet admitted, all with their shared files."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asuser import Outcome, Users, can_make_users, frontend_users, hostctl_as
from taskhelpers import write_config

pytestmark = pytest.mark.skipif(bool(can_make_users()), reason=can_make_users() or "ok")


@dataclass(frozen=True)
class Home:
    users: Users
    path: Path
    names: dict[str, str]  # placeholders for the case paths: task, receipt, rejected, drop

    def doctor(self, *argv: str) -> Outcome:
        return hostctl_as(None, "--home", str(self.path), "doctor", *argv)

    def at(self, rel: str) -> Path:
        return self.path / rel.format(**self.names) if rel else self.path


def _ok(res: Outcome) -> str:
    assert res.code == 0, res
    return res.out


@pytest.fixture(scope="module")
def clean() -> Iterator[Home]:
    with frontend_users(2) as users:
        yield _build(users)


def _build(users: Users) -> Home:
    home = users.base / "home"
    fe1, fe2 = users.members
    run = lambda *argv: _ok(hostctl_as(None, "--home", str(home), *argv))  # noqa: E731
    run("frontend", "setup", "--group", users.group)
    write_config(home, {"tasks": {"hello": {"command": [sys.executable, "-c", "print('hi')"],
                                            "context_types": ["server"]}}})
    os.chmod(home / "config.toml", 0o600)
    run("provision-save", "@srv", "--context_type", "server", "--db_passwd", "secret-pw")
    env: dict[str, str | None] = {"HOSTCTL_HOME": str(home)}
    task = _ok(hostctl_as(fe1, "task", "add", "hello", "@srv", env=env)).strip()
    refused = _ok(hostctl_as(fe1, "task", "add", "no-such-type", "@srv", env=env)).strip()
    run("dispatch")
    drop = _ok(hostctl_as(fe2, "task", "add", "hello", "@srv", env=env)).strip()
    receipt = (fe1.receipts / task).read_text().strip()
    assert (home / "spool" / "rejected" / f"{refused}.task").exists()
    assert (home / "spool" / "incoming" / f"{drop}.task").exists()
    assert (home / "logs" / f"{task}.log").stat().st_nlink == 2  # shared with the outbox
    return Home(users, home, {"task": task, "receipt": receipt, "rejected": refused,
                              "drop": drop})


@pytest.fixture
def restored(clean: Home) -> Iterator[Home]:
    """The clean home; whatever a test changes in owners and modes is put back after."""
    saved = {}
    for top, dirs, files in os.walk(clean.path):
        for name in ["", *dirs, *files]:
            path = os.path.join(top, name) if name else top
            st = os.lstat(path)
            saved[path] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    yield clean
    for path, (mode, uid, gid) in saved.items():
        os.lchown(path, uid, gid)
        if not os.path.islink(path):
            os.chmod(path, mode)


def _findings(res: Outcome, prefix: str) -> dict[str, str]:
    """{path: problem} from doctor's lines, each `PREFIX: PATH: PROBLEM`."""
    out = {}
    for line in res.out.splitlines():
        head, _, rest = line.partition(": ")
        assert head == prefix, line
        path, _, problem = rest.rpartition(": ")
        assert path not in out, f"{path} reported twice"
        out[path] = problem
    return out


def test_doctor_passes_a_clean_home_with_a_drop_box(restored: Home) -> None:
    home = restored
    res = home.doctor()
    assert res.code == 0 and res.out.count("\n") == 1 and "as they should be" in res.out, res
    assert json.loads(_ok(home.doctor("--json"))) == []
    assert "fixed" not in _ok(home.doctor("--fix"))


def test_doctor_passes_a_clean_home_without_a_drop_box(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    _ok(hostctl_as(None, "--home", str(path), "provision-save", "@srv", "--context_type",
                   "server"))
    _ok(hostctl_as(None, "--home", str(path), "dispatch"))
    res = hostctl_as(None, "--home", str(path), "doctor", "--json")
    assert (res.code, json.loads(res.out)) == (0, []), res
    os.chmod(path / "contexts" / "srv.toml", 0o644)
    res = hostctl_as(None, "--home", str(path), "doctor")
    assert res.code == 1 and list(_findings(res, "PROBLEM")) == [
        str(path / "contexts" / "srv.toml")], res


def test_doctor_on_a_missing_home_is_a_usage_error(tmp_path: Path) -> None:
    res = hostctl_as(None, "--home", str(tmp_path / "nowhere"), "doctor")
    assert res.code == 2 and res.err.count("\n") == 1 and "Traceback" not in res.err, res


@dataclass(frozen=True)
class Case:
    label: str
    rel: str  # the path broken (placeholders: see Home.names)
    mode: int | None = None  # chmod to this
    gid: int | None = None  # chgrp to this
    owner: str = ""  # chown to this user: "fe" (a front-end user)
    also: tuple[str, ...] = ()  # other names of the same file (hard links)
    want: int | None = None  # the mode --fix gives


MODES = [
    Case("home 0755", "", mode=0o755, want=0o710),
    Case("config.toml 0666", "config.toml", mode=0o666, want=0o600),
    Case("context file 0644", "contexts/srv.toml", mode=0o644, want=0o600),
    Case("contexts folder 0755", "contexts", mode=0o755, want=0o700),
    Case("hostctl log 0644", "logs/hostctl.log", mode=0o644, want=0o600),
    Case("task log 0644", "logs/{task}.log", mode=0o644, want=0o640,
         also=("spool/outbox/{receipt}.log",)),
    Case("logs folder 0755", "logs", mode=0o755, want=0o700),
    Case("spool 0755", "spool", mode=0o755, want=0o710),
    Case("incoming 0777", "spool/incoming", mode=0o777, want=0o3730),
    Case("incoming neither sticky nor setgid", "spool/incoming", mode=0o730, want=0o3730),
    Case("outbox 0755", "spool/outbox", mode=0o755, want=0o2710),
    Case("outbox listable", "spool/outbox", mode=0o2750, want=0o2710),
    Case("done folder 0755", "spool/done", mode=0o755, want=0o700),
    Case("task file 0644", "spool/done/{task}.task", mode=0o644, want=0o600),
    Case("receipt 0666", "spool/outbox/{receipt}.json", mode=0o666, want=0o640),
    Case("rejection reason 0644", "spool/rejected/{rejected}.task.reason", mode=0o644,
         want=0o600),
    Case("queue state 0644", "spool/queues.json", mode=0o644, want=0o600),
    Case("incoming group", "spool/incoming", gid=0),
    Case("receipt group", "spool/outbox/{receipt}.json", gid=0),
    Case("home group", "", gid=0),
    Case("context file owner", "contexts/srv.toml", owner="fe"),
    Case("task file owner", "spool/done/{task}.task", owner="fe"),
]


def _break(home: Home, case: Case) -> Path:
    path = home.at(case.rel)
    if case.mode is not None:
        os.chmod(path, case.mode)
    if case.gid is not None:
        assert os.stat(path).st_gid != case.gid
        os.chown(path, -1, case.gid)
    if case.owner:
        os.chown(path, home.users.members[0].uid, -1)
    return path


def _owners_and_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid


@pytest.mark.parametrize("case", MODES, ids=[c.label for c in MODES])
def test_doctor_finds_and_fixes_each_wrong_mode_group_and_owner(restored: Home,
                                                                case: Case) -> None:
    home = restored
    path = _break(home, case)
    before = _owners_and_mode(path)
    expected = {str(path), *(str(home.at(rel)) for rel in case.also)}
    res = home.doctor()
    assert res.code == 1, res
    found = _findings(res, "PROBLEM")
    assert set(found) == expected, res.out
    word = "mode" if case.mode is not None else "group" if case.gid is not None else "owned"
    assert all(p.startswith(word) for p in found.values()), found
    assert res.err.startswith("hostctl: error: ") and res.err.count("\n") == 1, res
    listed = home.doctor("--json")
    assert listed.code == 1
    docs = json.loads(listed.out)
    assert {d["path"] for d in docs} == expected and not any(d["fixed"] for d in docs)
    assert _owners_and_mode(path) == before  # only looking changes nothing

    fixed = home.doctor("--fix")
    assert fixed.code == 0, fixed
    repaired = _findings(fixed, "fixed")  # a hard link's other name may be fine by then
    assert str(path) in repaired and set(repaired) <= expected, fixed.out
    st = os.stat(path)
    if case.want is not None:
        assert stat.S_IMODE(st.st_mode) == case.want
    if case.gid is not None:
        assert st.st_gid == home.users.gid
    if case.owner:
        assert st.st_uid == os.stat(home.path).st_uid
    again = home.doctor("--json")
    assert (again.code, json.loads(again.out)) == (0, []), again


def test_doctor_reports_many_problems_one_line_each(restored: Home) -> None:
    home = restored
    broken = [c for c in MODES if c.label in (
        "home 0755", "context file 0644", "hostctl log 0644", "config.toml 0666",
        "incoming 0777", "outbox 0755", "receipt 0666", "context file owner")]
    paths: set[str] = set()
    for case in broken:
        paths.add(str(_break(home, case)))
    res = home.doctor()
    assert res.code == 1
    lines = res.out.splitlines()
    assert len(lines) == len(broken)  # srv.toml twice: its mode and its owner
    assert {line.split(": ")[1] for line in lines} == paths
    assert f"{len(broken)} problem(s) found" in res.err
    assert _ok(home.doctor("--fix")).count("fixed: ") == len(broken)
    assert json.loads(_ok(home.doctor("--json"))) == []
    assert stat.S_IMODE(os.stat(home.at("spool/incoming")).st_mode) == 0o3730
    assert stat.S_IMODE(os.stat(home.path).st_mode) == 0o710


def test_a_drop_not_yet_admitted_may_belong_to_its_submitter(restored: Home) -> None:
    home = restored
    drop = home.at("spool/incoming/{drop}.task")
    assert os.stat(drop).st_uid == home.users.members[1].uid
    os.chmod(drop, 0o666)
    found = _findings(home.doctor(), "PROBLEM")
    assert list(found) == [str(drop)] and found[str(drop)].startswith("mode 0666")
