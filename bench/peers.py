"""The peers hostctl is compared with, each run the way its documentation suggests:

- rq (Redis; its default forking Worker, and SimpleWorker), with a redis-server on a
  loopback port that the bench starts in a temp dir, without persistence;
- huey's consumer on SqliteHuey (its defaults: one thread, polling with back-off);
- nq (no daemon: each job is a process waiting for the earlier ones' locks);
- task-spooler (``tsp``: a server; each job's client process waits for its turn);
- a 1-second polling loop (poll_loop.py) standing for Aegir's queue daemon;
- the floors: the command spawned directly, and a bare ``python3 -c pass``.

Every job starts the same command as hostctl's task types (common.STAMP_ARGV or
NOOP_ARGV): rq and huey through a Python job (jobs.py) that runs it with subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    NOOP_ARGV,
    STAMP_ARGV,
    Processes,
    find_pids,
    kill9_tree,
    parse_stamp,
    read_stamp,
    summarize,
    wait_for,
    watch_drain,
)
from common import install_debian as common_install_debian
from common import install_pypi as common_install_pypi
from hostctl_side import gaps

BENCH_DIR = Path(__file__).resolve().parent
DEBIAN = {"nq": "nq", "tsp": "task-spooler", "redis-server": "redis-server"}
PYPI = {"rq": "3.0.0", "huey": "3.5.4"}
QUEUE = "bench"
MAX_TSP_QUEUED = 900
HOLD_SH = f"{STAMP_ARGV[0]} +%s%N; exec sleep 2"


# -- installing the peers -----------------------------------------------------------------


def install_debian() -> list[str]:
    """apt-get install what is missing (as root); return the commands still missing."""
    return common_install_debian(DEBIAN)


def install_pypi() -> list[str]:
    """pip install the pinned peers into this interpreter; return those still missing."""
    return common_install_pypi(PYPI)


def script(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed")
    return found


def timed(n: int, gap: tuple[float, float], seed: int,
          one: Callable[[int], float]) -> dict[str, Any]:
    """Run ``one(i)`` (which returns a latency in ms) ``n`` times at random gaps."""
    lat = []
    for i, pause in enumerate(gaps(n, *gap, seed=seed)):
        time.sleep(pause)
        lat.append(one(i))
    return summarize(lat)


def wait_stamp(path: Path, timeout: float = 30) -> int:
    return int(wait_for(lambda: read_stamp(path), timeout, 0.002, f"a stamp in {path}"))


# -- floors -------------------------------------------------------------------------------


def floor_spawn(n: int, gap: tuple[float, float]) -> dict[str, Any]:
    """The stamp command spawned directly from Python (subprocess)."""

    def one(_: int) -> float:
        t0 = time.time_ns()
        out = subprocess.run(STAMP_ARGV, stdout=subprocess.PIPE, check=True).stdout
        return (int(parse_stamp(out) or 0) - t0) / 1e6

    return timed(n, gap, 3, one)


def floor_drain(n: int) -> dict[str, Any]:
    """The no-op command spawned ``n`` times one after the other, as a worker with one
    slot would if it did nothing else: its own session, output on a pipe read to the end,
    then reaped (posix_spawn, like hostctl's worker). The rate is taken over the whole."""
    import os
    import shutil

    exe = shutil.which(NOOP_ARGV[0]) or NOOP_ARGV[0]
    env = dict(os.environ)
    started = time.perf_counter()
    for _ in range(n):
        r, w = os.pipe()
        pid = os.posix_spawn(exe, list(NOOP_ARGV), env, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, w, 1),
                                           (os.POSIX_SPAWN_DUP2, w, 2)])
        os.close(w)
        while os.read(r, 65536):
            pass
        os.close(r)
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    return {"tasks": n, "rate": round(n / elapsed, 1), "wall_s": round(elapsed, 3)}


def script_interpreter(script: str) -> str:
    """The interpreter a console script runs on (its ``#!`` line), else this one: the
    floor of a hostctl command is that interpreter's bare start, not whatever ``python3``
    the PATH finds first (a version manager's shim costs more than the interpreter)."""
    try:
        with open(script, "rb") as fh:
            first = fh.readline(4096)
    except OSError:
        return sys.executable
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    return words[0] if words and os.access(words[0], os.X_OK) else sys.executable


def floor_interpreter(n: int, gap: tuple[float, float], python: str = sys.executable
                      ) -> dict[str, Any]:
    """A bare interpreter start and exit: ``python -c pass``, ``python`` being the
    interpreter hostctl's console script runs on (see :func:`script_interpreter`)."""

    def one(_: int) -> float:
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        return (time.perf_counter() - t0) * 1000

    return timed(n, gap, 4, one)


# -- redis and rq ---------------------------------------------------------------------------


class Redis:
    def __init__(self, root: Path, procs: Processes) -> None:
        root.mkdir(parents=True, exist_ok=True)
        from redis import Redis as Client

        self.port = free = _free_port()
        self.proc = procs.start(
            ["redis-server", "--port", str(free), "--bind", "127.0.0.1", "--dir", str(root),
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            log=root / "redis.log")
        self.url = f"redis://127.0.0.1:{free}/0"
        self.conn = Client(port=free)
        wait_for(self._ping, 10, 0.02, "redis-server to answer")

    def _ping(self) -> bool:
        try:
            return bool(self.conn.ping())
        except Exception:
            return False


def _free_port() -> int:
    from common import free_port

    return free_port()


class Rq:
    def __init__(self, root: Path, procs: Processes, redis: Redis, simple: bool) -> None:
        from rq import Queue

        self.root = root
        self.procs = procs
        self.redis = redis
        self.simple = simple
        self.name = "rq SimpleWorker" if simple else "rq Worker"
        self.queue = Queue(QUEUE, connection=redis.conn)
        root.mkdir(parents=True, exist_ok=True)

    def worker(self, wait: bool = True) -> subprocess.Popen[bytes]:
        from rq import Worker

        before = Worker.count(connection=self.redis.conn)
        argv = [script("rq"), "worker", "-u", self.redis.url, "-P", str(BENCH_DIR)]
        if self.simple:
            argv += ["-w", "rq.worker.SimpleWorker"]
        proc = self.procs.start([*argv, QUEUE], log=self.root / "worker.log")
        if not wait:
            return proc
        wait_for(lambda: Worker.count(connection=self.redis.conn) > before, 30, 0.02,
                 "the rq worker to register")
        time.sleep(0.3)
        return proc

    def pickup(self, n: int, gap: tuple[float, float]) -> dict[str, Any]:
        import jobs
        from rq.job import JobStatus

        self.redis.conn.flushdb()
        proc = self.worker()

        def one(i: int) -> float:
            path = self.root / f"pickup.{i}"
            pipe = self.redis.conn.pipeline()
            job = self.queue.enqueue_call(jobs.stamp, args=(str(path),), pipeline=pipe)
            t0 = time.time_ns()
            pipe.execute()  # the job is visible to the worker from here on
            stamp = wait_stamp(path)
            wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, 0.002,
                     "the job to finish")
            return (stamp - t0) / 1e6

        try:
            return timed(n, gap, 1, one)
        finally:
            self.procs.stop(proc)

    def end_to_end(self, n: int, gap: tuple[float, float]) -> dict[str, Any]:
        self.redis.conn.flushdb()
        proc = self.worker()
        cli = []

        def one(i: int) -> float:
            path = self.root / f"e2e.{i}"
            argv = [script("rq"), "enqueue", "-u", self.redis.url, "-P", str(BENCH_DIR),
                    "-q", QUEUE, "--quiet", "jobs.stamp", str(path)]
            t0 = time.time_ns()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            cli.append((time.time_ns() - t0) / 1e6)
            return (wait_stamp(path) - t0) / 1e6

        try:
            return {**timed(n, gap, 2, one), "cli_exit": summarize(cli)}
        finally:
            self.procs.stop(proc)

    def drain(self, n: int, workers: int) -> dict[str, Any]:
        import jobs
        from rq import Queue

        self.redis.conn.flushdb()
        self.queue.enqueue_many([Queue.prepare_data(jobs.noop) for _ in range(n)])
        registry = self.queue.finished_job_registry
        procs = [self.worker(wait=False) for _ in range(workers)]
        try:
            result = watch_drain(lambda: registry.count, n, 60 + n / 20)
        finally:
            for proc in procs:
                self.procs.stop(proc)
        failed = self.queue.failed_job_registry.count
        return {**result, "workers": workers, "failed": failed}

    def idle_worker(self) -> subprocess.Popen[bytes]:
        self.redis.conn.flushdb()
        return self.worker()

    def kill9(self) -> dict[str, Any]:
        import jobs

        self.redis.conn.flushdb()
        proc = self.worker()
        first, second = self.root / "kill.a", self.root / "kill.b"
        victim = self.queue.enqueue(jobs.hold, str(first))
        behind = self.queue.enqueue(jobs.stamp, str(second))
        stamp = wait_stamp(first)
        time.sleep(0.2)
        kill9_tree(proc.pid)
        proc.wait()
        self.procs.stop(proc)
        fresh = self.worker()
        try:
            ran = _ran_within(second, 15)
            time.sleep(max(0.0, 5 - ran[1]) if ran[0] else 0)
            rerun = read_stamp(first) not in (None, stamp)
            return {"interrupted_status": _status(victim), "interrupted_rerun": rerun,
                    "behind_ran": ran[0], "behind_status": _status(behind),
                    "observed_s": 15 if not ran[0] else round(max(5.0, ran[1]), 1)}
        finally:
            self.procs.stop(fresh)


def _status(job: Any) -> str:
    status = job.get_status(refresh=True)
    return str(getattr(status, "value", status))


def _ran_within(path: Path, timeout: float) -> tuple[bool, float]:
    started = time.monotonic()
    try:
        wait_for(lambda: read_stamp(path), timeout, 0.02, "the task behind")
        return True, time.monotonic() - started
    except TimeoutError:
        return False, timeout


# -- huey ---------------------------------------------------------------------------------


class Huey:
    name = "huey SqliteHuey"

    def __init__(self, root: Path, procs: Processes) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.procs = procs
        os.environ["HOSTCTL_BENCH_HUEY_DB"] = str(root / "huey.db")
        import huey_app

        self.app = huey_app
        self.visible: list[int] = []
        storage = huey_app.huey.storage
        real = storage.enqueue

        def enqueue(data: bytes, priority: int | None = None) -> None:
            real(data, priority)
            self.visible.append(time.time_ns())  # committed: visible to the consumer

        storage.enqueue = enqueue

    def consumer(self, workers: int = 1, wait: bool = True) -> subprocess.Popen[bytes]:
        log = self.root / "consumer.log"
        log.write_bytes(b"")
        env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
        proc = self.procs.start([script("huey_consumer"), "huey_app.huey", "-w", str(workers)],
                                env=env, cwd=BENCH_DIR, log=log)
        if not wait:
            return proc
        wait_for(lambda: b"consumer started" in log.read_bytes().lower(), 30, 0.02,
                 "the huey consumer to start")
        time.sleep(0.3)
        return proc

    def pickup(self, n: int, gap: tuple[float, float]) -> dict[str, Any]:
        self.app.huey.flush()
        proc = self.consumer()

        def one(i: int) -> float:
            path = self.root / f"pickup.{i}"
            self.app.stamp(str(path))
            return (wait_stamp(path) - self.visible[-1]) / 1e6

        try:
            return timed(n, gap, 1, one)
        finally:
            self.procs.stop(proc)

    def drain(self, n: int, workers: int) -> dict[str, Any]:
        self.app.huey.flush()
        for _ in range(n):
            self.app.noop()
        procs = [self.consumer(workers, wait=False)]
        try:
            result = watch_drain(lambda: n - self.app.huey.pending_count(), n, 60 + n / 20)
        finally:
            for proc in procs:
                self.procs.stop(proc)
        return {**result, "workers": workers, "note": "dequeued, not finished"}

    def idle_worker(self) -> subprocess.Popen[bytes]:
        self.app.huey.flush()
        return self.consumer()

    def kill9(self) -> dict[str, Any]:
        self.app.huey.flush()
        proc = self.consumer()
        first, second = self.root / "kill.a", self.root / "kill.b"
        self.app.hold(str(first))
        self.app.stamp(str(second))
        stamp = wait_stamp(first)
        time.sleep(0.2)
        kill9_tree(proc.pid)
        proc.wait()
        self.procs.stop(proc)
        fresh = self.consumer()
        try:
            ran = _ran_within(second, 15)
            time.sleep(max(0.0, 5 - ran[1]) if ran[0] else 0)
            rerun = read_stamp(first) not in (None, stamp)
            return {"interrupted_rerun": rerun, "behind_ran": ran[0],
                    "interrupted_status": "gone (dequeued before it ran)" if not rerun else "",
                    "observed_s": 15 if not ran[0] else round(max(5.0, ran[1]), 1)}
        finally:
            self.procs.stop(fresh)


# -- nq -----------------------------------------------------------------------------------


class Nq:
    name = "nq"

    def __init__(self, root: Path, procs: Processes) -> None:
        self.dir = root / "queue"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = procs
        self.env = {**os.environ, "NQDIR": str(self.dir)}

    def submit(self, argv: list[str] | tuple[str, ...], *flags: str) -> tuple[Path, int]:
        t0 = time.time_ns()
        out = subprocess.run(["nq", *flags, *argv], env=self.env, check=True,
                             stdout=subprocess.PIPE).stdout
        return self.dir / out.decode().strip(), t0

    def done(self, path: Path) -> bool:
        try:
            return b"[exited" in path.read_bytes()
        except FileNotFoundError:
            return False

    def pickup(self, n: int, gap: tuple[float, float]) -> dict[str, Any]:
        """nq has no worker: submitting starts the job, so this is also end-to-end."""

        def one(_: int) -> float:
            path, t0 = self.submit(STAMP_ARGV)
            stamp = wait_stamp(path)
            wait_for(lambda: self.done(path), 30, 0.002, "the nq job to end")
            return (stamp - t0) / 1e6

        return timed(n, gap, 1, one)

    def drain(self, n: int) -> dict[str, Any]:
        """A first job blocks on a fifo while ``n`` jobs are queued behind it."""
        fifo = self.dir.parent / "gate"
        if not fifo.exists():
            os.mkfifo(fifo)
        earlier = set(os.listdir(self.dir))
        self.submit(["sh", "-c", f"read x < {fifo}"], "-c", "-q")
        for _ in range(n):
            self.submit(NOOP_ARGV, "-c", "-q")
        with open(fifo, "w") as gate:
            gate.write("go\n")

        def done() -> int:
            return n - sum(1 for name in os.listdir(self.dir)
                           if name.startswith(",") and name not in earlier)

        result = watch_drain(done, n, 60 + n / 20)
        return {**result, "workers": 1}

    def kill9(self) -> dict[str, Any]:
        first, _ = self.submit(["sh", "-c", HOLD_SH])
        second, _ = self.submit(STAMP_ARGV)
        stamp = wait_stamp(first)
        time.sleep(0.2)
        kill9_tree(*find_pids_env(f"NQDIR={self.dir}"))
        ran = _ran_within(second, 5)
        return {"interrupted_rerun": read_stamp(first) not in (None, stamp),
                "interrupted_status": "output file without an exit line",
                "behind_ran": ran[0], "observed_s": 5,
                "note": "no daemon to restart: a queued job is a waiting nq process"}


def find_pids_env(marker: str) -> list[int]:
    """Every process whose environment holds ``marker``, whatever its executable."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if marker.encode() in fh.read().split(b"\0"):
                        out.append(int(name))
            except OSError:
                continue
    return out


# -- task-spooler -------------------------------------------------------------------------


class Tsp:
    name = "task-spooler"

    def __init__(self, root: Path, procs: Processes) -> None:
        self.root = root
        self.out = root / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self.socket = root / "socket"
        self.procs = procs
        self.env = {**os.environ, "TS_SOCKET": str(self.socket), "TMPDIR": str(self.out),
                    "TS_MAXCONN": "10000", "TS_SLOTS": "1"}
        self.exe = os.path.realpath(script("tsp"))
        procs.at_exit(self.kill_server)

    def tsp(self, *args: str) -> str:
        return subprocess.run(["tsp", *args], env=self.env, check=True,
                              stdout=subprocess.PIPE).stdout.decode().strip()

    def kill_server(self) -> None:
        kill9_tree(*find_pids_env(f"TS_SOCKET={self.socket}"))

    def server_pid(self) -> int:
        self.tsp("-S", "1")  # starts the server if needed
        pids = find_pids(self.exe, f"TS_SOCKET={self.socket}")
        if len(pids) != 1:
            raise RuntimeError(f"expected one tsp server, found {pids}")
        return pids[0]

    def outputs(self) -> set[str]:
        return {n for n in os.listdir(self.out) if n.startswith("ts-out.")}

    def pickup(self, n: int, gap: tuple[float, float]) -> dict[str, Any]:
        """tsp's client runs the job when the server says so: this is also end-to-end."""
        self.server_pid()
        seen = self.outputs()

        def one(_: int) -> float:
            t0 = time.time_ns()
            job = self.tsp(*STAMP_ARGV)

            def new_output() -> Path | None:
                fresh = self.outputs() - seen
                return self.out / fresh.pop() if fresh else None

            path = wait_for(new_output, 30, 0.002, "the tsp job's output")
            seen.add(path.name)
            stamp = wait_stamp(path)
            wait_for(lambda: self.tsp("-s", job) == "finished", 30, 0.005, "the job to end")
            return (stamp - t0) / 1e6

        return timed(n, gap, 1, one)

    def drain(self, n: int, slots: int) -> dict[str, Any]:
        """A first job blocks on a fifo while ``n`` jobs are queued behind it; each job's
        output file appears when it starts. Each queued job is a client process holding a
        connection to the server, which takes at most 1,000: 900 jobs at most."""
        n = min(n, MAX_TSP_QUEUED)
        self.tsp("-C")
        self.tsp("-S", "1")
        fifo = self.root / "gate"
        if not fifo.exists():
            os.mkfifo(fifo)
        before = len(self.outputs())
        self.tsp("sh", "-c", f"read x < {fifo}")
        for _ in range(n):
            subprocess.run(["tsp", *NOOP_ARGV], env=self.env, check=True,
                           stdout=subprocess.DEVNULL)
        self.tsp("-S", str(slots))
        with open(fifo, "w") as gate:
            gate.write("go\n")
        result = watch_drain(lambda: len(self.outputs()) - before - 1, n, 60 + n / 20)
        self.tsp("-S", "1")
        return {**result, "workers": slots, "note": "started, not finished"}

    def kill9(self) -> dict[str, Any]:
        self.server_pid()
        seen = self.outputs()
        self.tsp("sh", "-c", HOLD_SH)
        first = wait_for(lambda: self.outputs() - seen, 10, 0.005, "the held job to start")
        first_path = self.out / first.pop()
        stamp = wait_stamp(first_path)
        time.sleep(0.2)
        seen = self.outputs()
        self.tsp(*STAMP_ARGV)
        self.kill_server()
        self.server_pid()
        ran = _ran_within_outputs(self, seen, 5)
        return {"interrupted_rerun": read_stamp(first_path) not in (None, stamp),
                "interrupted_status": "gone with the server",
                "behind_ran": ran, "observed_s": 5,
                "note": "the queue lives in the server's memory"}


def _ran_within_outputs(tsp: Tsp, seen: set[str], timeout: float) -> bool:
    try:
        wait_for(lambda: tsp.outputs() - seen, timeout, 0.05, "the job behind")
        return True
    except TimeoutError:
        return False


# -- Aegir's polling loop -----------------------------------------------------------------


class PollLoop:
    name = "1 s polling loop"

    def __init__(self, root: Path, procs: Processes) -> None:
        self.root = root
        self.folder = root / "queue"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.procs = procs

    def start(self) -> subprocess.Popen[bytes]:
        proc = self.procs.start([sys.executable, str(BENCH_DIR / "poll_loop.py"),
                                 str(self.folder), "1"], log=self.root / "loop.log")
        time.sleep(0.5)
        return proc

    def pickup(self, n: int, gap: tuple[float, float]) -> dict[str, Any]:
        proc = self.start()

        def one(i: int) -> float:
            out = self.root / f"pickup.{i}"
            staged = self.folder / f".{i}"
            staged.write_text(json.dumps({"argv": list(STAMP_ARGV), "out": str(out)}))
            t0 = time.time_ns()
            os.rename(staged, self.folder / f"{i:06d}")
            return (wait_stamp(out) - t0) / 1e6

        try:
            return timed(n, gap, 1, one)
        finally:
            self.procs.stop(proc)
