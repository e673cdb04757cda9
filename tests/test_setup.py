"""``hostctl setup``, as root, for real: a throw-away system user, its home, the front
end's drop box, each runner (cron: the user's real crontab; systemd: the unit, checked
with systemd-analyze; supervisor: a real supervisord), doctor run as that user. A second
run changes nothing; a dry run changes nothing; who may not run it is refused.

Every user, group, crontab and file a test makes is removed, whatever happens. hostctl is
run from a copy every user can read (test_deploy.runtime): the back-end user runs it too.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asuser import can_make_users
from runnerhelpers import Procs, daemon_pids, wait_exit, wait_for
from test_deploy import _system_python_fits, runtime

pytestmark = [
    pytest.mark.skipif(bool(can_make_users()), reason=can_make_users() or "ok"),
    pytest.mark.skipif(bool(_system_python_fits()), reason=_system_python_fits() or "ok"),
]
BARE = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root", "LC_ALL": "C.UTF-8"}


@pytest.fixture(scope="module")
def exe() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="hostctl-rt-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)
        yield runtime(base / "run time")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Box:
    """One test's names and folders."""

    user: str
    group: str  # the front end's
    base: Path  # 0755, holds the home and the config folder
    home: Path
    config_dir: Path


def _quiet(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, timeout=60)


@pytest.fixture
def box() -> Iterator[Box]:
    tag = "".join(secrets.choice("0123456789") for _ in range(6))
    user, group = f"hostctl-t{tag}", f"hostfe-t{tag}"
    base = Path(tempfile.mkdtemp(prefix="hostctl-setup-", dir="/tmp"))
    os.chmod(base, 0o755)
    subprocess.run(["groupadd", group], check=True, capture_output=True, timeout=60)
    try:
        yield Box(user, group, base, base / "back end home", base / "conf.d")
    finally:
        _quiet("crontab", "-u", user, "-r")
        _quiet("userdel", user)
        _quiet("groupdel", user)  # its own group, if userdel left it
        _quiet("groupdel", group)
        shutil.rmtree(base, ignore_errors=True)


def setup(exe: Path, box: Box, *extra: str, cwd: Path | None = None,
          json_out: bool = True) -> tuple[int, dict[str, object], str]:
    argv = [str(exe), "setup", "--user", box.user, "--home", str(box.home),
            "--front-end-group", box.group, "--config-dir", str(box.config_dir), *extra]
    res = subprocess.run([*argv, "--json"] if json_out else argv, capture_output=True,
                         text=True, timeout=300, env=BARE, cwd=str(cwd or box.base))
    doc = json.loads(res.stdout) if json_out and res.stdout.strip() else {}
    return res.returncode, doc, res.stderr


def outcomes(doc: dict[str, object]) -> dict[str, str]:
    steps = doc["steps"]
    assert isinstance(steps, list)
    return {s["step"]: s["outcome"] for s in steps}


def tree(top: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``top``: mode, owner, group (what a second run must not change)."""
    out = {}
    for folder, dirs, files in os.walk(top):
        for name in [".", *dirs, *files]:
            path = Path(folder) / name
            st = os.lstat(path)
            out[str(path.relative_to(top))] = (st.st_mode, st.st_uid, st.st_gid)
    return out


def crontab_of(user: str) -> str:
    return subprocess.run(["crontab", "-u", user, "-l"], capture_output=True, text=True,
                          timeout=60).stdout


def test_cron_setup_makes_everything_and_a_second_run_changes_nothing(
        exe: Path, box: Box) -> None:
    code, doc, err = setup(exe, box, "--runner", "cron")
    assert code == 0, (doc, err)
    assert outcomes(doc) == {"user": "done", "home": "done", "group": "done",
                             "drop box": "done", "runner": "done", "doctor": "done"}
    account = pwd.getpwnam(box.user)
    assert account.pw_dir == str(box.home) and account.pw_shell.endswith(("nologin", "false"))
    assert account.pw_uid < 1000  # a system user
    st = os.stat(box.home)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o710)
    incoming = os.stat(box.home / "spool" / "incoming")
    assert stat.S_IMODE(incoming.st_mode) == 0o3730
    assert incoming.st_uid == account.pw_uid
    entry = crontab_of(box.user)
    assert "# BEGIN hostctl" in entry and f"'{box.home}' dispatch" in entry, entry
    assert str(exe) in entry

    before, cron_before = tree(box.base), crontab_of(box.user)
    code, again, err = setup(exe, box, "--runner", "cron")
    assert code == 0, (again, err)
    assert outcomes(again) == {"user": "already so", "home": "already so",
                               "group": "already so", "drop box": "already so",
                               "runner": "already so", "doctor": "done"}
    assert crontab_of(box.user) == cron_before
    after = tree(box.base)
    after.pop("back end home/logs/hostctl.log", None)  # doctor may say what it did
    before.pop("back end home/logs/hostctl.log", None)
    assert after == before

    # doctor's findings fail the setup, shown under its step
    os.chmod(box.home / "logs", 0o755)
    code, doc, err = setup(exe, box, "--runner", "cron")
    assert code == 1 and outcomes(doc)["doctor"] == "failed", (doc, err)
    assert any("logs" in line for line in doc["doctor"]), doc  # type: ignore[attr-defined]
    assert "stopped at the doctor step" in err and err.count("\n") == 1, err


def test_a_dry_run_changes_nothing(exe: Path, box: Box) -> None:
    code, doc, err = setup(exe, box, "--runner", "cron", "--dry-run")
    assert code == 0, err
    assert set(outcomes(doc).values()) == {"would do"}, doc
    with pytest.raises(KeyError):
        pwd.getpwnam(box.user)
    assert not box.home.exists() and not box.config_dir.exists()
    assert crontab_of(box.user) == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_setup_writes_a_unit_systemd_accepts(exe: Path, box: Box) -> None:
    code, doc, err = setup(exe, box, "--runner", "systemd")
    assert code == 0, (doc, err)
    got = outcomes(doc)
    unit = box.config_dir / "hostctl-wait-queue.service"
    assert got["doctor"] == "done" and unit.exists()
    # systemd does not run this test's machine, or the folder is not systemd's: said
    assert got["runner"] == "to do by hand", doc
    text = unit.read_text()
    assert f"User={box.user}" in text.splitlines() and "Type=notify" in text
    assert (os.stat(unit).st_mode & 0o777) == 0o644
    check = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    stamp = os.stat(unit).st_mtime_ns
    code, again, err = setup(exe, box, "--runner", "systemd")
    assert code == 0, err
    assert outcomes(again)["user"] == "already so"
    assert "is as it should be" in str(again["steps"]) and os.stat(unit).st_mtime_ns == stamp


SUPERVISORD = shutil.which("supervisord")
SUPERVISORCTL = shutil.which("supervisorctl")


@pytest.mark.skipif(SUPERVISORD is None or SUPERVISORCTL is None,
                    reason="supervisord is not installed (Debian package: supervisor)")
def test_supervisor_setup_starts_wait_queue_under_a_real_supervisord(
        exe: Path, box: Box) -> None:
    assert SUPERVISORD is not None and SUPERVISORCTL is not None
    box.config_dir.mkdir()
    run = Path(tempfile.mkdtemp(prefix="hsu", dir="/tmp"))  # a socket path is short
    conf_dir = box.base / "supervisor"
    conf_dir.mkdir()
    conf = conf_dir / "supervisord.conf"  # supervisorctl finds it in its working folder
    conf.write_text(f"""[unix_http_server]
file={run / "s.sock"}
chmod=0700

[supervisord]
logfile={conf_dir / "supervisord.log"}
pidfile={run / "supervisord.pid"}
childlogdir={conf_dir}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run / "s.sock"}

[include]
files = {box.config_dir}/*.conf
""")
    procs = Procs(box.home)
    supervisord = procs.start("-n", "-c", str(conf), exe=[SUPERVISORD], env=BARE,
                              log=conf_dir / "supervisord.out")

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SUPERVISORCTL, "-c", str(conf), *args], capture_output=True,
                              text=True, timeout=30, env=BARE)

    try:
        wait_for(lambda: ctl("status").returncode in (0, 3), 30, "supervisord to answer")
        code, doc, err = setup(exe, box, "--runner", "supervisor", cwd=conf_dir)
        assert code == 0, (doc, err)
        assert outcomes(doc)["runner"] == "done", doc
        assert "supervisorctl update" in str(doc["steps"])
        section = (box.config_dir / "hostctl.conf").read_text()
        assert f"user={box.user}" in section and f'HOME="{box.home}"' in section
        wait_for(lambda: "RUNNING" in ctl("status").stdout, 30, "a RUNNING wait-queue")
        wait_for(lambda: bool(daemon_pids(box.home)), 30, "wait-queue to register")
        uid = pwd.getpwnam(box.user).pw_uid
        assert all(os.stat(f"/proc/{pid}").st_uid == uid for pid in daemon_pids(box.home))
        code, again, err = setup(exe, box, "--runner", "supervisor", cwd=conf_dir)
        assert code == 0 and outcomes(again)["runner"] == "already so", (again, err)
    finally:
        ctl("shutdown")
        try:
            wait_exit(supervisord, 30, "supervisord after shutdown")
        except AssertionError:
            supervisord.send_signal(signal.SIGTERM)
        procs.cleanup()
        shutil.rmtree(run, ignore_errors=True)


def test_who_and_what_setup_refuses(exe: Path, box: Box) -> None:
    nobody = pwd.getpwnam("nobody")
    res = subprocess.run([str(exe), "setup", "--user", box.user, "--home", str(box.home)],
                         capture_output=True, text=True, timeout=60, cwd="/",
                         env={**BARE, "HOME": str(box.base)},  # no hostctl home in there
                         user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr.count("\n") == 1 and "run it as root" in res.stderr, res.stderr

    for argv, says in [
        (["--user", "root"], "must not be root"),
        (["--user", "-rf"], "a user name is"),
        (["--user", box.user, "--home", "relative/home"], "an absolute path"),
        (["--user", box.user, "--runner", "cron", "--front-end-group",
          "no-such-group-here"], "no group"),
        (["--user", box.user, "--runner", "launchd"], "one of cron"),
    ]:
        res = subprocess.run([str(exe), "setup", *argv], capture_output=True, text=True,
                             timeout=60, env=BARE, cwd="/")
        assert res.returncode == 2 and says in res.stderr, (argv, res)
        assert res.stderr.count("\n") == 1, res.stderr

    # a user that exists with another home is not taken over
    other = box.base / "elsewhere"
    subprocess.run(["useradd", "--system", "-M", "-d", str(other), box.user], check=True,
                   capture_output=True, timeout=60)
    code, _, err = setup(exe, box, "--runner", "cron", json_out=False)
    assert code == 2 and f"exists with the home directory {other}" in err, err
    assert not box.home.exists()
