"""What hostctl generates to run itself leaves a home that ``hostctl doctor`` passes.

A real supervisord, running as root as it does on a server, runs the section ``hostctl
service supervisor`` printed for an unprivileged back-end user whose home has a space and
a ``%`` in its path; a task records the environment it got. ``doctor --fix`` fixes only
what a fresh look shows fixed, and says why not otherwise; a front end shut out by a
folder above the home is told so.

The back-end user cannot run this interpreter (it may live under a folder only root can
enter), so :func:`runtime` makes a hostctl it can: the system's Python of the same
version, with copies of hostctl's dependencies and its editable-install hook.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from asuser import Outcome, User, Users, can_make_users, frontend_users, hostctl_as
from runnerhelpers import Procs, daemon_pids, wait_exit, wait_for, write_config

SUPERVISORD = shutil.which("supervisord")
SUPERVISORCTL = shutil.which("supervisorctl")
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _system_python_fits() -> str:
    """Why the system's Python cannot run hostctl's copied dependencies ('' if it can)."""
    if not SYSTEM_PYTHON.exists():
        return "no /usr/bin/python3"
    got = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    if got != str(tuple(sys.version_info[:2])):
        return f"/usr/bin/python3 is {got}, not this interpreter's version"
    return ""


needs_users = pytest.mark.skipif(bool(can_make_users()), reason=can_make_users() or "ok")


def _closure(name: str, seen: dict[str, metadata.Distribution]) -> None:
    from packaging.requirements import Requirement

    dist = metadata.distribution(name)
    key = dist.metadata["Name"].lower().replace("_", "-")
    if key in seen:
        return
    seen[key] = dist
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _closure(req.name, seen)


def runtime(base: Path) -> Path:
    """A ``hostctl`` under ``base`` that any user can run; returns its path (in a folder
    whose name has a space, so that PATH and the command are quoted for real)."""
    site = base / "site"
    site.mkdir(parents=True)
    dists: dict[str, metadata.Distribution] = {}
    _closure("hostctl", dists)
    for key, dist in dists.items():
        if key == "hostctl":  # editable: its hook and metadata (below) name the sources
            continue
        for f in dist.files or []:
            if ".." in f.parts or f.suffix == ".pyc":
                continue
            src = Path(str(dist.locate_file(f)))
            dst = site / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    import hostctl

    package = Path(hostctl.__file__).parent
    if (package / "cli").is_dir():  # an installed package, not the editable layout: use it
        (site / "hostctl-here.pth").write_text(f"{package.parent}\n")
    packages = Path(sysconfig.get_paths()["purelib"])  # where pip put the install hook
    for hook in [*packages.glob("__editable__*hostctl*"), *packages.glob("hostctl-*.dist-info")]:
        if hook.is_dir():
            shutil.copytree(hook, site / hook.name)
        elif not (site / "hostctl-here.pth").exists():
            shutil.copyfile(hook, site / hook.name)
    folder = base / "bin dir"
    folder.mkdir()
    exe = folder / "hostctl"
    exe.write_text(f"#!{SYSTEM_PYTHON} -s\nimport site, sys\nsite.addsitedir({str(site)!r})\n"
                   "from hostctl.cli.entry import run\nsys.exit(run())\n")
    for top, dirs, files in os.walk(base):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o755)
        for name in files:
            os.chmod(os.path.join(top, name), 0o644)
    os.chmod(base, 0o755)
    os.chmod(exe, 0o755)
    return exe


@pytest.fixture(scope="module")
def exe() -> Iterator[Path]:
    """The hostctl every user can run (see :func:`runtime`)."""
    why = _system_python_fits()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="hostctl-rt-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)
        yield runtime(base / "run time")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_user(exe: Path, user: User | None, *argv: str) -> Outcome:
    """``hostctl argv`` as a new process of ``user`` (None: root), in a bare environment."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8",
           "HOME": str(user.home) if user else "/root"}
    who = {} if user is None else {"user": user.uid, "group": user.gid,
                                   "extra_groups": list(user.groups)}
    res = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120,
                         env=env, cwd="/", **who)  # type: ignore[call-overload]
    return Outcome(res.returncode, res.stdout, res.stderr)


def _ok(res: Outcome) -> str:
    assert res.code == 0, res
    return res.out


RECORD = 'printf "%s\\n%s\\n%s\\n" "$HOME" "$PATH" "$(id -u)" > "$0"'


@needs_users
@pytest.mark.skipif(SUPERVISORD is None or SUPERVISORCTL is None,
                    reason="supervisord is not installed (Debian package: supervisor)")
@pytest.mark.skipif(bool(_system_python_fits()), reason=_system_python_fits() or "ok")
def test_a_root_supervisord_runs_the_generated_section_and_doctor_passes(
        tmp_path: Path, exe: Path) -> None:
    assert SUPERVISORD is not None and SUPERVISORCTL is not None
    with frontend_users(1) as users:
        backend = users.backend
        home = backend.home / "hostctl home%1"  # a space and a '%' (Supervisor expands %)
        seen = backend.home / "seen"
        be = lambda *argv: _ok(as_user(exe, backend, "--home", str(home), *argv))  # noqa: E731
        be("provision-save", "@srv", "--context_type", "server")
        write_config(home, {"tasks": {"record": {
            "command": ["/bin/sh", "-c", RECORD, str(seen)], "context_types": ["server"]}}})
        os.chown(home / "config.toml", backend.uid, backend.gid)
        os.chmod(home / "config.toml", 0o600)
        task = be("task", "add", "record", "@srv").strip()

        made = subprocess.run([str(exe), "--home", str(home), "service", "supervisor",
                               "--user", backend.name, "--max-runtime", "600"],
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": "/root"})
        assert made.returncode == 0, made
        section = made.stdout
        assert str(home) not in section.split("stdout_logfile")[-1]  # no log in the home

        run = Path(tempfile.mkdtemp(prefix="hdp", dir="/tmp"))  # a socket path is short
        conf = tmp_path / "supervisord.conf"
        conf.write_text(f"""[unix_http_server]
file={run / "s.sock"}
chmod=0700

[supervisord]
logfile={tmp_path / "supervisord.log"}
pidfile={run / "supervisord.pid"}
childlogdir={tmp_path}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run / "s.sock"}

{section}""")
        bare = {"PATH": "/usr/bin:/bin", "HOME": "/root"}  # what an init system gives
        procs = Procs(home)
        supervisord = procs.start("-n", "-c", str(conf), exe=[SUPERVISORD], env=bare,
                                  log=tmp_path / "supervisord.out")

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([SUPERVISORCTL, "-c", str(conf), *args],
                                  capture_output=True, text=True, timeout=30, env=bare)

        def done() -> bool:
            assert supervisord.poll() is None, "supervisord exited"
            doc = json.loads(be("task", "show", task, "--json"))
            return bool(doc["status"] in ("success", "error"))

        try:
            wait_for(done, 60, "the supervised wait-queue to run the task")
            doc = json.loads(be("task", "show", task, "--json"))
            assert doc["status"] == "success", doc
            got_home, got_path, got_uid = seen.read_text().splitlines()
            assert got_home == pwd.getpwnam(backend.name).pw_dir
            assert got_path.split(":")[0] == str(exe.parent)
            assert "/usr/local/bin" in got_path.split(":")
            assert int(got_uid) == backend.uid
            running = as_user(exe, backend, "--home", str(home), "doctor")
            assert running.code == 0 and "as they should be" in running.out, running
            wait_for(lambda: "RUNNING" in ctl("status").stdout, 30, "a RUNNING wait-queue")
        finally:
            down = ctl("shutdown")
            try:
                wait_exit(supervisord, 60, "supervisord after shutdown")
            except AssertionError:
                supervisord.send_signal(signal.SIGTERM)
            procs.cleanup()
            for pid in daemon_pids(home):  # if supervisord could not stop them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(run, ignore_errors=True)
        assert down.returncode == 0, down
        after = as_user(exe, backend, "--home", str(home), "doctor")
        assert after.code == 0 and "as they should be" in after.out, after
        assert not [p for p in home.rglob("*") if p.lstat().st_uid != backend.uid]


# -- doctor --fix says fixed only when it is --------------------------------------------


@pytest.fixture
def users() -> Iterator[Users]:
    if can_make_users():
        pytest.skip(can_make_users())
    with frontend_users(1) as made:
        yield made


def _lines(res: Outcome, path: Path) -> list[str]:
    return [line for line in res.out.splitlines() if f": {path}: " in line]


def _backend_home(exe: Path, backend: User) -> Path:
    home = backend.home / "h"
    _ok(as_user(exe, backend, "--home", str(home), "provision-save", "@srv",
                   "--context_type", "server"))
    _ok(as_user(exe, backend, "--home", str(home), "dispatch"))
    return home


@needs_users
def test_fix_as_the_owner_says_why_a_root_file_is_left_and_root_fixes_it(
        users: Users, exe: Path) -> None:
    backend = users.backend
    home = _backend_home(exe, backend)
    root_log = home / "logs" / "wait-queue.log"  # as supervisord makes a stdout_logfile
    root_log.write_text("started\n")
    os.chmod(root_log, 0o644)
    assert root_log.stat().st_uid == 0

    res = as_user(exe, backend, "--home", str(home), "doctor", "--fix")
    assert res.code == 1, res
    lines = _lines(res, root_log)
    assert len(lines) == 2 and all(line.startswith("PROBLEM: ") for line in lines), res.out
    owner, mode = lines
    assert "owned by uid 0" in owner and "run `hostctl doctor --fix` as root" in owner
    assert "mode 0644" in mode and "(not fixed, owned by root;" in mode
    assert "as root)" in mode
    assert "fixed: " not in res.out
    assert res.err.count("\n") == 1 and "Traceback" not in res.err, res
    st = root_log.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)  # untouched
    docs = json.loads(as_user(exe, backend, "--home", str(home), "doctor", "--fix",
                                 "--json").out)
    assert all(not d["fixed"] and "root" in d["cannot_fix"] for d in docs), docs

    fixed = as_user(exe, None, "--home", str(home), "doctor", "--fix")
    assert fixed.code == 0, fixed
    assert [line.split(": ")[0] for line in _lines(fixed, root_log)] == ["fixed", "fixed"]
    st = root_log.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (backend.uid, 0o600)
    again = as_user(exe, backend, "--home", str(home), "doctor")
    assert again.code == 0 and "as they should be" in again.out, again


@pytest.mark.parametrize("rel", ["logs", "contexts", "config.toml"])
def test_fix_never_follows_a_link_nor_calls_it_fixed(run_hostctl, home: Path,
                                                     tmp_path: Path, rel: str) -> None:
    assert run_hostctl("provision-save", "@srv", "--context_type", "server").code == 0
    assert run_hostctl("dispatch").code == 0
    outside = tmp_path / "outside"
    if rel != "config.toml":
        shutil.rmtree(home / rel)
        outside.mkdir(mode=0o755)
    else:
        (home / rel).unlink(missing_ok=True)
        outside.write_text("x = 1\n")
    os.chmod(outside, 0o755)
    os.symlink(outside, home / rel)
    before = outside.stat()
    res = run_hostctl("doctor", "--fix")
    assert res.code == 1, res
    lines = [line for line in res.out.splitlines() if f": {home / rel}: " in line]
    assert lines and all(line.startswith("PROBLEM: ") for line in lines), res.out
    assert all("(not fixed, a symbolic link, which doctor does not follow;" in line
               for line in lines), lines
    after = outside.stat()
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid,
                                                           before.st_gid)


# -- a front end shut out above the home ------------------------------------------------


@needs_users
@pytest.mark.parametrize("depth", [1, 2])
def test_a_front_end_blocked_above_the_home_is_told_where(users: Users, exe: Path,
                                                         depth: int) -> None:
    backend, fe = users.backend, users.members[0]
    above = backend.home / "srv"
    parent = above / "mid" if depth == 2 else above
    home = parent / "home"
    for folder in (above, parent):
        folder.mkdir(mode=0o755, exist_ok=True)
        os.chown(folder, backend.uid, backend.gid)
    os.chmod(backend.home, 0o711)  # the back end's own folder lets others pass
    _ok(as_user(exe, backend, "--home", str(home), "frontend", "setup", "--group", users.group))
    write_config(home, {"tasks": {"hello": {"command": ["/bin/true"],
                                            "context_types": ["server"]}}})
    os.chown(home / "config.toml", backend.uid, backend.gid)
    os.chmod(home / "config.toml", 0o600)
    _ok(as_user(exe, backend, "--home", str(home), "provision-save", "@srv",
                   "--context_type", "server"))
    env: dict[str, str | None] = {"HOSTCTL_HOME": str(home)}
    assert hostctl_as(fe, "task", "add", "hello", "@srv", env=env).code == 0  # it can
    dropped = os.listdir(home / "spool" / "incoming")

    os.chmod(above, 0o700)
    want = f"cannot reach {home}: permission denied on {above} "
    for argv in (["task", "add", "hello", "@srv"], ["task", "list"],
                 ["task", "show", "0" * 20], ["task", "log", "0" * 20], ["doctor"],
                 ["queue", "status"]):
        res = hostctl_as(fe, *argv, env=env)
        assert res.code == 1, (argv, res)
        assert res.err.count("\n") == 1 and want in res.err, (argv, res.err)
        assert "drop box" not in res.err and "another user" not in res.err
    assert os.listdir(home / "spool" / "incoming") == dropped  # nothing more dropped
