"""A publish hands its task to an idle worker (queues/pgqueue.py, _PUBLISH), on a real
PostgreSQL: a worker whose claim found nothing offers itself; the next publish of a task
it may take inserts that task as its claim and tells it on its channel, with the task and
its context. What this must keep: nothing handed to a dead worker, to a paused queue or
past a busy context; a task handed to a worker that died counts as possibly started (the
worker runs it before anything else is written); what a worker that stops or holds off
was handed goes back; a cancel or a missed notice is not lost; the queue a publish picks
in its statement is the one contexts/routing.py names."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from pghelpers import SECRET
from provisionhelpers import PgCluster

from hostctl.config import Config, Webhook
from hostctl.contexts.pgstore import PgStore
from hostctl.contexts.routing import server_of
from hostctl.process import host_name
from hostctl.queues.model import DEFAULT_QUEUE, Envelope, Policy, Status, new_id
from hostctl.queues.pgqueue import PgQueue
from hostctl.runners import cluster
from hostctl.runners.notify import Deliveries, Notices, delivery_id
from hostctl.times import utc_iso

_made = [0]


@pytest.fixture
def dsn(pg_server: PgCluster) -> str:
    _made[0] += 1
    name = f"handoff{_made[0]}"
    pg_server.psql(f"CREATE DATABASE {name} OWNER hostctl; "
                   f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC")
    cluster.init(f"host=127.0.0.1 port={pg_server.port} dbname={name} user=hostctl "
                 f"password={SECRET}")
    return f"host=127.0.0.1 port={pg_server.port} dbname={name} user=hostctl password={SECRET}"


def queue(dsn: str, where: Path, name: str, **kw: Any) -> PgQueue:
    return PgQueue(dsn, where / name, where / f"{name}logs", **kw)


def idle(q: PgQueue) -> PgQueue:
    """``q`` listening on its channel, its claim having found nothing: it offers itself."""
    q.watch()
    assert q.claim() == []
    assert q.db.rows("SELECT count(*) FROM hostctl_offers WHERE owner = %s",
                     (q.owner(),)) == [(1,)]
    return q


def task(q: PgQueue, context: str = "@a", delay: float = 0.0) -> str:
    env = Envelope(new_id(), "verify", context, {}, {}, 5, utc_iso())
    task_id, queued = q.publish(env, delay=delay, dedup=False)
    assert queued
    return task_id


def heard(dsn: str, where: Path) -> tuple[PgQueue, PgQueue, str]:
    """An idle worker, a front end's queue, and a task the front end published: handed
    to the worker, which heard of it."""
    worker = idle(queue(dsn, where, "w"))
    front = queue(dsn, where, "front")
    handed = task(front)
    assert worker._watch is not None
    worker._watch.drain()
    assert handed in worker._handed
    return worker, front, handed


def row(q: PgQueue, task_id: str) -> tuple[Any, ...]:
    """(job status, job worker, task owner, handed mark) of a task."""
    [found] = q.db.rows("SELECT j.status::text, j.worker_id, t.owner, t.handed FROM "
                        "hostctl_tasks t JOIN procrastinate_jobs j ON j.id = t.job_id "
                        "WHERE t.id = %s", (task_id,))
    return tuple(found)


def die(q: PgQueue) -> None:
    """As a kill -9 leaves a worker: its connections end, nothing said."""
    if q._watch is not None:
        q._watch.close()
    q.db.close()
    q._owner = None  # its exit handler must not speak for it


def events(q: PgQueue, task_id: str) -> list[str]:
    return [str(e.get("event")) for e in q.get(task_id).events]


def test_an_idle_worker_is_handed_the_task_and_runs_it_with_no_round_trip(
        tmp_path: Path, dsn: str) -> None:
    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    status, job_worker, owner, mark = row(front, handed)
    assert (status, job_worker, owner) == ("doing", worker.owner(), worker.owner())
    assert mark["worker"] == os.getpid() and mark["host"] == host_name(), mark
    # the offer was taken: the next task is queued as any other, for whoever claims it
    queued = task(front, "@b")
    assert row(front, queued)[:3] == ("todo", None, None)
    assert worker._watch is not None
    worker._watch.drain()  # the notice: the task, its context's document
    assert list(worker._handed) == [handed]
    sent: list[str] = []
    rows = worker.db.rows
    worker.db.rows = lambda q, *a, **k: (sent.append(q), rows(q, *a, **k))[1]  # type: ignore[method-assign]
    [claim] = worker.claim()
    assert claim.task.id == handed
    # the mark stands for the spawn event, and the publisher said that the task is on
    # the disk: nothing is asked or written before the run starts
    claim.append("spawn", attempt=1, worker=os.getpid(), not_before=0, host=host_name())
    assert sent == []
    claim.append("start", attempt=1, pid=1, pgid=1, worker=os.getpid(), host=host_name())
    assert events(front, handed) == ["start"]
    worker.finish(claim, "success")
    assert row(front, handed) == ("succeeded", worker.owner(), None, None)
    # busy no more and nothing left to take (the other task is the front's to claim
    # here): it offers itself again
    [other] = worker.claim()
    assert other.task.id == queued and not getattr(other, "handed", False)
    worker.finish(other, "success")
    assert worker.claim() == []
    assert worker._offered


def test_nothing_is_handed_past_a_busy_context_a_pause_or_a_delay(tmp_path: Path,
                                                                 dsn: str) -> None:
    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    running = task(front, "@busy")
    assert row(front, running)[:3] == ("doing", worker.owner(), worker.owner())
    second = idle(queue(dsn, tmp_path, "w2"))  # offered, and passed over below
    behind = task(front, "@busy")  # its context runs a task: it waits its turn
    assert row(front, behind)[:3] == ("todo", None, None)
    front.pause()
    paused = task(front, "@a")
    assert row(front, paused)[:3] == ("todo", None, None)
    front.resume()
    later = task(front, "@later", delay=60)
    assert row(front, later)[:3] == ("todo", None, None)
    queued = task(front, "@a")  # @a has a task ready: the first is first
    assert row(front, queued)[:3] == ("todo", None, None)
    assert second.db.rows("SELECT owner FROM hostctl_offers") == [(second.owner(),)]
    free = task(front, "@free")
    assert row(front, free)[:3] == ("doing", second.owner(), second.owner())


def test_a_dead_idle_workers_offer_is_passed_over(tmp_path: Path, dsn: str) -> None:
    worker = idle(queue(dsn, tmp_path, "w"))
    die(worker)
    front = queue(dsn, tmp_path, "front")
    queued = task(front)
    assert row(front, queued)[:3] == ("todo", None, None)


def test_the_publishs_look_at_a_dead_owners_lock_does_not_bring_it_back(
        tmp_path: Path, dsn: str) -> None:
    """The publish asks whether an offer's owner lives by trying its lock, shared: held
    meanwhile by that try, the lock of a dead owner still says dead to the sweeps (they
    count an owner's own exclusive hold alone)."""
    import psycopg

    from hostctl.queues.pgqueue import OWNER_LOCKS, owner_alive, owner_holds

    worker = idle(queue(dsn, tmp_path, "w"))
    owner = worker.owner()
    look = psycopg.connect(dsn, autocommit=True)
    try:
        assert look.execute("SELECT" + owner_alive("%(o)s::bigint") + ", "
                            + owner_holds("%(o)s::bigint"), {"o": owner}).fetchone() \
            == (True, True)
        die(worker)
        with psycopg.connect(dsn) as probe:  # a publish's transaction, open
            assert probe.execute("SELECT" + owner_holds("%s::bigint"),
                                 (owner,)).fetchone() == (False,)
            assert look.execute("SELECT" + owner_alive("%s::bigint"),
                                (owner,)).fetchone() == (False,)
        assert OWNER_LOCKS == 1752134516  # the key owner_holds and owner_alive spell out
    finally:
        look.close()
    front = queue(dsn, tmp_path, "front")
    assert row(front, task(front))[:3] == ("todo", None, None)


def test_a_task_handed_to_a_worker_that_died_counts_as_possibly_started(
        tmp_path: Path, dsn: str) -> None:
    """Its worker may have started it and died before writing anything: the sweep on
    its host stops what it may have left and records the attempt as lost."""
    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    mark = row(front, handed)[3]
    die(worker)
    sweeper = queue(dsn, tmp_path, "sweeper")
    rules = lambda _e: Policy(max_attempts=3, backoff_base=0.0, backoff_max=0.0)  # noqa: E731
    notes: list[str] = []
    for _ in range(40):  # a dead owner is judged gone over two sweeps, 3 s apart
        notes = sweeper.sweep(rules)
        if notes:
            break
        time.sleep(0.25)
    assert notes and "queued again" in notes[0], notes
    found = front.get(handed)
    spawned = found.events[0]
    assert (spawned["event"], spawned["worker"], spawned["not_before"]) == (
        "spawn", mark["worker"], mark["not_before"])
    assert found.status is Status.QUEUED and found.attempts[0].outcome == "lost"
    assert row(front, handed)[3] is None


def test_a_handed_task_cancelled_before_its_worker_died_is_not_run_again(
        tmp_path: Path, dsn: str) -> None:
    """``task cancel`` of a task handed to a worker (not queued any more, not started)
    asks for it; the worker dies before it took the task up. The sweep writes the spawn
    and start the mark stood for after that cancel: the cancel still stands, and the
    attempt ends cancelled, not lost and queued again."""
    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    assert front.cancel_queued(handed) is None  # handed: not queued
    front.request_cancel(handed)
    die(worker)
    sweeper = queue(dsn, tmp_path, "sweeper")
    notes: list[str] = []
    for _ in range(40):  # a dead owner is judged gone over two sweeps, 3 s apart
        notes = sweeper.sweep(lambda _e: Policy(backoff_base=0.0, backoff_max=0.0))
        if notes:
            break
        time.sleep(0.25)
    assert notes and "cancelled" in notes[0], notes
    found = front.get(handed)
    assert found.status is Status.CANCELLED, events(front, handed)
    assert [a.outcome for a in found.attempts] == ["cancelled"]


def test_a_worker_that_holds_off_or_stops_gives_back_what_it_was_handed(
        tmp_path: Path, dsn: str) -> None:
    worker, front, handed = heard(dsn, tmp_path)
    standing = idle(queue(dsn, tmp_path, "standing"))
    worker.hold()  # stopping, paused, the disk full
    assert row(front, handed) == ("todo", None, None, None)
    standing.hold()  # an offer that stands is withdrawn
    assert worker.db.rows("SELECT count(*) FROM hostctl_offers") == [(0,)]
    other = queue(dsn, tmp_path, "other")
    [claim] = other.claim()
    assert claim.task.id == handed and not getattr(claim, "handed", False)
    other.finish(claim, "success")
    # one that exits before it even heard of it
    leaving = idle(queue(dsn, tmp_path, "leaving"))
    second = task(front, "@b")
    assert row(front, second)[2] == leaving.owner()
    leaving.unregister()
    assert row(front, second) == ("todo", None, None, None)
    [claim] = other.claim()
    assert claim.task.id == second
    assert standing.claim() == []  # its next claim offers it again
    assert standing._offered


def test_a_cancel_before_the_handed_task_starts_is_kept_and_told(tmp_path: Path,
                                                                 dsn: str) -> None:
    """The worker a task was handed to finds it cancelled before it started: it ends it
    so, inside its runner's ``ends``, whose notice is made due (the cancel's, not an
    attempt's: none started)."""
    worker = idle(queue(dsn, tmp_path, "w"))
    config = Config(webhooks={"panel": Webhook("panel", "http://127.0.0.1:9/hook",
                                               outcomes=("cancelled",))})
    notices = Notices(Deliveries(tmp_path / "notify"), lambda: config, worker.get)
    worker.recovery(lambda _env: Policy(), notices)
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    front.request_cancel(handed)  # it is processing: it was handed
    assert worker._watch is not None
    worker._watch.drain()  # the notice of the task, then that of the cancel
    assert worker.claim() == []
    found = front.get(handed)
    assert found.status is Status.CANCELLED and found.attempts == [], found
    assert found.events[-1]["outcome"] == "cancelled"
    [due] = notices.deliveries.due()
    assert due.split(".")[1] == delivery_id(handed, "cancel.0", "webhook", "panel")


def test_a_handed_task_whose_notice_was_missed_is_taken_by_the_next_claim(
        tmp_path: Path, dsn: str, pg_server: PgCluster) -> None:
    """A notice lost with the worker's LISTEN connection: the claim finds the task as
    handed to it, and, told nothing, makes sure the publish is on the disk itself."""
    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    assert worker._watch is not None
    worker._watch._drop()  # the connection, and what it was told, gone
    [claim] = worker.claim()
    assert claim.task.id == handed
    claim.append("spawn", attempt=1, worker=os.getpid(), not_before=0, host=host_name())
    # told nothing, it wrote its spawn event (fenced, synchronous): the task is its
    # own, and on the disk
    assert events(front, handed) == ["spawn"]
    worker.finish(claim, "success")
    assert front.get(handed).status is Status.SUCCESS


def test_the_publish_routes_as_the_contexts_say(tmp_path: Path, dsn: str) -> None:
    """The queue a publish picks in its own statement is the one server_of names, for
    every kind of context, and for one that is not stored."""
    store = PgStore(dsn)
    for name in ("@web1", "@web2"):
        store.save(name, {}, "server")
    www = tmp_path / "www"
    www.mkdir()
    store.save("@p1", {"root": str(www), "web_server": "@web1", "server": "@web2"},
               "platform")
    store.save("@p2", {"root": str(www), "server": "@web2"}, "platform")
    store.save("@p3", {"root": str(www)}, "platform")
    for site, platform in (("s1.example", "@p1"), ("s2.example", "@p2"),
                           ("s3.example", "@p3")):
        store.save("@" + site, {"platform": platform, "server": "@web1"}, "site")
    by_sql = queue(dsn, tmp_path, "sql", route_by_contexts=True)
    by_code = queue(dsn, tmp_path, "code", route=lambda e: server_of(store, e.context)
                    or DEFAULT_QUEUE)
    contexts = ["@web1", "@web2", "@p1", "@p2", "@p3", "@s1.example", "@s2.example",
                "@s3.example", "@nowhere"]
    picked = {}
    for context in contexts:
        pair = []
        for q in (by_sql, by_code):
            task_id = task(q, context)
            pair.append(q.db.rows("SELECT j.queue_name FROM hostctl_tasks t JOIN "
                                  "procrastinate_jobs j ON j.id = t.job_id WHERE t.id = %s",
                                  (task_id,))[0][0])
        assert pair[0] == pair[1], (context, pair)
        picked[context] = pair[0]
    assert picked == {"@web1": "@web1", "@web2": "@web2", "@p1": "@web1", "@p2": "@web2",
                      "@p3": DEFAULT_QUEUE, "@s1.example": "@web1",
                      "@s2.example": "@web2", "@s3.example": DEFAULT_QUEUE,
                      "@nowhere": DEFAULT_QUEUE}


def test_an_idle_wait_queue_is_handed_its_task_and_withdraws_when_it_may_not_take_one(
        run_hostctl: Any, home: Path, dsn: str, procs: Any) -> None:
    """The daemon end to end: once idle it offers itself; the task it is handed runs with
    no spawn event (its mark stood for it); paused, it withdraws its offer, and offers
    again when resumed; stopped, it leaves none behind."""
    from runnerhelpers import hostctl_log, wait_exit, wait_for
    from taskhelpers import write_config

    marks = home.parent / "marks"
    marks.mkdir()
    write_config(home, {"cluster": {"dsn": dsn}, "tasks": {"mark": {
        "command": ["sh", "-c", ': > "$1"', "sh", str(marks / "{task_id}")],
        "context_types": ["server"]}}})
    assert run_hostctl("provision-save", "@srv", "--context_type", "server").code == 0
    look = queue(dsn, home.parent, "look")

    def offers() -> int:
        return int(look.db.rows("SELECT count(*) FROM hostctl_offers")[0][0])

    proc = procs.start("wait-queue", "--housekeeping-every", "0.5")
    wait_for(lambda: f"wait-queue {proc.pid} started" in hostctl_log(home), 30,
             "wait-queue to start")
    wait_for(lambda: offers() == 1, 30, "the idle worker's offer")
    assert "handoff to idle workers: 1 offering" in run_hostctl("cluster", "status").out
    task_id = run_hostctl("task", "add", "mark", "@srv").out.strip()
    wait_for(lambda: look.get(task_id).status is Status.SUCCESS, 30, "the task to run")
    assert (marks / task_id).exists()
    kinds = events(look, task_id)
    assert "spawn" not in kinds and kinds.count("start") == 1, kinds
    assert look.get(task_id).events[kinds.index("start")]["worker"] == proc.pid
    wait_for(lambda: offers() == 1, 30, "the offer made again")
    assert run_hostctl("queue", "pause").code == 0
    wait_for(lambda: offers() == 0, 30, "the offer withdrawn while paused")
    held = run_hostctl("task", "add", "mark", "@srv").out.strip()
    assert row(look, held)[:3] == ("todo", None, None)
    assert run_hostctl("queue", "resume").code == 0
    wait_for(lambda: look.get(held).status is Status.SUCCESS, 30, "the held task")
    wait_for(lambda: offers() == 1, 30, "the offer made again once resumed")
    proc.terminate()
    assert wait_exit(proc, 30, "wait-queue") == 0
    assert offers() == 0


def test_a_large_task_is_handed_by_its_id_and_read(tmp_path: Path, dsn: str) -> None:
    """A notice stays under 8000 bytes: a larger task's carries its id alone."""
    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    env = Envelope(new_id(), "verify", "@a", {"note": "x" * 9000}, {}, 5, utc_iso())
    front.publish(env, dedup=False)
    assert worker._watch is not None
    worker._watch.drain()
    assert worker._handed == {env.id: None}
    [claim] = worker.claim()
    assert claim.task.envelope.options["note"] == "x" * 9000


def test_garbage_on_a_workers_channel_harms_nothing(tmp_path: Path, dsn: str) -> None:
    worker = idle(queue(dsn, tmp_path, "w"))
    channel = f"hostctl_owner_{worker.owner()}"
    for junk in ("[" * 7000, "{}", "not json", '{"id": 5}', '{"id": "../x", "job": 1}',
                 "durable "):
        worker.db.rows("SELECT pg_notify(%s, %s)", (channel, junk))
    assert worker._watch is not None
    worker._watch.drain()
    assert worker.claim() == []  # nothing of it taken; the offer made again
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    worker._watch.drain()
    [claim] = worker.claim()
    assert claim.task.id == handed


def test_a_task_given_back_beside_an_identical_queued_one_gives_up_its_key(
        tmp_path: Path, dsn: str) -> None:
    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    env = Envelope(new_id(), "verify", "@a", {}, {}, 5, utc_iso())
    first, _ = front.publish(env)  # handed: running, so an identical one is queued
    again = Envelope(new_id(), "verify", "@a", {}, {}, 5, utc_iso())
    second, queued = front.publish(again)
    assert queued and second != first and row(front, second)[0] == "todo"
    assert worker._watch is not None
    worker._watch.drain()
    worker.hold()
    assert row(front, first)[:3] == ("todo", None, None)
    keys = dict(front.db.rows("SELECT t.id, j.queueing_lock FROM hostctl_tasks t JOIN "
                              "procrastinate_jobs j ON j.id = t.job_id"))
    assert keys[first] is None and keys[second] is not None


def test_a_handed_claim_let_go_before_it_started_is_queued_again_not_lost(
        tmp_path: Path, dsn: str) -> None:
    worker, front, handed = heard(dsn, tmp_path)
    [claim] = worker.claim()
    claim.release()  # as a start that cannot reach the database ends
    assert row(front, handed)[2:] == (None, None)  # no owner, and no mark: never ran
    sweeper = queue(dsn, tmp_path, "sweeper")
    rules = lambda _e: Policy(max_attempts=3, rerun_on_loss=False)  # noqa: E731
    notes = sweeper.sweep(rules)
    assert any("never started: queued again" in n for n in notes), notes
    assert front.get(handed).attempts == []


def test_a_handed_task_that_ran_is_not_given_back_by_a_clean_exit(
        tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its end could not be recorded and the database could not be told that it was let
    go: it ran, and its mark stays for the sweep, which counts the attempt; what was
    handed and never started goes back."""
    import psycopg

    from hostctl.database import database_error

    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    ran = task(front)
    assert worker._watch is not None
    worker._watch.drain()
    [claim] = worker.claim()
    claim.append("spawn", attempt=1, worker=os.getpid(), not_before=0, host=host_name())
    claim.append("start", attempt=1, pid=1, pgid=1, worker=os.getpid(), host=host_name())
    rows = worker.db.rows

    def no_settling(query: str, *a: Any, **k: Any) -> Any:
        if query.startswith("UPDATE hostctl_tasks SET owner = NULL, handed = CASE"):
            raise database_error("the database is away",
                                 psycopg.OperationalError("connection lost"))
        return rows(query, *a, **k)

    monkeypatch.setattr(worker.db, "rows", no_settling)
    claim.release()
    assert ran in worker._unreleased
    assert worker.claim() == []  # nor is it taken again as handed and unheard
    worker.hold()  # (its offer withdrawn: the next task goes to another)
    never = idle(queue(dsn, tmp_path, "w2"))
    never_id = task(front, "@b")
    assert row(front, never_id)[2] == never.owner()
    worker.unregister()
    status, _worker, owner, mark = row(front, ran)
    assert (status, owner) == ("doing", None) and mark is not None
    never.unregister()  # handed, never heard of: back to the queue, unmarked
    assert row(front, never_id) == ("todo", None, None, None)


def test_nothing_is_handed_while_a_host_of_an_earlier_hostctl_lives(tmp_path: Path,
                                                                   dsn: str) -> None:
    """Its sweeps would not know what a handed mark means."""
    worker = idle(queue(dsn, tmp_path, "w"))
    old = queue(dsn, tmp_path, "old")
    old.db.rows("UPDATE hostctl_owners SET handoff = false WHERE id = %s", (old.owner(),))
    front = queue(dsn, tmp_path, "front")
    queued = task(front)
    assert row(front, queued)[:3] == ("todo", None, None)
    said = cluster.status(dsn).handoff
    assert not said["on"] and "1 worker(s) of an earlier hostctl" in said["why_not"], said
    old.unregister()
    handed = task(front, "@b")
    assert row(front, handed)[2] == worker.owner()


def test_no_worker_offers_itself_where_other_roles_may_connect(
        tmp_path: Path, dsn: str, pg_server: PgCluster) -> None:
    """A role that may connect may LISTEN: the notices would tell it the tasks."""
    name = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    pg_server.psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                   "'outsider') THEN CREATE ROLE outsider LOGIN; END IF; END $$")
    pg_server.psql(f"GRANT CONNECT ON DATABASE {name} TO outsider")
    worker = queue(dsn, tmp_path, "w")
    worker.watch()
    assert worker.claim() == []
    assert worker.db.rows("SELECT count(*) FROM hostctl_offers") == [(0,)]
    said = cluster.status(dsn).handoff
    assert not said["on"] and "REVOKE CONNECT" in said["why_not"], said
    front = queue(dsn, tmp_path, "front")
    assert row(front, task(front))[:3] == ("todo", None, None)
    pg_server.psql(f"REVOKE CONNECT ON DATABASE {name} FROM outsider")
    worker.sweep(lambda _e: Policy())  # looks again
    [claim] = worker.claim()  # the queued task
    worker.finish(claim, "success")
    assert worker.claim() == []
    assert worker.db.rows("SELECT owner FROM hostctl_offers") == [(worker.owner(),)]
    assert cluster.status(dsn).handoff == {"on": True, "offers": 1, "why_not": ""}


def test_notices_read_while_waiting_for_the_disk_still_wake_the_loop(
        tmp_path: Path, dsn: str) -> None:
    """The wait reads the LISTEN connection itself: what it read (a cancel, a task
    queued) must still reach whoever sleeps on the watch."""
    import select

    worker = idle(queue(dsn, tmp_path, "w"))
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    watch = worker._watch
    assert watch is not None
    watch.drain()
    worker._durable.discard(handed)  # as if the word had not come yet
    [claim] = worker.claim()
    front.db.rows("SELECT pg_notify('hostctl_queue', 'cancel 0123456789abcdef0123'), "
                  "pg_notify(%s, %s)", (f"hostctl_owner_{worker.owner()}",
                                        f"durable {handed}"))
    assert select.select([watch], [], [], 5)[0] == [watch]  # the notices came
    claim.append("spawn", attempt=1, worker=os.getpid(), not_before=0, host=host_name())
    assert events(front, handed) == []  # told (by the notice the wait read): nothing written
    assert select.select([watch], [], [], 0)[0] == [watch]  # read, and readable still


def test_a_worker_judged_dead_while_it_lived_is_handed_tasks_as_its_new_owner(
        tmp_path: Path, dsn: str) -> None:
    """Its connection lost long enough for the sweeps to judge it dead and forget it, a
    worker registers again as a new owner: its watch hears that owner's channel from
    then on, and its next claim that finds nothing offers it to the publishes again."""
    worker = idle(queue(dsn, tmp_path, "w"))
    old = worker.owner()
    worker.db.close()  # its connection gone, and its owner's lock with it
    sweeper = queue(dsn, tmp_path, "sweeper")
    rules = lambda _e: Policy(max_attempts=3, backoff_base=0.0, backoff_max=0.0)  # noqa: E731
    for _ in range(60):  # a dead owner is judged gone over two sweeps, 3 s apart
        sweeper.sweep(rules)
        if not sweeper.db.rows("SELECT 1 FROM hostctl_owners WHERE id = %s", (old,)):
            break
        time.sleep(0.25)
    else:
        pytest.fail("the sweeps did not forget the owner that looked dead")
    assert worker.claim() == []  # its connection made again: a new owner ...
    assert worker.owner() != old and not worker._offered
    assert worker._watch is not None
    worker._watch.drain()  # ... whose watch listens again (as the loop's next wake does)
    assert worker.claim() == [] and worker._offered  # ... and offers it
    front = queue(dsn, tmp_path, "front")
    handed = task(front)
    assert row(front, handed)[:3] == ("doing", worker.owner(), worker.owner())
    worker._watch.drain()
    assert handed in worker._handed
    [claim] = worker.claim()
    assert claim.task.id == handed
