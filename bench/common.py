"""Shared helpers of the benchmark: statistics, clocks, processes, /proc readings."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DATE = shutil.which("date") or "/bin/date"
TRUE = shutil.which("true") or "/bin/true"
# The command every runner starts in the latency runs: it prints CLOCK_REALTIME in ns as
# soon as it runs. The floor is this same command spawned directly.
STAMP_ARGV = (DATE, "+%s%N")
NOOP_ARGV = (TRUE,)


# -- statistics -----------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q from 0 to 100)."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def summarize(values_ms: Sequence[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max and mean of a list of milliseconds."""
    ordered = sorted(values_ms)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 50), 3),
        "p90": round(percentile(ordered, 90), 3),
        "p99": round(percentile(ordered, 99), 3),
        "max": round(ordered[-1], 3),
        "min": round(ordered[0], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


# -- stamps -----------------------------------------------------------------------------


def parse_stamp(text: str | bytes) -> int | None:
    """The first CLOCK_REALTIME nanosecond stamp (a line of 19 digits) in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for line in text.splitlines():
        line = line.strip()
        if len(line) == 19 and line.isdigit():
            return int(line)
    return None


def read_stamp(path: Path) -> int | None:
    try:
        return parse_stamp(path.read_bytes())
    except FileNotFoundError:
        return None


def wait_for(check: Callable[[], Any], timeout: float, poll: float = 0.005,
             what: str = "a condition") -> Any:
    """Call ``check`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


# -- processes ------------------------------------------------------------------------


@dataclass
class Processes:
    """Every long-running process the bench starts, so that all of them are stopped."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def start(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None, log: Path | None = None,
              new_session: bool = True) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=new_session,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 10.0) -> None:
        """Stop one process (TERM, then KILL), and whatever is left in its group."""
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        kill_group(proc.pid)
        if proc in self.started:
            self.started.remove(proc)

    def at_exit(self, func: Callable[[], None]) -> None:
        self.cleanups.append(func)

    def stop_all(self) -> None:
        for proc in list(reversed(self.started)):
            self.stop(proc, timeout=5.0)
        for func in reversed(self.cleanups):
            try:
                func()
            except Exception as exc:  # a cleanup must not hide the others
                print(f"bench: cleanup failed: {exc}", file=sys.stderr)
        self.cleanups.clear()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def threads(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (schedstat: exact, not in ticks)."""
    total = 0
    for tid in threads(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches summed over the threads of ``pid``."""
    vol = invol = 0
    for tid in threads(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return vol, invol


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def find_pids(exe: str, env_marker: str) -> list[int]:
    """Processes running ``exe`` whose environment holds ``env_marker`` (NAME=VALUE)."""
    found = []
    marker = env_marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/exe") != exe:
                continue
            with open(f"/proc/{name}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


# -- the machine ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    distro = ""
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "os": distro,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def note(message: str) -> None:
    """Progress, on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        ppid = int(data[data.rfind(b")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill9_tree(*pids: int) -> list[int]:
    """SIGKILL each of ``pids`` and everything below them, as at once as user space can:
    every process is stopped first, so none sees another die; return the pids killed."""
    victims = []
    for pid in pids:
        victims += [pid, *descendants(pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for victim in victims:
            try:
                os.kill(victim, sig)
            except ProcessLookupError:
                pass
    return victims


def watch_drain(count_done: Callable[[], int], n: int, timeout: float,
                poll: float = 0.02) -> dict[str, Any]:
    """Sample ``count_done`` until it reaches ``n``; the rate is taken between 10 % and
    90 % of the tasks, so neither start-up nor the tail counts."""
    samples = []
    started = time.monotonic()
    deadline = started + timeout
    while True:
        now = time.monotonic()
        done = count_done()
        samples.append((now - started, done))
        if done >= n:
            break
        if now >= deadline:
            raise TimeoutError(f"only {done} of {n} tasks ended in {timeout:g} s")
        time.sleep(poll)
    lo = next(s for s in samples if s[1] >= 0.1 * n)
    hi = next(s for s in samples if s[1] >= 0.9 * n)
    rate = (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-6)
    return {"tasks": n, "rate": round(rate, 1), "wall_s": round(samples[-1][0], 3)}


def install_debian(commands: dict[str, str]) -> list[str]:
    """apt-get install the packages (``commands``: command -> Debian package) whose
    command is missing, as root; return the commands still missing."""
    missing = sorted({pkg for cmd, pkg in commands.items() if not shutil.which(cmd)})
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        note(f"apt-get install {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *missing], check=False, env=env, stdout=subprocess.DEVNULL)
    return [cmd for cmd in commands if not shutil.which(cmd)]


def install_pypi(pins: dict[str, str]) -> list[str]:
    """pip install the pinned packages (name -> version) into this interpreter; return
    those still missing."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    def wanted() -> list[str]:
        out = []
        for name, pin in pins.items():
            try:
                if version(name) != pin:
                    out.append(f"{name}=={pin}")
            except PackageNotFoundError:
                out.append(f"{name}=={pin}")
        return out

    need = wanted()
    if need:
        note(f"pip install {' '.join(need)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *need], check=False)
        importlib.invalidate_caches()
    return [spec.split("==")[0] for spec in wanted()]


def compile_hostctl() -> None:
    """Write hostctl's bytecode, as installing a package does: an editable install only
    writes it on first import, and not at all under PYTHONDONTWRITEBYTECODE, and every
    start of ``hostctl`` would then compile its modules again (the peers, installed by
    pip, have theirs)."""
    import compileall
    import importlib

    for name in ("hostctl", "hostctl.cli", "hostctl.contexts", "hostctl.queues",
                 "hostctl.provision", "hostctl.runners"):
        for folder in importlib.import_module(name).__path__:
            compileall.compile_dir(folder, quiet=2)
