"""``hostctl service supervisor|systemd``: the generated settings, and the Supervisor section
run by a real supervisord that keeps wait-queue alive across its max runtime."""

from __future__ import annotations

import getpass
import json
import os
import pwd
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

from hostctl.runners.notify import REQUEST_MARGIN
from hostctl.runners.notify import STOP_MARGIN as NOTIFY_STOP_MARGIN

LONGEST = 5000  # seconds: the longest task timeout in the test config
HOOK_TIMEOUT = 300  # seconds: the longest notice's timeout in the test config
#: a stop's budget: the longest task, the kill grace, then the daemon's wait for its
#: sender's request (the hook's timeout and the margins), and the service's own margin
STOP_BUDGET = LONGEST + 7 + HOOK_TIMEOUT + int(REQUEST_MARGIN + NOTIFY_STOP_MARGIN) + 30
ME = pwd.getpwuid(os.geteuid()).pw_name  # named: the generators never take root by default


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
                        "tasks": {"slow": sh_task("sleep 1", timeout=LONGEST)},
                        "notify": {"webhooks": {"panel": {
                            "url": "http://127.0.0.1:9/hook", "timeout": HOOK_TIMEOUT}}}})


def test_supervisor_section(home, long_tasks, hostctl_process) -> None:
    res = hostctl_process("service", "supervisor", "--user", ME)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("[program:")
    s = settings(res.stdout)
    assert s["autorestart"] == "true"
    assert s["autostart"] == "true"
    assert s["stopsignal"] == "TERM"
    # the longest task, the kill grace and the wait for the notices' sender
    assert int(s["stopwaitsecs"]) == STOP_BUDGET
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
    assert int(s["TimeoutStopSec"]) == STOP_BUDGET
    assert s["User"] == "aegir"
    argv = shlex.split(s["ExecStart"])
    assert argv[0] == hostctl_exe()
    assert argv[1:4] == ["--home", str(home), "wait-queue"]
    assert argv[argv.index("--max-runtime") + 1] == "900"
    assert "HOSTCTL_HOME=" + str(home) in s["Environment"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["WatchdogSec"] == "120s"


SUPERVISORD = shutil.which("supervisord")
SUPERVISORCTL = shutil.which("supervisorctl")


@pytest.mark.skipif(SUPERVISORD is None or SUPERVISORCTL is None,
                    reason="supervisord is not installed (Debian package: supervisor)")
def test_a_real_supervisord_keeps_wait_queue_running(
        run_hostctl, home, hostctl_process, tmp_path) -> None:
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    first = add_task(run_hostctl, "verify", "@a.example")
    res = hostctl_process("service", "supervisor", "--user", ME, "--max-runtime", "2")
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
    res = subprocess.run([str(exe), "--home", str(home), "service", "supervisor", "--user", ME],
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
    res = subprocess.run([str(exe), "--home", str(home), "service", "systemd", "--user", ME],
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
    # systemd itself finds the executable through the quoting (and refuses a bad line);
    # a path it splits or trims is said on stderr, so stderr must be empty
    check = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and check.stderr == "", check.stderr


@pytest.mark.parametrize(("kind", "name", "says"), [
    ("supervisor", "new\nline", "control character"),
    ("systemd", "new\nline", "control character"),
    ("supervisor", 'a "quoted" home', "double quote"),
    ("supervisor", "a ;comment", "' ;'"),
    ("supervisor", "a #comment", "' #'"),
    ("supervisor", "trailing ", "white space"),
    ("systemd", "trailing ", "white space"),
    ("systemd", "ends in a backslash\\", "backslash at its end"),
    ("supervisor", "tab\there", "control character"),
])
def test_a_path_a_format_cannot_carry_is_refused(tmp_path, hostctl_process, kind: str,
                                                 name: str, says: str) -> None:
    res = hostctl_process("--home", str(tmp_path / name), "service", kind, "--user", ME)
    assert res.returncode == 2, res
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_systemd_refuses_an_executable_it_would_not_run(tmp_path) -> None:
    exe = odd_hostctl(tmp_path, "it's here")
    res = subprocess.run([str(exe), "--home", str(tmp_path / "h"), "service", "systemd",
                          "--user", ME],
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
    res = run_hostctl("service", "logrotate", "--user", ME)
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


# -- who the service runs as; systemd's hardening; sd_notify --------------------------------

def test_the_default_user_is_the_homes_owner_and_never_silently_root(
        tmp_path: Path, hostctl_process) -> None:
    home = tmp_path / "owned"
    home.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(home, nobody.pw_uid, -1)
    for kind in ("systemd", "supervisor"):
        res = hostctl_process("--home", str(home), "service", kind)
        assert res.returncode == 0, res.stderr
        assert settings(res.stdout).get("User", settings(res.stdout).get("user")) == "nobody"
    os.chown(home, 0, -1)
    for kind in ("systemd", "supervisor", "logrotate"):
        res = hostctl_process("--home", str(home), "service", kind)
        assert res.returncode == 2 and res.stdout == "", res
        assert "would run as root" in res.stderr and res.stderr.count("\n") == 1
    named = hostctl_process("--home", str(home), "service", "systemd", "--user", "root")
    assert named.returncode == 0 and settings(named.stdout)["User"] == "root", named


ANALYZE = shutil.which("systemd-analyze")
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=full", "ProtectHome=read-only",
             "PrivateTmp=yes")


def systemd_reads(unit_text: str, folder: Path) -> dict[str, str]:
    """The unit checked by ``systemd-analyze verify`` (nothing said) and its hardening
    as systemd's own offline security report reads it: option -> description."""
    assert ANALYZE is not None
    folder.mkdir(exist_ok=True)
    unit = folder / "hostctl-wait-queue.service"
    unit.write_text(unit_text)
    check = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    report = subprocess.run([ANALYZE, "security", "--offline=yes", "--json=short",
                             "--no-pager", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert report.returncode == 0, report.stderr
    return {row["name"]: row["description"] for row in json.loads(report.stdout)}


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_hardening_is_what_the_tasks_can_live_with(
        tmp_path: Path, run_hostctl) -> None:
    base = Path(tempfile.mkdtemp(prefix="hostctl-unit-", dir="/var/lib"))
    try:
        # a home outside /tmp, with a space, a '%' and a '$': every option fits plain sites
        home = base / "var lib" / "host%ctl $HOME"
        home.mkdir(parents=True)
        env = {"HOSTCTL_HOME": str(home)}
        os.environ.update(env)
        try:
            save_sites(run_hostctl, home, ["a.example"])
            plain = run_hostctl("--home", str(home), "service", "systemd", "--user", ME)
            assert plain.code == 0, plain
            for option in HARDENING:
                assert option in plain.out.splitlines(), option
            assert "# left out" not in plain.out
            assert systemd_words(settings(plain.out)["ReadWritePaths"], command=False) == [
                str(home)]
            seen = systemd_reads(plain.out, tmp_path / "plain")
            assert seen["NoNewPrivileges="].startswith("Service processes cannot acquire")
            assert seen["PrivateTmp="].startswith("Service has no access to other")
            assert "read-only access to home" in seen["ProtectHome="]
            assert "full access" not in seen["ProtectSystem="]

            # a server that runs PHP sites: the helper goes through sudo and writes /etc
            res = run_hostctl("provision-save", "@srv", "--php_service_type", "php-fpm")
            assert res.code == 0, res
            php = run_hostctl("--home", str(home), "service", "systemd", "--user", ME)
            assert php.code == 0, php
            lines = php.out.splitlines()
            assert "NoNewPrivileges=yes" not in lines and "ProtectSystem=full" not in lines
            assert "PrivateTmp=yes" in lines and "ProtectHome=read-only" in lines
            left = [line for line in lines if line.startswith("# left out: ")]
            assert len(left) == 2 and all("@srv" in line for line in left), left
            assert "sudo" in left[0] and "/etc" in left[1]
            seen = systemd_reads(php.out, tmp_path / "php")
            assert not seen["NoNewPrivileges="].startswith("Service processes cannot")
            assert "full access to the OS" in seen["ProtectSystem="]
            assert seen["PrivateTmp="].startswith("Service has no access to other")

            # an http_restart_cmd through sudo (Aegir's habit): NoNewPrivileges= alone
            res = run_hostctl("provision-save", "@srv", "--php_service_type", "null",
                              "--http_restart_cmd", "sudo /usr/sbin/nginx -s reload")
            assert res.code == 0, res
            sudo = run_hostctl("--home", str(home), "service", "systemd", "--user", ME)
            lines = sudo.out.splitlines()
            assert "NoNewPrivileges=yes" not in lines and "ProtectSystem=full" in lines
            assert any("http_restart_cmd" in line for line in lines if "left out" in line)
            systemd_reads(sudo.out, tmp_path / "sudo")
        finally:
            for key in env:
                os.environ.pop(key, None)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_a_home_under_tmp_keeps_its_tmp(home: Path, run_hostctl, tmp_path: Path) -> None:
    res = run_hostctl("--home", str(tmp_path / "h"), "service", "systemd", "--user", ME)
    assert res.code == 0, res
    assert "PrivateTmp=yes" not in res.out.splitlines()
    assert any(line.startswith("# left out: PrivateTmp=yes: the home ")
               for line in res.out.splitlines()), res.out
    systemd_reads(res.out, tmp_path / "unit")


class NotifySocket:
    """A datagram socket bound as systemd's NOTIFY_SOCKET: a path, or an abstract name."""

    def __init__(self, address: str) -> None:
        import socket

        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def messages(self, seconds: float) -> list[str]:
        """Every message that arrives within ``seconds``, in order."""
        import time

        got: list[str] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def until(self, line: str, seconds: float) -> list[str]:
        import time

        got: list[str] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
            if line in got[-1].splitlines():
                return got
        raise AssertionError(f"no {line} within {seconds} s; got {got}")


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_wait_queue_speaks_sd_notify(home: Path, run_hostctl, procs: Procs, tmp_path: Path,
                                     kind: str) -> None:
    """READY=1 once it listens, WATCHDOG=1 every half WATCHDOG_USEC from its loop, none
    while the process is stopped (SIGSTOP), STOPPING=1 at SIGTERM; tasks do not inherit
    the socket."""
    import secrets

    save_sites(run_hostctl, home, ["a.example"])
    seen = tmp_path / "env"
    write_config(home, {"tasks": {"env": sh_task(f"env > {shlex.quote(str(seen))}")}})
    address = (str(tmp_path / "notify.sock") if kind == "path"
               else f"@hostctl-test-{secrets.token_hex(6)}")
    listener = NotifySocket(address)
    env = {**os.environ, "HOSTCTL_HOME": str(home), "NOTIFY_SOCKET": address,
           "WATCHDOG_USEC": "200000"}
    daemon = procs.start("wait-queue", "--max-runtime", "120", env=env,
                         log=tmp_path / "daemon.log")
    try:
        first = listener.until("READY=1", 30)
        assert any(line.startswith("STATUS=") for m in first for line in m.splitlines())
        pings = [m for m in listener.messages(1.0) if "WATCHDOG=1" in m.splitlines()]
        assert 5 <= len(pings) <= 15, pings  # every 0.1 s

        task = add_task(run_hostctl, "env", "@a.example")
        wait_for(lambda: status_of(run_hostctl, task) == "success", 30, "the task")
        env_seen = seen.read_text()
        assert "NOTIFY_SOCKET" not in env_seen and "WATCHDOG_USEC" not in env_seen
        assert any("1 started" in m for m in listener.messages(0.5)), "a STATUS= line"

        daemon.send_signal(signal.SIGSTOP)  # a hung loop: no ping at all
        listener.messages(0.2)  # what was already on its way
        assert listener.messages(1.0) == []
        daemon.send_signal(signal.SIGCONT)
        assert any("WATCHDOG=1" in m for m in listener.messages(1.0))

        daemon.send_signal(signal.SIGTERM)
        listener.until("STOPPING=1", 30)
        assert wait_exit(daemon, 30, "wait-queue") == 0
    finally:
        listener.sock.close()


def test_no_notify_socket_no_notifications() -> None:
    from hostctl.sdnotify import Notifier

    env = {"WATCHDOG_USEC": "1000000"}
    quiet = Notifier.from_environment(env)
    assert not quiet.enabled and quiet.watchdog_every is None and env == {}
    assert quiet.send("READY=1") is False
    other = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environment(other).watchdog_every is None  # not this process's
    mine = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environment(mine).watchdog_every == 0.5
