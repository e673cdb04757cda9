"""The root command: --version, -v, -q, --traceback, unknown commands, and every user error
as one line on stderr with exit 2 (in-process, and through the installed console script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hostctl_exe

from hostctl import __version__
from hostctl.errors import ExitStatus

USER_ERRORS = {
    "unknown-command": ("nope",),
    "unknown-root-option": ("--bogus", "context", "list"),
    "unknown-sub-option": ("context", "list", "--bogus"),
    "missing-argument": ("context", "show"),
    "missing-context": ("context", "show", "@missing"),
    "bad-name": ("context", "show", "../etc"),
    "unknown-type-filter": ("context", "list", "--type", "router"),
    "unknown-context-type": ("provision-save", "@x", "--context_type", "router"),
    "save-without-name": ("provision-save", "--context_type", "server"),
    "save-missing-value": ("provision-save", "@x", "--context_type", "server", "--http_port"),
    "save-two-names": ("provision-save", "@x", "@y", "--context_type", "server"),
    "save-field-twice": ("provision-save", "@x", "--context_type", "server",
                         "--http_port", "81", "--http_port", "82"),
    "save-unknown-field": ("provision-save", "@x", "--context_type", "server", "--nope", "1"),
    "delete-missing": ("provision-save", "@x", "--delete"),
    "nul-in-home": ("--home", "bad\x00home", "context", "list"),
    "unknown-status": ("task", "list", "--status", "bogus"),
    "unknown-task": ("task", "show", "no-such-task"),
}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv", list(USER_ERRORS.values()), ids=list(USER_ERRORS))
def test_user_error_is_one_line_on_stderr(run_hostctl, argv) -> None:
    r = run_hostctl(*argv)
    assert r.code == ExitStatus.USAGE, r
    assert r.out == ""
    assert one_line(r.err).startswith("hostctl")


def test_unknown_command_names_it(run_hostctl) -> None:
    r = run_hostctl("provision-nosuchtype", "@x")
    assert r.code == ExitStatus.USAGE
    assert "provision-nosuchtype" in one_line(r.err)


def test_version(run_hostctl, home: Path) -> None:
    r = run_hostctl("--version")
    assert (r.code, r.out, r.err) == (0, f"hostctl {__version__}\n", "")
    assert __version__.count(".") >= 1
    assert not home.exists()


def test_help_lists_the_commands(run_hostctl) -> None:
    for flag in ("--help", "-h"):
        r = run_hostctl(flag)
        assert r.code == 0, r
        for command in ("provision-save", "context", "task", "dispatch", "wait-queue"):
            assert command in r.out


@pytest.mark.parametrize("argv", [(), ("context",)], ids=["root", "context"])
def test_no_arguments_shows_readable_help(run_hostctl, argv) -> None:
    r = run_hostctl(*argv)
    assert r.code in (0, ExitStatus.USAGE), r
    text = r.out + r.err
    assert "Usage:" in text
    # the help keeps its layout: a heading on its own line, not squashed into one error
    assert any(line.strip() == "Commands:" for line in text.splitlines()), text
    assert not text.startswith("hostctl: error")


def test_quiet_silences_human_output_only(run_hostctl, home: Path) -> None:
    r = run_hostctl("-q", "provision-save", "@srv", "--context_type", "server")
    assert (r.code, r.out, r.err) == (0, "", "")
    assert (home / "contexts" / "srv.toml").is_file()
    loud = run_hostctl("provision-save", "@srv", "--http_port", "81")
    assert loud.code == 0 and "@srv" in loud.out
    # results asked for (--json, listings) and errors still come through
    r = run_hostctl("-q", "provision-save", "@srv", "--http_port", "82", "--json")
    assert r.code == 0 and '"@srv"' in r.out
    r = run_hostctl("--quiet", "context", "list")
    assert "@srv" in r.out
    r = run_hostctl("-q", "context", "show", "@missing")
    assert r.code == ExitStatus.USAGE
    assert "@missing" in one_line(r.err)


def test_verbose_says_more_on_stderr(run_hostctl, hostctl_process) -> None:
    # logging is configured once per process: compare real processes
    assert run_hostctl("queue", "pause").code == 0
    plain = hostctl_process("dispatch")
    assert (plain.returncode, plain.stderr) == (0, "")
    verbose = hostctl_process("-v", "dispatch")
    assert verbose.returncode == 0, verbose
    assert "paused" in verbose.stderr
    assert verbose.stdout == plain.stdout


def test_traceback_flag_does_not_change_user_errors(run_hostctl) -> None:
    r = run_hostctl("--traceback", "context", "show", "@missing")
    assert r.code == ExitStatus.USAGE
    assert "@missing" in one_line(r.err)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_traceback_flag_shows_an_unexpected_error(home: Path) -> None:
    # stdout on a full device: an unexpected OSError, not a user error
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    runs = {}
    for flags in ((), ("--traceback",)):
        with open("/dev/full", "w") as full:
            runs[flags] = subprocess.run(
                [hostctl_exe(), *flags, "context", "fields"], stdout=full,
                stderr=subprocess.PIPE, text=True, env=env, timeout=60,
            )
    plain, traced = runs[()], runs[("--traceback",)]
    assert plain.returncode == ExitStatus.INTERNAL, plain.stderr
    line = one_line(plain.stderr)
    assert "--traceback" in line
    assert traced.returncode == ExitStatus.INTERNAL, traced.stderr
    assert "Traceback (most recent call last)" in traced.stderr


def test_console_script_version(hostctl_process, home: Path) -> None:
    p = hostctl_process("--version")
    assert (p.returncode, p.stdout, p.stderr) == (0, f"hostctl {__version__}\n", "")
    assert not home.exists()


def test_console_script_error_is_one_line(hostctl_process, home: Path) -> None:
    p = hostctl_process("provision-save", "../x", "--context_type", "server")
    assert p.returncode == ExitStatus.USAGE, p
    assert p.stdout == ""
    assert one_line(p.stderr).startswith("hostctl")
    assert not home.exists()


def test_queueing_a_task_loads_no_code_it_does_not_need(home: Path) -> None:
    """`task add` is what a front end calls for every click: it must not pay for the
    provisioning code, the worker, or the context writer's libraries. (Through the whole
    CLI it pays for typer's argument coercion, pydantic: the console script's fast path,
    tests/test_entry.py, loads no command-line library at all.)"""
    env = {**os.environ, "HOSTCTL_HOME": str(home)}
    saved = subprocess.run([hostctl_exe(), "provision-save", "@s", "--context_type", "server"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert saved.returncode == 0, saved.stderr
    script = ("import sys\n"
              "from hostctl.cli.main import main\n"
              "code = main(['task', 'add', 'verify', '@s'])\n"
              "print(code, ' '.join(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    task_id, code, *loaded = res.stdout.split()
    assert code == "0" and len(task_id) == 20
    for module in ("hostctl.provision.site", "hostctl.provision.platform",
                   "hostctl.provision.server", "hostctl.provision.services",
                   "hostctl.runners.worker", "filelock", "tomli_w"):
        assert module not in loaded, module


STANDALONE = r'''
import sys

class NotInstalled:
    """The cluster extra is not installed: its packages cannot be imported."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_binary", "procrastinate"):
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NotInstalled())
from hostctl.cli.entry import main

root = sys.argv[1]
lines = [
    ["provision-save", "@srv", "--context_type", "server"],
    ["provision-save", "@plat", "--context_type", "platform", "--root", root,
     "--web_server", "@srv"],
    ["provision-save", "@a.example", "--context_type", "site", "--platform", "@plat"],
    ["task", "add", "verify", "@a.example"],
    ["wait-queue", "--once"],
    ["dispatch"],
    ["provision-verify", "@a.example"],
    ["task", "list"],
    ["queue", "status"],
]
for argv in lines:
    code = main(["-q", *argv])
    if code != 0:
        raise SystemExit(f"{argv}: exit {code}")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "procrastinate"))
raise SystemExit(f"loaded {loaded}" if loaded else 0)
'''


def test_a_home_alone_needs_nothing_of_the_cluster(home: Path, tmp_path: Path) -> None:
    """Without the cluster extra (psycopg, procrastinate not installed), every command of
    a home that stands alone works, and none loads the database's code."""
    root = tmp_path / "www"
    root.mkdir()
    res = subprocess.run([sys.executable, "-c", STANDALONE, str(root)],
                         env={**os.environ, "HOSTCTL_HOME": str(home)},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
