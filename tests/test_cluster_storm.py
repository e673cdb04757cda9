"""Storms on the cluster's queue: two servers, each with its own home, host name and
several ``wait-queue --server`` daemons (and ``dispatch`` passes), all on one PostgreSQL.

The tasks check the guarantees from their own side (tests/test_overlap.py's guarded
command): each run takes its task's and its context's flock without waiting and writes
down any overlap, and appends its id to a ledger. Shown: with daemons killed (kill -9)
at random, some at the worst moment (right after a spawn), nothing is lost and nothing
runs twice at once, on one task or one context, and every run is on its own server's
host; with PostgreSQL restarted in the middle of a storm, the workers reconnect and every
task runs exactly once.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pghelpers import new_database
from provisionhelpers import PgCluster
from taskhelpers import popen_hostctl, wait_for, write_config
from test_overlap import guarded_type, overlaps, runs

from hostctl.cli.entry import main
from hostctl.paths import Paths
from hostctl.queues.model import Envelope, Status, new_id
from hostctl.runners.home import Home
from hostctl.times import utc_iso

pytestmark = pytest.mark.skipif(shutil.which("flock") is None,
                                reason="needs flock(1) from util-linux")

#: appends its id to the ledger, under its context's flock (``-n``: an overlap shows)
STAMP = {"command": ["flock", "-n", "{root}/ctx-{name}.lock", "sh", "-c",
                     'echo "$1" >> "$2"', "sh", "{task_id}", "{root}/ids"],
         "context_types": ["site"]}


@dataclass
class Server:
    name: str  # @web1
    home: Path

    @property
    def host_name(self) -> str:
        return f"{self.name.lstrip('@')}.test"

    def daemon(self, worst: bool = False, log: Path | None = None) -> subprocess.Popen[bytes]:
        env = {"HOSTCTL_HOST_NAME": self.host_name}
        if worst:
            env["HOSTCTL_TEST_DIE_AFTER_SPAWN"] = "1"
        return popen_hostctl(self.home, "wait-queue", "--server", self.name,
                             "--max-runtime", "300", "--housekeeping-every", "1",
                             env=env, log=log)

    def dispatch(self) -> subprocess.Popen[bytes]:
        return popen_hostctl(self.home, "dispatch", "--server", self.name,
                             env={"HOSTCTL_HOST_NAME": self.host_name})


def build(tmp_path: Path, dsn: str, tasks: dict[str, Any], sites: int,
          worker: dict[str, Any]) -> tuple[Home, dict[str, Server], list[str], Path]:
    """An admin home and two servers' homes on the cluster ``dsn``; ``sites`` sites on
    each server's platform; the sites' names and the platforms' shared root."""
    root = tmp_path / "www"
    root.mkdir()
    config = {"cluster": {"dsn": dsn}, "tasks": tasks, "worker": worker,
              "queues": {"tasks": {"items": 2}, "cron": {"enabled": False}}}
    admin = tmp_path / "admin"
    write_config(admin, config)
    servers = {}
    for n in (1, 2):
        home = tmp_path / f"web{n}"
        write_config(home, config)
        servers[f"@web{n}"] = Server(f"@web{n}", home)

    def save(*argv: str) -> None:
        assert main(["--home", str(admin), "-q", "provision-save", *argv]) == 0, argv

    names = []
    for n in (1, 2):
        save(f"@web{n}", "--context_type", "server", "--db_service_type", "sqlite")
        save(f"@p{n}", "--context_type", "platform", "--root", str(root),
             "--web_server", f"@web{n}")
        for i in range(sites):
            names.append(f"w{n}s{i}.example")
            save(f"@{names[-1]}", "--context_type", "site", "--platform", f"@p{n}")
    return Home(Paths(admin)), servers, names, root


def publish(home: Home, ttype: str, sites: list[str], count: int) -> list[str]:
    queue = home.writable()
    ids = []
    for n in range(count):
        env = Envelope(new_id(), ttype, f"@{sites[n % len(sites)]}", {}, {}, n % 10,
                       utc_iso())
        task_id, created = queue.publish(env, dedup=False)
        assert created
        ids.append(task_id)
    return ids


def server_of(site: str) -> str:
    return "@web1" if site.lstrip("@").startswith("w1") else "@web2"


def test_a_cluster_storm_of_kills_never_runs_a_task_or_a_context_twice_at_once(
        pg_server: PgCluster, tmp_path: Path) -> None:
    rng = random.Random(14)
    dsn = new_database(pg_server, "storm", init=True)
    admin, servers, sites, root = build(
        tmp_path, dsn, {"guarded": guarded_type(first=0.3, later=0.05)}, 4,
        {"concurrency": 2, "backoff_base": 0.05, "backoff_max": 0.2})
    ids = publish(admin, "guarded", sites, 400)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    kills = 0
    began = time.monotonic()
    try:
        for name in servers:
            procs += [(name, servers[name].daemon()) for _ in range(2)]
        queue = admin.queue
        while queue.counts().finished < len(ids):
            assert time.monotonic() - began < 240, queue.counts()
            live = [(n, p) for n, p in procs if p.poll() is None]
            storming = time.monotonic() - began < 25
            if storming and live and rng.random() < 0.5:
                _name, victim = rng.choice(live)
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                kills += 1
            for name, server in servers.items():
                missing = 2 - sum(1 for n, p in procs if n == name and p.poll() is None)
                procs += [(name, server.daemon(worst=storming and rng.random() < 0.3))
                          for _ in range(missing)]
            if rng.random() < 0.2:
                rng.choice(list(servers.values())).dispatch().wait(timeout=120)
            time.sleep(0.1)
    finally:
        for _name, p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    assert kills > 10, kills
    assert overlaps(root) == ""
    tasks = {t.id: t for t in admin.queue.tasks()}
    assert sorted(tasks) == sorted(ids)  # nothing lost
    ran = {t for t, _ in runs(root)}
    outcomes: Counter[str] = Counter()
    for task_id in ids:
        task = tasks[task_id]
        end = task.last("end") or {}
        outcomes[str(end.get("outcome"))] += 1
        assert task.status.finished and end.get("outcome") in ("success", "lost"), (
            task_id, task.events)
        assert task_id in ran or end.get("outcome") == "lost", (task_id, task.events)
        # every run of it, on its own server's host, by that host's workers
        hosts = {ev.get("host") for ev in task.events if ev.get("event") in
                 ("spawn", "start") and ev.get("host")}
        assert hosts <= {servers[server_of(task.envelope.context)].host_name}, (
            task_id, hosts)
    assert outcomes["success"] > len(ids) // 2, outcomes


def test_postgresql_restarted_in_the_middle_of_a_storm_loses_nothing(
        pg_server: PgCluster, tmp_path: Path) -> None:
    dsn = new_database(pg_server, "storm", init=True)
    admin, servers, sites, root = build(tmp_path, dsn, {"stamp": STAMP}, 20,
                                        {"concurrency": 2})
    ids = publish(admin, "stamp", sites, int(os.environ.get("STORM_TASKS", "2000")))
    logs = []
    procs = []
    try:
        for name, server in servers.items():
            for i in range(3):
                logs.append(tmp_path / f"{name.lstrip('@')}-{i}.log")
                procs.append(server.daemon(log=logs[-1]))
        queue = admin.queue
        began = time.monotonic()
        wait_for(lambda: queue.counts().finished > len(ids) // 4, 120,
                 "a quarter of the tasks to run")
        before = time.monotonic() - began
        pg_server.restart()
        restarted_at = queue.counts().finished
        began = time.monotonic()
        assert restarted_at < len(ids), "the storm was over before the restart"
        try:
            wait_for(lambda: queue.counts().finished == len(ids), 240,
                     "every task to run after the restart")
        except AssertionError:
            raise AssertionError((queue.counts(), [
                (t.id, t.envelope.context, t.events[-3:]) for t in
                queue.tasks((Status.PROCESSING,))][:10], [
                log.read_text()[-3000:] for log in logs])) from None
        print(f"\n{restarted_at} tasks in {before:.1f} s before the restart, the other "
              f"{len(ids) - restarted_at} in {time.monotonic() - began:.1f} s after it")
        assert all(p.poll() is None for p in procs), [
            log.read_text()[-2000:] for log in logs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    ledger = Counter((root / "ids").read_text().split())
    assert ledger == Counter(ids)  # each ran exactly once: none lost, none twice
    tasks = admin.queue.tasks()
    assert {t.status for t in tasks} == {Status.SUCCESS}
    assert len(tasks) == len(ids)
    assert [p.returncode for p in procs] == [0] * len(procs), [
        log.read_text()[-2000:] for log in logs]
