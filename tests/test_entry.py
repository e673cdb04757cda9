"""The console script's fast path (cli/entry.py) against the whole CLI (cli/main.py), for
``task add``, ``dispatch`` and ``wait-queue``: the same command line gives the same exit
code, the same output and the same queue afterwards either way; lines the fast path is
not sure of go to the whole CLI; and the fast path loads no command-line library."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hostctl.cli import entry
from hostctl.cli.main import main as full_main

ID = re.compile(r"\b[0-9a-f]{20}\b")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with a server, a platform and two sites, made once and copied per run."""
    base = tmp_path_factory.mktemp("entry")
    home = base / "home"
    root = base / "www"
    root.mkdir()
    for argv in (("provision-save", "@srv", "--context_type", "server"),
                 ("provision-save", "@plat", "--context_type", "platform", "--root", str(root),
                  "--web_server", "@srv"),
                 ("provision-save", "@a.example", "--context_type", "site",
                  "--platform", "@plat"),
                 ("provision-save", "@b.example", "--context_type", "site",
                  "--platform", "@plat")):
        assert full_main(["--home", str(home), *argv]) == 0
    (home / "config.toml").write_text(
        '[tasks.echo]\ncommand = ["echo", "{option.val}"]\ncontext_types = ["site"]\n'
        'options = { val = "a value" }\n')
    return home


def outcome(run: Callable[[list[str]], int], argv: list[str], home: Path,
            capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = run([a.replace("{home}", str(home)) for a in argv])
    out, err = capsys.readouterr()
    tasks = []
    new = home / "spool" / "new"
    deferred = home / "spool" / "deferred"
    for folder in (new, deferred):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            doc = json.loads(path.read_text().splitlines()[0])
            tasks.append({k: v for k, v in doc.items() if k not in ("id", "created")}
                         | {"folder": folder.name})

    def norm(text: str) -> str:
        return TIME.sub("TIME", ID.sub("ID", text.replace(str(home), "{home}")))

    return {"code": code, "out": norm(out), "err": norm(err), "tasks": tasks}


def both(argv: list[str], template: Path, tmp_path: Path,
         capsys: pytest.CaptureFixture[str], n: int = 0) -> tuple[dict, dict]:
    results = []
    for label, run in (("fast", entry.main), ("full", full_main)):
        home = tmp_path / f"{label}{n}" / "home"
        shutil.copytree(template, home)
        results.append(outcome(run, ["--home", "{home}", *argv], home, capsys))
    return results[0], results[1]


FAST_LINES = [
    ["task", "add", "verify", "@a.example"],
    ["task", "add", "verify", "a.example", "--json"],
    ["-q", "task", "add", "echo", "@a.example", "--option", "val=x y;z"],
    ["-v", "--traceback", "task", "add", "echo", "@a.example", "-o", "val=$(id)"],
    ["task", "add", "--priority", "9", "verify", "@a.example", "--delay", "30"],
    ["task", "add", "verify", "@a.example", "-p", "0", "--delay=2.5", "--json"],
    ["task", "add", "verify", "@a.example", "--context-option", "language=fr"],
    ["task", "add", "verify", "@a.example", "--context_option=aliases=x.example",
     "-c", "redirection=yes"],
    ["task", "add", "verify", "@a.example", "--priority=3", "--priority", "7"],
    # refused by the core, in one line: the same line either way
    ["task", "add", "nosuchtype", "@a.example"],
    ["task", "add", "verify", "@nobody.example"],
    ["task", "add", "verify", "../etc"],
    ["task", "add", "echo", "@a.example", "--option", "undeclared=1"],
    ["task", "add", "echo", "@a.example", "--option", "novalue"],
    ["task", "add", "verify", "@a.example", "--context-option", "platform=@nope"],
    ["task", "add", "verify", "@plat", "--context-option", "root=relative"],
    ["task", "add", "verify", "@srv", "-c", "http_port=80x"],
]

SLOW_LINES = [
    ["task", "add", "--help"],
    ["task", "add", "verify", "@a.example", "-h"],
    ["task", "add", "verify"],
    ["task", "add", "verify", "@a.example", "@b.example"],
    ["task", "add", "verify", "@a.example", "--priority", "10"],
    ["task", "add", "verify", "@a.example", "-p3"],
    ["task", "add", "verify", "@a.example", "--delay", "1e3"],
    ["task", "add", "verify", "@a.example", "--delay", "-1"],
    ["task", "add", "verify", "@a.example", "--option", "-x=1"],
    ["task", "add", "verify", "@a.example", "--colour", "red"],
    ["task", "add", "verify", "@a.example", "--", "x"],
    ["task", "add", "verify", "@a.example", "--json=1"],
    ["-vv", "task", "add", "verify", "@a.example"],
    ["--version"],
    ["task", "list"],
    ["task", "add", "verify", "@a.example", "-q"],
]


@pytest.mark.parametrize("argv", FAST_LINES, ids=" ".join)
def test_the_fast_path_takes_the_usual_lines_and_does_what_the_cli_does(
        argv: list[str], template: Path, tmp_path: Path, capsys) -> None:
    assert entry.parse(["--home", "/h", *argv]) is not None
    fast, full = both(argv, template, tmp_path, capsys)
    assert fast == full


@pytest.mark.parametrize("argv", SLOW_LINES, ids=" ".join)
def test_lines_the_fast_path_is_not_sure_of_go_to_the_cli(
        argv: list[str], template: Path, tmp_path: Path, capsys) -> None:
    assert entry.parse(["--home", "/h", *argv]) is None
    fast, full = both(argv, template, tmp_path, capsys)
    assert fast == full


def test_a_front_end_takes_the_fast_path_too(template: Path) -> None:
    """The fast path's request for the front end's usual line; the drop box itself is
    tested from a real second user's side in test_frontend.py (which runs the console
    script)."""
    req = entry.parse(["--home", "/srv/hostctl", "task", "add", "verify", "@a.example",
                       "--json"])
    assert req is not None and req.home == "/srv/hostctl" and req.values.get("json")


WORDS = st.sampled_from([
    "task", "add", "verify", "echo", "@a.example", "a.example", "@b.example", "@srv",
    "--option", "-o", "--context-option", "--context_option", "-c", "--priority", "-p",
    "--delay", "--json", "--help", "-h", "-q", "-v", "--", "val=1", "val=-1", "val=a=b",
    "language=fr", "aliases=x.example", "redirection=maybe", "3", "9", "10", "-1", "0.5",
    "1e2", "", " ", "--priority=4", "--delay=0", "--option=val=q", "-p5", "@nope",
])


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.lists(WORDS, max_size=6), head=st.sampled_from(
    [[], ["-q"], ["-v"], ["--traceback"], ["-v", "-q"]]))
@example(tail=["verify", "@a.example", "--option", "val=1"], head=[])
@example(tail=["echo", "@a.example", "--option", "val=1", "-p", "4"], head=["-q"])
def test_any_task_add_line_gives_the_same_answer_either_way(
        tail: list[str], head: list[str], template: Path, tmp_path: Path, capsys) -> None:
    argv = [*head, "task", "add", *tail]
    n = len(list(tmp_path.iterdir()))
    fast, full = both(argv, template, tmp_path, capsys, n)
    assert fast == full, argv


def test_the_console_script_queues_a_task_without_the_command_line_library(
        template: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(template, home)
    script = ("import sys\n"
              "from hostctl.cli.entry import main\n"
              "code = main(['task', 'add', 'verify', '@a.example'])\n"
              "print(code, ' '.join(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "HOSTCTL_HOME": str(home)})
    assert res.returncode == 0, res.stderr
    task_id, code, *loaded = res.stdout.split()
    assert code == "0" and ID.fullmatch(task_id)
    for module in ("typer", "click", "hostctl.cli.main", "hostctl.provision.site",
                   "hostctl.runners.worker", "filelock", "tomli_w"):
        assert module not in loaded, module
    # and the real console script answers the same way
    exe = Path(sys.executable).with_name("hostctl")
    res = subprocess.run([str(exe if exe.exists() else "hostctl"), "task", "add", "verify",
                          "@b.example", "--json"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOSTCTL_HOME": str(home)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["context"] == "@b.example"


# -- the runners' lines ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def queued(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template home with three tasks queued (one deferred), made once."""
    home = tmp_path_factory.mktemp("queued") / "home"
    shutil.copytree(template, home)
    for argv in (["task", "add", "echo", "@a.example", "-o", "val=one"],
                 ["task", "add", "verify", "@b.example"],
                 ["task", "add", "echo", "@b.example", "-o", "val=later", "--delay", "3600"]):
        assert full_main(["--home", str(home), "-q", *argv]) == 0
    return home


def runner_outcome(run: Callable[[list[str]], int], argv: list[str], home: Path,
                   capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = run(["--home", str(home), *argv])
    out, err = capsys.readouterr()
    spool = home / "spool"
    where = {f: sorted(p.name for p in (spool / f).iterdir()) if (spool / f).is_dir() else []
             for f in ("new", "deferred", "active", "done", "quarantine")}
    ends = {p.name: json.loads(p.read_text().splitlines()[-1]).get("outcome")
            for p in sorted((spool / "done").iterdir())} if (spool / "done").is_dir() else {}

    def norm(text: str) -> str:
        return TIME.sub("TIME", text.replace(str(home), "{home}"))

    return {"code": code, "out": norm(out), "err": norm(err), "where": where, "ends": ends}


def both_runners(argv: list[str], queued: Path, tmp_path: Path,
                 capsys: pytest.CaptureFixture[str], n: int = 0) -> tuple[dict, dict]:
    results = []
    for label, run in (("fast", entry.main), ("full", full_main)):
        home = tmp_path / f"{label}{n}" / "home"
        shutil.copytree(queued, home)
        results.append(runner_outcome(run, argv, home, capsys))
    return results[0], results[1]


RUNNER_FAST = [
    ["dispatch"],
    ["dispatch", "--force"],
    ["dispatch", "--queue", "tasks"],
    ["-q", "dispatch", "--queue=cron", "--force"],
    ["dispatch", "--queue", "nope"],
    ["wait-queue", "--once"],
    ["wait-queue", "--once", "--concurrency", "1"],
    ["wait-queue", "--concurrency=2", "--once", "--max-runtime", "5"],
    ["--traceback", "wait-queue", "--housekeeping-every", "0.5", "--once"],
]

RUNNER_SLOW = [
    ["dispatch", "--queue"],
    ["dispatch", "--force=1"],
    ["dispatch", "tasks"],
    ["wait-queue", "--once", "--concurrency", "0"],
    ["wait-queue", "--once", "--concurrency", "257"],
    ["wait-queue", "--once", "--max-runtime", "1e2"],
    ["wait-queue", "--once", "--housekeeping-every", "0.05"],
    ["wait-queue", "--once", "--help"],
]


@pytest.mark.parametrize("argv", RUNNER_FAST, ids=" ".join)
def test_the_runners_lines_take_the_fast_path_and_do_what_the_cli_does(
        argv: list[str], queued: Path, tmp_path: Path, capsys) -> None:
    assert entry.parse(argv) is not None
    fast, full = both_runners(argv, queued, tmp_path, capsys)
    assert fast == full


@pytest.mark.parametrize("argv", RUNNER_SLOW, ids=" ".join)
def test_runner_lines_the_fast_path_is_not_sure_of_go_to_the_cli(
        argv: list[str], queued: Path, tmp_path: Path, capsys) -> None:
    assert entry.parse(argv) is None
    fast, full = both_runners(argv, queued, tmp_path, capsys)
    assert fast == full


RUNNER_WORDS = st.sampled_from([
    "--force", "--queue", "tasks", "cron", "backup", "nope", "--queue=tasks", "--once",
    "--concurrency", "--concurrency=1", "0", "1", "2", "257", "--max-runtime", "0.5", "-1",
    "1e2", "7.", ".5", "--housekeeping-every", "0.05", "0.1", "--json", "", "x", "-h",
])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["dispatch", "wait-queue"]),
       tail=st.lists(RUNNER_WORDS, max_size=5),
       head=st.sampled_from([[], ["-q"], ["--traceback"]]))
def test_any_runner_line_gives_the_same_answer_either_way(
        command: str, tail: list[str], head: list[str], queued: Path, tmp_path: Path,
        capsys) -> None:
    # a wait-queue line always ends in --once (or in a value the CLI refuses): no daemon
    argv = [*head, command, *tail, *(["--once"] if command == "wait-queue" else [])]
    n = len(list(tmp_path.iterdir()))
    fast, full = both_runners(argv, queued, tmp_path, capsys, n)
    assert fast == full, argv


def test_the_daemon_and_cron_load_no_command_line_library(queued: Path,
                                                           tmp_path: Path) -> None:
    """wait-queue lives for an hour at a time, dispatch runs every minute: neither carries
    typer, click or pydantic (about 14 MB of a daemon's memory)."""
    home = tmp_path / "home"
    shutil.copytree(queued, home)
    for line in (["wait-queue", "--once"], ["dispatch"]):
        script = ("import sys\n"
                  "from hostctl.cli.entry import main\n"
                  f"code = main({line!r})\n"
                  "print(code, ' '.join(sorted(sys.modules)))\n")
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "HOSTCTL_HOME": str(home)})
        assert res.returncode == 0, res.stderr
        code, *loaded = res.stdout.split()
        assert code == "0", res.stderr
        assert "hostctl.runners.worker" in loaded  # it did run tasks
        for module in ("typer", "click", "pydantic", "hostctl.cli.main"):
            assert module not in loaded, (line, module)
