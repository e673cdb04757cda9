"""The cluster's database: PostgreSQL, holding procrastinate's tables and hostctl's own.

A home joins a cluster by one setting, ``[cluster] dsn`` in config.toml (or
``HOSTCTL_CLUSTER_DSN``): a libpq connection string or URI. Its password belongs in the
file (0600) or in libpq's own places (``~/.pgpass``, ``PGPASSFILE``), never on a command
line; hostctl never prints it (:func:`shown` is what messages say of a DSN).

Schema (``hostctl cluster init``): one table, ``hostctl_schema``, records which version of
each component's schema the database holds:

    component      version   what it is
    procrastinate  3.10.0    procrastinate's tables (jobs, workers, events...), its version
    hostctl        5         hostctl's own tables: the contexts (contexts/pgstore.py), the
                             sites' records (provision/pgsecrets.py), the tasks with
                             their logs, the workers that hold them, the runners' records
                             (queues/pgqueue.py)

A fresh database gets procrastinate's whole schema (``SchemaManager.get_schema()``); one
that holds an older version gets procrastinate's migrations from that version up to the
installed one, in the order of their names (``get_migrations_path()``). Everything runs
in one transaction under an advisory lock: two hosts running ``init`` at once leave one
schema, applied once; a failure leaves the database as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import procrastinate
import psycopg
from procrastinate.schema import SchemaManager

from hostctl.contexts import pgstore
from hostctl.database import connect, shown
from hostctl.errors import OperationFailed
from hostctl.provision import pgsecrets
from hostctl.queues import pgqueue
from hostctl.queues.spool import Spool

#: hostctl's own schema version (bumped, with a step in _HOSTCTL_STEPS, by each change)
SCHEMA_VERSION = 7
#: pg_advisory_xact_lock key: "hostctl init" in ASCII, so no other user of the lock space
#: is likely to take it
_INIT_LOCK = 0x686F7374_696E6974
_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS hostctl_schema (
    component text PRIMARY KEY,
    version text NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
)"""
#: hostctl's schema, one step per version: step N takes the database from N-1 to N
_HOSTCTL_STEPS: Mapping[int, LiteralString] = {
    1: "SELECT 1",  # the version table itself
    2: pgstore.SCHEMA,  # the contexts (contexts/pgstore.py)
    3: pgsecrets.SCHEMA,  # the sites' records (provision/pgsecrets.py)
    4: pgqueue.SCHEMA,  # the tasks, their logs, owners and records (queues/pgqueue.py)
    5: pgqueue.SCHEMA_ORIGIN,  # where a dropped task came in (its receipts live there)
    6: pgqueue.SCHEMA_TALLIES,  # the attempts counted for good (hostctl metrics)
    7: pgqueue.SCHEMA_HANDOFF,  # idle workers' offers, tasks handed to them at publish
}
_MIGRATION = re.compile(r"(\d+)\.(\d+)\.(\d+)_\d+_.*\.sql")


@dataclass(frozen=True)
class InitReport:
    """What ``cluster init`` found and left: each component's version before and after."""

    database: str
    before: Mapping[str, str]
    after: Mapping[str, str]
    applied: tuple[str, ...] = ()  # procrastinate's schema or migration files, in order

    @property
    def changed(self) -> bool:
        return dict(self.before) != dict(self.after)

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "before": dict(self.before),
                "after": dict(self.after), "applied": list(self.applied),
                "changed": self.changed}


def installed_procrastinate() -> str:
    return str(procrastinate.__version__)


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(".")[:3])
    except ValueError:
        raise OperationFailed(f"the cluster's database records procrastinate schema "
                              f"{text!r}, which is not a version") from None


def _migrations(after: str, upto: str) -> list[Path]:
    """procrastinate's migration files for versions above ``after`` up to ``upto``."""
    low, high = _version_tuple(after), _version_tuple(upto)
    out = []
    for path in sorted(Path(SchemaManager.get_migrations_path()).glob("*.sql")):
        found = _MIGRATION.fullmatch(path.name)
        if found and low < tuple(int(g) for g in found.groups()) <= high:
            out.append(path)
    return out


def _versions(cur: psycopg.Cursor[Any]) -> dict[str, str]:
    cur.execute("SELECT to_regclass('hostctl_schema') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return {}
    cur.execute("SELECT component, version FROM hostctl_schema")
    return {str(c): str(v) for c, v in cur.fetchall()}


def _has_table(cur: psycopg.Cursor[Any], name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    row = cur.fetchone()
    return bool(row and row[0])


def init(dsn: str) -> InitReport:
    """Create or upgrade the cluster's schema (see the module docstring)."""
    target = installed_procrastinate()
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        before = _versions(cur)
        cur.execute(_VERSION_TABLE)
        applied: list[str] = []
        have = before.get("procrastinate")
        if have is None and _has_table(cur, "procrastinate_jobs"):
            raise OperationFailed(
                "the database holds procrastinate's tables that hostctl did not make (no "
                "version recorded); use a database of hostctl's own")
        if have is None:
            cur.execute(SchemaManager.get_schema())
            applied.append("procrastinate schema " + target)
        elif _version_tuple(have) > _version_tuple(target):
            raise OperationFailed(
                f"the cluster's database holds procrastinate schema {have}, newer than this "
                f"host's procrastinate {target}: upgrade hostctl here first")
        else:
            for path in _migrations(have, target):
                cur.execute(path.read_bytes())  # procrastinate's own SQL, as shipped
                applied.append(path.name)
        mine = int(before.get("hostctl", "0"))
        if mine > SCHEMA_VERSION:
            raise OperationFailed(
                f"the cluster's database holds hostctl schema {mine}, newer than this "
                f"host's {SCHEMA_VERSION}: upgrade hostctl here first")
        for step in range(mine + 1, SCHEMA_VERSION + 1):
            cur.execute(_HOSTCTL_STEPS[step])
        after = {"procrastinate": target, "hostctl": str(SCHEMA_VERSION)}
        for component, version in after.items():
            cur.execute(
                "INSERT INTO hostctl_schema (component, version) VALUES (%s, %s) "
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, "
                "updated = now() WHERE hostctl_schema.version <> EXCLUDED.version",
                (component, version))
    return InitReport(shown(dsn), before, after, tuple(applied))


@dataclass(frozen=True)
class WorkerRow:
    """A worker of the cluster (procrastinate's row, with hostctl's where it has one)."""

    id: int
    heartbeat_age: float
    host: str = ""
    pid: int = 0
    server: str = ""
    registered: bool = False  # a wait-queue (else a dispatch, a provision-TYPE)
    alive: bool = False  # its connection holds its lock now

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "heartbeat_age": self.heartbeat_age, "host": self.host,
                "pid": self.pid, "server": self.server, "registered": self.registered,
                "alive": self.alive}


@dataclass(frozen=True)
class ServerRow:
    """A server of the cluster: its live workers and its queue."""

    workers: int  # live wait-queues that take its tasks (--server NAME)
    waiting: int  # its tasks queued and due
    running: int

    def to_json(self) -> dict[str, int]:
        return {"workers": self.workers, "waiting": self.waiting, "running": self.running}


@dataclass(frozen=True)
class ClusterStatus:
    database: str
    server_version: str
    schema: Mapping[str, str]
    #: queue -> status -> how many jobs
    jobs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    workers: tuple[WorkerRow, ...] = ()
    #: each server context, and each queue named after a server
    servers: Mapping[str, ServerRow] = field(default_factory=dict)
    #: whether a publish hands its task to an idle worker, how many offer themselves,
    #: and why none is handed when none is (queues/pgqueue.py, _PUBLISH)
    handoff: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.schema.get("hostctl") == str(SCHEMA_VERSION) and \
            self.schema.get("procrastinate") == installed_procrastinate()

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "server_version": self.server_version,
                "schema": dict(self.schema), "ready": self.ready,
                "jobs": {q: dict(s) for q, s in self.jobs.items()},
                "workers": [w.to_json() for w in self.workers],
                "servers": {n: s.to_json() for n, s in self.servers.items()},
                "handoff": dict(self.handoff)}


_WORKERS: LiteralString = """
SELECT w.id, extract(epoch FROM now() - w.last_heartbeat)::float8, o.host, o.pid,
       o.server, o.registered, o.id IS NOT NULL AND""" + pgqueue.owner_alive("o.id") + """
FROM procrastinate_workers w LEFT JOIN hostctl_owners o ON o.id = w.id
ORDER BY w.id"""


def status(dsn: str) -> ClusterStatus:
    """The database, its schema versions, jobs per queue and status, the workers, and
    each server's live workers and waiting tasks."""
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        row = cur.fetchone()
        server = str(row[0]) if row else "?"
        schema = _versions(cur)
        jobs: dict[str, dict[str, int]] = {}
        workers: list[WorkerRow] = []
        servers: dict[str, ServerRow] = {}
        handoff: dict[str, Any] = {}
        if _has_table(cur, "procrastinate_jobs"):
            cur.execute("SELECT queue_name, status::text, count(*) FROM procrastinate_jobs "
                        "GROUP BY 1, 2 ORDER BY 1, 2")
            for queue, state, count in cur.fetchall():
                jobs.setdefault(str(queue), {})[str(state)] = int(count)
        if _has_table(cur, "hostctl_owners"):
            cur.execute(_WORKERS)
            workers = [WorkerRow(int(i), round(float(age), 3), str(host or ""),
                                 int(pid or 0), str(srv or ""), bool(reg), bool(alive))
                       for i, age, host, pid, srv, reg, alive in cur.fetchall()]
            cur.execute("SELECT '@' || name FROM hostctl_contexts WHERE type = 'server'")
            names = {str(n) for (n,) in cur.fetchall()} | {
                q for q in jobs if q.startswith("@")}
            cur.execute("SELECT queue_name, count(*) FILTER (WHERE status = 'todo' AND "
                        "(scheduled_at IS NULL OR scheduled_at <= now())), count(*) "
                        "FILTER (WHERE status = 'doing') FROM procrastinate_jobs "
                        "GROUP BY 1")
            depth = {str(q): (int(t), int(d)) for q, t, d in cur.fetchall()}
            for name in sorted(names):
                live = sum(1 for w in workers if w.alive and w.registered and
                           w.server == name)
                waiting, running = depth.get(name, (0, 0))
                servers[name] = ServerRow(live, waiting, running)
            if _has_table(cur, "hostctl_offers"):
                handoff = _handoff(cur)
        elif _has_table(cur, "procrastinate_workers"):
            cur.execute("SELECT id, extract(epoch FROM now() - last_heartbeat) "
                        "FROM procrastinate_workers ORDER BY id")
            workers = [WorkerRow(int(i), round(float(age), 3)) for i, age in cur.fetchall()]
    return ClusterStatus(shown(dsn), server, schema, jobs, tuple(workers), servers,
                         handoff)


def _handoff(cur: Any) -> dict[str, Any]:
    """Whether an idle worker is handed tasks (every role that may connect may read
    hostctl's tasks, and no owner of an earlier hostctl lives), and how many offer."""
    cur.execute(pgqueue.PRIVATE_DATABASE)
    private = bool(cur.fetchone()[0])
    cur.execute("SELECT count(*) FILTER (WHERE NOT o.handoff), count(f.owner) FROM "
                "hostctl_owners o LEFT JOIN hostctl_offers f ON f.owner = o.id WHERE"
                + pgqueue.owner_alive("o.id"))
    older, offers = (int(n) for n in cur.fetchone())
    why = ("roles that may not read hostctl's tasks may connect to the database "
           "(REVOKE CONNECT ON DATABASE ... FROM PUBLIC)" if not private else
           f"{older} worker(s) of an earlier hostctl live" if older else "")
    return {"on": not why, "offers": offers, "why_not": why}


@dataclass(frozen=True)
class TaskMove:
    """What ``cluster import`` did with the queued tasks of a home's spool."""

    moved: tuple[str, ...]  # now in the cluster's queue, gone from the spool
    already: tuple[str, ...]  # in the cluster's queue before (an import cut short)
    left: int  # still in the spool: running here, being taken, or unreadable

    def to_json(self) -> dict[str, Any]:
        return {"moved": list(self.moved), "already": list(self.already), "left": self.left}


def move_tasks(spool: Spool, queue: pgqueue.PgQueue) -> TaskMove:
    """Move every queued task of ``spool`` (ready or deferred, with its history) into
    the cluster's ``queue``. Each is held by its file's lock while it moves, so no worker
    of the spool takes it meanwhile; it leaves the spool only once the cluster holds it,
    and one the cluster holds already (an import cut short) just leaves the spool:
    nothing is lost, nothing queued twice."""
    moved: list[str] = []
    already: list[str] = []
    for task, remove in spool.take_queued():
        (moved if queue.adopt(task) else already).append(task.id)
        remove()
    counts = spool.counts()
    return TaskMove(tuple(moved), tuple(already),
                    counts.queued + counts.deferred + counts.processing)
