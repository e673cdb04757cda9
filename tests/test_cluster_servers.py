"""Two web servers of one cluster, on one machine: each "host" is a UNIX user of its own
with its own home, its own nginx on a loopback port (run as that user, who reloads it)
and its own ``wait-queue --server``; all share one PostgreSQL. A third home, root's,
stands for the host the operators and the front end use: it saves the contexts and
queues the tasks, and runs no worker.

Shown here: each site's tasks run on its own server only (by that server's worker, as
that server's user, into that server's nginx), and the other server's worker never
touches them; a server whose worker is gone holds back its own sites' tasks only, and
``cluster status`` says so; a task running on one host is cancelled and its log
followed from another.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asuser import CHILD_PATH, User, can_make_users, spawn_as, stop_spawned
from pghelpers import new_database
from provisionhelpers import (
    NginxServer,
    PgCluster,
    http_get,
    make_platform,
    start_nginx,
)
from runnerhelpers import sh_task
from taskhelpers import wait_for, write_config

from hostctl.paths import Paths
from hostctl.runners.home import Home

pytestmark = pytest.mark.skipif(bool(can_make_users()), reason=can_make_users() or "ok")
#: the test application's interpreter, as a server's user runs it (this process's own
#: may sit in a folder only root can enter)
SYSTEM_PYTHON = shutil.which("python3", path=CHILD_PATH) or "/usr/bin/python3"

#: a task that prints a line every 0.2 s until it is stopped, then says so
TICKER = sh_task('trap "echo stopped; exit 143" TERM; i=0; '
                 'while [ $i -lt 300 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done')
TASKS = {"ticker": TICKER, "short": sh_task('echo "short on $HOSTCTL_CONTEXT"')}


@dataclass
class Host:
    """One server of the cluster: its user, home, nginx and worker."""

    name: str  # the server context, @web1
    user: User
    home: Path
    nginx: NginxServer
    www: Path
    log: Path
    worker: int = 0  # the pid of its wait-queue (0: none)
    workers: list[int] = field(default_factory=list)  # every one started

    def start_worker(self) -> int:
        env = {"HOSTCTL_HOME": str(self.home), "HOSTCTL_RECEIPTS": None,
               "HOSTCTL_HOST_NAME": self.host_name}
        self.log.touch()
        self.worker = spawn_as(self.user, ["-v", "wait-queue", "--server", self.name,
                                           "--housekeeping-every", "1"], env, self.log)
        self.workers.append(self.worker)
        hostctl_log = self.home / "logs" / "hostctl.log"
        try:
            wait_for(lambda: hostctl_log.exists() and f"wait-queue {self.worker} started"
                     in hostctl_log.read_text(errors="replace"), 30,
                     f"the worker of {self.name} to start")
        except AssertionError:
            raise AssertionError(self.log.read_text(errors="replace")) from None
        return self.worker

    @property
    def host_name(self) -> str:
        """The name this "host" goes by (they all share the machine's)."""
        return f"{self.name.lstrip('@')}.test"

    def stop_worker(self) -> None:
        if self.worker:
            stop_spawned(self.worker)
            self.worker = 0


@dataclass
class Cluster:
    dsn: str
    admin: Path  # root's home: contexts and tasks, no worker
    hosts: dict[str, Host]

    def home(self) -> Home:
        return Home(Paths(self.admin))


def _user(name: str, base: Path) -> User:
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True,
                   capture_output=True, timeout=60)
    pw = pwd.getpwnam(name)
    own = base / name
    own.mkdir(mode=0o700)
    os.chown(own, pw.pw_uid, pw.pw_gid)
    extra = tuple(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    return User(name, pw.pw_uid, pw.pw_gid, own, own / "receipts", extra)


@pytest.fixture(scope="module")
def cluster(pg_server: PgCluster) -> Iterator[Cluster]:
    tag = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix="hostctl-hosts-", dir="/tmp"))
    os.chmod(base, 0o711)
    made: list[str] = []
    hosts: dict[str, Host] = {}
    dsn = new_database(pg_server, "servers", init=True)
    admin = base / "admin"
    try:
        for n in (1, 2):
            name = f"hcw{tag}{n}"
            user = _user(name, base)
            made.append(name)
            home = user.home / "home"
            home.mkdir(mode=0o700)
            write_config(home, {"cluster": {"dsn": dsn}, "tasks": TASKS})
            www = user.home / "www"
            www.mkdir()
            nginx_base = user.home / "nginx"
            nginx_base.mkdir()
            nginx = start_nginx(nginx_base, (user.uid, user.gid))
            for path in (home, *home.rglob("*"), www):
                os.chown(path, user.uid, user.gid)
            os.chmod(user.home, 0o711)  # nginx's files are read by nginx, as this user
            hosts[f"@web{n}"] = Host(f"@web{n}", user, home, nginx, www,
                                     base / f"web{n}.log")
        write_config(admin, {"cluster": {"dsn": dsn}, "tasks": TASKS})
        yield Cluster(dsn, admin, hosts)
    finally:
        for host in hosts.values():
            for pid in host.workers:
                stop_spawned(pid)
            host.nginx.stop()
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def admin(run_hostctl: Any, cluster: Cluster, *argv: str) -> Any:
    res = run_hostctl("--home", str(cluster.admin), *argv)
    return res


def ok(run_hostctl: Any, cluster: Cluster, *argv: str) -> str:
    res = admin(run_hostctl, cluster, *argv)
    assert res.code == 0, (argv, res)
    return str(res.out)


@pytest.fixture(scope="module")
def topology(cluster: Cluster) -> Cluster:
    """@web1 and @web2 (each with its host's nginx), a platform on each, a site on
    each platform: saved once, from the admin's home, into the cluster's database."""
    from hostctl.cli.entry import main

    def save(*argv: str) -> None:
        assert main(["--home", str(cluster.admin), "-q", "provision-save", *argv]) == 0, argv

    for n, host in ((1, cluster.hosts["@web1"]), (2, cluster.hosts["@web2"])):
        save(host.name, "--context_type", "server", *host.nginx.server_fields(f"web{n}"),
             "--db_service_type", "sqlite")
        root = make_platform(host.www / "plat", interpreter=SYSTEM_PYTHON)
        for path in (root, *root.rglob("*")):
            os.chown(path, host.user.uid, host.user.gid)
        save(f"@plat{n}", "--context_type", "platform", "--root", str(root),
             "--web_server", host.name)
        save(f"@site{n}.example", "--context_type", "site", "--platform", f"@plat{n}")
    return cluster


def task_doc(run_hostctl: Any, cluster: Cluster, task_id: str) -> dict[str, Any]:
    return dict(json.loads(ok(run_hostctl, cluster, "task", "show", task_id, "--json")))


def add(run_hostctl: Any, cluster: Cluster, ttype: str, context: str) -> str:
    return ok(run_hostctl, cluster, "task", "add", ttype, context).strip()


def ended(run_hostctl: Any, cluster: Cluster, task_id: str,
          timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = task_doc(run_hostctl, cluster, task_id)
        return doc if doc["status"] not in ("queued", "processing") else None

    return wait_for(done, timeout, f"task {task_id} to end")


def runner_of(cluster: Cluster, task_id: str) -> set[int]:
    """The pids of the workers that ran the task (every attempt's start event)."""
    task = cluster.home().queue.get(task_id)
    return {int(ev["worker"]) for ev in task.events if ev.get("event") == "start"}


def test_each_sites_tasks_run_on_its_own_server_only(run_hostctl, topology: Cluster) -> None:
    web1, web2 = topology.hosts["@web1"], topology.hosts["@web2"]
    w1, w2 = web1.start_worker(), web2.start_worker()
    one = add(run_hostctl, topology, "install", "@site1.example")
    two = add(run_hostctl, topology, "install", "@site2.example")
    for task_id in (one, two):
        doc = ended(run_hostctl, topology, task_id)
        assert doc["status"] == "success", (doc, ok(run_hostctl, topology, "task", "log",
                                                    task_id))
    assert runner_of(topology, one) == {w1} and runner_of(topology, two) == {w2}
    # each answers from its own server's nginx, and only there
    for host, mine, other in ((web1, "site1.example", "site2.example"),
                              (web2, "site2.example", "site1.example")):
        status, body, _ = http_get(host.nginx.port, mine)
        assert status == 200 and "Welcome" in body, (host.name, status, body)
        assert http_get(host.nginx.port, other)[0] == 404
        vhosts = {p.name for p in host.nginx.configs.rglob("*.conf")
                  if not p.name.startswith("_hostctl-")}  # its probe of nginx's names
        assert vhosts == {f"{mine}.conf"}, (host.name, vhosts)
        # the site's files belong to the server's own user: its worker wrote them
        site_dir = host.www / "plat" / "sites" / mine
        assert site_dir.stat().st_uid == host.user.uid
    # many more, on both: none crosses over
    ids = {add(run_hostctl, topology, "short", f"@site{n}.example"): n
           for _ in range(5) for n in (1, 2)}
    for task_id, n in ids.items():
        assert ended(run_hostctl, topology, task_id)["status"] == "success"
        assert runner_of(topology, task_id) == {w1 if n == 1 else w2}
        assert f"short on @site{n}.example" in ok(run_hostctl, topology, "task", "log",
                                                  task_id)


def test_a_server_without_its_worker_holds_back_only_its_own_sites(
        run_hostctl, topology: Cluster) -> None:
    web1, web2 = topology.hosts["@web1"], topology.hosts["@web2"]
    if not web1.worker:
        web1.start_worker()
    web2.stop_worker()
    held = add(run_hostctl, topology, "short", "@site2.example")
    goes = add(run_hostctl, topology, "short", "@site1.example")
    assert ended(run_hostctl, topology, goes)["status"] == "success"
    # queued first: had web1's worker taken @web2's queue, it would have taken this one
    # no later than the one it ran
    assert task_doc(run_hostctl, topology, held)["status"] == "queued"
    status = json.loads(ok(run_hostctl, topology, "cluster", "status", "--json"))
    assert status["jobs"]["@web2"]["todo"] == 1, status
    assert status["servers"]["@web2"]["workers"] == 0, status
    assert status["servers"]["@web1"]["workers"] == 1, status
    text = ok(run_hostctl, topology, "cluster", "status")
    assert "@web2: no live worker, 1 task waiting, 0 running" in text, text
    assert "@web1: 1 live worker, 0 tasks waiting" in text, text
    w2 = web2.start_worker()
    assert ended(run_hostctl, topology, held)["status"] == "success"
    assert runner_of(topology, held) == {w2}


def test_a_task_on_one_host_is_followed_and_cancelled_from_another(
        run_hostctl, topology: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTCTL_HOST_NAME", "admin.test")  # not where the task runs
    web1 = topology.hosts["@web1"]
    if not web1.worker:
        web1.start_worker()
    task_id = add(run_hostctl, topology, "ticker", "@site1.example")
    wait_for(lambda: task_doc(run_hostctl, topology, task_id)["status"] == "processing", 30,
             "the ticker to start")
    home = topology.home()
    follow = home.queue.read_log(task_id, follow=True, poll=0.05)
    seen = b""
    while b"tick 3\n" not in seen:  # lines arrive as the task prints them
        seen += next(follow)
    assert task_doc(run_hostctl, topology, task_id)["status"] == "processing"
    started = topology.home().queue.get(task_id).last("start") or {}
    assert started.get("host") == web1.host_name
    res = admin(run_hostctl, topology, "task", "cancel", task_id, "--json")
    assert res.code == 0, res
    doc = ended(run_hostctl, topology, task_id, timeout=30)
    assert doc["status"] == "cancelled", doc
    rest = b"".join(follow)  # the follower ends with the task
    # the worker on web1 stopped it, told by the database (this host signals nothing)
    assert b"--- hostctl: cancel requested; sending TERM\n" in rest
    assert b"stopped\n" in seen + rest
    # nothing of the ticker is left on its host
    out = subprocess.run(["pgrep", "-u", str(web1.user.uid), "-f", "tick"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "", out.stdout


def test_a_front_ends_drop_runs_on_its_server_and_its_receipt_follows_it(
        run_hostctl, topology: Cluster, tmp_path: Path) -> None:
    """The front end's host (run_tasks = false) admits the drop into the cluster; the
    task runs on its site's server; its receipt on the front end's host says each state,
    and its log there grows as the task prints, on the other host."""
    from hostctl.queues import dropbox

    web1, web2 = topology.hosts["@web1"], topology.hosts["@web2"]
    for host in (web1, web2):
        if not host.worker:
            host.start_worker()
    fe = tmp_path / "fe"
    write_config(fe, {"cluster": {"dsn": topology.dsn, "run_tasks": False},
                      "tasks": TASKS})
    Home(Paths(fe)).writable()  # its drop box
    log = tmp_path / "fe.log"
    log.touch()
    daemon = spawn_as(None, ["wait-queue", "--housekeeping-every", "60"],
                      {"HOSTCTL_HOME": str(fe), "HOSTCTL_HOST_NAME": "fe.test"}, log)
    try:
        wait_for(lambda: (fe / "logs" / "hostctl.log").exists() and
                 f"wait-queue {daemon} started" in (fe / "logs" / "hostctl.log").read_text(),
                 30, "the front end host's wait-queue")
        paths = Paths(fe)
        short = dropbox.submit(paths, "short", "@site2.example", {}, {})
        doc = wait_for(lambda: (d := dropbox.read_receipt(paths, short.receipt)) and
                       d["status"] == "success" and d, 30, "the receipt to say success")
        assert doc["id"] == short.id
        assert runner_of(topology, short.id) == {web2.worker}  # run on web2, not here
        assert b"short on @site2.example" in b"".join(
            dropbox.frontend_log(paths, short.id, False, short.receipt))
        ticker = dropbox.submit(paths, "ticker", "@site1.example", {}, {})
        follow = dropbox.frontend_log(paths, ticker.id, True, ticker.receipt, poll=0.05)
        seen = b""
        while b"tick 2\n" not in seen:  # its lines reach the front end as they are printed
            seen += next(follow)
        assert dropbox.read_receipt(paths, ticker.receipt)["status"] == "processing"
        assert admin(run_hostctl, topology, "task", "cancel", ticker.id).code == 0
        rest = b"".join(follow)  # ends once the receipt says the task ended
        assert b"--- hostctl:" in rest
        assert dropbox.read_receipt(paths, ticker.receipt)["status"] == "cancelled"
        # one that never started: its receipt says so at once too, and again when retried
        later = dropbox.submit(paths, "short", "@site2.example", {}, {}, delay=3600)
        wait_for(lambda: (d := dropbox.read_receipt(paths, later.receipt)) and
                 d["status"] == "queued", 30, "the delayed drop's receipt")
        assert admin(run_hostctl, topology, "task", "cancel", later.id).code == 0
        wait_for(lambda: dropbox.read_receipt(paths, later.receipt)["status"] == "cancelled",
                 10, "the receipt to say cancelled")
        assert admin(run_hostctl, topology, "task", "retry", later.id).code == 0
        wait_for(lambda: dropbox.read_receipt(paths, later.receipt)["status"] == "success",
                 30, "the retried drop's receipt to say success")
    finally:
        stop_spawned(daemon)
