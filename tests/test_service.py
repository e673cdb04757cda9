"""``hostctl service supervisor|systemd``: the generated settings, and the Supervisor section
run by a real supervisord that keeps wait-queue alive across its max runtime."""

from __future__ import annotations

import getpass
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from runnerhelpers import (
    Procs,
    add_task,
    daemon_pids,
    hostctl_exe,
    pid_alive,
    save_sites,
    sh_task,
    status_of,
    wait_exit,
    wait_for,
    write_config,
)

LONGEST = 5000  # seconds: the longest task timeout in the test config


def settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and not line.startswith(("#", "[")):
            out[key.strip()] = value.strip()
    return out


@pytest.fixture
def long_tasks(home: Path) -> None:
    write_config(home, {"worker": {"timeout": 100, "kill_grace": 7},
                        "tasks": {"slow": sh_task("sleep 1", timeout=LONGEST)}})


def test_supervisor_section(home, long_tasks, hostctl_process) -> None:
    res = hostctl_process("service", "supervisor")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("[program:")
    s = settings(res.stdout)
    assert s["autorestart"] == "true"
    assert s["autostart"] == "true"
    assert s["stopsignal"] == "TERM"
    assert int(s["stopwaitsecs"]) > LONGEST + 7  # the longest task and the kill grace
    assert s["stopasgroup"] == "true"
    assert s["killasgroup"] == "true"
    assert s["user"] == getpass.getuser()
    argv = shlex.split(s["command"])
    assert argv[0] == hostctl_exe()
    assert argv[1:4] == ["--home", str(home), "wait-queue"]
    assert argv[argv.index("--max-runtime") + 1] == "3600"
    assert str(home) in s["environment"]


def test_systemd_unit(home, long_tasks, hostctl_process) -> None:
    res = hostctl_process("service", "systemd", "--user", "aegir", "--max-runtime", "900")
    assert res.returncode == 0, res.stderr
    assert "[Service]" in res.stdout and "[Install]" in res.stdout
    s = settings(res.stdout)
    assert s["Restart"] == "always"
    assert s["KillMode"] == "mixed"
    assert int(s["TimeoutStopSec"]) > LONGEST + 7
    assert s["User"] == "aegir"
    argv = shlex.split(s["ExecStart"])
    assert argv[0] == hostctl_exe()
    assert argv[1:4] == ["--home", str(home), "wait-queue"]
    assert argv[argv.index("--max-runtime") + 1] == "900"
    assert "HOSTCTL_HOME=" + str(home) in s["Environment"]
    default_user = hostctl_process("service", "systemd")
    assert settings(default_user.stdout)["User"] == getpass.getuser()


SUPERVISORD = shutil.which("supervisord")
SUPERVISORCTL = shutil.which("supervisorctl")


@pytest.mark.skipif(SUPERVISORD is None or SUPERVISORCTL is None,
                    reason="supervisord is not installed (Debian package: supervisor)")
def test_a_real_supervisord_keeps_wait_queue_running(
        run_hostctl, home, hostctl_process, tmp_path) -> None:
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    first = add_task(run_hostctl, "verify", "@a.example")
    res = hostctl_process("service", "supervisor", "--max-runtime", "2")
    assert res.returncode == 0, res.stderr
    section = res.stdout
    assert re.search(r"wait-queue --max-runtime 2\b", section)

    # a short folder: a unix socket path has at most 107 bytes
    run = Path(tempfile.mkdtemp(prefix="hsv", dir="/tmp"))
    sock = run / "s.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"""[unix_http_server]
file={sock}
chmod=0700

[supervisord]
logfile={tmp_path / "supervisord.log"}
pidfile={run / "supervisord.pid"}
childlogdir={tmp_path}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

{section}""")
    assert SUPERVISORD is not None and SUPERVISORCTL is not None
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # a supervisor's environment
    procs = Procs(home)
    supervisord = procs.start("-n", "-c", str(conf), exe=[SUPERVISORD], env=bare,
                              log=tmp_path / "supervisord.out")

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SUPERVISORCTL, "-c", str(conf), *args], capture_output=True,
                              text=True, timeout=30, env=bare)

    try:
        wait_for(lambda: status_of(run_hostctl, first) == "success", 30,
                 "supervisord's wait-queue to run the queued task")
        seen: list[int] = []  # in the order they appeared

        def two_daemons() -> bool:
            assert supervisord.poll() is None, "supervisord exited"
            seen.extend(sorted(daemon_pids(home) - set(seen)))
            return len(seen) >= 2

        wait_for(two_daemons, 30, "wait-queue to be started again after its max runtime",
                 interval=0.02)
        earliest = seen[0]
        wait_for(lambda: not pid_alive(earliest), 10, "the first wait-queue to exit")
        status = ctl("status")
        assert "hostctl-wait-queue" in status.stdout, status
        wait_for(lambda: "RUNNING" in ctl("status").stdout, 20, "a RUNNING wait-queue")

        # a task queued now is run by a later daemon
        later = add_task(run_hostctl, "verify", "@b.example")
        wait_for(lambda: status_of(run_hostctl, later) == "success", 30,
                 "the restarted wait-queue to run a new task")
        log = (home / "logs" / "hostctl.log").read_text()
        assert len(re.findall(r"wait-queue \d+ started", log)) >= 2
        assert len(re.findall(r"wait-queue \d+ exits", log)) >= 1
        print(f"wait-queue pids seen under supervisord: {seen}")
    finally:
        down = ctl("shutdown")
        try:
            wait_exit(supervisord, 30, "supervisord after shutdown")
        except AssertionError:
            supervisord.send_signal(signal.SIGTERM)
        procs.cleanup()
        shutil.rmtree(run, ignore_errors=True)
    assert down.returncode == 0, down
    assert supervisord.returncode == 0
    assert not any(pid_alive(p) for p in seen)
