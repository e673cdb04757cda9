"""The cluster's queue: tasks as procrastinate jobs in PostgreSQL, for every host at once.

Each task is one row of procrastinate's ``procrastinate_jobs``, which carries what the
engine enforces for every host of the cluster:

    queue_name     the server the task is routed to (its context's server, see
                   runners/home.py), or ``hostctl`` for a task on no server
    task_name      the task's type
    priority       0 to 9, higher first
    lock           the context: procrastinate's unique index lets one job per lock be
                   ``doing`` at a time, on whichever host it runs
    queueing_lock  the de-duplication key of a task queued with de-duplication: one such
                   job ``todo`` at a time
    scheduled_at   a delayed or deferred task's due time
    status         todo (queued or deferred), doing (claimed), succeeded, failed,
                   cancelled, aborted (a cancelled run)

and one row of hostctl's ``hostctl_tasks`` (same transaction), which keeps what the spool's
task file keeps: the submission and its events as JSON lines (``body``, appended, never
rewritten), who holds the claim (``owner``) and until when (``lease_until``), and why a
task was set aside. A task's log is ``hostctl_task_logs``, line blocks in order, each
insert announced on ``hostctl_log_ID`` for whoever follows it.

Jobs are inserted into procrastinate's table as its ``procrastinate_defer_jobs_v1`` does
(a publish is one statement of hostctl's: _PUBLISH) and ended with its
``procrastinate_finish_job_v1``, ``procrastinate_retry_job_v2`` and
``procrastinate_cancel_job_v1``. The fetch is hostctl's own statement over the same table
(procrastinate's cannot pass over the contexts a worker already runs, and counts a
delayed job as holding its lock): the first ready job of each context, by priority then
age, ``FOR UPDATE SKIP LOCKED``, only of this worker's queues.

Handoff. A worker whose fetch found nothing, with a slot free and its watch listening on
its owner's channel, offers itself (``hostctl_offers``). A publish whose task could be
claimed at once (ready, nothing running or ready on its context, the queue not paused)
takes the oldest offer of a live owner of its queue: the job is inserted ``doing`` for
that owner and the task with its ``handed`` mark (what the owner's ``spawn`` event would
say), and the owner is told on ``hostctl_owner_ID``, with the task and its context's
document, then told again once the publish is on the disk. The owner starts it from the
notice, with no query, once told that it is on the disk (or once it made sure of it
itself); a handed task with no events is recovered as one whose spawn was written.

Owners and leases. Every process that claims registers as an owner: a row of
``procrastinate_workers`` (its unique id, its heartbeat) and of ``hostctl_owners`` (host,
pid, server), and a session advisory lock on its own connection, taken again whenever
that connection is made again. A claim's owner is dead when the claim was let go, when
its owner's row is gone, when its lease ran out, or when its owner's lock is free though
taken since the database last started (its process, or its connection, ended). The
owner renews each lease on ``heartbeat``; an owner that cannot renew for FENCE_AFTER
seconds is told so (:class:`LeaseLost`) and stops the run, before the lease ends and
another host may take it. A task whose run had processes (a ``spawn`` or a ``start`` with
a session) is recovered only on the host that ran it, where what is left of the run can be
stopped first, or anywhere once its lease has run out. Every write of a claim names its
owner, so a claim taken over is fenced: its old owner's writes change nothing.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import logging
import os
import select
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql

from hostctl.database import FLUSH, DatabaseError, Session, open_connection
from hostctl.errors import (
    Conflict,
    HostctlError,
    InvalidInput,
    NewerFormat,
    NotFound,
    NotJudgedYet,
    OperationFailed,
)
from hostctl.inotify import Inotify
from hostctl.libc import Timer
from hostctl.process import boot_ticks, host_name, kill_spawned, stop_run
from hostctl.queues.admission import Admission
from hostctl.queues.backend import Ends, LeaseLost, TaskClaim
from hostctl.queues.model import (
    DEFAULT_QUEUE,
    DURATION_BUCKETS,
    Counts,
    Depth,
    Envelope,
    Policy,
    Status,
    StatusCounts,
    Tally,
    Task,
    TaskQuery,
    WorkerInfo,
    backoff,
    decode_task,
    encode_event,
    encode_task,
    record_name,
    valid_id,
)
from hostctl.queues.spool import Spool
from hostctl.times import parse_iso, utc_iso

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA: LiteralString = """
CREATE TABLE hostctl_tasks (
    id text PRIMARY KEY,
    job_id bigint NOT NULL UNIQUE REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    body bytea NOT NULL,
    owner bigint,
    lease_until timestamptz,
    set_aside text,
    ended_at timestamptz
);
CREATE INDEX hostctl_tasks_ended ON hostctl_tasks (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX hostctl_tasks_owner ON hostctl_tasks (owner) WHERE owner IS NOT NULL;
CREATE TABLE hostctl_task_logs (
    task_id text NOT NULL REFERENCES hostctl_tasks (id) ON DELETE CASCADE,
    seq bigserial,
    data bytea NOT NULL,
    PRIMARY KEY (task_id, seq)
);
CREATE TABLE hostctl_owners (
    id bigint PRIMARY KEY REFERENCES procrastinate_workers (id) ON DELETE CASCADE,
    host text NOT NULL,
    pid integer NOT NULL,
    server text NOT NULL DEFAULT '',
    locked_since timestamptz NOT NULL DEFAULT now(),
    suspected_at timestamptz,
    registered boolean NOT NULL DEFAULT false,
    started text NOT NULL DEFAULT '',
    max_runtime double precision NOT NULL DEFAULT 0,
    tasks_run integer NOT NULL DEFAULT 0
);
CREATE TABLE hostctl_records (
    name text PRIMARY KEY,
    data bytea NOT NULL
);
REVOKE ALL ON hostctl_tasks, hostctl_task_logs, hostctl_owners, hostctl_records
    FROM PUBLIC"""
#: hostctl schema 5: the host whose drop box a task came in by (its receipts live there)
SCHEMA_ORIGIN: LiteralString = """
ALTER TABLE hostctl_tasks ADD COLUMN origin text;
CREATE INDEX hostctl_tasks_origin ON hostctl_tasks (origin) WHERE origin IS NOT NULL"""
#: hostctl schema 6: the attempts counted for good (``hostctl metrics``; model.Tally)
SCHEMA_TALLIES: LiteralString = """
CREATE TABLE hostctl_tallies (
    type text NOT NULL,
    outcome text NOT NULL,
    count bigint NOT NULL DEFAULT 0,
    timed bigint NOT NULL DEFAULT 0,
    seconds double precision NOT NULL DEFAULT 0,
    buckets bigint[] NOT NULL,
    PRIMARY KEY (type, outcome)
);
REVOKE ALL ON hostctl_tallies FROM PUBLIC"""
#: hostctl schema 7: idle workers' offers, and the tasks a publish handed to one of them
SCHEMA_HANDOFF: LiteralString = """
CREATE TABLE hostctl_offers (
    owner bigint PRIMARY KEY REFERENCES hostctl_owners (id) ON DELETE CASCADE,
    queues text[],
    host text NOT NULL,
    pid integer NOT NULL,
    not_before bigint NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE hostctl_tasks ADD COLUMN handed jsonb;
ALTER TABLE hostctl_owners ADD COLUMN handoff boolean NOT NULL DEFAULT false;
REVOKE ALL ON hostctl_offers FROM PUBLIC"""
#: a claim's lease: renewed on each heartbeat (every 30 s), taken over when it runs out
LEASE = 120.0
#: a write of a claim whose connection was lost is tried again for this long
RECONNECT_FOR = 30.0
#: an owner that could not renew a lease for this long stops the run (LeaseLost)
FENCE_AFTER = 75.0
#: pg_advisory_lock(OWNER_LOCKS, owner id): held by a live owner's connection ("host")
OWNER_LOCKS = 0x686F7374
#: pg_try_advisory_lock key of the periodic queues' leader ("hostlead")
LEADER_LOCK = 0x686F7374_6C656164
#: where a resume, a requeue, a cancel is announced (a publish is procrastinate's own)
CHANNEL = "hostctl_queue"
#: how long a worker's watch may stand for asking whether the queue is paused
PAUSE_KNOWN = 1.0
#: where a publish tells an owner of the task it handed to it (``hostctl_owner_ID``)
OWNER_CHANNEL = "hostctl_owner_"
#: how long a worker waits to be told that a handed task is on the disk before it makes
#: sure of it itself (a synchronous commit of its own)
DURABLE_WAIT = 0.02
_PAUSED = "!paused"  # the record that pauses the cluster's queue (not a record name)
_FINISHED = ("succeeded", "failed", "cancelled", "aborted")
_JOB_END = {"success": "succeeded", "warning": "succeeded", "cancelled": "aborted"}

_TASK_COLUMNS: LiteralString = """
    t.id, t.body, t.set_aside,
    CASE WHEN t.set_aside IS NOT NULL THEN 'quarantine'
         WHEN j.status = 'todo' AND j.scheduled_at > now() THEN 'deferred'
         WHEN j.status = 'todo' THEN 'new'
         WHEN j.status = 'doing' THEN 'active'
         ELSE 'done' END,
    extract(epoch FROM j.scheduled_at)::float8"""
_TASK_FROM: LiteralString = """
    FROM hostctl_tasks t JOIN procrastinate_jobs j ON j.id = t.job_id"""


def owner_alive(owner: LiteralString) -> LiteralString:
    """SQL: the owner ``owner`` is alive, its connection holding its lock (advisory locks
    are the database's own: another database of the server has owners of its own)."""
    return ("""
    EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
            AND l.mode = 'ExclusiveLock'  -- (owner_holds' shared try is no owner)
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = 1752134516 AND l.objsubid = 2 AND l.objid::bigint = """
            + owner + ")")


#: the owner of the claim on t is alive
_OWNER_HELD = owner_alive("t.owner")


def owner_holds(owner: LiteralString) -> LiteralString:
    """SQL: the owner ``owner`` is alive, as owner_alive says, asked of its one lock
    rather than of every lock of the server (pg_locks copies the whole lock table, at a
    cost that grows with the server's sessions): a shared try of its lock, which only the
    exclusive hold of its live owner refuses (from another session: the owner's own
    would be granted it); one that succeeds holds the lock, shared, to the end of the
    asking transaction (owner_alive counts exclusive holds alone; an owner taking its
    lock back tries again for a while). For the statement every publish runs."""
    return " NOT pg_try_advisory_xact_lock_shared(1752134516, (" + owner + ")::int)"


def owner_gone(o: LiteralString) -> LiteralString:
    """SQL: the owner row ``o`` is of a process whose connection ended: its lock was
    seen free by a sweep at least SUSPECT_FOR seconds ago, and since its last connection
    and the database's last start, and is free still. One look would not do: while a
    server shuts down, a session that lives a moment longer sees the others' locks
    go."""
    return ("(" + o + ".suspected_at IS NOT NULL AND " + o + ".suspected_at > " + o +
            ".locked_since AND " + o + ".suspected_at > pg_postmaster_start_time() AND " +
            o + ".suspected_at < now() - interval '3 seconds' AND NOT" +
            owner_alive(o + ".id") + ")")


#: a sweep marks the owners whose lock is free, to be judged gone at a later sweep
_SUSPECT: LiteralString = """
UPDATE hostctl_owners o SET suspected_at = now()
WHERE o.id <> %(me)s AND o.locked_since > pg_postmaster_start_time()
  AND (o.suspected_at IS NULL OR o.suspected_at <= o.locked_since)
  AND NOT""" + owner_alive("o.id")


def origin_channel(host: str) -> str:
    """Where the host whose drop box a task came in by is told that it changed (a host
    name is longer than a channel name may be: a digest of it)."""
    return "hostctl_origin_" + hashlib.sha256(host.encode()).hexdigest()[:16]


def dedup_key(env: Envelope) -> str:
    return hashlib.sha256(repr(env.dedup_key()).encode()).hexdigest()[:32]


def _os_error(exc: HostctlError) -> OSError:
    """A claim's write that failed, as the worker's writes fail: an OSError (EIO; ESTALE
    when the claim was taken over)."""
    code = errno.ESTALE if isinstance(exc, LeaseLost) else errno.EIO
    return OSError(code, exc.message)


@dataclass
class PgClaim:
    """A task this process holds in the cluster's queue."""

    task: Task
    queue: PgQueue
    job: int
    size: int  # the body's length after this claim's last read or write (-1: unknown)
    renewed: float = field(default_factory=time.monotonic)  # the last lease renewal
    released: bool = False
    #: handed to this owner by its publish: the task's ``handed`` mark stands for its
    #: first ``spawn`` event (see _PUBLISH)
    handed: bool = False

    def append(self, kind: str, **fields: Any) -> None:
        """One event, fenced by this owner; a connection lost on the way is made again
        (for up to RECONNECT_FOR seconds) and the event written once. A handed task's
        first ``spawn`` is its ``handed`` mark, written by its publish: nothing is
        written once its publisher told that the publish is on the disk."""
        queue = self.queue
        if kind == "spawn" and self.handed:
            self.handed = False
            queue._unspawned.discard(self.task.id)
            if queue._told_durable(self.task.id):
                return
            # not told: the spawn event is written (synchronously, fenced), which makes
            # sure that the task is this owner's and on the disk
        data = encode_event(kind, **fields)

        def attempt(again: bool) -> int | None:
            rows = queue.db.rows(
                "UPDATE hostctl_tasks SET body = body || %s WHERE id = %s AND owner = %s "
                "RETURNING octet_length(body)", (data, self.task.id, queue.owner()),
                retry=False)
            if rows:
                return int(rows[0][0])
            if again and queue._wrote(self.task.id, data):
                return None  # written before the connection broke
            raise LeaseLost(f"task {self.task.id} is no longer this process's: it was "
                            "taken over")

        try:
            new = queue._patiently(attempt)
        except HostctlError as exc:
            raise _os_error(exc) from None
        self.size = new if new is not None and self.size >= 0 and \
            new == self.size + len(data) else -1

    def reload(self) -> Task:
        task, size = self.queue._patiently(lambda _again: self.queue._read_one(self.task.id))
        self.task, self.size = task, size
        return task

    def grew(self) -> bool:
        if self.size < 0:
            return True
        rows = self.queue._patiently(lambda _again: self.queue.db.rows(
            "SELECT octet_length(body) FROM hostctl_tasks WHERE id = %s", (self.task.id,)))
        return not rows or int(rows[0][0]) != self.size

    def release(self) -> None:
        """Let go: the task's owner is none, and a sweep recovers it. Where the database
        cannot be told now, it is told at this queue's next claim or sweep (until then
        the claim is still this live owner's, and no sweep would take it)."""
        if self.released:
            return
        self.released = True
        self.queue._claims.discard(self.task.id)
        self.queue._unreleased[self.task.id] = self.handed  # its mark unused: never ran
        self.queue._unspawned.discard(self.task.id)
        self.queue._settle()


class PgLog:
    """A running task's log, in the database: each write one row, announced to followers;
    what could not be written (the database away for a moment) is written with the next
    write, and the close says so if it still cannot."""

    def __init__(self, queue: PgQueue, task_id: str) -> None:
        self.queue, self.task_id = queue, task_id
        self.pending = b""
        self.written = False

    def write(self, data: bytes) -> None:
        """The first write (the worker's header, before the task's command starts) waits
        for the second (the command's first output) or the close: one round trip less
        between a claim and its command."""
        self.pending += data
        if self.written:
            self.flush(raise_after=1 << 20)
        self.written = True

    def flush(self, raise_after: int = 0) -> None:
        """Write what is pending; kept for the next write while the database is away,
        up to ``raise_after`` bytes (0: try for RECONNECT_FOR seconds, then fail)."""
        if not self.pending:
            return

        def insert(_again: bool) -> None:
            # a row whose answer was lost may be written twice: a log line repeated is
            # better than one lost
            self.queue.db.rows(
                "WITH line AS (INSERT INTO hostctl_task_logs (task_id, data) "
                "VALUES (%s, %s)) SELECT pg_notify('hostctl_log_' || %s, ''), "
                "(SELECT pg_notify('hostctl_origin_' || substr(encode(sha256(convert_to("
                "t.origin, 'UTF8')), 'hex'), 1, 16), t.id) FROM hostctl_tasks t "
                "WHERE t.id = %s AND t.origin IS NOT NULL)",
                (self.task_id, self.pending, self.task_id, self.task_id), retry=False)

        try:
            if raise_after:
                insert(False)
            else:
                self.queue._patiently(insert)
        except HostctlError as exc:
            if len(self.pending) >= raise_after:
                self.pending = b""
                raise OSError(errno.EIO, exc.message) from None
            return
        self.pending = b""

    def close(self) -> None:
        self.flush()


class Registration:
    """A long-lived worker's entry among the cluster's workers (its owner row)."""

    def __init__(self, queue: PgQueue) -> None:
        self.queue = queue

    def update(self, tasks_run: int) -> None:
        self.queue.db.rows(
            # the beat in FROM: a WITH that nothing reads is never run
            "UPDATE hostctl_owners SET tasks_run = %s, registered = true FROM (SELECT "
            "procrastinate_update_heartbeat_v1(%s)) AS beat WHERE id = %s",
            (tasks_run, self.queue.owner(), self.queue.owner()))

    def close(self) -> None:
        with suppress(HostctlError):
            self.queue.db.rows("UPDATE hostctl_owners SET registered = false WHERE id = %s",
                               (self.queue.owner(),))


class PgWatch:
    """What a worker sleeps on: LISTEN on its queues' channels, inotify on the local drop
    box. One descriptor (an epoll of its own), so the connection can be made again under
    it: while the database cannot be reached, a timer wakes the sleeper each second to try."""

    def __init__(self, dsn: str, channels: list[str], incoming: Path | None,
                 told: Callable[[str, str], None] = lambda _channel, _payload: None) -> None:
        self.dsn, self.channels, self.told = dsn, channels, told
        self.pid = os.getpid()
        self.poll = select.epoll()
        self.timer = Timer()
        self.poll.register(self.timer, select.EPOLLIN)
        self.inotify: Inotify | None = None
        if incoming is not None:
            with suppress(OSError):
                self.inotify = Inotify([incoming])
                self.poll.register(self.inotify, select.EPOLLIN)
        self.conn: psycopg.Connection[Any] | None = None
        self.conn_fd = -1
        self._connect()

    def _connect(self) -> None:
        try:
            conn = open_connection(self.dsn, autocommit=True)
            for channel in self.channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            fd = conn.fileno()
        except (HostctlError, psycopg.Error) as exc:
            log.debug("no LISTEN connection: %s", exc)
            self.timer.arm(1.0)
            return
        self.conn, self.conn_fd = conn, fd
        self.poll.register(fd, select.EPOLLIN)
        self.timer.arm(0)
        self.told("", "")  # listening (again): what was told before may have been missed

    def fileno(self) -> int:
        return self.poll.fileno()

    def relisten(self, old: str, new: str) -> None:
        """Hear ``new`` instead of ``old`` from now on: the connection is made again, with
        the new channels, when the watch is next drained (at once: it is made readable),
        and what it may have missed meanwhile is told as after any new connection. No
        statement waits here on a connection that may be half dead."""
        self.channels = [c for c in self.channels if c != old] + [new]
        self._drop()
        self.poke()

    def poke(self) -> None:
        """Readable at once: what was read off the connection elsewhere is acted on by
        whoever sleeps on this watch, as on a notice."""
        self.timer.arm(1e-9)

    def drain(self) -> object:
        self.timer.drain()
        if self.inotify is not None:
            self.inotify.drain()
        if self.conn is None:
            self._connect()
            return None
        try:
            for notice in self.conn.notifies(timeout=0):
                self.told(notice.channel, notice.payload)
        except psycopg.Error:
            self._drop()
            self._connect()
        return None

    def _drop(self) -> None:
        if self.conn is not None:
            with suppress(OSError, ValueError):
                self.poll.unregister(self.conn_fd)
            with suppress(psycopg.Error):
                self.conn.close()
            self.conn, self.conn_fd = None, -1

    def close(self) -> None:
        self._drop()
        if self.inotify is not None:
            self.inotify.close()
        self.timer.close()
        self.poll.close()


class PgQueue:
    """The cluster's queue (see the module docstring).

    ``route`` names the queue a task goes to (its server); ``queues`` are the queues this
    process takes tasks from (None: all); ``root`` is the local spool of this host, for
    what stays on it: the front ends' drop box, the receipts, the results of tasks run
    here."""

    def __init__(self, dsn: str, root: Path, logs: Path, *,
                 route: Callable[[Envelope], str] | None = None,
                 queues: Collection[str] | None = None, server: str = "",
                 prime: Callable[[str, Any], None] | None = None,
                 route_by_contexts: bool = False) -> None:
        self.dsn = dsn
        #: the contexts are the cluster's (PgStore): a publish routes its task itself,
        #: in its statement, as ``route`` would (SERVER_OF)
        self.route_by_contexts = route_by_contexts
        #: told the document of each claimed task's context (bare name, or None), as
        #: the claim read it: the context store need not read it again
        self.prime = prime or (lambda _name, _document: None)
        self.root = root
        self.logs = logs
        self.route = route or (lambda _env: DEFAULT_QUEUE)
        self.queues = sorted(set(queues)) if queues is not None else None
        self.server = server
        self.host = host_name()
        self.db = Session(dsn, "task tables", on_connect=self._on_connect)
        self.local = Spool(root, logs)  # the drop box, the receipts, rejected drops
        self.outbox = self.local.outbox
        self._admission = Admission(self, self.outbox)
        self._owner: int | None = None
        self._owner_pid = 0
        self._claims: set[str] = set()  # ids of the tasks this owner holds
        #: let go, the database not told yet: id -> whether it was handed here and never
        #: started (its mark goes with it)
        self._unreleased: dict[str, bool] = {}
        self._resync = False  # the connection was made again since the last _settle
        #: task id -> (state, body length, last log row) of its receipt as last posted
        self._receipts: dict[str, tuple[str, int, int]] = {}
        self._receipts_due = False  # a task that came in here changed (told by the watch)
        self._unjudged: tuple[object, set[str]] = (None, set())
        self._said: set[str] = set()
        self._ready = False
        self._watch: PgWatch | None = None
        #: what paused() read last, and when (time.monotonic)
        self._pause_known: tuple[bool, float] | None = None
        #: the channel this owner's watch hears what is handed to it on ("": none)
        self._listening = ""
        #: this owner's offer may stand (or was taken, unheard yet, or an answer that
        #: would say was lost): hold() withdraws it
        self._offered = False
        #: tasks handed to this owner, not taken up yet: id -> its notice (None: read it)
        self._handed: dict[str, dict[str, Any] | None] = {}
        self._durable: set[str] = set()  # handed tasks told to be on the disk
        self._ends: Ends | None = None  # who hears of a cancel a claim finds (recovery)
        #: handed tasks claimed here whose spawn (the mark) is not used yet
        self._unspawned: set[str] = set()
        #: no role but hostctl's may connect (PRIVATE_DATABASE), as last looked at
        self._private = False
        self._said_private = False
        self._cancels: set[str] = set()  # handed tasks a cancel was heard for

    # -- owner: this process, as the holder of claims ---------------------------------

    def owner(self) -> int:
        """This process's owner id, registered on first use; again once a connection made
        again found the owner gone (judged dead while the connection was lost: see
        _on_connect). A statement built with the old id just before finds nothing of
        it (its claims are no longer this process's), or, for an offer, is tried again."""
        if self._owner is None or self._owner_pid != os.getpid():
            self._owner, self._claims = None, set()
            self._handed, self._offered = {}, False  # an owner's before: not this one's
            self._owner_pid = os.getpid()
            conn = self.db.connection()  # its lock is taken by _on_connect from now on
            try:
                # (``handoff``: this owner's sweeps know what a handed mark means; while
                # an owner that does not lives, nothing is handed: see _PUBLISH)
                row = conn.execute(
                    "INSERT INTO hostctl_owners (id, host, pid, server, handoff) SELECT "
                    "worker_id, %s, %s, %s, true FROM procrastinate_register_worker_v1() "
                    "RETURNING id",
                    (self.host, os.getpid(), self.server)).fetchone()
                assert row is not None
                conn.execute("SELECT pg_advisory_lock(%s, %s::int)", (OWNER_LOCKS, row[0]))
            except psycopg.Error as exc:
                raise self.db.failed(exc) from None
            self._owner = int(row[0])
            _OWNERS.add(self)
            self._follow_owner()
        return self._owner

    def _follow_owner(self) -> None:
        """An owner registered again: the watch hears the new owner's channel, on which
        publishes hand it tasks, instead of the old one's."""
        watch, channel = self._watch, OWNER_CHANNEL + str(self._owner)
        if watch is None or not self._listening or self._listening == channel:
            return
        if watch.pid != os.getpid():  # a forked child's copy: its parent's connection
            self._listening = ""  # hears nothing for this owner, which offers nothing
            return
        watch.relisten(self._listening, channel)
        self._listening = channel

    def _on_connect(self, conn: psycopg.Connection[Any]) -> None:
        """A connection made again (the database restarted, the network broke): this
        owner's lock is taken again first, then its row says since when. An owner whose
        row was removed meanwhile (it looked dead) starts again as a new owner; what it
        held is no longer its own."""
        if self._owner is None or self._owner_pid != os.getpid():
            return
        deadline = time.monotonic() + 10
        while not conn.execute("SELECT pg_try_advisory_lock(%s, %s::int)",
                               (OWNER_LOCKS, self._owner)).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise OperationFailed("cannot take this worker's lock back")
            time.sleep(0.05)  # a sweep looks at it this moment
        alive = conn.execute("UPDATE hostctl_owners SET locked_since = now() WHERE id = %s "
                             "RETURNING id", (self._owner,)).fetchone()
        if alive is None:
            conn.execute("SELECT pg_advisory_unlock(%s, %s::int)", (OWNER_LOCKS, self._owner))
            self._owner, self._claims = None, set()
        self._resync = True  # a claim made as the connection broke may be ours unknown

    def _patiently(self, attempt: Callable[[bool], T]) -> T:
        """``attempt(again)``, again while the database's connection is lost (a restart,
        a network cut), for up to RECONNECT_FOR seconds; ``again`` tells the attempt
        that an earlier one may have been done before the loss."""
        deadline = time.monotonic() + RECONNECT_FOR
        pause, again = 0.1, False
        while True:
            try:
                return attempt(again)
            except DatabaseError as exc:
                if not exc.lost or time.monotonic() + pause > deadline:
                    raise
                if not again:
                    log.warning("%s: trying again", exc.message)
            again = True
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _wrote(self, task_id: str, data: bytes) -> bool:
        """Whether the task's body ends with ``data`` (a write whose answer was lost)."""
        rows = self.db.rows("SELECT body FROM hostctl_tasks WHERE id = %s", (task_id,))
        return bool(rows) and bytes(rows[0][0]).endswith(data)

    def _settle(self) -> None:
        """Tell the database of the claims let go while it could not be told; after a
        connection was made again, let go of what the database says this owner holds
        and this process does not know of (a claim whose answer the break lost: a sweep
        queues it again, as claimed but never started)."""
        for task_id, unused in sorted(self._unreleased.items()):
            try:
                self.db.rows("UPDATE hostctl_tasks SET owner = NULL, handed = CASE WHEN %s "
                             "THEN NULL ELSE handed END WHERE id = %s AND owner = %s",
                             (unused, task_id, self.owner()))
            except HostctlError:
                return
            del self._unreleased[task_id]
        if self._resync and self._owner is not None:
            try:
                # (a task handed here and not heard of is no lost claim: the next fetch
                # takes it up)
                self.db.rows("UPDATE hostctl_tasks SET owner = NULL WHERE owner = %s AND "
                             "NOT (id = ANY(%s::text[])) AND handed IS NULL",
                             (self._owner, sorted(self._claims)))
            except HostctlError:
                return
            self._resync = False

    def unregister(self) -> None:
        """Leave the owners (a clean exit): what this process still holds is let go."""
        if self._owner is None or self._owner_pid != os.getpid() or self.db.forked:
            return
        with suppress(HostctlError):  # first: nothing more is handed here
            self.db.rows("DELETE FROM hostctl_offers WHERE owner = %s", (self._owner,))
        with suppress(HostctlError):
            self._settle()  # what was let go: told (a handed task that ran keeps its mark)
        with suppress(HostctlError):
            # handed here and never started: queued again; what may have run (a claim
            # past its spawn, one let go after it) keeps its mark for the sweep
            self._give_back(keep=(self._claims - self._unspawned) | {
                task_id for task_id, unused in self._unreleased.items() if not unused})
        with suppress(HostctlError):
            self.db.rows("UPDATE hostctl_tasks SET owner = NULL WHERE owner = %s",
                         (self._owner,))
        with suppress(HostctlError):
            self.db.rows("SELECT procrastinate_unregister_worker_v1(%s)", (self._owner,))
        self._owner = None
        self.db.close()

    # -- set-up -----------------------------------------------------------------------

    def ensure(self) -> None:
        if self._ready:
            return
        self.local.ensure()
        self.db.rows("SELECT 1 FROM hostctl_tasks LIMIT 0")
        self._ready = True

    def dir(self, name: str) -> Path:
        return self.local.dir(name)

    # -- publish ----------------------------------------------------------------------

    def publish(self, env: Envelope, delay: float = 0.0,
                dedup: bool = True) -> tuple[str, bool]:
        key = dedup_key(env) if dedup else None
        for _ in range(10):
            try:
                if key is not None:
                    rows = self.db.rows(
                        "SELECT t.id" + _TASK_FROM + " WHERE j.queueing_lock = %s "
                        "AND j.status = 'todo' AND t.set_aside IS NULL", (key,))
                    if rows:
                        # queued by another, whose call may not have returned: it is on
                        # the disk before this one says so
                        self.db.rows(FLUSH, retry=False)
                        return str(rows[0][0]), False
                # the job and the task in one statement (_PUBLISH), handed to an idle
                # worker where one offered itself; an identical task queued meanwhile
                # (or a claim of its context, for a handed one) makes procrastinate's
                # unique index refuse it: look again. Its worker hears of it before its
                # commit reaches the disk, and waits for the disk before it runs
                # anything (a handed task's owner is told of it by _PUBLISHED; another
                # claim's spawn event commits synchronously); this call returns once it
                # is there (rows_heard_first)
                body = env.encode()
                try:
                    self.db.rows_heard_first(_PUBLISH, {
                        "queue": None if self.route_by_contexts else self.route(env)[:128],
                        "default": DEFAULT_QUEUE, "type": env.type[:128],
                        "priority": env.priority, "lock": env.context, "key": key,
                        "args": json.dumps({"task": env.id}),
                        "delay": delay, "id": env.id, "body": body, "text": body.decode(),
                        "lease": LEASE, "paused": _PAUSED, "at": utc_iso()},
                        _PUBLISHED, (env.id,))
                except DatabaseError as exc:
                    if exc.lost and self._queued_after_all(env.id, exc):
                        return env.id, True
                    raise
                return env.id, True
            except DatabaseError as exc:
                if not exc.unique_violation:
                    raise
                if self._exists(env.id):
                    raise Conflict(f"a task with id {env.id} already exists") from None
                # an identical task was queued this moment by another host: look again
        raise OperationFailed("cannot queue the task: its de-duplication key stays taken")

    def _queued_after_all(self, task_id: str, exc: DatabaseError) -> bool:
        """A publish whose connection broke on the way may have committed (a worker may
        run the task already): look, on a new connection, and if it is there, make it
        durable as the publish would have and say it was queued, so that a caller does
        not queue it again; where that cannot be told now, say so (OperationFailed)."""
        try:
            if not self._exists(task_id):
                return False
            self.db.rows(FLUSH, retry=False)  # this session sees it: the flush takes it
        except DatabaseError:
            raise OperationFailed(f"cannot tell whether task {task_id} was queued "
                                  f"({exc.message}): see hostctl task show {task_id}"
                                  ) from None
        return True

    def _insert(self, env: Envelope, delay: float, key: str | None,
                owner: int | None = None) -> int:
        """The job and the task, in the caller's transaction; the job's id."""
        rows = self.db.rows(
            "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, %s, %s, %s, "
            "%s::jsonb, CASE WHEN %s > 0 THEN now() + make_interval(secs => %s) END"
            ")]::procrastinate_job_to_defer_v1[]))", (*self._job_row(env, key), delay, delay))
        job = int(rows[0][0])
        if owner is not None:
            self.db.rows("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s "
                         "WHERE id = %s", (owner, job))
        self.db.rows("INSERT INTO hostctl_tasks (id, job_id, body, owner, lease_until) "
                     "VALUES (%s, %s, %s, %s, CASE WHEN %s::bigint IS NOT NULL THEN now() "
                     "+ make_interval(secs => %s) END)",
                     (env.id, job, env.encode(), owner, owner, LEASE))
        return job

    def _job_row(self, env: Envelope, key: str | None) -> tuple[Any, ...]:
        """procrastinate's job of a task: queue (its server), task name, priority, lock
        (its context), queueing lock, args."""
        return (self.route(env)[:128], env.type[:128], env.priority, env.context, key,
                json.dumps({"task": env.id}))

    def adopt(self, task: Task) -> bool:
        """Queue a task moved from another queue (a home's spool, by ``cluster import``)
        with its history, its id and, if deferred, its due time; False when a task of
        that id is here already (moved before)."""
        due = task.due if task.state == "deferred" and task.due else 0.0
        delay = max(0.0, due - time.time()) if due else 0.0
        try:
            with self.db.transaction():
                job = self._insert(task.envelope, delay, None)
                self.db.rows("UPDATE hostctl_tasks SET body = %s WHERE job_id = %s",
                             (encode_task(task), job))
        except DatabaseError as exc:
            if exc.unique_violation and self._exists(task.id):
                return False
            raise
        return True

    def _exists(self, task_id: str) -> bool:
        return bool(self.db.rows("SELECT 1 FROM hostctl_tasks WHERE id = %s", (task_id,)))

    def publish_claimed(self, env: Envelope, wait: bool = True) -> PgClaim:
        owner = self.owner()
        pause = 0.02
        while True:
            try:
                with self.db.transaction():
                    job = self._insert(env, 0.0, None, owner)
            except DatabaseError as exc:
                if not exc.unique_violation:
                    raise
                if self._exists(env.id):
                    raise Conflict(f"a task with id {env.id} already exists") from None
                if not wait:
                    raise BlockingIOError(errno.EWOULDBLOCK,
                                          f"a task runs on {env.context}") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            self._claims.add(env.id)
            task, size = self._read_one(env.id)
            return PgClaim(task, self, job, size)

    def context_busy(self, context: str) -> bool:
        return bool(self.db.rows("SELECT 1 FROM procrastinate_jobs WHERE lock = %s AND "
                                 "status = 'doing'", (context,)))

    # what admission (admission.py) needs of the queue it admits into

    def stored(self, task_id: str) -> tuple[bool, Envelope | None]:
        rows = self.db.rows("SELECT body FROM hostctl_tasks WHERE id = %s", (task_id,))
        if not rows:
            return False, None
        try:
            return True, decode_task(bytes(rows[0][0]), "new").envelope
        except InvalidInput:
            return True, None

    def write_new(self, env: Envelope, delay: float) -> None:
        """Admission's publish: the task came in by this host's drop box, which keeps
        its receipt (see :meth:`sync_receipts`)."""
        try:
            with self.db.transaction():
                job = self._insert(env, delay, None)
                if env.receipt:
                    self.db.rows("UPDATE hostctl_tasks SET origin = %s WHERE job_id = %s",
                                 (self.host, job))
        except DatabaseError as exc:
            if exc.unique_violation:
                raise Conflict(f"a task with id {env.id} already exists") from None
            raise

    def admit(self, check: Callable[[Envelope], None]) -> list[str]:
        """Take in this host's drops; then bring the receipts of the tasks that came in
        here up to date (they run on other hosts)."""
        notes = self._admission.admit(check)
        try:
            self.sync_receipts()
        except HostctlError as exc:  # the next pass tries again
            log.warning("receipts not brought up to date: %s", exc)
        return notes

    def sync_receipts(self) -> int:
        """Post the status (and the log) of each task that came in by this host's drop
        box and changed since it was last posted, wherever it runs; how many were posted.
        A task ended more than a day ago is not looked at again."""
        rows = self.db.rows(
            "SELECT" + _TASK_COLUMNS + ", octet_length(t.body), (SELECT coalesce(max(seq), "
            "0) FROM hostctl_task_logs l WHERE l.task_id = t.id)" + _TASK_FROM +
            " WHERE t.origin = %s AND (t.ended_at IS NULL OR t.ended_at > now() - "
            "interval '1 day')", (self.host,))
        posted = 0
        for row in rows:
            try:
                task = self._decode(row[:5])
            except InvalidInput:
                continue
            stamp = (task.state, int(row[5]), int(row[6]))
            before = self._receipts.get(task.id)
            if before == stamp or not task.envelope.receipt:
                continue
            with suppress(OSError):
                if stamp[2] != (before[2] if before else 0):
                    # known: the rows after those mirrored; else (a fresh process) the
                    # whole log, of which the file's length says what it has
                    after = before[2] if before else 0
                    self.outbox.mirror_log(task.envelope.receipt,
                                           self._log_chunks(task.id, after),
                                           whole=before is None)
                self.outbox.post(task)
                self._receipts[task.id] = stamp
                posted += 1
        return posted

    def _log_chunks(self, task_id: str, after: int) -> Iterator[bytes]:
        for (data,) in self.db.rows("SELECT data FROM hostctl_task_logs WHERE task_id = %s "
                                    "AND seq > %s ORDER BY seq", (task_id, after)):
            yield bytes(data)

    def has_submissions(self) -> bool:
        """Drops wait in this host's drop box, or a task that came in by it changed
        (this queue's watch was told): either way :meth:`admit` has work."""
        due, self._receipts_due = self._receipts_due, False
        return due or self.local.has_submissions()

    # -- reading ----------------------------------------------------------------------

    def _decode(self, row: Any) -> Task:
        task_id, body, reason, state, due = row
        task = decode_task(bytes(body), str(state),
                           due=float(due) if state == "deferred" and due else None)
        if task.id != task_id:
            raise InvalidInput(f"task row {task_id} holds task {task.id}")
        return Task(task.envelope, task.events, task.state, "", task.due, reason or "")

    def _read_one(self, task_id: str) -> tuple[Task, int]:
        rows = self.db.rows("SELECT" + _TASK_COLUMNS + ", octet_length(t.body)" + _TASK_FROM
                            + " WHERE t.id = %s", (task_id,))
        if not rows:
            raise NotFound(f"no task {task_id}")
        return self._decode(rows[0][:5]), int(rows[0][5])

    def get(self, task_id: str) -> Task:
        if not valid_id(task_id):
            raise InvalidInput(f"malformed task id {task_id!r} (20 hex digits)")
        try:
            return self._read_one(task_id)[0]
        except InvalidInput as exc:
            raise InvalidInput(f"task {task_id} in the cluster's database is not a "
                               f"readable task: {exc}") from None

    def tasks(self, statuses: Collection[Status] | None = None,
              strict: bool = False) -> list[Task]:
        wanted = set(statuses) if statuses is not None else set(Status)
        out = []
        for row in self.db.rows("SELECT" + _TASK_COLUMNS + _TASK_FROM + " ORDER BY t.id"):
            try:
                task = self._decode(row)
            except InvalidInput:
                continue
            except NewerFormat as exc:  # not this hostctl's to read: said, passed over
                if strict:
                    raise
                log.warning("%s", exc)
                continue
            if task.status in wanted:
                out.append(task)
        return out

    def status_counts(self) -> StatusCounts:
        """Every task read (how one ended is its events' word, not a column's)."""
        by_status = {s: 0 for s in Status}
        oldest: float | None = None
        for task in self.tasks():
            if task.quarantined:
                continue
            by_status[task.status] += 1
            if task.status is Status.QUEUED:
                created = parse_iso(task.envelope.created)
                oldest = created if oldest is None else min(oldest, created)
        return StatusCounts(by_status, oldest)

    def recent(self, query: TaskQuery) -> list[Task]:
        """Newest first, a page of rows at a time (type, context and age filtered in the
        database, the status, which the events decide, here)."""
        out: list[Task] = []
        before: str | None = None
        while query.limit is None or len(out) < query.limit:
            rows = self.db.rows(
                "SELECT" + _TASK_COLUMNS + _TASK_FROM + " WHERE (%(before)s::text IS NULL "
                "OR t.id < %(before)s) AND (%(floor)s::text IS NULL OR t.id >= %(floor)s) "
                "AND (%(type)s::text IS NULL OR j.task_name = %(type)s) AND "
                "(%(context)s::text IS NULL OR j.lock = %(context)s) ORDER BY t.id DESC "
                "LIMIT %(page)s",
                {"before": before, "floor": query.id_floor(), "type": query.type,
                 "context": query.context, "page": _PAGE})
            for row in rows:
                try:
                    task = self._decode(row)
                except InvalidInput:
                    continue
                if query.wants(task) and (query.limit is None or len(out) < query.limit):
                    out.append(task)
            if len(rows) < _PAGE:
                break
            before = str(rows[-1][0])
        return out

    def counts(self) -> Counts:
        rows = self.db.rows(
            "SELECT count(*) FILTER (WHERE t.set_aside IS NULL AND j.status = 'todo' AND "
            "  (j.scheduled_at IS NULL OR j.scheduled_at <= now())), "
            "count(*) FILTER (WHERE t.set_aside IS NULL AND j.status = 'todo' AND "
            "  j.scheduled_at > now()), "
            "count(*) FILTER (WHERE t.set_aside IS NULL AND j.status = 'doing'), "
            "count(*) FILTER (WHERE t.set_aside IS NULL AND j.status NOT IN "
            "  ('todo', 'doing')), "
            "count(*) FILTER (WHERE t.set_aside IS NOT NULL)" + _TASK_FROM)
        queued, deferred, processing, finished, quarantined = (int(n) for n in rows[0])
        local = self.local.counts()
        return Counts(queued=queued, deferred=deferred, processing=processing,
                      finished=finished, incoming=local.incoming, quarantined=quarantined,
                      rejected=local.rejected)

    def set_aside(self, rejected: bool = False) -> list[tuple[str, str]]:
        if rejected:
            return self.local.set_aside(rejected=True)
        return [(str(i), str(r)) for i, r in self.db.rows(
            "SELECT id, set_aside FROM hostctl_tasks WHERE set_aside IS NOT NULL "
            "ORDER BY id")]

    def read_log(self, task_id: str, follow: bool, poll: float = 0.1) -> Iterator[bytes]:
        self.get(task_id)  # NotFound, InvalidInput
        return self._follow(task_id, follow, poll)

    def _follow(self, task_id: str, follow: bool, poll: float) -> Iterator[bytes]:
        seen = 0
        listener: psycopg.Connection[Any] | None = None
        try:
            if follow:
                listener = open_connection(self.dsn, autocommit=True)
                listener.execute(sql.SQL("LISTEN {}").format(
                    sql.Identifier(f"hostctl_log_{task_id}")))
            while True:
                ended = follow and self.get(task_id).status.finished
                for seq, data in self.db.rows(
                        "SELECT seq, data FROM hostctl_task_logs WHERE task_id = %s AND "
                        "seq > %s ORDER BY seq", (task_id, seen)):
                    seen = int(seq)
                    yield bytes(data)
                if not follow or ended:
                    return
                assert listener is not None
                try:
                    for _ in listener.notifies(timeout=max(poll, 0.5), stop_after=1):
                        pass
                except psycopg.Error:  # the listener broke: poll, then listen anew
                    time.sleep(poll)
                    listener.close()
                    with suppress(HostctlError, psycopg.Error):
                        listener = open_connection(self.dsn, autocommit=True)
                        listener.execute(sql.SQL("LISTEN {}").format(
                            sql.Identifier(f"hostctl_log_{task_id}")))
        finally:
            if listener is not None:
                listener.close()

    # -- what users do to tasks -------------------------------------------------------

    def retry(self, task_id: str) -> Task:
        task = self.get(task_id)
        if not task.status.finished:
            raise Conflict(f"task {task_id} is {task.status.label}; only a finished task "
                           "can be retried")
        with self.db.transaction():
            rows = self.db.rows(
                "UPDATE procrastinate_jobs j SET status = 'todo', scheduled_at = NULL, "
                "worker_id = NULL, queueing_lock = NULL, abort_requested = false "
                "FROM hostctl_tasks t WHERE t.id = %s AND j.id = t.job_id AND "
                "(j.status NOT IN ('todo', 'doing') OR t.set_aside IS NOT NULL) "
                "RETURNING j.id", (task_id,))
            if not rows:
                raise Conflict(f"task {task_id} changed meanwhile; try again")
            self.db.rows("UPDATE hostctl_tasks SET body = body || %s, set_aside = NULL, "
                         "ended_at = NULL, owner = NULL WHERE id = %s",
                         (encode_event("retry"), task_id))
        self._notify("retry")
        self._tell_origin_of(task_id)
        return self.get(task_id)

    def cancel_queued(self, task_id: str) -> Task | None:
        with self.db.transaction():
            jobs = self.db.rows("SELECT t.job_id" + _TASK_FROM + " WHERE t.id = %s AND "
                                "j.status = 'todo' AND t.set_aside IS NULL FOR UPDATE OF j",
                                (task_id,))
            if not jobs:
                return None
            rows = self.db.rows("SELECT procrastinate_cancel_job_v1(%s, false, false)",
                                (jobs[0][0],))
            if not rows or rows[0][0] is None:
                return None
            self.db.rows("UPDATE hostctl_tasks SET body = body || %s || %s, ended_at = now() "
                         "WHERE id = %s",
                         (encode_event("cancel"), encode_event(
                             "end", outcome="cancelled", reason="cancelled before it started"),
                          task_id))
        self._tell_origin_of(task_id)
        return self.get(task_id)

    def request_cancel(self, task_id: str) -> Task:
        rows = self.db.rows(
            "UPDATE hostctl_tasks t SET body = body || %s FROM procrastinate_jobs j "
            "WHERE t.id = %s AND j.id = t.job_id AND j.status = 'doing' RETURNING t.id",
            (encode_event("cancel"), task_id), retry=False)
        if not rows:
            raise Conflict(f"task {task_id} is not processing")
        self._notify(f"cancel {task_id}")
        return self.get(task_id)

    def _notify(self, what: str) -> None:
        with suppress(HostctlError):
            self.db.rows("SELECT pg_notify(%s, %s)", (CHANNEL, what))

    # -- claim ------------------------------------------------------------------------

    def claim(self, check: Callable[[Envelope], None] | None = None, limit: int = 1,
              skip_contexts: set[str] | None = None,
              ahead: bool = False) -> list[TaskClaim]:
        """Up to ``limit`` ready tasks of this worker's queues, one per context: those a
        publish handed to this process first (they need no round trip), then those its
        fetch takes. A task ``check`` refuses is set aside with the reason; one it cannot
        judge yet (NotJudgedYet) goes back, and is passed over until the check changes."""
        try:
            self.ensure()
            self._settle()
        except DatabaseError as exc:
            if not exc.lost:
                raise
            return []  # the database is away: nothing to claim until it is back
        if self._unjudged[0] is not check:
            self._unjudged = (check, set())
        waiting = self._unjudged[1]
        skip = set(skip_contexts or ())
        out: list[TaskClaim] = []
        while self._handed and len(out) < limit:
            task_id = next(iter(self._handed))
            claim = self._take_handed(task_id, self._handed.pop(task_id), check, waiting)
            if claim is not None:
                out.append(claim)
                skip.add(claim.task.envelope.context)
        while len(out) < limit:
            rows = sorted(self._fetch(limit - len(out), skip, waiting, not ahead),
                          key=lambda r: (-int(r[3]), int(r[1])))
            if not rows:
                break
            for i, (task_id, job, body, _priority, context, document, handed) in \
                    enumerate(rows):
                self.prime(str(context), document)
                try:
                    claim = self._judge(str(task_id), int(job), bytes(body), check, waiting,
                                        handed=bool(handed))
                except BaseException as exc:
                    for later_id, *_rest in rows[i:]:
                        with suppress(HostctlError):
                            self._give_back(str(later_id))
                    if isinstance(exc, DatabaseError) and exc.lost:
                        return out  # the check could not read the contexts: later
                    raise
                if claim is not None:
                    out.append(claim)
                    skip.add(claim.task.envelope.context)
        return out

    def _take_handed(self, task_id: str, told: dict[str, Any] | None,
                     check: Callable[[Envelope], None] | None,
                     waiting: set[str]) -> PgClaim | None:
        """A task a publish handed to this owner, from its notice (``told``), or read
        when the notice did not carry it or a cancel was heard for it since."""
        try:
            if told is None or task_id in self._cancels:
                rows = self.db.rows(
                    "SELECT t.job_id, t.body, ltrim(j.lock, '@'), c.document" + _TASK_FROM
                    + " LEFT JOIN hostctl_contexts c ON c.name = ltrim(j.lock, '@') "
                    "WHERE t.id = %s AND t.owner = %s AND t.handed IS NOT NULL AND "
                    "j.status = 'doing'", (task_id, self.owner()))
                if not rows:
                    return None  # not this owner's (any more): nothing to take
                job, body, context, document = rows[0]
                body = bytes(body)
            else:
                job, body = int(told["job"]), str(told["body"]).encode()
                context, document = str(told["context"]), told.get("document")
            self.prime(str(context), document)
            return self._judge(task_id, int(job), body, check, waiting, handed=True)
        except (HostctlError, KeyError, TypeError, ValueError) as exc:
            # the database away, or a notice that is none of ours: the next fetch finds
            # the task as handed and not taken (missed)
            log.debug("handed task %s not taken now: %s", task_id, exc)
            return None
        finally:
            self._cancels.discard(task_id)

    def _heard(self, payload: str) -> None:
        """A notice on this owner's channel: a task handed to it (the task, or its id),
        or that a task handed to it is on the disk (``durable ID``)."""
        if payload.startswith("durable "):
            if len(self._durable) > 10_000:  # of tasks never taken up: forget them
                self._durable.clear()
            self._durable.add(payload[8:])
            return
        self._offered = False  # its offer was taken
        try:
            told = json.loads(payload)
            task_id = str(told["id"])
        except (ValueError, TypeError, KeyError, RecursionError):
            return  # the next fetch finds what was handed here (missed)
        if valid_id(task_id) and task_id not in self._claims:
            self._handed[task_id] = told if isinstance(told, dict) and "job" in told else None

    def _told_durable(self, task_id: str) -> bool:
        """Whether the publish that handed ``task_id`` here was told to be on the disk
        (_PUBLISHED), waiting DURABLE_WAIT at most. Notices read meanwhile are told as
        the watch would; the watch is made readable, so that the loop that sleeps on it
        acts on them (a cancel, a task queued) as on any other."""
        deadline = time.monotonic() + DURABLE_WAIT
        watch = self._watch
        heard = False
        while task_id not in self._durable and watch is not None and watch.conn is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                for notice in watch.conn.notifies(timeout=left, stop_after=1):
                    heard = True
                    watch.told(notice.channel, notice.payload)
            except psycopg.Error:
                break  # the watch makes its connection again when it is next drained
        if heard and watch is not None:
            watch.poke()
        if task_id in self._durable:
            self._durable.discard(task_id)
            return True
        return False

    def hold(self) -> None:
        """This process takes nothing for now (it stops, the queue is paused, the disk
        is full, the machine busy): its offer is withdrawn, and the tasks handed to it
        go back to the queue, for another worker. Where the database cannot be told, the
        next call tries again."""
        if not self._offered and not self._handed:
            return
        with suppress(HostctlError):
            if self._offered:  # (or may stand: an answer was lost)
                self.db.rows("DELETE FROM hostctl_offers WHERE owner = %s", (self.owner(),))
                self._offered = False  # if it was taken meanwhile, its notice comes later
            while self._handed:
                task_id = next(iter(self._handed))
                self._give_back(task_id)
                del self._handed[task_id]
                self._cancels.discard(task_id)
                self._durable.discard(task_id)

    def _fetch(self, limit: int, skip: set[str], waiting: set[str],
               free: bool = True) -> list[Any]:
        """Claim up to ``limit`` ready tasks in one statement (_FETCH), with what was
        handed here unheard (missed); with none to take and a ``free`` slot, offer this
        owner to the next publish (when its watch hears its channel). The rows of the
        tasks taken."""
        for _ in range(5):
            try:
                owner = self.owner()
                watch = self._watch  # (an offer stands only while its watch listens)
                offer = (free and self._private and watch is not None
                         and watch.conn is not None
                         and self._listening == OWNER_CHANNEL + str(owner))
                offered = self._offered
                # an offer may stand from here on, whatever becomes of the answer (hold
                # withdraws it); the answer says whether it does
                self._offered = offered or offer
                # one statement, atomic on its own (autocommit): no BEGIN, no COMMIT to
                # wait for; a connection lost on the way fails it whole: [] now
                rows = self.db.rows(_FETCH, {
                    "queues": self.queues, "skip": sorted(skip), "waiting": sorted(waiting),
                    "limit": limit, "owner": owner, "lease": LEASE, "paused": _PAUSED,
                    "known": sorted(self._claims | set(self._handed) | set(self._unreleased)),
                    "offer": offer, "host": self.host, "pid": os.getpid(),
                    "not_before": boot_ticks()}, retry=False)
            except DatabaseError as exc:
                if exc.lost:  # not taken, or taken by a connection gone: a sweep's
                    return []
                if exc.sqlstate == "23503" and self._owner != owner:
                    continue  # an offer of the owner that the new connection found gone
                if not exc.unique_violation:  # two hosts took one context's jobs at once
                    raise
                continue
            tasks = [r for r in rows if r[0] is not None]
            withdrawn, made = next(((int(r[3]), bool(r[6])) for r in rows if r[0] is None),
                                   (0, False))
            # the offer as the database has it now: it stands (made or kept); withdrawn
            # here; or gone without this statement, taken by a publish it did not see,
            # whose task is on its way here, in a slot this fetch may have filled too
            self._offered = made
            if offered and not withdrawn and tasks and not any(r[6] for r in tasks) \
                    and len(tasks) >= limit:
                extra = tasks.pop()
                with suppress(HostctlError):
                    self._give_back(str(extra[0]))
            return tasks
        return []

    def _judge(self, task_id: str, job: int, body: bytes,
               check: Callable[[Envelope], None] | None, waiting: set[str],
               handed: bool = False) -> PgClaim | None:
        try:
            task = decode_task(body, "active")
            if task.id != task_id:
                raise InvalidInput(f"task row {task_id} holds task {task.id}")
            if check is not None:
                check(task.envelope)
        except NotJudgedYet as exc:
            if task_id not in waiting:
                log.warning("task %s waits in the queue: %s (not in the configuration "
                            "this process loaded)", task_id, exc)
            waiting.add(task_id)
            self._give_back(task_id)
            return None
        except InvalidInput as exc:
            self._quarantine(task_id, job, str(exc))
            return None
        self._claims.add(task_id)
        if handed:
            self._unspawned.add(task_id)
        claim = PgClaim(task, self, job, len(body), handed=handed)
        if task.cancel_requested:  # cancelled while queued, before it was taken
            with nullcontext() if self._ends is None else self._ends.ending(task,
                                                                           "cancelled"):
                self.finish(claim, "cancelled", reason="cancelled before it started")
            return None
        return claim

    def _give_back(self, task_id: str | None = None, keep: Collection[str] = ()) -> None:
        """A task of this owner's that did not start (``task_id``; without one, each task
        handed here but those in ``keep``) goes back to the queue as it was: no attempt,
        no mark; the workers are told (no trigger announces a job back in ``todo``). Tried
        again when an identical task took the de-duplication key at that very moment
        (the statement's look at it came just before)."""
        if task_id is not None:
            self._claims.discard(task_id)
            self._unspawned.discard(task_id)
        for _ in range(3):
            try:
                rows = self.db.rows(_GIVE_BACK, {"owner": self.owner(), "id": task_id,
                                                 "all": task_id is None,
                                                 "keep": sorted(keep)})
                break
            except DatabaseError as exc:
                if not exc.unique_violation:
                    raise
        else:
            raise OperationFailed(f"task {task_id}: cannot put it back in the queue")
        if rows:
            self._notify("requeue")

    def _quarantine(self, task_id: str, job: int, reason: str, mine: bool = True,
                    owner: int | None = None) -> None:
        """Set a task aside (its job failed) with ``reason``, while its holder holds it:
        this owner (``mine``), or ``owner``, the dead one a sweep found."""
        self._claims.discard(task_id)
        self._unspawned.discard(task_id)
        if mine:
            owner = self.owner()
        with self.db.transaction():
            rows = self.db.rows(
                "UPDATE hostctl_tasks SET set_aside = %s, owner = NULL, handed = NULL, "
                "ended_at = now() WHERE id = %s AND job_id = %s AND "
                "owner IS NOT DISTINCT FROM %s RETURNING id",
                (" ".join(reason.split())[:2000], task_id, job, owner))
            if rows:
                self.db.rows("SELECT procrastinate_finish_job_v1(%s, 'failed', false)",
                             (job,))
        if rows:
            log.warning("task %s set aside: %s", task_id, reason)

    # -- the owner's side of a claim --------------------------------------------------

    def open_log(self, env: Envelope) -> PgLog:
        return PgLog(self, env.id)

    def result_path(self, env: Envelope) -> str:
        return str(self.local.dir("tmp") / f".{env.id}.result")

    def started(self, claim: Any) -> None:
        """A task that came in by a drop box: its host is told (its receipt changes)."""
        self._tell_origin(_own(claim))

    def _tell_origin(self, c: PgClaim) -> None:
        if c.task.envelope.receipt:
            self._tell_origin_of(c.task.id)

    def _tell_origin_of(self, task_id: str) -> None:
        """Tell the host a dropped task came in by that it changed (its receipt)."""
        with suppress(HostctlError):
            self.db.rows(
                "SELECT pg_notify('hostctl_origin_' || substr(encode(sha256(convert_to("
                "t.origin, 'UTF8')), 'hex'), 1, 16), t.id) FROM hostctl_tasks t "
                "WHERE t.id = %s AND t.origin IS NOT NULL", (task_id,))

    def heartbeat(self, claim: Any) -> None:
        """Renew the claim's lease; LeaseLost when it is no longer this process's (taken
        over) or could not be renewed for FENCE_AFTER seconds."""
        c = _own(claim)
        if c.queue is not self:  # claimed through another handle: its owner renews it
            return c.queue.heartbeat(c)
        try:
            rows = self.db.rows(
                "UPDATE hostctl_tasks SET lease_until = now() + make_interval(secs => %s) "
                "FROM (SELECT procrastinate_update_heartbeat_v1(%s)) AS beat "
                "WHERE id = %s AND owner = %s RETURNING id",
                (LEASE, self.owner(), c.task.id, self.owner()))
        except HostctlError as exc:
            if time.monotonic() - c.renewed > FENCE_AFTER:
                raise LeaseLost(f"task {c.task.id}: its claim could not be renewed for "
                                f"{time.monotonic() - c.renewed:.0f} s ({exc.message})"
                                ) from None
            raise
        if not rows:
            raise LeaseLost(f"task {c.task.id} is no longer this process's: it was "
                            "taken over")
        c.renewed = time.monotonic()

    def finish(self, claim: Any, outcome: str, **fields: Any) -> None:
        c = _own(claim)
        if c.queue is not self:
            return c.queue.finish(c, outcome, **fields)
        status = _JOB_END.get(outcome, "failed")
        self._end(c, [encode_event("end", outcome=outcome, **fields)],
                  "SELECT procrastinate_finish_job_v1(%s, %s::procrastinate_job_status, "
                  "false)", (c.job, status), ended=True)

    def defer(self, claim: Any, delay: float, outcome: str = "retry",
              **fields: Any) -> None:
        c = _own(claim)
        if c.queue is not self:
            return c.queue.defer(c, delay, outcome, **fields)
        due = time.time() + delay
        self._end(c, [encode_event("end", outcome=outcome, **fields),
                      encode_event("defer", until=utc_iso(due))],
                  "SELECT procrastinate_retry_job_v2(%s, to_timestamp(%s), NULL, NULL, "
                  "NULL)", (c.job, due), ended=False)

    def requeue(self, claim: Any) -> None:
        c = _own(claim)
        if c.queue is not self:
            return c.queue.requeue(c)
        self._end(c, [], "UPDATE procrastinate_jobs SET status = 'todo', worker_id = NULL "
                  "WHERE id = %s AND status = 'doing'", (c.job,), ended=False)

    def _end(self, c: PgClaim, events: list[bytes], job_sql: LiteralString,
             job_params: tuple[Any, ...], ended: bool) -> None:
        """Record the events and move the job, in one transaction, only while the claim
        is still this owner's; a job going back to ``todo`` whose de-duplication key an
        identical queued task took meanwhile gives its key up (both run)."""
        data = b"".join(events)

        def attempt(again: bool) -> bool:
            with self.db.transaction(probe=False):  # lost: tried again, patiently
                rows = self.db.rows(
                    "UPDATE hostctl_tasks SET body = body || %s, owner = NULL, "
                    "lease_until = NULL, handed = NULL, "
                    "ended_at = CASE WHEN %s THEN now() END "
                    "WHERE id = %s AND owner = %s RETURNING id",
                    (data, ended, c.task.id, self.owner()), retry=False)
                if not rows:
                    if again and self._done_before(c, data):
                        return True  # done before the connection broke
                    raise LeaseLost(f"task {c.task.id} is no longer this process's: "
                                    "it was taken over")
                if not ended:
                    self.db.rows(
                        "UPDATE procrastinate_jobs j SET queueing_lock = NULL WHERE "
                        "j.id = %s AND j.queueing_lock IS NOT NULL AND EXISTS (SELECT 1 "
                        "FROM procrastinate_jobs o WHERE o.queueing_lock = "
                        "j.queueing_lock AND o.status = 'todo' AND o.id <> j.id)",
                        (c.job,))
                self.db.rows(job_sql, job_params)
            return True

        for _ in range(3):
            try:
                self._patiently(attempt)
            except DatabaseError as exc:
                if exc.unique_violation:  # an identical task queued this very moment
                    continue
                raise
            break
        else:
            raise OperationFailed(f"task {c.task.id}: cannot put it back in the queue")
        c.released = True
        self._claims.discard(c.task.id)
        if not ended:
            self._notify("requeue")
        else:
            self._tell_origin(c)

    def _done_before(self, c: PgClaim, data: bytes) -> bool:
        """Whether an end of ``c`` whose answer was lost was done: its events are the
        body's last, and the claim is no one's."""
        rows = self.db.rows("SELECT t.body, t.owner, j.status::text" + _TASK_FROM +
                            " WHERE t.id = %s", (c.task.id,))
        if not rows or rows[0][1] is not None:
            return False
        body, _owner, status = rows[0]
        return bytes(body).endswith(data) if data else str(status) != "doing"

    # -- recovery ---------------------------------------------------------------------

    def recovery(self, policy: Callable[[Envelope], Policy], ends: Ends | None) -> None:
        """Only ``ends`` is kept, for a cancel that a claim finds asked for before the
        start: only a sweep recovers a dead owner's claim here (a claim waits for its
        context, whose dead owner a sweep of any host settles)."""
        self._ends = ends

    def sweep(self, policy: Callable[[Envelope], Policy], now: float | None = None,
              ends: Ends | None = None) -> list[str]:
        """Recover the claims of dead owners in this worker's queues (see the module
        docstring), each end recorded inside ``ends.ending``; forget dead owners that hold
        nothing."""
        self.ensure()
        self._ends = ends
        self._settle()
        me = self.owner()
        notes = []
        self._look_private()
        self.db.rows(_SUSPECT, {"me": me})
        rows = self.db.rows(_ORPHANS, {"me": me, "queues": self.queues})
        for task_id, body, handed, owner, dead, expired in rows:
            if not dead:
                continue
            note = self._recover(str(task_id), bytes(body), owner, bool(expired), policy,
                                 ends, handed)
            if note:
                notes.append(note)
        with suppress(HostctlError):
            self.db.rows(_FORGET_OWNERS, {"me": me})
        self.promote_due(now)
        return notes

    def _recover(self, task_id: str, body: bytes, owner: int | None, expired: bool,
                 policy: Callable[[Envelope], Policy], ends: Ends | None = None,
                 handed: Any = None) -> str | None:
        try:
            task = decode_task(body, "active")
        except InvalidInput as exc:
            job = self.db.rows("SELECT job_id FROM hostctl_tasks WHERE id = %s", (task_id,))
            if job:
                self._quarantine(task_id, int(job[0][0]), str(exc), mine=False,
                                 owner=owner)
            return f"set aside task {task_id}: {exc}"
        spawn, start = task.last_index("spawn"), task.last_index("start")
        # a task handed to its owner by its publish, and not started as far as its
        # events say: its mark stands for its first spawn event (_PUBLISH)
        handed = handed if isinstance(handed, dict) and max(
            spawn, start, task.last_index("end")) < 0 else None
        ran = handed or (task.events[max(spawn, start)] if max(spawn, start) >= 0 else {})
        needs_host = handed is not None or (spawn > start) or isinstance(ran.get("pgid"), int)
        where = ran.get("host")
        if needs_host and where not in (None, self.host) and not expired:
            if task_id not in self._said:
                self._said.add(task_id)
                log.info("task %s: its worker on %s is gone; a worker there recovers it "
                         "(or any, once its lease runs out)", task_id, where)
            return None
        claim = self._take_over(task_id, owner)
        if claim is None:
            return None
        if handed is not None and max(claim.task.last_index("spawn"),
                                      claim.task.last_index("start")) < 0:
            claim.append("spawn", **{k: handed[k] for k in
                                     ("attempt", "worker", "not_before", "host", "at")
                                     if k in handed})
            claim.reload()
        # as it reads now that it is this owner's (its old one may have written since)
        env, events = claim.task.envelope, claim.task.events
        spawn, start = claim.task.last_index("spawn"), claim.task.last_index("start")
        last = events[-1] if events else None
        if last is not None and last.get("event") == "end":
            outcome = str(last.get("outcome"))
            if outcome == "retry":
                self._end(claim, [], "SELECT procrastinate_retry_job_v2(%s, now(), NULL, "
                          "NULL, NULL)", (claim.job,), ended=False)
            else:
                self._end(claim, [], "SELECT procrastinate_finish_job_v1(%s, "
                          "%s::procrastinate_job_status, false)",
                          (claim.job, _JOB_END.get(outcome, "failed")), ended=True)
            return f"completed the interrupted end of task {env.id}"
        if spawn > start:
            spawned = events[spawn]
            not_before = spawned.get("not_before")
            if isinstance(not_before, int) and not kill_spawned(env.id, not_before):
                claim.release()
                return (f"task {env.id}: what its dead worker started has not exited "
                        "yet; recovered once it has")
            claim.append("start", attempt=spawned.get("attempt"),
                         worker=spawned.get("worker"), at=spawned.get("at"))
            claim.reload()
        elif start < 0 or claim.task.last_index("end") > start:
            self.requeue(claim)
            return f"task {env.id} was claimed but never started: queued again"
        started = claim.task.last("start") or {}
        if started.get("host") in (None, self.host) and not stop_run(started):
            claim.release()
            return (f"task {env.id}: what is left of its run (session "
                    f"{started.get('pgid')}) has not exited yet; recovered once it has")
        rules = policy(env)
        attempts = claim.task.attempt_count
        reason = (f"its worker (pid {started.get('worker')} on "
                  f"{started.get('host') or 'an unknown host'}) died during attempt "
                  f"{attempts}")
        task = claim.task

        def ending(outcome: str) -> AbstractContextManager[object]:
            return nullcontext() if ends is None else ends.ending(task, outcome)

        if task.cancel_requested:
            with ending("cancelled"):
                self.finish(claim, "cancelled", reason=f"cancelled; {reason}")
            return f"task {env.id}: {reason}; it was being cancelled"
        if rules.rerun_on_loss and attempts < rules.max_attempts:
            with ending("lost"):
                self.defer(claim, backoff(rules, attempts), outcome="lost", reason=reason)
            return f"task {env.id}: {reason}; queued again"
        why = (f"{reason}; a {env.type} that was cut off must be checked by a person"
               if not rules.rerun_on_loss else
               f"{reason}; no attempts left (max {rules.max_attempts})")
        with ending("lost"):
            self.finish(claim, "lost", reason=why)
        return f"task {env.id}: {why}"

    def _take_over(self, task_id: str, owner: int | None) -> PgClaim | None:
        """The dead owner's claim, made this owner's; None if another sweep took it."""
        rows = self.db.rows(
            "UPDATE hostctl_tasks t SET owner = %s, lease_until = now() + "
            "make_interval(secs => %s) FROM procrastinate_jobs j WHERE t.id = %s AND "
            "j.id = t.job_id AND j.status = 'doing' AND t.owner IS NOT DISTINCT FROM %s "
            "RETURNING j.id", (self.owner(), LEASE, task_id, owner), retry=False)
        if not rows:
            return None
        self._claims.add(task_id)
        task, size = self._read_one(task_id)
        return PgClaim(task, self, int(rows[0][0]), size)

    def promote_due(self, now: float | None = None) -> int:
        if now is None:
            return 0  # a task is ready once its time has come: nothing to move
        rows = self.db.rows(
            "UPDATE procrastinate_jobs SET scheduled_at = NULL WHERE status = 'todo' AND "
            "scheduled_at <= to_timestamp(%(now)s) AND (%(queues)s::text[] IS NULL OR "
            "queue_name = ANY(%(queues)s)) RETURNING id",
            {"now": now, "queues": self.queues})
        return len(rows)

    def next_due(self) -> float | None:
        try:
            rows = self.db.rows(
                "SELECT extract(epoch FROM min(scheduled_at))::float8 FROM procrastinate_jobs "
                "WHERE status = 'todo' AND scheduled_at > now() AND (%(queues)s::text[] IS "
                "NULL OR queue_name = ANY(%(queues)s))", {"queues": self.queues})
        except HostctlError:
            return time.time() + 1.0  # the database is away: look again soon
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def watch(self) -> PgWatch:
        """What this process sleeps on: its queues' channels, its drop box, and its
        owner's channel, on which a publish hands it a task once it offered itself (a
        claim that found nothing does; see _PUBLISH)."""
        channels = [CHANNEL]
        if self.queues is None:
            channels.append("procrastinate_any_queue_v1")
        else:
            channels += [f"procrastinate_queue_v1#{q}" for q in self.queues]
        origin = origin_channel(self.host)
        mine = OWNER_CHANNEL + str(self.owner()) if self.queues != [] else ""

        def told(channel: str, payload: str) -> None:
            if channel and channel == self._listening:  # (the owner's, as it is now)
                self._heard(payload)
            elif channel == origin:
                self._receipts_due = True
            elif channel == CHANNEL and payload.startswith("cancel "):
                if payload[7:] in self._handed:
                    self._cancels.add(payload[7:])
            if not channel or (channel == CHANNEL and payload in ("pause", "resume")):
                self._pause_known = None  # listening again, or told of a change

        self._watch = PgWatch(self.dsn, [*channels, origin, *([mine] if mine else [])],
                              self.local.dir("incoming"), told)
        self._listening = mine
        self._look_private()
        return self._watch

    def _look_private(self) -> None:
        """Whether this owner may be handed tasks: no role that may connect to the
        database but hostctl's (PRIVATE_DATABASE); looked at again by each sweep."""
        if not self._listening:
            return
        try:
            private = bool(self.db.rows(PRIVATE_DATABASE)[0][0])
        except HostctlError:
            return
        if not private and not self._said_private:
            log.warning("no task is handed to an idle worker: roles that may not read "
                        "hostctl's tasks may connect to its database (REVOKE CONNECT ON "
                        "DATABASE ... FROM PUBLIC: see docs/cluster.md)")
        self._said_private = not private
        self._private = private

    # -- the queue as a whole ---------------------------------------------------------

    def pause(self) -> None:
        self.db.rows("INSERT INTO hostctl_records (name, data) VALUES (%s, '') "
                     "ON CONFLICT (name) DO NOTHING", (_PAUSED,))
        self._notify("pause")

    def resume(self) -> None:
        self.db.rows("DELETE FROM hostctl_records WHERE name = %s", (_PAUSED,))
        self._notify("resume")

    def paused(self) -> bool:
        """Whether the queue is paused. A worker's watch hears every pause and resume,
        so what it read last stands while the watch listens, for PAUSE_KNOWN seconds
        at most; the claim itself takes nothing while the queue is paused, whatever
        this said."""
        known, watch = self._pause_known, self._watch
        if (known is not None and watch is not None and watch.conn is not None
                and time.monotonic() - known[1] < PAUSE_KNOWN):
            return known[0]
        try:
            paused = bool(self.db.rows("SELECT 1 FROM hostctl_records WHERE name = %s",
                                       (_PAUSED,)))
            self._pause_known = (paused, time.monotonic())
            return paused
        except HostctlError as exc:
            if exc.message not in self._said:
                self._said.add(exc.message)
                log.error("%s: nothing starts until it is back", exc.message)
            return True  # the database cannot be asked: start nothing

    def running(self) -> list[str]:
        return [str(i) for (i,) in self.db.rows(
            "SELECT t.id" + _TASK_FROM + " WHERE j.status = 'doing' AND t.owner IS NOT NULL "
            "AND" + _OWNER_HELD + " ORDER BY t.id")]

    @contextmanager
    def leader(self) -> Iterator[bool]:
        rows = self.db.rows("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
        mine = bool(rows and rows[0][0])
        try:
            yield mine
        finally:
            if mine:
                with suppress(HostctlError):
                    self.db.rows("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK,))

    def read_record(self, name: str) -> bytes | None:
        rows = self.db.rows("SELECT data FROM hostctl_records WHERE name = %s",
                            (record_name(name),))
        return bytes(rows[0][0]) if rows else None

    def write_record(self, name: str, data: bytes) -> None:
        self.db.rows("INSERT INTO hostctl_records (name, data) VALUES (%s, %s) "
                     "ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data",
                     (record_name(name), data))

    def register_worker(self, pid: int, started: str, max_runtime: float) -> Registration:
        owner = self.owner()
        self.db.rows("UPDATE hostctl_owners SET registered = true, started = %s, "
                     "max_runtime = %s, pid = %s WHERE id = %s",
                     (started, max_runtime, pid, owner))
        return Registration(self)

    def workers(self) -> list[WorkerInfo]:
        """The registered workers of the cluster; a dead one is listed once, then
        forgotten."""
        out = []
        for owner, pid, host, started, seen, tasks_run, alive in self.db.rows(_WORKERS):
            out.append(WorkerInfo(int(pid), str(host), str(started), utc_iso(float(seen)),
                                  int(tasks_run), bool(alive)))
            if not alive:
                self.db.rows("UPDATE hostctl_owners SET registered = false WHERE id = %s",
                             (owner,))
        return out

    def collect(self, retention_days: float, now: float, limit: int) -> int:
        rows = self.db.rows(
            "DELETE FROM procrastinate_jobs WHERE id IN (SELECT t.job_id FROM hostctl_tasks "
            "t WHERE t.ended_at < to_timestamp(%s) AND t.set_aside IS NULL ORDER BY t.id "
            "LIMIT %s) RETURNING id", (now - retention_days * 86400, limit))
        self.local.collect(retention_days, now, 0)  # the rejected drops of this host
        return len(rows)

    def collectable(self, retention_days: float, now: float) -> int:
        rows = self.db.rows("SELECT count(*) FROM hostctl_tasks WHERE ended_at < "
                            "to_timestamp(%s) AND set_aside IS NULL",
                            (now - retention_days * 86400,))
        return int(rows[0][0])

    # -- the figures ------------------------------------------------------------------

    def tally(self, type_name: str, outcome: str, seconds: float | None) -> None:
        timed = seconds is not None
        buckets = [int(seconds is not None and seconds <= bound) for bound in DURATION_BUCKETS]
        self.db.rows(
            "INSERT INTO hostctl_tallies AS t (type, outcome, count, timed, seconds, "
            "buckets) VALUES (%s, %s, 1, %s, %s, %s) ON CONFLICT (type, outcome) DO UPDATE "
            "SET count = t.count + 1, timed = t.timed + EXCLUDED.timed, seconds = "
            "t.seconds + EXCLUDED.seconds, buckets = ARRAY(SELECT a + b FROM "
            "unnest(t.buckets, EXCLUDED.buckets) WITH ORDINALITY AS u(a, b, i) ORDER BY i)",
            (type_name, outcome, int(timed), seconds or 0.0, buckets))

    def tallies(self) -> list[Tally]:
        return [Tally(str(t), str(o), int(c), int(n), float(s), tuple(int(b) for b in bs))
                for t, o, c, n, s, bs in self.db.rows(
                    "SELECT type, outcome, count, timed, seconds, buckets FROM "
                    "hostctl_tallies ORDER BY type, outcome")
                if len(bs) == len(DURATION_BUCKETS)]

    def depths(self) -> list[Depth]:
        """Per queue (server): its ready tasks, the oldest's age since it was last
        queued (its job's latest event), and its delayed ones."""
        return [Depth(str(q), int(ready), int(deferred),
                      None if age is None else max(0.0, float(age)))
                for q, ready, deferred, age in self.db.rows(
                    "SELECT j.queue_name, count(*) FILTER (WHERE ready), "
                    "count(*) FILTER (WHERE NOT ready), extract(epoch FROM now() - min("
                    "(SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id)) "
                    "FILTER (WHERE ready))::float8 FROM (SELECT *, scheduled_at IS NULL OR "
                    "scheduled_at <= now() AS ready FROM procrastinate_jobs WHERE status = "
                    "'todo') j GROUP BY j.queue_name ORDER BY j.queue_name")]


#: rows read at a time by a listing (recent)
_PAGE = 500

#: SQL: the server (``@web1``) a task on the context %(lock)s runs on, or NULL, as
#: contexts/routing.py's server_of says from the cluster's contexts: a server's own name;
#: a platform's web server, else its server; a site's platform's
SERVER_OF: LiteralString = """
    SELECT CASE WHEN c.type = 'server' THEN '@' || c.name
                ELSE COALESCE(NULLIF(p.document -> 'fields' ->> 'web_server', ''),
                              NULLIF(p.document -> 'fields' ->> 'server', '')) END
    FROM hostctl_contexts c
    LEFT JOIN hostctl_contexts p ON p.name = CASE WHEN c.type = 'site'
        THEN substr(c.document -> 'fields' ->> 'platform',
                    CASE WHEN left(c.document -> 'fields' ->> 'platform', 1) = '@'
                         THEN 2 ELSE 1 END)
        ELSE c.name END
    WHERE c.name = substr(%(lock)s::text, CASE WHEN left(%(lock)s::text, 1) = '@'
                                               THEN 2 ELSE 1 END)"""

#: a publish: the job and the task in one statement (atomic on its own). A task ready now
#: whose context has nothing running or ready goes straight to the idle worker of its
#: queue that offered itself first (an offer of a live owner, the queue not paused): the
#: job is inserted ``doing``, the task is that owner's with the ``handed`` mark (what its
#: ``spawn`` event would say: a worker that dies from here on may have started it), and
#: the owner is told on its channel, with the task and its context's document; the
#: others are not woken (procrastinate announces a ``todo`` job alone)
_PUBLISH: LiteralString = """
WITH routed AS (
    -- its queue: given, or its context's server as the cluster's contexts say (the
    -- twin of contexts/routing.py's server_of, without a round trip of its own)
    SELECT left(COALESCE(%(queue)s::text, (""" + SERVER_OF + """), %(default)s::text), 128)
        AS name
), offer AS (
    SELECT f.owner, f.host, f.pid, f.not_before FROM hostctl_offers f, routed
    WHERE %(delay)s::float8 <= 0
      AND (f.queues IS NULL OR routed.name = ANY(f.queues))
      AND NOT EXISTS (SELECT 1 FROM hostctl_records WHERE name = %(paused)s::text)
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_jobs o
          WHERE o.lock = %(lock)s::text
            AND (o.status = 'doing'
                 OR (o.status = 'todo' AND (o.scheduled_at IS NULL OR o.scheduled_at <= now()))))
      AND""" + owner_holds("f.owner") + """
      -- every live owner (every sweep) knows what a handed mark means: a host of an
      -- earlier hostctl would queue a handed task again as never started
      AND NOT EXISTS (SELECT 1 FROM hostctl_owners old WHERE NOT old.handoff
                      AND""" + owner_holds("old.id") + """)
    ORDER BY f.since, f.owner
    LIMIT 1
    FOR UPDATE OF f SKIP LOCKED
), taken AS (
    DELETE FROM hostctl_offers f USING offer WHERE f.owner = offer.owner
    RETURNING f.owner, f.host, f.pid, f.not_before
), job AS (
    INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, queueing_lock,
                                    args, scheduled_at, status, worker_id)
    SELECT (SELECT name FROM routed), %(type)s::text, %(priority)s::int, %(lock)s::text,
           %(key)s::text, %(args)s::jsonb,
           CASE WHEN %(delay)s::float8 > 0
                THEN now() + make_interval(secs => %(delay)s::float8) END,
           CASE WHEN taken.owner IS NULL THEN 'todo' ELSE 'doing'
           END::procrastinate_job_status, taken.owner
    FROM (SELECT 1) AS one LEFT JOIN taken ON true
    RETURNING id, worker_id
), task AS (
    INSERT INTO hostctl_tasks (id, job_id, body, owner, lease_until, handed)
    SELECT %(id)s::text, job.id, %(body)s::bytea, taken.owner,
           CASE WHEN taken.owner IS NOT NULL THEN now() + make_interval(secs => %(lease)s::float8)
           END,
           CASE WHEN taken.owner IS NOT NULL THEN jsonb_build_object(
               'attempt', 1, 'worker', taken.pid, 'not_before', taken.not_before,
               'host', taken.host, 'at', %(at)s::text) END
    FROM job LEFT JOIN taken ON true,
         -- its commit does not wait for the disk: see PgQueue.publish
         (SELECT set_config('synchronous_commit', 'off', true)) AS lazy
    RETURNING job_id, owner
)
SELECT pg_notify('""" + OWNER_CHANNEL + """' || task.owner,
                 -- a NOTIFY's payload stays under 8000 bytes: a larger task is read
                 CASE WHEN octet_length(told.whole) <= 7800
                      THEN told.whole ELSE json_build_object('id', %(id)s::text)::text END)
FROM task, LATERAL (
    SELECT json_build_object('id', %(id)s::text, 'job', task.job_id, 'body', %(text)s::text,
                             'context', ltrim(%(lock)s::text, '@'), 'document', c.document
                             )::text AS whole
    FROM (SELECT 1) AS one LEFT JOIN hostctl_contexts c ON c.name = ltrim(%(lock)s::text, '@')
) AS told
WHERE task.owner IS NOT NULL
"""

#: whether every role that may log in to the database may read hostctl's tasks: only
#: then is a task handed to an idle worker (its notice carries the task and its
#: context's document, and LISTEN asks for no privilege but the database's CONNECT)
PRIVATE_DATABASE: LiteralString = """
SELECT NOT EXISTS (
    SELECT 1 FROM pg_roles r
    WHERE r.rolcanlogin AND has_database_privilege(r.oid, current_database(), 'CONNECT')
      AND NOT (has_table_privilege(r.oid, 'hostctl_tasks', 'SELECT')
               AND has_table_privilege(r.oid, 'hostctl_contexts', 'SELECT')
               AND has_schema_privilege(r.oid, (SELECT relnamespace FROM pg_class
                                                WHERE oid = 'hostctl_tasks'::regclass),
                                        'USAGE')))"""

#: a task of this owner's that it did not start goes back to the queue as it was: no
#: owner, no lease, no handed mark (%(id)s, or with %(all)s every handed one but those
#: in %(keep)s); a job going back beside an identical queued one gives up its
#: de-duplication key (both stay queued)
_GIVE_BACK: LiteralString = """
WITH t AS (
    UPDATE hostctl_tasks SET owner = NULL, lease_until = NULL, handed = NULL
    WHERE owner = %(owner)s::bigint
      AND (id = %(id)s::text
           OR (%(all)s::boolean AND handed IS NOT NULL
               AND NOT (id = ANY(%(keep)s::text[]))))
    RETURNING job_id
)
UPDATE procrastinate_jobs j SET status = 'todo', worker_id = NULL,
    queueing_lock = CASE WHEN EXISTS (
        SELECT 1 FROM procrastinate_jobs o WHERE o.queueing_lock = j.queueing_lock
        AND o.status = 'todo' AND o.id <> j.id) THEN NULL ELSE j.queueing_lock END
FROM t WHERE j.id = t.job_id AND j.status = 'doing'
RETURNING j.id
"""

#: the second transaction of a publish (Session.rows_heard_first): a synchronous commit,
#: after which the owner a task was handed to is told that it is on the disk
_PUBLISHED: LiteralString = """
SELECT pg_logical_emit_message(true, 'hostctl', ''),
       (SELECT pg_notify('""" + OWNER_CHANNEL + """' || t.owner, 'durable ' || t.id)
        FROM hostctl_tasks t WHERE t.id = %s AND t.handed IS NOT NULL AND t.owner IS NOT NULL)
"""

#: the first ready job of each context in this worker's queues, taken (see the docstring),
#: with the tasks handed here and not heard of; with nothing to take, this owner's offer
_FETCH: LiteralString = """
WITH missed AS (
    -- tasks handed to this owner whose notice it has not had (its LISTEN connection was
    -- made again): taken up now, in a slot each
    SELECT t.id FROM hostctl_tasks t
    WHERE t.owner = %(owner)s::bigint AND t.handed IS NOT NULL
      AND NOT (t.id = ANY(%(known)s::text[]))
    ORDER BY t.id
    LIMIT greatest(%(limit)s::int, 0)
), picked AS (
    SELECT j.id FROM procrastinate_jobs j,
        -- the claim need not wait for its commit to reach the disk: the spawn event a
        -- worker writes before it runs anything commits synchronously, and that flush
        -- takes every earlier commit with it; a claim lost with a crash of the database
        -- before then never ran anything
        (SELECT set_config('synchronous_commit', 'off', true)) AS lazy
    WHERE j.status = 'todo'
      AND NOT EXISTS (SELECT 1 FROM hostctl_records WHERE name = %(paused)s::text)
      AND (%(queues)s::text[] IS NULL OR j.queue_name = ANY(%(queues)s))
      AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
      AND NOT (j.lock = ANY(%(skip)s::text[]))
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate_jobs o
          WHERE o.lock = j.lock AND o.id <> j.id
            AND (o.status = 'doing'
                 OR (o.status = 'todo'
                     AND (o.scheduled_at IS NULL OR o.scheduled_at <= now())
                     AND (o.priority > j.priority
                          OR (o.priority = j.priority AND o.id < j.id)))))
      AND NOT EXISTS (SELECT 1 FROM hostctl_tasks w WHERE w.job_id = j.id
                      AND (w.id = ANY(%(waiting)s::text[]) OR w.set_aside IS NOT NULL))
    ORDER BY j.priority DESC, j.id
    LIMIT greatest(0, %(limit)s::int - (SELECT count(*) FROM missed))
    FOR UPDATE OF j SKIP LOCKED
), taken AS (
    UPDATE procrastinate_jobs j SET status = 'doing', worker_id = %(owner)s::bigint
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.priority, ltrim(j.lock, '@') AS context
), withdrawn AS (
    -- a slot taken, or no offer wanted: this owner's offer, if it stands, is withdrawn
    DELETE FROM hostctl_offers f WHERE f.owner = %(owner)s::bigint
      AND (NOT %(offer)s::boolean OR EXISTS (SELECT 1 FROM picked) OR EXISTS (SELECT 1 FROM missed))
    RETURNING f.owner
), offered AS (
    -- nothing to take and a slot free: the next publish may hand its task here
    -- (one that stands is kept as it is: its place in line, and the answer says so)
    INSERT INTO hostctl_offers (owner, queues, host, pid, not_before)
    SELECT %(owner)s::bigint, %(queues)s, %(host)s::text, %(pid)s::int, %(not_before)s::bigint
    WHERE %(offer)s::boolean AND NOT EXISTS (SELECT 1 FROM picked)
      AND NOT EXISTS (SELECT 1 FROM missed)
    ON CONFLICT (owner) DO UPDATE SET since = hostctl_offers.since
    RETURNING owner
), claimed AS (
    UPDATE hostctl_tasks t SET owner = %(owner)s::bigint, handed = NULL,
        lease_until = now() + make_interval(secs => %(lease)s::float8)
    FROM taken LEFT JOIN hostctl_contexts c ON c.name = taken.context
    WHERE t.job_id = taken.id
    RETURNING t.id, t.job_id, t.body, taken.priority, taken.context, c.document
)
SELECT id, job_id, body, priority, context, document, false FROM claimed
UNION ALL
SELECT t.id, t.job_id, t.body, j.priority, ltrim(j.lock, '@'), c.document, true
FROM missed m JOIN hostctl_tasks t ON t.id = m.id JOIN procrastinate_jobs j ON j.id = t.job_id
LEFT JOIN hostctl_contexts c ON c.name = ltrim(j.lock, '@')
UNION ALL
-- the offer's fate, in a row of its own (no task): withdrawn here; standing (made or kept)
SELECT NULL, NULL, NULL, (SELECT count(*) FROM withdrawn), NULL, NULL,
       EXISTS (SELECT 1 FROM offered)
"""

#: the claims in this worker's queues that are not its own, and whether their owner is
#: dead (see the module docstring)
_ORPHANS: LiteralString = """
SELECT t.id, t.body, t.handed, t.owner,
       t.owner IS NULL OR o.id IS NULL OR t.lease_until IS NULL OR t.lease_until < now()
       OR""" + owner_gone("o") + """,
       t.lease_until IS NULL OR t.lease_until < now()
FROM hostctl_tasks t
JOIN procrastinate_jobs j ON j.id = t.job_id
LEFT JOIN hostctl_owners o ON o.id = t.owner
WHERE j.status = 'doing' AND t.set_aside IS NULL
  AND (t.owner IS NULL OR t.owner <> %(me)s)
  AND (%(queues)s::text[] IS NULL OR j.queue_name = ANY(%(queues)s))
ORDER BY t.id
"""

#: owners that are gone (their lock free since the database last started, or silent for
#: a lease), that hold no claim and are no registered worker still to be reported
_FORGET_OWNERS: LiteralString = """
DELETE FROM procrastinate_workers w USING hostctl_owners o
WHERE o.id = w.id AND o.id <> %(me)s AND NOT o.registered
  AND NOT EXISTS (SELECT 1 FROM hostctl_tasks t WHERE t.owner = o.id)
  AND (""" + owner_gone("o") + """
       OR (w.last_heartbeat < now() - interval '1 hour' AND NOT""" + owner_alive("o.id") + """))
"""

_WORKERS: LiteralString = """
SELECT o.id, o.pid, o.host, o.started, extract(epoch FROM w.last_heartbeat)::float8,
       o.tasks_run,
      """ + owner_alive("o.id") + """
       OR (o.locked_since <= pg_postmaster_start_time()
           AND w.last_heartbeat > now() - interval '120 seconds')
FROM hostctl_owners o JOIN procrastinate_workers w ON w.id = o.id
WHERE o.registered
ORDER BY o.host, o.pid
"""

#: every queue of this process that registered as an owner, let go at a clean exit
_OWNERS: weakref.WeakSet[PgQueue] = weakref.WeakSet()


@atexit.register
def _leave() -> None:
    for queue in list(_OWNERS):
        queue.unregister()


def _own(claim: Any) -> PgClaim:
    if not isinstance(claim, PgClaim):
        raise TypeError(f"not a cluster claim: {claim!r}")
    return claim
