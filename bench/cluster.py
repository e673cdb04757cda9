"""The cluster's benchmark: hostctl on PostgreSQL beside hostctl's spool, Celery on
RabbitMQ (Aegir 5's choice) and RQ on Redis, on one machine, in one run.

Usage (from the repository; root installs and starts the servers)::

    python3 bench/cluster.py            # the full run (a few minutes)
    python3 bench/cluster.py --quick    # hostctl's spool and cluster only, small counts
    python3 bench/cluster.py --json r.json --no-doc
    python3 bench/cluster.py --pickup-only 300   # the cluster's and Celery's pickups

A full run installs what it compares with when missing: the Debian packages postgresql,
rabbitmq-server and redis-server (apt-get, as root) and the PyPI packages celery and rq
(pinned, into this interpreter). It starts its own PostgreSQL (initdb in a temp folder,
as the postgres user when run as root; default settings, fsync on), its own RabbitMQ
node and redis-server on free loopback ports, and stops everything it started.

Every system runs the same commands (``sh -c``): ``stamp`` writes the wall clock
(``date +%s%N``) into a file named for the task, ``nap`` sleeps 100 ms and then leaves a
file. What is measured (milliseconds; medians and percentiles):

pickup     an idle worker waiting; a task published -> its command started, for a few
           hundred rounds at random gaps. "Published" is the moment just before the call
           that queues it: Spool.publish and PgQueue.publish (in-process, as ``task add``
           does), Celery's ``apply_async``, RQ's ``Queue.enqueue``. All the systems'
           workers wait at once and each round gives one task to each, in a random
           order, so that they meet the same moments of the machine; hostctl's
           latencies over each peer's, round by round, give a median ratio as well.
e2e        the enqueue command started (``hostctl task add``, ``celery call``,
           ``rq enqueue``) -> the command started; hostctl's bytecode written first,
           as installing it writes it (the peers' is, by pip).
drain      1, 2 and 4 worker processes of one slot each, started and idle; then 40
           ``nap`` tasks per worker queued at once (distinct contexts for hostctl):
           tasks per second between 10 % and 90 % done, from when each task's file was
           written, and the scaling, rate(N) / rate(1). The floor is 10 tasks per second
           per worker (100 ms each, nothing else).

Workers as their documentation suggests for long tasks: hostctl ``wait-queue
--concurrency 1``; ``celery worker --concurrency 1`` (prefork) with a prefetch multiplier
of 1 and late acknowledgement; ``rq worker`` (forking). Results: a JSON document
(bench/results/cluster.json) and a markdown table spliced into docs/cluster.md between
its generated-part markers (``--no-doc`` to skip). Timings are reported, never judged:
the goals (pickup p50 <= 10 ms, scaling >= 0.9 N) are listed as met or missed.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from common import (  # noqa: E402
    compile_hostctl,
    free_port,
    install_debian,
    install_pypi,
    machine,
    median,
    note,
    summarize,
    wait_for,
)

PYPI = {"celery": "5.5.3", "rq": "3.0.0"}
DEBIAN = {"rabbitmq-server": "rabbitmq-server", "redis-server": "redis-server",
          "initdb": "postgresql"}
from jobs_cluster import NAP_SH, STAMP_SH  # noqa: E402

MARK_BEGIN = "<!-- bench/cluster.py: begin -->"
MARK_END = "<!-- bench/cluster.py: end -->"


def sh(script: str, where: str, name: str) -> list[str]:
    return ["sh", "-c", script, "sh", where, name]


# -- the servers ------------------------------------------------------------------------

def install() -> None:
    # initdb lives under /usr/lib/postgresql/VERSION/bin, off the PATH
    commands = {k: v for k, v in DEBIAN.items() if k != "initdb"}
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        commands["initdb"] = DEBIAN["initdb"]
    install_debian(commands)
    install_pypi(PYPI)


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    def up() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, timeout, 0.1, f"port {port}")


@contextmanager
def postgres(base: Path) -> Iterator[str]:
    """A private PostgreSQL (default settings); the DSN of a database for hostctl."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = str(found[-1]) if found else shutil.which("initdb") or "initdb"
    bindir = Path(initdb).parent
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
    data = base / "pg"
    base.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(base, entry.pw_uid, entry.pw_gid)
    run: dict[str, Any] = {"user": user, "cwd": "/", "check": True,
                           "capture_output": True}
    subprocess.run([initdb, "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8"],
                   **run)
    port = free_port()
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "pg.log"),
                    "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
                    "-c max_connections=200", "-w", "start"], **run)
    try:
        subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "bench", "-d", "postgres", "-c", "CREATE DATABASE hostctl"], **run)
        # as docs/cluster.md sets one up: no role but hostctl's may connect to it
        subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "bench", "-d", "postgres", "-c",
                        "REVOKE CONNECT, TEMPORARY ON DATABASE hostctl FROM PUBLIC"], **run)
        yield f"host=127.0.0.1 port={port} dbname=hostctl user=bench"
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       user=user, cwd="/", capture_output=True, check=False)


@contextmanager
def rabbitmq(base: Path) -> Iterator[str]:
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    (base / "plugins").write_text("[].\n")
    env = {**os.environ, "HOME": str(base), "RABBITMQ_NODENAME": f"bench{port}@localhost",
           "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(free_port()), "RABBITMQ_MNESIA_BASE": str(base / "db"),
           "RABBITMQ_LOG_BASE": str(base / "log"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
           "RABBITMQ_CONFIG_FILE": str(base / "none")}
    server = shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin:" +
                          os.environ.get("PATH", "")) or "rabbitmq-server"
    proc = subprocess.Popen([server], env=env, stdout=open(base / "out.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, 120)
        yield f"amqp://guest:guest@127.0.0.1:{port}//"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["pkill", "-f", f"bench{port}@localhost"], check=False)


@contextmanager
def redis(base: Path) -> Iterator[str]:
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(base)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


# -- the systems --------------------------------------------------------------------------

class System:
    """One queue: publish a stamp or a nap, start and stop workers, the CLI's enqueue."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self.workers: list[subprocess.Popen[bytes]] = []

    def publish(self, kind: str, name: str, context: int) -> None:
        raise NotImplementedError

    def worker_argv(self) -> list[str]:
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self, proc: subprocess.Popen[bytes]) -> bool:
        return True

    def enqueue_argv(self, name: str) -> list[str]:
        raise NotImplementedError

    def start_workers(self, n: int) -> None:
        for i in range(n):
            log = open(self.root / f"worker{len(self.workers)}.log", "ab")  # noqa: SIM115
            proc = subprocess.Popen(self.worker_argv(), env=self.worker_env(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(BENCH_DIR))
            log.close()
            self.workers.append(proc)
            wait_for(lambda p=proc: self.ready(p) or p.poll() is not None, 60, 0.05,
                     f"{self.name} worker {i}")
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name}: a worker exited at once: " +
                                   (self.root / f"worker{len(self.workers) - 1}.log")
                                   .read_text()[-2000:])

    def stop_workers(self) -> None:
        for proc in self.workers:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.workers = []

    def clear(self) -> None:
        for f in self.out.iterdir():
            f.unlink()


class Hostctl(System):
    def __init__(self, root: Path, dsn: str = "") -> None:
        super().__init__(root)
        self.name = "hostctl cluster (PostgreSQL)" if dsn else "hostctl spool"
        self.home_path = root / "home"
        self.home_path.mkdir(mode=0o700)
        import tomli_w

        config: dict[str, Any] = {
            "tasks": {"stamp": {"command": sh(STAMP_SH, str(self.out), "{task_id}"),
                                "context_types": ["server"]},
                      "nap": {"command": sh(NAP_SH, str(self.out), "{task_id}"),
                              "context_types": ["server"]}},
            "worker": {"concurrency": 1},
            "queues": {"cron": {"enabled": False}}}
        if dsn:
            config["cluster"] = {"dsn": dsn}
        (self.home_path / "config.toml").write_text(tomli_w.dumps(config))
        from hostctl.paths import Paths
        from hostctl.runners.home import Home

        if dsn:
            from hostctl.runners import cluster

            cluster.init(dsn)
        self.home = Home(Paths(self.home_path))
        self.queue = self.home.writable()
        self.contexts = [f"@c{i:04d}" for i in range(400)]
        for name in self.contexts:
            self.home.store.save(name, {}, "server")

    def publish(self, kind: str, name: str, context: int) -> str:
        from hostctl.queues.model import Envelope, new_id
        from hostctl.times import utc_iso

        env = Envelope(new_id(), kind, self.contexts[context % len(self.contexts)], {}, {},
                       5, utc_iso())
        self.queue.publish(env, dedup=False)
        return env.id

    def worker_argv(self) -> list[str]:
        exe = Path(sys.executable).with_name("hostctl")
        return [str(exe) if exe.exists() else "hostctl", "wait-queue", "--concurrency", "1",
                "--max-runtime", "3600"]

    def worker_env(self) -> dict[str, str]:
        return {**os.environ, "HOSTCTL_HOME": str(self.home_path)}

    def ready(self, proc: subprocess.Popen[bytes]) -> bool:
        log = self.home_path / "logs" / "hostctl.log"
        return log.exists() and f"wait-queue {proc.pid} started" in log.read_text()

    def enqueue_argv(self, name: str) -> list[str]:
        return [self.worker_argv()[0], "task", "add", "stamp", self.contexts[0]]


class Celery(System):
    name = "Celery 5.5 (RabbitMQ)"

    def __init__(self, root: Path, broker: str) -> None:
        super().__init__(root)
        self.broker = broker
        os.environ["HOSTCTL_BENCH_BROKER"] = broker
        import celery_app

        self.app = celery_app

    def publish(self, kind: str, name: str, context: int) -> str:
        task = self.app.stamp if kind == "stamp" else self.app.nap
        task.apply_async(args=[str(self.out), name])
        return name

    def worker_argv(self) -> list[str]:
        exe = Path(sys.executable).with_name("celery")
        return [str(exe) if exe.exists() else "celery", "-A", "celery_app", "worker",
                "--concurrency", "1", "--pool", "prefork", "-Q", "bench", "-l", "warning",
                "--without-gossip", "--without-mingle", "-n", f"w{len(self.workers)}@%h"]

    def worker_env(self) -> dict[str, str]:
        return {**os.environ, "HOSTCTL_BENCH_BROKER": self.broker,
                "PYTHONPATH": str(BENCH_DIR)}

    def ready(self, proc: subprocess.Popen[bytes]) -> bool:
        replies = self.app.app.control.ping(timeout=0.5) or []
        return len(replies) >= len(self.workers)

    def enqueue_argv(self, name: str) -> list[str]:
        exe = Path(sys.executable).with_name("celery")
        return [str(exe) if exe.exists() else "celery", "-A", "celery_app", "call",
                "celery_app.stamp", "--args", json.dumps([str(self.out), name]),
                "--queue", "bench"]


class Rq(System):
    name = "RQ 3.0 (Redis)"

    def __init__(self, root: Path, url: str) -> None:
        super().__init__(root)
        self.url = url
        import jobs_cluster
        from redis import Redis
        from rq import Queue

        self.jobs = jobs_cluster
        self.redis = Redis.from_url(url)
        self.q = Queue("bench", connection=self.redis)

    def publish(self, kind: str, name: str, context: int) -> str:
        fn = self.jobs.stamp if kind == "stamp" else self.jobs.nap
        self.q.enqueue(fn, str(self.out), name)
        return name

    def worker_argv(self) -> list[str]:
        exe = Path(sys.executable).with_name("rq")
        return [str(exe) if exe.exists() else "rq", "worker", "-u", self.url, "-P",
                str(BENCH_DIR), "bench"]

    def ready(self, proc: subprocess.Popen[bytes]) -> bool:
        from rq import Worker

        return len(Worker.all(connection=self.redis)) >= len(self.workers)

    def enqueue_argv(self, name: str) -> list[str]:
        exe = Path(sys.executable).with_name("rq")
        return [str(exe) if exe.exists() else "rq", "enqueue", "-u", self.url, "-P",
                str(BENCH_DIR), "-q", "bench", "jobs_cluster.stamp", str(self.out), name]


# -- the measures -------------------------------------------------------------------------

def stamp_of(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def pickup(systems: list[System], n: int, seed: int) -> dict[str, dict[str, Any]]:
    """Every system's idle worker waits at once; each round publishes one task to each
    system in a random order, one after the other, so that all of them meet the same
    moments of a shared machine (its noise moves the medians of runs made one after
    the other by more than the differences between them). A system that fails is
    reported and taken out of the rounds."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    lat: dict[str, list[float]] = {}
    rounds: dict[str, dict[int, float]] = {s.name: {} for s in systems}
    live: list[System] = []
    try:
        for system in systems:
            try:
                system.clear()
                system.start_workers(1)
            except Exception as exc:
                out[system.name] = {"error": one_line(exc)}
                continue
            live.append(system)
            lat[system.name] = []
        time.sleep(1.0)  # idle: the workers wait
        for i in range(n):
            for system in rng.sample(live, len(live)):
                time.sleep(rng.uniform(0.02, 0.08))
                name = f"p{i}"
                try:
                    t0 = time.time_ns()
                    task = system.publish("stamp", name, i)
                    path = system.out / (task if isinstance(system, Hostctl) else name)
                    ran = wait_for(lambda p=path: stamp_of(p), 30, 0.0005,
                                   f"stamp {name}")
                except Exception as exc:
                    out[system.name] = {"error": one_line(exc)}
                    live.remove(system)
                    continue
                lat[system.name].append((ran - t0) / 1e6)
                rounds[system.name][i] = lat[system.name][-1]
    finally:
        for system in systems:
            with suppress(Exception):
                system.stop_workers()
    for name, values in lat.items():
        out.setdefault(name, summarize(values))
    for mine in systems:  # hostctl's latency over each peer's, round by round
        if not mine.name.startswith("hostctl") or "error" in out[mine.name]:
            continue
        out[mine.name]["ratio_to"] = {
            peer.name: round(median([rounds[mine.name][i] / rounds[peer.name][i]
                                     for i in rounds[mine.name] if i in rounds[peer.name]]),
                             3)
            for peer in systems if peer is not mine and "error" not in out[peer.name]}
    return out


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def e2e(system: System, n: int) -> dict[str, Any]:
    system.clear()
    system.start_workers(1)
    lat = []
    try:
        for i in range(n):
            before = set(os.listdir(system.out))
            name = f"e{i}"
            t0 = time.time_ns()
            res = subprocess.run(system.enqueue_argv(name), env=system.worker_env(),
                                 capture_output=True, cwd=str(BENCH_DIR))
            if res.returncode != 0:
                raise RuntimeError(f"{system.name}: enqueue failed: {res.stderr[-500:]!r}")

            def found(before: set[str] = before) -> int | None:
                for new in set(os.listdir(system.out)) - before:
                    value = stamp_of(system.out / new)
                    if value:
                        return value
                return None

            lat.append((wait_for(found, 30, 0.001, f"e2e {name}") - t0) / 1e6)
    finally:
        system.stop_workers()
    return summarize(lat)


def drain(system: System, workers: int, per_worker: int) -> dict[str, Any]:
    """The workers started and idle, the tasks queued at once (far faster than they
    run): the rate between 10 % and 90 % done, from when each task's file was written
    (its end), so that neither the workers' start nor the polling counts."""
    system.clear()
    n = workers * per_worker
    system.start_workers(workers)
    try:
        time.sleep(0.5)
        began = time.time()
        for i in range(n):
            system.publish("nap", f"d{i}", i)
        wait_for(lambda: len(os.listdir(system.out)) >= n, 300, 0.01,
                 f"{system.name}: {n} tasks")
    finally:
        system.stop_workers()
    ends = sorted(os.stat(system.out / name).st_mtime for name in os.listdir(system.out))
    first, last = n * 10 // 100, n * 90 // 100
    span = ends[last - 1] - ends[first - 1]
    return {"workers": workers, "tasks": n, "rate": round((last - first) / span, 2),
            "first_done_s": round(ends[0] - began, 2)}


def measure(system: System, quick: bool) -> dict[str, Any]:
    """``task add`` end to end and the drains (the pickup is measured for all at once)."""
    out: dict[str, Any] = {}
    note(f"{system.name}: e2e")
    out["e2e"] = e2e(system, 10 if quick else 40)
    out["drain"] = []
    for workers in (1, 2, 4):
        note(f"{system.name}: drain with {workers} worker(s)")
        out["drain"].append(drain(system, workers, 20 if quick else 40))
    base = out["drain"][0]["rate"]
    for row in out["drain"]:
        row["scaling"] = round(row["rate"] / base, 2) if base else None
    return out


# -- the report ---------------------------------------------------------------------------

def table(results: list[dict[str, Any]]) -> str:
    lines = ["| system | pickup p50 | p90 | p99 | `task add` e2e p50 | drain 1 / 2 / 4 "
             "workers (tasks/s) | scaling 2 / 4 |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | |")
            continue
        p, e, d = r["pickup"], r["e2e"], r["drain"]
        lines.append(f"| {r['name']} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} | "
                     f"{e['p50']:.0f} | {' / '.join(str(x['rate']) for x in d)} | "
                     f"{d[1]['scaling']} / {d[2]['scaling']} |")
    return "\n".join(lines)


def goals(results: list[dict[str, Any]]) -> list[str]:
    mine = next((r for r in results if r["name"].startswith("hostctl cluster")), None)
    if mine is None or "error" in mine:
        return ["the cluster was not measured"]
    out = []
    p50 = mine["pickup"]["p50"]
    out.append(f"pickup p50 <= 10 ms: {'met' if p50 <= 10 else 'missed'} ({p50:.1f} ms)")
    for row in mine["drain"][1:]:
        want = 0.9 * row["workers"]
        out.append(f"drain scaling with {row['workers']} workers >= {want:.1f}: "
                   f"{'met' if row['scaling'] >= want else 'missed'} ({row['scaling']})")
    for peer in results:
        if peer is mine or "error" in peer or not peer["name"][0].isupper():
            continue
        ahead = (p50 < peer["pickup"]["p50"] and
                 mine["drain"][2]["rate"] >= peer["drain"][2]["rate"])
        ratio = mine["pickup"].get("ratio_to", {}).get(peer["name"])
        out.append(f"ahead of {peer['name']} (pickup p50 and 4-worker drain): "
                   f"{'met' if ahead else 'missed'} (pickup p50 {p50:.1f} vs "
                   f"{peer['pickup']['p50']:.1f} ms, median of the rounds' ratios "
                   f"{ratio}; drain {mine['drain'][2]['rate']} vs "
                   f"{peer['drain'][2]['rate']} tasks/s)")
    return out


def splice(doc: Path, text: str) -> None:
    body = doc.read_text()
    start, end = body.find(MARK_BEGIN), body.find(MARK_END)
    if start < 0 or end < 0:
        raise SystemExit(f"bench: {doc} has no {MARK_BEGIN} ... {MARK_END} part")
    doc.write_text(body[:start + len(MARK_BEGIN)] + "\n" + text + "\n" + body[end:])


def pickup_only(rounds: int, json_path: str) -> int:
    """The cluster's and Celery's pickups alone, side by side: the quick look at a change
    of the cluster's path to a command."""
    install()
    with tempfile.TemporaryDirectory(prefix="hostctl-bench-cluster-", dir="/tmp") as tmp, \
            ExitStack() as services:
        root = Path(tmp)
        os.chmod(root, 0o755)
        systems: list[System] = [
            Hostctl(root / "cluster", services.enter_context(postgres(root / "postgres"))),
            Celery(root / "celery", services.enter_context(rabbitmq(root / "rabbitmq")))]
        found = pickup(systems, rounds, 1)
    Path(json_path).write_text(json.dumps(found, indent=2) + "\n")
    for name, row in found.items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=str(BENCH_DIR / "results" / "cluster.json"))
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--pickup-only", type=int, default=0, metavar="ROUNDS",
                        help="only the pickup, in this many rounds, of hostctl's cluster "
                             "and Celery (no document, no drain)")
    args = parser.parse_args(argv)
    compile_hostctl()  # `task add` starts as an installed hostctl's would
    if args.pickup_only:
        return pickup_only(args.pickup_only, args.json)
    if not args.quick:
        install()
    results: list[dict[str, Any]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="hostctl-bench-cluster-", dir="/tmp") as tmp, \
            ExitStack() as services:
        root = Path(tmp)
        os.chmod(root, 0o755)
        systems: list[System] = []

        def make(build: Callable[[], System], name: str) -> None:
            nonlocal failed
            try:
                systems.append(build())
            except Exception as exc:  # one system's failure is reported; the others run
                failed = True
                note(f"{name} failed: {exc}")
                results.append({"name": name, "error": one_line(exc)})

        make(lambda: Hostctl(root / "spool"), "hostctl spool")
        make(lambda: Hostctl(root / "cluster",
                             services.enter_context(postgres(root / "postgres"))),
             "hostctl cluster (PostgreSQL)")
        if not args.quick:
            make(lambda: Celery(root / "celery",
                                services.enter_context(rabbitmq(root / "rabbitmq"))),
                 "Celery 5.5 (RabbitMQ)")
            make(lambda: Rq(root / "rq", services.enter_context(redis(root / "redis"))),
                 "RQ 3.0 (Redis)")
        note("pickup: " + ", ".join(s.name for s in systems) + " in turn")
        pickups = pickup(systems, 40 if args.quick else 300, 1)
        for system in systems:
            row: dict[str, Any] = {"name": system.name}
            if "error" in pickups[system.name]:
                row["error"] = "pickup: " + pickups[system.name]["error"]
            else:
                row["pickup"] = pickups[system.name]
                try:
                    row.update(measure(system, args.quick))
                except Exception as exc:
                    row = {"name": system.name, "error": one_line(exc)}
            if "error" in row:
                failed = True
                note(f"{system.name} failed: {row['error']}")
            results.append(row)
        order = {name: i for i, name in enumerate(
            ["hostctl spool", "hostctl cluster (PostgreSQL)", "Celery 5.5 (RabbitMQ)",
             "RQ 3.0 (Redis)"])}
        results.sort(key=lambda r: order.get(r["name"], len(order)))
    doc = {"machine": machine(), "quick": args.quick, "results": results,
           "goals": goals(results)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    text = table(results) + "\n\n" + "\n".join(f"- {g}" for g in doc["goals"])
    print(text)
    if not args.no_doc and not args.quick:
        splice(REPO / "docs" / "cluster.md", text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
