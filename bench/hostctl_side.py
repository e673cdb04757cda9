"""The hostctl side of the benchmark: a throw-away home, its wait-queue daemons, and the
measurements (pickup, end-to-end, drain, claim cost, memory, kill -9).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import (
    NOOP_ARGV,
    STAMP_ARGV,
    Processes,
    kill9_tree,
    note,
    parse_stamp,
    rss_kib,
    summarize,
    wait_for,
    watch_drain,
)

from hostctl.paths import Paths
from hostctl.queues.model import Envelope, new_id
from hostctl.queues.spool import Spool
from hostctl.runners import lifecycle as ops
from hostctl.times import utc_iso

SUFFIX = ".task"
# The task types of the bench home. ``hold`` prints a stamp, then keeps running, so that
# its worker can be killed in the middle of it.
CONFIG = f"""\
[worker]
backoff_base = 1            # a lost task is retried after 0.5 to 1 s (default 10)

[tasks.stamp]
command = {json.dumps(list(STAMP_ARGV))}
context_types = ["server"]

[tasks.noop]
command = {json.dumps(list(NOOP_ARGV))}
context_types = ["server"]

[tasks.hold]
command = ["sh", "-c", "{STAMP_ARGV[0]} +%s%N; exec sleep 2"]
context_types = ["server"]
"""


def hostctl_exe() -> str:
    beside = Path(sys.executable).with_name("hostctl")
    found = str(beside) if beside.exists() else shutil.which("hostctl")
    if not found:
        raise SystemExit("bench: the hostctl console script is not installed (pip install -e .)")
    return found


@contextmanager
def link_clock() -> Iterator[list[int]]:
    """Record CLOCK_REALTIME (ns) just before each link(2): the moment a task that
    Spool.publish writes appears in new/."""
    real = os.link
    stamps: list[int] = []

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        stamps.append(time.time_ns())
        real(src, dst, *args, **kwargs)

    os.link = link  # type: ignore[assignment]
    try:
        yield stamps
    finally:
        os.link = real


class HostctlBench:
    """One home under ``root`` with ``contexts`` server contexts named s0000, s0001, ..."""

    def __init__(self, root: Path, procs: Processes) -> None:
        self.root = root
        self.home_path = root / "home"
        self.procs = procs
        self.exe = hostctl_exe()
        self.home = ops.Home(Paths(self.home_path))
        self.contexts: list[str] = []

    # -- set-up ---------------------------------------------------------------------------

    def setup(self, contexts: int) -> None:
        self.home.paths.ensure_home()
        self.home.paths.config_file.write_text(CONFIG)
        self.home = ops.Home(Paths(self.home_path))  # re-read the config
        self.home.writable()
        started = time.monotonic()
        for name in ("p0", "e0", "k0"):
            self.home.store.save(f"@{name}", {}, "server")
        self.contexts = [f"@s{i:05d}" for i in range(contexts)]
        for name in self.contexts:
            self.home.store.save(name, {}, "server")
        note(f"hostctl: {contexts + 3} server contexts saved in "
             f"{time.monotonic() - started:.1f} s")

    def env(self) -> dict[str, str]:
        return {**os.environ, "HOSTCTL_HOME": str(self.home_path)}

    @property
    def spool(self) -> Any:
        return Spool(self.home.paths.spool, self.home.paths.logs)

    def folder(self, name: str) -> Path:
        return Path(self.spool.dir(name))

    def reset(self) -> None:
        """Forget every task (no worker may be running).

        The files of the tasks before are moved aside (into ``root/trash``, removed with
        the temp dir when the run ends), not deleted: on ext4 without a journal (as on
        the machine of the published run) the allocation of a new inode passes over
        every inode freed in the last minutes, so deleting thousands of files just before
        a drain would make each task's log file cost up to 1 ms to create, a cost of the
        bench's clean-up, not of the queue."""
        trash = self.root / "trash" / f"{time.monotonic_ns()}"
        trash.mkdir(parents=True)
        for name in ("new", "deferred", "active", "done", "keys", "tmp"):
            folder = self.folder(name)
            if folder.exists():
                folder.rename(trash / name)
            folder.mkdir(mode=0o700)
        (trash / "logs").mkdir()
        for path in self.home.paths.logs.glob("*.log"):
            if path.name != "hostctl.log":
                path.rename(trash / "logs" / path.name)

    # -- workers --------------------------------------------------------------------------

    def start_worker(self, *args: str, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start ``hostctl wait-queue`` and return once it is waiting for tasks."""
        log = self.home.paths.logs / "hostctl.log"
        proc = self.procs.start([self.exe, "--home", str(self.home_path), "wait-queue", *args],
                                env=self.env(), log=self.root / "wait-queue.out")
        marker = f"wait-queue {proc.pid} started".encode()
        if not wait:
            return proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"wait-queue exited with {proc.returncode}; see "
                                   f"{self.root / 'wait-queue.out'}")
            try:
                return marker in log.read_bytes()
            except FileNotFoundError:
                return False

        wait_for(ready, 30, 0.01, "wait-queue to start")
        return proc

    # -- tasks ----------------------------------------------------------------------------

    def publish(self, type_name: str, context: str) -> tuple[str, int]:
        """Queue a task in-process, as ``hostctl task add`` does; return its id and the
        moment (ns) its file was linked into new/."""
        with link_clock() as stamps:
            added = ops.add(self.home, type_name, context, {}, {})
        return added.task.id, stamps[-1]

    def log_path(self, task_id: str) -> Path:
        return self.home.paths.logs / f"{task_id}.log"

    def stamp(self, task_id: str) -> int | None:
        try:
            return parse_stamp(self.log_path(task_id).read_bytes())
        except FileNotFoundError:
            return None

    def is_done(self, task_id: str) -> bool:
        return (self.folder("done") / f"{task_id}{SUFFIX}").exists()

    def done_task(self, task_id: str) -> dict[str, Any]:
        task = self.spool.get(task_id)
        return {"status": task.status.label, "attempts": task.attempt_count,
                "outcomes": [ev.get("outcome") for ev in task.events
                             if ev.get("event") == "end"],
                "reasons": [ev.get("reason") for ev in task.events
                            if ev.get("event") == "end" and ev.get("reason")]}

    def wait_run(self, task_id: str, timeout: float = 30) -> int:
        stamp = wait_for(lambda: self.stamp(task_id), timeout, 0.002, f"task {task_id} to run")
        wait_for(lambda: self.is_done(task_id), timeout, 0.002, f"task {task_id} to end")
        return int(stamp)

    def enqueue_files(self, type_name: str, contexts: list[str]) -> list[str]:
        """Queue one task per context by writing the same files Spool.publish writes
        (tmp/ then new/), without its per-file fsync: a fast way to fill the queue."""
        tmp, new = self.folder("tmp"), self.folder("new")
        ids = []
        for context in contexts:
            env = Envelope(id=new_id(), type=type_name, context=context, created=utc_iso())
            staged = tmp / f".{env.id}.tmp"
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, env.encode())
            finally:
                os.close(fd)
            os.rename(staged, new / f"{9 - env.priority}{env.id}{SUFFIX}")
            ids.append(env.id)
        return ids

    def count(self, folder: str) -> int:
        return sum(1 for n in os.listdir(self.folder(folder)) if n.endswith(SUFFIX))


# -- measurements -------------------------------------------------------------------------


def gaps(n: int, lo: float, hi: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(lo, hi) for _ in range(n)]


def pickup(hb: HostctlBench, n: int, gap: tuple[float, float]) -> dict[str, Any]:
    """Published (linked into new/) -> the command's stamp, with an idle wait-queue."""
    hb.reset()
    worker = hb.start_worker()
    time.sleep(0.3)
    lat = []
    try:
        for pause in gaps(n, *gap, seed=1):
            time.sleep(pause)
            task_id, t0 = hb.publish("stamp", "@p0")
            lat.append((hb.wait_run(task_id) - t0) / 1e6)
    finally:
        hb.procs.stop(worker)
    return summarize(lat)


def end_to_end(hb: HostctlBench, n: int, gap: tuple[float, float]) -> dict[str, Any]:
    """``hostctl task add`` started -> the command's stamp, with an idle wait-queue."""
    hb.reset()
    worker = hb.start_worker()
    time.sleep(0.3)
    lat, cli = [], []
    argv = [hb.exe, "--home", str(hb.home_path), "task", "add", "stamp", "@e0"]
    try:
        for pause in gaps(n, *gap, seed=2):
            time.sleep(pause)
            t0 = time.time_ns()
            out = subprocess.run(argv, capture_output=True, check=True, env=hb.env()).stdout
            cli.append((time.time_ns() - t0) / 1e6)
            task_id = out.decode().strip()
            lat.append((hb.wait_run(task_id) - t0) / 1e6)
    finally:
        hb.procs.stop(worker)
    return {**summarize(lat), "cli_exit": summarize(cli)}


def drain(hb: HostctlBench, n: int, workers: int, concurrency: int) -> dict[str, Any]:
    """``n`` no-op tasks on distinct contexts queued first, then ``workers`` wait-queue
    daemons with ``--concurrency``. The rate is sampled from done/ (10 % to 90 %); the
    tasks' own start and end events give a second figure (first start to last end)."""
    hb.reset()
    if n > len(hb.contexts):
        raise ValueError(f"drain of {n} needs {n} contexts, the home has {len(hb.contexts)}")
    ids = hb.enqueue_files("noop", hb.contexts[:n])
    procs = [hb.start_worker("--concurrency", str(concurrency), wait=False)
             for _ in range(workers)]
    try:
        result = watch_drain(lambda: hb.count("done"), n, 60 + n / 20)
    finally:
        for proc in procs:
            hb.procs.stop(proc)
    first, last, ok = float("inf"), 0.0, 0
    for task_id in ids:
        task = hb.spool.get(task_id)
        start, end = task.last("start"), task.last("end")
        if start and end:
            first = min(first, _ts(start["at"]))
            last = max(last, _ts(end["at"]))
        ok += task.status.label == "success"
    span = max(last - first, 1e-3)
    return {**result, "workers": workers, "concurrency": concurrency, "succeeded": ok,
            "events_rate": round(n / span, 1)}


def _ts(iso: str) -> float:
    from hostctl.times import parse_iso

    return parse_iso(iso)


def claim_cost(root: Path, sizes: list[int], reps: int) -> list[dict[str, Any]]:
    """Time of one claim through the Spool API (with the worker's check) as new/ grows;
    each claimed task is given back with Spool.requeue, so the queue keeps its size."""
    hb = HostctlBench(root, Processes())
    hb.home.paths.ensure_home()
    hb.home.paths.config_file.write_text(CONFIG)
    hb.home = ops.Home(Paths(hb.home_path))
    spool = hb.home.writable()
    hb.home.store.save("@c0", {}, "server")
    check = hb.home.registry.check_envelope(hb.home.store)
    out = []
    queued = 0
    for size in sizes:
        hb.enqueue_files("noop", ["@c0"] * (size - queued))
        queued = size
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            claims = spool.claim(check, limit=1)
            times.append((time.perf_counter() - t0) * 1000)
            assert len(claims) == 1, "the claim found nothing"
            spool.requeue(claims[0])
        stats = summarize(times)
        out.append({"queued": size, "p50": stats["p50"], "min": stats["min"],
                    "max": stats["max"], "n": reps})
        note(f"hostctl claim with {size} queued: {stats['p50']:.3f} ms")
    shutil.rmtree(hb.root, ignore_errors=True)
    return out


def memory(hb: HostctlBench, total: int, batch: int) -> dict[str, Any]:
    """wait-queue's RSS when idle after start, after 1,000 tasks (or the first batch) and
    after ``total`` no-op tasks, queued in batches while it runs."""
    hb.reset()
    worker = hb.start_worker()
    time.sleep(0.5)
    before = rss_kib(worker.pid)
    samples = []
    done = 0
    try:
        while done < total:
            size = min(batch, total - done, len(hb.contexts))
            hb.enqueue_files("noop", hb.contexts[:size])
            done += size
            wait_for(lambda: not hb.count("new") and not hb.count("active"),
                     60 + size / 20, 0.05, f"{done} tasks to end")
            samples.append((done, rss_kib(worker.pid)))
        time.sleep(0.5)
        after = rss_kib(worker.pid)
    finally:
        hb.procs.stop(worker)
    first = samples[0] if samples else (0, before)
    for count, rss in samples:
        if count >= 1000:
            first = (count, rss)
            break
    return {"tasks": total, "rss_before_kib": before, "rss_after_kib": after,
            "rss_warm_kib": first[1], "warm_after_tasks": first[0],
            "growth_pct": round((after - before) / before * 100, 1),
            "growth_after_warm_pct": round((after - first[1]) / first[1] * 100, 1),
            "samples": samples}


def kill9(hb: HostctlBench) -> dict[str, Any]:
    """kill -9 of the worker and of its running task, a second task queued behind it on
    the same context; then a fresh wait-queue. What becomes of each task?"""
    hb.reset()
    worker = hb.start_worker()
    victim, _ = hb.publish("hold", "@k0")
    behind, _ = hb.publish("stamp", "@k0")
    wait_for(lambda: hb.stamp(victim), 20, 0.005, "the held task to start")
    time.sleep(0.2)
    victims = kill9_tree(worker.pid)
    worker.wait()
    hb.procs.stop(worker)
    killed_at, killed_ns = time.monotonic(), time.time_ns()
    restarted = hb.start_worker()
    try:
        behind_stamp = hb.wait_run(behind, 30)
        wait_for(lambda: hb.is_done(victim), 30, 0.05, "the interrupted task to end")
        victim_after = time.monotonic() - killed_at
    finally:
        hb.procs.stop(restarted)
    victim_task = hb.done_task(victim)
    return {
        "killed": len(victims),
        "interrupted": victim_task,
        "interrupted_rerun": victim_task["attempts"] >= 2,
        "interrupted_ended_s_after_kill": round(victim_after, 2),
        "behind": hb.done_task(behind),
        "behind_ran": behind_stamp > 0,
        "behind_ran_s_after_kill": round((behind_stamp - killed_ns) / 1e9, 2),
    }
