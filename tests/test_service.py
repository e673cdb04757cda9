"""``hostctl service supervisor|systemd``: the generated settings, and the Supervisor section
run by a real supervisord that keeps wait-queue alive across its max runtime."""

from __future__ import annotations

import getpass
import json
import os
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


# -- paths as each format reads them back --------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"
# the section read by Supervisor's own parser, as supervisord reads it (it is the system
# Python's package, not this interpreter's)
PARSE_SECTION = """
import json, shlex, sys
from supervisor.options import ServerOptions, UnhosedConfigParser
parser = UnhosedConfigParser()
parser.read_string(sys.stdin.read())
config = ServerOptions().processes_from_section(parser, "program:hostctl-wait-queue", "g")[0]
print(json.dumps({"argv": shlex.split(config.command), "env": config.environment,
                  "directory": config.directory, "log": str(config.stdout_logfile)}))
"""


def supervisor_reads(section: str) -> dict[str, object]:
    res = subprocess.run([SYSTEM_PYTHON, "-c", PARSE_SECTION], input=section,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict)
    return doc


def bare_env() -> dict[str, str]:
    """A supervisor's bare environment (PYTHONPATH kept: the hostctl this process runs)."""
    keep = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
    return {"PATH": "/usr/bin:/bin", "HOME": "/nowhere", **keep}


def odd_hostctl(tmp_path: Path, folder: str) -> Path:
    """hostctl's console script, reached through a folder named ``folder``."""
    place = tmp_path / folder
    place.mkdir(parents=True)
    (place / "hostctl").symlink_to(hostctl_exe())
    return place / "hostctl"


ODD_HOMES = ["home with space", "100%", "a,b'c$d;e#f", "ünï cødé", "%(ENV_HOME)s", "x=y z"]


def supervisor_parser() -> str:
    res = subprocess.run([SYSTEM_PYTHON, "-c", "import supervisor.options"],
                         capture_output=True, timeout=60) if Path(SYSTEM_PYTHON).exists() else None
    return "" if res is not None and res.returncode == 0 else "Supervisor's parser is missing"


@pytest.mark.skipif(bool(supervisor_parser()), reason=supervisor_parser() or "ok")
@pytest.mark.parametrize("name", ODD_HOMES)
def test_supervisor_reads_back_every_path_and_the_environment(tmp_path, name: str) -> None:
    import pwd

    exe = odd_hostctl(tmp_path, "bin dir%1,x'y")
    home = tmp_path / name
    res = subprocess.run([str(exe), "--home", str(home), "service", "supervisor"],
                         capture_output=True, text=True, timeout=60,
                         env=bare_env())
    assert res.returncode == 0, res.stderr
    got = supervisor_reads(res.stdout)
    assert got["argv"] == [str(exe), "--home", str(home), "wait-queue", "--max-runtime", "3600"]
    assert got["directory"] == str(home)
    env = got["env"]
    assert isinstance(env, dict)
    me = pwd.getpwuid(os.geteuid())
    assert env["HOME"] == me.pw_dir and env["USER"] == env["LOGNAME"] == me.pw_name
    assert env["HOSTCTL_HOME"] == str(home)
    assert env["PATH"].split(":")[0] == str(exe.parent)
    assert {"/usr/local/bin", "/usr/bin", "/bin"} <= set(env["PATH"].split(":"))
    assert got["log"] == "<class 'supervisor.datatypes.Automatic'>"  # not in the home


def systemd_words(value: str, command: bool = True) -> list[str]:
    """A systemd setting split as systemd.syntax(7) says: quotes, C escapes, %%, and for a
    ``command`` $$ in its arguments (the executable's path has no $ expansion)."""
    words, word, quote, i, started = [], "", "", 0, False
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            word += {"n": "\n", "t": "\t"}.get(value[i + 1], value[i + 1])
            i += 2
            started = True
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                word += c
        elif c in "\"'":
            quote, started = c, True
        elif c == " ":
            if started:
                words.append(word)
            word, started = "", False
        else:
            word += c
            started = True
        i += 1
    if started:
        words.append(word)
    out = [w.replace("%%", "%") for w in words]
    return out[:1] + [w.replace("$$", "$") if command else w for w in out[1:]]


@pytest.mark.parametrize("name", ODD_HOMES + ['a "quoted" \\ home'])
def test_systemd_reads_back_every_path(tmp_path, name: str) -> None:
    exe = odd_hostctl(tmp_path, "bin dir%1$x")
    home = tmp_path / name
    home.mkdir()
    res = subprocess.run([str(exe), "--home", str(home), "service", "systemd"],
                         capture_output=True, text=True, timeout=60,
                         env=bare_env())
    assert res.returncode == 0, res.stderr
    s = settings(res.stdout)
    assert systemd_words(s["ExecStart"]) == [str(exe), "--home", str(home), "wait-queue",
                                             "--max-runtime", "3600"]
    env = dict(w.split("=", 1) for w in systemd_words(s["Environment"], command=False))
    assert env["HOSTCTL_HOME"] == str(home)
    assert env["PATH"].split(":")[0] == str(exe.parent)
    assert s["WorkingDirectory"].replace("%%", "%") == str(home)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    unit = tmp_path / "hostctl-wait-queue.service"
    unit.write_text(res.stdout)
    # systemd itself finds the executable through the quoting (and refuses a bad line)
    check = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(("kind", "name", "says"), [
    ("supervisor", "new\nline", "control character"),
    ("systemd", "new\nline", "control character"),
    ("supervisor", 'a "quoted" home', "double quote"),
    ("supervisor", "a ;comment", "' ;'"),
    ("supervisor", "a #comment", "' #'"),
    ("supervisor", "trailing ", "white space"),
    ("systemd", "trailing ", "white space"),
    ("supervisor", "tab\there", "control character"),
])
def test_a_path_a_format_cannot_carry_is_refused(tmp_path, hostctl_process, kind: str,
                                                 name: str, says: str) -> None:
    res = hostctl_process("--home", str(tmp_path / name), "service", kind)
    assert res.returncode == 2, res
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_systemd_refuses_an_executable_it_would_not_run(tmp_path) -> None:
    exe = odd_hostctl(tmp_path, "it's here")
    res = subprocess.run([str(exe), "--home", str(tmp_path / "h"), "service", "systemd"],
                         capture_output=True, text=True, timeout=60, env=bare_env())
    assert res.returncode == 2 and res.stdout == "", res
    assert "executable's path" in res.stderr and res.stderr.count("\n") == 1


def test_supervisor_needs_a_real_user(hostctl_process) -> None:
    res = hostctl_process("service", "supervisor", "--user", "no-such-user-hostctl")
    assert res.returncode == 2 and res.stdout == "", res
    assert "no user 'no-such-user-hostctl'" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("logrotate") is None,
                    reason="logrotate's su and create need root (CI runs as root)")
def test_a_real_logrotate_rotates_the_log_and_wait_queue_follows(
        run_hostctl, home: Path, procs: Procs, tmp_path: Path) -> None:
    """logrotate with the generated stanza moves hostctl.log away and makes a new one
    (0600); a running wait-queue writes its next lines there, with no signal; a log
    removed by hand comes back 0600."""
    save_sites(run_hostctl, home, ["a.example"])
    write_config(home, {"tasks": {"quick": sh_task("true")}})
    log = home / "logs" / "hostctl.log"
    daemon = procs.start("wait-queue", "--max-runtime", "120")
    first = add_task(run_hostctl, "quick", "@a.example")
    wait_for(lambda: log.exists() and f"task {first} " in log.read_text(), 30, "a first line")
    res = run_hostctl("service", "logrotate")
    assert res.code == 0, res
    conf = tmp_path / "hostctl.logrotate"
    conf.write_text(res.out)
    os.chmod(conf, 0o644)
    rotated = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                             capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    old = home / "logs" / "hostctl.log.1"
    assert f"task {first} " in old.read_text()
    assert (os.stat(log).st_mode & 0o777) == 0o600 and log.read_text() == ""
    second = add_task(run_hostctl, "quick", "@a.example")
    wait_for(lambda: f"task {second} " in log.read_text(), 30, "a line in the new log")
    assert f"task {second} " not in old.read_text()
    log.unlink()  # removed by hand: made again, private
    third = add_task(run_hostctl, "quick", "@a.example")
    wait_for(lambda: log.exists() and f"task {third} " in log.read_text(), 30,
             "the log made again")
    assert (os.stat(log).st_mode & 0o777) == 0o600
    assert daemon.poll() is None
    daemon.send_signal(signal.SIGTERM)
    assert wait_exit(daemon, 30, "wait-queue") == 0


def test_logrotate_needs_a_real_user(hostctl_process) -> None:
    res = hostctl_process("service", "logrotate", "--user", "no-such-user-here")
    assert res.returncode == 2 and "no user 'no-such-user-here'" in res.stderr, res
