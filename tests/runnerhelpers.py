"""Helpers for the runner tests (dispatch, wait-queue, cron, service): homes, contexts,
command task types, background processes that are always cleaned up, and polling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import hostctl_exe
from taskhelpers import group_members, pid_alive, wait_for, write_config

__all__ = ["group_members", "hostctl_exe", "pid_alive", "wait_for", "write_config"]

REPO = Path(__file__).resolve().parent.parent
SH = shutil.which("sh") or "/bin/sh"
# touches $0.started (with its pid inside), then waits until $0.go exists
SLOW = 'echo $$ > "$0.started"; while [ ! -e "$0.go" ]; do sleep 0.05; done; echo slow done'


def sh_task(script: str, *args: str, **extra: Any) -> dict[str, Any]:
    """A command task type that runs ``sh -c SCRIPT`` with ``args`` as $0, $1, ..."""
    return {"command": [SH, "-c", script, *args], "context_types": ["site"], **extra}


def save_sites(run: Callable[..., Any], home: Path, sites: Iterable[str],
               **site_fields: str) -> None:
    """Save @srv, @plat and each site through ``run`` (the in-process run_hostctl)."""
    root = home.parent / "www"
    root.mkdir(parents=True, exist_ok=True)
    commands = [
        ("provision-save", "@srv", "--context_type", "server", "--db_service_type", "sqlite"),
        ("provision-save", "@plat", "--context_type", "platform", "--root", str(root),
         "--web_server", "@srv"),
    ]
    extra = [x for k, v in site_fields.items() for x in (f"--{k}", v)]
    commands += [("provision-save", f"@{site.lstrip('@')}", "--context_type", "site",
                  "--platform", "@plat", "--db_server", "@srv", *extra) for site in sites]
    for argv in commands:
        res = run(*argv)
        assert res.code == 0, (argv, res)


def add_task(run: Callable[..., Any], ttype: str, context: str, *extra: str) -> str:
    """``task add`` through run_hostctl; returns the id."""
    res = run("task", "add", ttype, context, *extra)
    assert res.code == 0, res
    return str(res.out.strip())


def task_json(run: Callable[..., Any], task_id: str) -> dict[str, Any]:
    res = run("task", "show", task_id, "--json")
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert isinstance(doc, dict)
    return doc


def tasks_json(run: Callable[..., Any], *extra: str) -> list[dict[str, Any]]:
    res = run("task", "list", "--json", *extra)
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert isinstance(doc, list)
    return doc


def status_of(run: Callable[..., Any], task_id: str) -> str:
    return str(task_json(run, task_id)["status"])


def hostctl_log(home: Path) -> str:
    """What dispatch and wait-queue wrote to HOME/logs/hostctl.log so far."""
    try:
        return (home / "logs" / "hostctl.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def context_switches(pid: int) -> int:
    """Voluntary plus involuntary context switches of every thread of ``pid``."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def daemon_record(run: Callable[..., Any], pid: int) -> dict[str, Any] | None:
    """The daemon ``pid`` as ``queue status --json`` shows it (None: not listed)."""
    res = run("queue", "status", "--json")
    assert res.code == 0, res
    for doc in json.loads(res.out)["daemons"]:
        if doc["pid"] == pid:
            return dict(doc)
    return None


def wait_housekeeping(run: Callable[..., Any], pid: int, rounds: int = 1,
                      timeout: float = 30) -> dict[str, Any]:
    """Wait until the daemon ``pid`` has recorded its liveness ``rounds`` more times (each
    housekeeping pass rewrites ``last_seen`` after its sweep and periodic queues): that many
    passes of its loop have run since. Returns the last record."""
    seen: list[str] = []

    def advanced() -> dict[str, Any] | None:
        doc = daemon_record(run, pid)
        if doc is None:
            return None
        if not seen or doc["last_seen"] != seen[-1]:
            seen.append(doc["last_seen"])
        return doc if len(seen) > rounds else None

    return wait_for(advanced, timeout, f"{rounds} housekeeping pass(es) of wait-queue {pid}")


def daemon_pids(home: Path) -> set[int]:
    """Pids of the wait-queue daemons that registered (spool/workers/PID.json)."""
    try:
        names = os.listdir(home / "spool" / "workers")
    except FileNotFoundError:
        return set()
    return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}


class Procs:
    """Background processes of one test, each in its own session; every process group
    is killed when the test ends, whatever happened."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *argv: str, log: Path | None = None, exe: list[str] | None = None,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``hostctl argv`` (or ``exe argv``) with its output in ``log``."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [*(exe if exe is not None else [hostctl_exe()]), *argv],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else {**os.environ,
                                                         "HOSTCTL_HOME": str(self.home)},
                start_new_session=True,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, what: str) -> int:
    """The exit status of ``proc``; fail (the finalizer kills it) after ``timeout`` s."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} (pid {proc.pid}) still runs after {timeout:g} s") \
            from None


@contextmanager
def written_in_place(config: Path, text: str, seconds: float = 2.0) -> Iterator[None]:
    """config.toml written in place, slowly, by another thread: empty (written again every
    0.2 s) for ``seconds``, then ``text``; the block runs once the emptying has begun, and
    the writer is done when it is left."""
    begun = threading.Event()

    def write() -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            config.write_text("")
            begun.set()
            time.sleep(0.2)
        config.write_text(text)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        begun.wait(10)
        yield
    finally:
        writer.join()
