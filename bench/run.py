"""hostctl's benchmark suite: how fast the queue picks up, runs and drains tasks, what an
idle worker costs, and what survives a kill -9, against peers on the same machine.

Usage (from the repository, as the user who runs hostctl; root can install the peers)::

    bash bench/run                 # the full run (about 15 minutes), all peers
    python3 bench/run.py --quick   # hostctl and the floors only, small counts (< 30 s)
    python3 bench/run.py --peers rq,nq --idle-seconds 10 --json r.json --no-doc

A full run installs what it compares with when missing: the Debian packages nq,
task-spooler and redis-server (with apt-get, as root) and the PyPI packages rq and huey
(pinned, with pip, into this interpreter). It starts its own redis-server on a free
loopback port in a temp dir and stops everything it started when it ends. ``--quick``
installs nothing and starts no peer.

What is measured, in one run (medians and percentiles; times in milliseconds):

pickup        published -> the command started, with an idle worker already running, for
              a few hundred tasks at random gaps. Every system runs the same command,
              ``date +%s%N``, which prints the wall clock the moment it runs; "published"
              is when the task becomes visible to the worker: for hostctl just before the
              link(2) of its file into spool/new/ (Spool.publish, in-process, as
              ``hostctl task add`` does); rq just before the MULTI/EXEC that pushes the
              job; huey when the SQLite commit returns; the polling loop just before the
              rename into its folder; nq and task-spooler have no separate publish step,
              so for them it is when their client is started. The floor is the command
              spawned directly.
end-to-end    the enqueue command started (``hostctl task add``, ``rq enqueue``, ``nq``,
              ``tsp``) -> the command started; the floor is ``python -c pass`` on the
              interpreter hostctl's console script runs on (its ``#!`` line).
drain         N no-op tasks (``true``) queued in advance on distinct contexts, then one
              worker, then two: tasks per second between 10 % and 90 % done; the floor
              is the command spawned N times in a row (as a one-slot worker would).
idle          CPU time and wake-ups (voluntary context switches, all threads) of each
              waiting worker over ``--idle-seconds``, all measured side by side.
claim         one claim through hostctl's Spool API with 10 ... 100,000 tasks queued.
memory        wait-queue's RSS before and after 10,000 tasks.
kill -9       the worker and its running task killed mid-task, a task queued behind on
              the same context; a fresh worker is started: what becomes of both?

Results: a JSON document (``--json``; a full run writes bench/results/latest.json) and
markdown tables spliced into docs/performance.md between its generated-part markers
(``--doc``; ``--no-doc`` to skip; ``--render JSON`` re-renders saved results).
Exit status: 0 when every section ran, 1 when one failed (the others still run; the
error is in the results), 2 for bad arguments.
Timings are reported, never judged: hostctl's targets are listed as met or missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402
import hostctl_side as hs  # noqa: E402
import report  # noqa: E402

ALL_PEERS = ("rq", "rq-simple", "huey", "nq", "tsp", "poll")


@dataclass(frozen=True)
class Settings:
    pickup: int
    pickup_gap: tuple[float, float]
    poll_pickup: int
    e2e: int
    e2e_gap: tuple[float, float]
    drain: int
    idle_s: float
    claim_sizes: tuple[int, ...]
    claim_reps: int
    memory: int
    memory_batch: int


FULL = Settings(pickup=300, pickup_gap=(0.02, 0.12), poll_pickup=40, e2e=40,
                e2e_gap=(0.05, 0.15), drain=2000, idle_s=60.0,
                claim_sizes=(10, 1000, 10_000, 100_000), claim_reps=15, memory=10_000,
                memory_batch=1000)
QUICK = Settings(pickup=15, pickup_gap=(0.01, 0.03), poll_pickup=3, e2e=3,
                 e2e_gap=(0.01, 0.03), drain=100, idle_s=2.0, claim_sizes=(10, 100, 1000),
                 claim_reps=3, memory=200, memory_batch=100)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="hostctl's benchmark suite (see the docstring).")
    parser.add_argument("--quick", action="store_true",
                        help="hostctl and the floors only, small counts, no installs")
    parser.add_argument("--peers", default=",".join(ALL_PEERS),
                        help=f"comma-separated peers (default: all: {','.join(ALL_PEERS)}; "
                             "none with --quick)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (default 60; 2 quick)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get or pip install missing peers")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--doc", type=Path, help="splice the tables into this markdown file")
    parser.add_argument("--no-doc", action="store_true", help="write no markdown")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir, print it")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="measure nothing: write the tables of saved results to --doc "
                             "(default docs/performance.md)")
    args = parser.parse_args(argv)
    peers = [] if args.quick or args.peers in ("", "none") else args.peers.split(",")
    unknown = sorted(set(peers) - set(ALL_PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(ALL_PEERS)}")
    args.peer_list = peers
    if args.render:
        args.doc = args.doc or REPO / "docs" / "performance.md"
    elif not args.quick:
        args.json = args.json or BENCH_DIR / "results" / "latest.json"
        args.doc = args.doc or REPO / "docs" / "performance.md"
    if args.no_doc:
        args.doc = None
    return args


class Run:
    """One benchmark run: its settings, temp dir, processes and results."""

    def __init__(self, settings: Settings, peers: list[str], root: Path,
                 command: str, mode: str) -> None:
        self.s = settings
        self.peers = peers
        self.root = root
        self.procs = common.Processes()
        from hostctl.files import filesystem_type

        self.results: dict[str, Any] = {
            "mode": mode, "command": command, "machine": common.machine(),
            "peers": peers, "tmp_fs": filesystem_type(root) or "?",
            "settings": settings.__dict__, "pickup": {}, "end_to_end": {}, "drain": {},
            "idle": {}, "claim": [], "memory": {}, "kill9": {}, "errors": {},
        }
        self.hb = hs.HostctlBench(root / "hostctl", self.procs)
        self._redis: Any = None
        self._peer_objects: dict[str, Any] = {}

    # -- plumbing -------------------------------------------------------------------------

    def section(self, key: str, name: str, func: Callable[[], Any]) -> Any:
        common.note(f"{key}: {name} ...")
        started = time.monotonic()
        try:
            value = func()
        except Exception as exc:
            self.results["errors"][f"{key}/{name}"] = f"{type(exc).__name__}: {exc}"
            common.note(f"{key}: {name} failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            return None
        if key in ("claim", "memory"):
            self.results[key] = value
        else:
            self.results[key][name] = value
        common.note(f"{key}: {name} done in {time.monotonic() - started:.1f} s: "
                    f"{_brief(value)}")
        return value

    def peer(self, name: str) -> Any:
        import peers

        if name not in self._peer_objects:
            folder = self.root / name
            if name in ("rq", "rq-simple"):
                if self._redis is None:
                    self._redis = peers.Redis(self.root / "redis", self.procs)
                obj: Any = peers.Rq(folder, self.procs, self._redis, simple=name == "rq-simple")
            else:
                obj = {"huey": peers.Huey, "nq": peers.Nq, "tsp": peers.Tsp,
                       "poll": peers.PollLoop}[name](folder, self.procs)
            self._peer_objects[name] = obj
        return self._peer_objects[name]

    def label(self, name: str) -> str:
        return {"rq": "rq Worker", "rq-simple": "rq SimpleWorker", "huey": "huey SqliteHuey",
                "nq": "nq", "tsp": "task-spooler", "poll": "1 s polling loop"}[name]

    # -- the sections ---------------------------------------------------------------------

    def install(self, allowed: bool) -> None:
        import_needed = {"rq", "rq-simple", "huey"} & set(self.peers)
        debian_needed = {"rq", "rq-simple", "nq", "tsp"} & set(self.peers)
        if allowed and debian_needed:
            import peers

            peers.install_debian()
        if allowed and import_needed:
            import peers

            peers.install_pypi()
        need = {"rq": ["redis-server"], "rq-simple": ["redis-server"], "nq": ["nq"],
                "tsp": ["tsp"]}
        modules = {"rq": "rq", "rq-simple": "rq", "huey": "huey"}
        for name in list(self.peers):
            missing = [cmd for cmd in need.get(name, []) if not shutil.which(cmd)]
            if name in modules and not _importable(modules[name]):
                missing.append(f"python module {modules[name]}")
            if missing:
                self.results["errors"][f"install/{name}"] = f"missing: {', '.join(missing)}"
                self.peers.remove(name)

    def setup(self) -> None:
        common.compile_hostctl()
        self.hb.setup(max(self.s.drain, min(self.s.memory_batch, 2000)))

    def pickup(self) -> None:
        s = self.s
        self.section("pickup", "hostctl", lambda: hs.pickup(self.hb, s.pickup, s.pickup_gap))
        import peers

        self.section("pickup", "floor: spawn", lambda: peers.floor_spawn(s.pickup, s.pickup_gap))
        for name in self.peers:
            obj = self.peer(name)
            n, gap = (s.poll_pickup, (0.0, 1.0)) if name == "poll" else (s.pickup, s.pickup_gap)
            self.section("pickup", self.label(name), lambda o=obj, n=n, g=gap: o.pickup(n, g))

    def end_to_end(self) -> None:
        s = self.s
        import peers

        self.section("end_to_end", "hostctl", lambda: hs.end_to_end(self.hb, s.e2e, s.e2e_gap))
        if "rq" in self.peers:
            self.section("end_to_end", "rq Worker",
                         lambda: self.peer("rq").end_to_end(s.e2e, s.e2e_gap))
        for name in ("nq", "tsp"):  # no daemon step: the pickup run is also end-to-end
            same = self.results["pickup"].get(self.label(name))
            if name in self.peers and same:
                self.results["end_to_end"][f"{self.label(name)} (the pickup run)"] = same
        self.section("end_to_end", "floor: python3 -c pass",
                     lambda: peers.floor_interpreter(
                         max(s.e2e, 10), s.e2e_gap,
                         peers.script_interpreter(self.hb.exe)))

    def drain(self) -> None:
        n = self.s.drain
        runs: dict[str, Any] = {}
        self.results["drain"]["hostctl"] = runs
        for key, workers, conc in (("1", 1, 1), ("2", 2, 1), ("1x2", 1, 2)):
            value = self.section("drain", f"hostctl {key}",
                                 lambda w=workers, c=conc: hs.drain(self.hb, n, w, c))
            self.results["drain"].pop(f"hostctl {key}", None)
            if value:
                runs[key] = value
        import peers

        value = self.section("drain", "floor: spawn 1", lambda: peers.floor_drain(n))
        self.results["drain"].pop("floor: spawn 1", None)
        if value:
            self.results["drain"]["floor: spawn"] = {"1": value}
        for name in self.peers:
            if name == "poll":
                continue
            obj = self.peer(name)
            runs = {}
            self.results["drain"][self.label(name)] = runs
            for workers in (1, 2):
                if name == "nq" and workers == 2:
                    continue  # one nq queue runs one job at a time
                value = self.section("drain", f"{self.label(name)} {workers}",
                                     lambda o=obj, w=workers, nm=name: (
                                         o.drain(n) if nm == "nq" else o.drain(n, w)))
                self.results["drain"].pop(f"{self.label(name)} {workers}", None)
                if value:
                    runs[str(workers)] = value

    def idle(self) -> None:
        self.section("idle", "all", self.measure_idle)
        self.results["idle"] = self.results["idle"].pop("all", None) or {}

    def measure_idle(self) -> dict[str, Any]:
        self.hb.reset()
        started = {"hostctl wait-queue": self.hb.start_worker()}
        if "rq" in self.peers:
            started["rq Worker"] = self.peer("rq").idle_worker()
        if "huey" in self.peers:
            started["huey consumer"] = self.peer("huey").idle_worker()
        if "poll" in self.peers:
            started["1 s polling loop"] = self.peer("poll").start()
        pids = {name: proc.pid for name, proc in started.items()}
        if self._redis is not None:
            pids["redis-server (rq's broker)"] = self._redis.proc.pid
        if "tsp" in self.peers:
            pids["task-spooler server"] = self.peer("tsp").server_pid()
        try:
            return self.sample_idle(pids)
        finally:
            for proc in started.values():
                self.procs.stop(proc)

    def sample_idle(self, pids: dict[str, int]) -> dict[str, Any]:
        """CPU time and voluntary switches over the window, and how many 100 ms slots of
        it each process ran in at all (blocking I/O inside one wake-up counts as several
        switches, but as one slot)."""
        time.sleep(2)
        before = {k: (common.cpu_ns(p), *common.context_switches(p)) for k, p in pids.items()}
        window = self.s.idle_s
        last = {k: v[0] for k, v in before.items()}
        slots = dict.fromkeys(pids, 0)
        end = time.monotonic() + window
        while time.monotonic() < end:
            time.sleep(0.1)
            for name, pid in pids.items():
                cpu = common.cpu_ns(pid)
                slots[name] += cpu != last[name]
                last[name] = cpu
        out: dict[str, Any] = {}
        for name, pid in pids.items():
            cpu, vol, invol = common.cpu_ns(pid), *common.context_switches(pid)
            d_cpu = (cpu - before[name][0]) / 1e6
            d_vol, d_invol = vol - before[name][1], invol - before[name][2]
            out[name] = {"window_s": window, "cpu_ms": round(d_cpu, 3),
                         "cpu_ms_per_min": round(d_cpu * 60 / window, 3),
                         "voluntary": d_vol, "involuntary": d_invol,
                         "wakeups_per_s": round(d_vol / window, 3),
                         "active_slots": slots[name]}
        if "nq" in self.peers:
            out["nq"] = {"window_s": window, "cpu_ms": 0, "cpu_ms_per_min": 0,
                         "voluntary": 0, "involuntary": 0, "wakeups_per_s": 0,
                         "active_slots": 0, "note": "no process while nothing is queued"}
        return out

    def claim(self) -> None:
        self.section("claim", "hostctl",
                     lambda: hs.claim_cost(self.root / "claim", list(self.s.claim_sizes),
                                           self.s.claim_reps))

    def memory(self) -> None:
        self.section("memory", "hostctl",
                     lambda: hs.memory(self.hb, self.s.memory, self.s.memory_batch))

    def kill9(self) -> None:
        self.section("kill9", "hostctl", lambda: hs.kill9(self.hb))
        for name in self.peers:
            if name == "poll":
                continue
            obj = self.peer(name)
            self.section("kill9", self.label(name), lambda o=obj: o.kill9())


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _brief(value: Any) -> str:
    if isinstance(value, dict) and "p50" in value:
        return f"p50 {value['p50']} ms, p99 {value['p99']} ms"
    if isinstance(value, dict) and "rate" in value:
        return f"{value['rate']} tasks/s"
    text = json.dumps(value, default=str)
    return text if len(text) < 160 else text[:157] + "..."


def write_outputs(results: dict[str, Any], json_path: Path | None, doc: Path | None) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        common.note(f"results: {json_path}")
    if doc:
        current = doc.read_text() if doc.exists() else "# Performance\n"
        doc.write_text(report.splice(current, report.render(results)))
        common.note(f"tables: {doc}")


def render_saved(path: Path, doc: Path | None) -> int:
    results = json.loads(path.read_text())
    results["targets"] = report.targets(results)
    write_outputs(results, None, doc)
    print(report.targets_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_saved(args.render, args.doc)
    settings = QUICK if args.quick else FULL
    if args.idle_seconds is not None:
        settings = replace(settings, idle_s=args.idle_seconds)
    entry = os.environ.get("HOSTCTL_BENCH_ENTRY", "python3 bench/run.py")
    command = " ".join([entry, *(argv if argv is not None else sys.argv[1:])])
    root = Path(tempfile.mkdtemp(prefix="hostctl-bench-"))
    run = Run(settings, list(args.peer_list), root, command,
              "quick" if args.quick else "full")
    started = time.monotonic()
    try:
        if run.peers:
            run.install(not args.no_install)
        run.setup()
        run.pickup()
        run.end_to_end()
        run.drain()
        run.idle()
        run.claim()
        run.memory()
        run.kill9()
    except KeyboardInterrupt:
        run.results["errors"]["run"] = "interrupted"
    finally:
        run.procs.stop_all()
        if args.keep:
            common.note(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results = run.results
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    write_outputs(results, args.json, args.doc)
    print(report.targets_table(results))
    if results["errors"]:
        print("\nerrors:\n" + "\n".join(f"  {k}: {v}" for k, v in results["errors"].items()))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
