"""Helpers shared by the spool and task lifecycle tests: homes, contexts, command types,
spool folders, subprocesses and polling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from hostctl.queues.spool import _id_of

T = TypeVar("T")

QUEUE_FOLDERS = ("new", "deferred", "active", "done")
REPO = Path(__file__).resolve().parent.parent


def write_config(home: Path, doc: Mapping[str, Any]) -> None:
    """Write HOME/config.toml from a dict (tomli_w quotes every command item exactly)."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = home / ".config.toml.tmp"  # atomic: a running wait-queue may reload it any time
    tmp.write_text(tomli_w.dumps(dict(doc)))
    os.replace(tmp, home / "config.toml")


def platform_root(home: Path) -> Path:
    """The platform root the test contexts use (a folder beside the home)."""
    root = home.parent / "www"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _save_argvs(root: Path, sites: Iterable[str]) -> list[tuple[str, ...]]:
    argvs: list[tuple[str, ...]] = [
        ("provision-save", "@srv", "--context_type", "server", "--db_service_type", "sqlite"),
        ("provision-save", "@plat", "--context_type", "platform", "--root", str(root),
         "--web_server", "@srv"),
    ]
    argvs += [("provision-save", f"@{site.lstrip('@')}", "--context_type", "site",
               "--platform", "@plat", "--db_server", "@srv") for site in sites]
    return argvs


def _code(res: Any) -> int | None:
    return getattr(res, "code", getattr(res, "returncode", None))


def save_sites(run: Callable[..., Any], home: Path, sites: Iterable[str]) -> Path:
    """Save @srv (server), @plat (platform) and each site with ``run`` (run_hostctl or a
    subprocess wrapper returning ``code``/``returncode``); return the platform root."""
    root = platform_root(home)
    for argv in _save_argvs(root, sites):
        res = run(*argv)
        assert _code(res) == 0, (argv, res)
    return root


def build_template(base: Path, sites: Iterable[str]) -> Path:
    """A home holding @srv, @plat and ``sites``, saved once for a whole module."""
    from hostctl.cli.main import main

    home = base / "home"
    for argv in _save_argvs(base / "www", sites):
        assert main(["--home", str(home), *argv]) == 0, argv
    return home


def use_template(template: Path, home: Path, run: Callable[..., Any]) -> Path:
    """Copy the template's contexts into ``home`` and point @plat at this test's own
    platform root; return that root."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copytree(template / "contexts", home / "contexts")
    root = platform_root(home)
    res = run("provision-save", "@plat", "--root", str(root))
    assert _code(res) == 0, res
    return root


def spool(home: Path) -> Path:
    return home / "spool"


def ids_in(home: Path, folder: str) -> list[str]:
    """Task ids in one spool folder (names that are not task files are left out)."""
    try:
        names = os.listdir(spool(home) / folder)
    except FileNotFoundError:
        return []
    return sorted(i for i in (_id_of(n) for n in names if not n.startswith(".")) if i)


def folder_of(home: Path, task_id: str) -> list[str]:
    """Every queue folder that holds ``task_id`` (a healthy spool: exactly one)."""
    return [f for f in QUEUE_FOLDERS if task_id in ids_in(home, f)]


def show(run: Callable[..., Any], task_id: str) -> dict[str, Any]:
    """``task show ID --json`` through run_hostctl."""
    res = run("task", "show", task_id, "--json")
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert isinstance(doc, dict)
    return doc


def show_process(proc_run: Callable[..., subprocess.CompletedProcess[str]],
                 task_id: str) -> dict[str, Any]:
    """``task show ID --json`` through a real hostctl process."""
    res = proc_run("task", "show", task_id, "--json", timeout=30)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert isinstance(doc, dict)
    return doc


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process (a zombie counts as dead)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    state = data[data.rfind(b")") + 2:].split()[0]
    return state not in (b"Z", b"X")


def hostctl_cmd() -> list[str]:
    from conftest import hostctl_exe

    return [hostctl_exe()]


def popen_hostctl(home: Path, *argv: str, log: Path | None = None,
                  env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``hostctl argv`` in the background; its output goes to ``log`` (or nowhere)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [*hostctl_cmd(), *argv], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HOSTCTL_HOME": str(home), **(env or {})},
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


# Runs a command under a child subreaper that reaps every orphan at once, as init does
# on a normal host: a process that dies does not linger as a zombie with its /proc entry.
REAPER = r"""
import ctypes, os, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = subprocess.Popen(sys.argv[2:])
with open(sys.argv[1] + ".tmp", "w") as fh:
    fh.write(str(child.pid))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.02)
"""


def popen_reaped(home: Path, *argv: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``hostctl argv`` under a reaping subreaper; return (the reaper, hostctl's pid).
    Stop the reaper with :func:`stop` when done."""
    pidfile = log.with_suffix(".pid")
    out = open(log, "ab")  # noqa: SIM115
    try:
        reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, str(pidfile), *hostctl_cmd(), *argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "HOSTCTL_HOME": str(home)},
        )
    finally:
        out.close()
    try:
        pid = wait_for(lambda: pidfile.exists() and int(pidfile.read_text()), 30,
                       "the reaper to start hostctl")
    except BaseException:
        reaper.kill()
        reaper.wait(timeout=10)
        raise
    return reaper, pid


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """TERM a background process (KILL if it does not go) and return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait(timeout=10)
        # from exc: a failure of the test that left the process running shows too
        raise AssertionError(f"process {proc.pid} did not stop after TERM") from exc


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def python() -> str:
    return sys.executable
