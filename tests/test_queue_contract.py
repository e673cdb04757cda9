"""The queue seam's contract (queues/backend.py), run on every implementation.

Each test speaks to the backend only through a proxy that refuses anything outside
QueueBackend and TaskClaim (tests/queueproxy.py), so a new backend (another engine) is
added to ``IMPLEMENTATIONS`` and inherits the whole suite. A second handle on the same
queue (``other``) plays another process: a second worker, a front end's ``task cancel``.
The last tests run the runners themselves (the task commands, a dispatch pass, a
wait-queue daemon) on a home whose every queue is such a proxy.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pghelpers import new_database
from queueproxy import NotInTheInterface, OnlyQueue, members
from runnerhelpers import save_sites, sh_task
from taskhelpers import write_config

from hostctl.errors import Conflict, InvalidInput, NotFound
from hostctl.paths import Paths
from hostctl.queues.backend import QueueBackend, TaskClaim
from hostctl.queues.model import Envelope, Policy, Status, new_id, utc_iso
from hostctl.queues.pgqueue import PgQueue
from hostctl.queues.spool import Spool
from hostctl.runners import lifecycle as ops
from hostctl.runners.daemon import WaitQueue, drain_once
from hostctl.runners.dispatcher import Dispatcher, pause, resume
from hostctl.runners.home import Home
from hostctl.times import parse_iso

#: name -> a function that opens a handle on the queue kept under a folder (the local
#: part: the spool, or a cluster host's drop box) and, for the cluster, in a database
IMPLEMENTATIONS: dict[str, Callable[[Path, str], Any]] = {
    "spool": lambda where, _dsn: Spool(where / "spool", where / "logs"),
    "postgresql": lambda where, dsn: PgQueue(dsn, where / "spool", where / "logs"),
}


class Queue:
    """A backend under test: ``q`` and ``other`` are two handles on one queue."""

    def __init__(self, opener: Callable[[Path, str], Any], where: Path, dsn: str) -> None:
        self.opener, self.where, self.dsn = opener, where, dsn
        self.q = self.open()
        self.other = self.open()
        self.q.ensure()

    def open(self) -> Any:
        return OnlyQueue(self.opener(self.where, self.dsn))


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Queue]:
    dsn = ""
    if request.param == "postgresql":
        dsn = new_database(request.getfixturevalue("pg_server"), "queue", init=True)
    yield Queue(IMPLEMENTATIONS[request.param], tmp_path, dsn)


def env(context: str = "@a.example", type_: str = "verify", priority: int = 5,
        **options: str) -> Envelope:
    return Envelope(id=new_id(), type=type_, context=context, options=options,
                    priority=priority, created=utc_iso())


def claim_one(q: Any, **kw: Any) -> TaskClaim:
    [claim] = q.claim(**kw)
    return claim  # type: ignore[no-any-return]


def start(q: Any, claim: TaskClaim) -> None:
    """What a worker records before its child runs."""
    claim.append("start", attempt=claim.task.attempt_count + 1, worker=os.getpid())
    q.started(claim)


def test_every_implementation_has_every_call() -> None:
    for name, opener in IMPLEMENTATIONS.items():
        assert isinstance(opener(Path("/nonexistent"), "dbname=none"), QueueBackend), name
    assert {"publish", "claim", "heartbeat", "finish", "defer", "cancel_queued",
            "request_cancel", "retry", "pause", "tasks", "get", "read_log", "workers",
            "leader", "read_record", "write_record"} <= members(QueueBackend)


def test_the_proxy_refuses_what_is_not_in_the_interface(queue: Queue) -> None:
    with pytest.raises(NotInTheInterface):
        queue.q.root  # noqa: B018
    with pytest.raises(NotInTheInterface):
        queue.q.tasks_in(("new",))


# -- publish, read ----------------------------------------------------------------------

def test_a_published_task_reads_back_queued_and_whole(queue: Queue) -> None:
    e = env(val="1")
    task_id, created = queue.q.publish(e)
    assert (task_id, created) == (e.id, True)
    task = queue.other.get(task_id)
    assert task.status is Status.QUEUED and task.envelope == e and task.attempts == []
    assert [t.id for t in queue.other.tasks()] == [task_id]
    assert queue.other.tasks((Status.SUCCESS,)) == []
    assert queue.q.counts().queued == 1


def test_an_identical_queued_task_is_not_queued_twice_unless_asked(queue: Queue) -> None:
    first = env(val="x")
    same = Envelope(**{**first.__dict__, "id": new_id()})
    assert queue.q.publish(first) == (first.id, True)
    assert queue.q.publish(same) == (first.id, False)
    assert queue.q.publish(same, dedup=False) == (same.id, True)


def test_unknown_and_malformed_ids(queue: Queue) -> None:
    with pytest.raises(NotFound):
        queue.q.get(new_id())
    with pytest.raises(InvalidInput):
        queue.q.get("../../etc/passwd")


# -- claim ------------------------------------------------------------------------------

def test_claims_go_by_priority_then_age_one_per_context(queue: Queue) -> None:
    low = env("@a.example", priority=2)
    high = env("@b.example", priority=8)
    same_ctx = env("@b.example", priority=8, val="2")
    other = env("@c.example", priority=5)
    for e in (low, high, same_ctx, other):
        queue.q.publish(e)
    claims = queue.q.claim(limit=10)
    assert [c.task.id for c in claims] == [high.id, other.id, low.id]  # b once
    assert queue.other.claim(limit=10) == []  # all contexts busy or taken
    assert queue.other.context_busy("@b.example")
    for c in claims:
        start(queue.q, c)
        queue.q.finish(c, "success")
    assert [c.task.id for c in queue.other.claim(limit=10)] == [same_ctx.id]


def test_skip_contexts_and_limit(queue: Queue) -> None:
    for ctx in ("@a.example", "@b.example", "@c.example"):
        queue.q.publish(env(ctx))
    got = queue.q.claim(limit=1, skip_contexts={"@a.example"})
    assert [c.task.envelope.context for c in got] == ["@b.example"]


def test_a_check_that_refuses_sets_the_task_aside_with_its_reason(queue: Queue) -> None:
    bad = env(type_="nope")
    good = env("@b.example")
    queue.q.publish(bad)
    queue.q.publish(good)

    def check(e: Envelope) -> None:
        if e.type == "nope":
            raise InvalidInput("unknown task type 'nope'")

    assert [c.task.id for c in queue.q.claim(check, limit=5)] == [good.id]
    task = queue.other.get(bad.id)
    assert task.status is Status.ERROR and "unknown task type" in task.reason
    assert [r for _f, r in queue.other.set_aside() if "nope" in r]
    assert queue.other.counts().quarantined == 1


# -- ends of an attempt -----------------------------------------------------------------

@pytest.mark.parametrize("outcome", ["success", "warning", "error", "cancelled"])
def test_finish_records_the_outcome(queue: Queue, outcome: str) -> None:
    queue.q.publish(e := env())
    c = claim_one(queue.q)
    start(queue.q, c)
    assert e.id in queue.other.running()
    queue.q.heartbeat(c)
    queue.q.finish(c, outcome, exit=0, reason="", result={"k": "v"})
    task = queue.other.get(e.id)
    assert task.status.label == outcome and task.status.finished
    assert len(task.attempts) == 1 and queue.other.running() == []
    assert [t.id for t in queue.other.tasks((task.status,))] == [e.id]
    assert queue.other.counts().finished == 1


def test_a_deferred_attempt_comes_back_when_due(queue: Queue) -> None:
    queue.q.publish(e := env())
    c = claim_one(queue.q)
    start(queue.q, c)
    queue.q.defer(c, 3600, reason="try later")
    task = queue.other.get(e.id)
    assert task.status is Status.QUEUED and len(task.attempts) == 1
    assert queue.q.claim() == []
    due = queue.q.next_due()
    assert due is not None and time.time() + 3500 < due < time.time() + 3700
    assert queue.q.promote_due(now=time.time() + 4000) == 1
    again = claim_one(queue.q)
    assert again.task.id == e.id and again.task.attempt_count == 1


def test_a_delayed_publish_waits(queue: Queue) -> None:
    e = env()
    queue.q.publish(e, delay=3600)
    assert queue.q.claim() == [] and queue.q.counts().deferred == 1
    assert queue.q.promote_due(now=time.time() + 3601) == 1
    assert claim_one(queue.q).task.id == e.id


def test_a_requeued_claim_counts_no_attempt(queue: Queue) -> None:
    queue.q.publish(e := env())
    queue.q.requeue(claim_one(queue.q))
    again = claim_one(queue.other)
    assert again.task.id == e.id and again.task.attempt_count == 0


def test_a_claim_let_go_is_recovered_by_a_sweep_as_one_attempt(queue: Queue) -> None:
    queue.q.publish(e := env())
    c = claim_one(queue.q)
    start(queue.q, c)
    c.release()  # as a dead worker's: nothing recorded
    notes = queue.other.sweep(lambda _e: Policy(max_attempts=3, backoff_base=0.0,
                                                backoff_max=0.0))
    assert any(e.id in n for n in notes)
    queue.other.promote_due(now=time.time() + 1)
    again = claim_one(queue.other)
    assert again.task.id == e.id and again.task.attempt_count == 1


def test_a_lost_task_that_may_not_rerun_ends_in_error(queue: Queue) -> None:
    queue.q.publish(e := env())
    start(queue.q, c := claim_one(queue.q))
    c.release()
    queue.other.sweep(lambda _e: Policy(rerun_on_loss=False))
    assert queue.other.get(e.id).status is Status.ERROR


# -- what users do to tasks -------------------------------------------------------------

def test_cancel_a_queued_task_and_ask_a_running_one_to_stop(queue: Queue) -> None:
    queue.q.publish(waiting := env("@a.example"))
    queue.q.publish(running := env("@b.example"))
    cancelled = queue.other.cancel_queued(waiting.id)
    assert cancelled is not None and cancelled.status is Status.CANCELLED
    c = claim_one(queue.q)
    assert c.task.id == running.id
    start(queue.q, c)
    assert queue.other.cancel_queued(running.id) is None
    assert queue.other.request_cancel(running.id).cancel_requested
    assert c.grew() and c.reload().cancel_requested
    queue.q.finish(c, "cancelled")
    with pytest.raises(Conflict):
        queue.other.request_cancel(running.id)


def test_retry_queues_a_finished_task_again_under_its_id(queue: Queue) -> None:
    queue.q.publish(e := env())
    with pytest.raises(Conflict):
        queue.q.retry(e.id)
    start(queue.q, c := claim_one(queue.q))
    queue.q.finish(c, "error")
    assert queue.other.retry(e.id).status is Status.QUEUED
    again = claim_one(queue.q)
    assert again.task.id == e.id
    assert again.task.attempt_count == 0 and len(again.task.attempts) == 1  # history kept


def test_status_counts_say_what_the_tasks_say(queue: Queue) -> None:
    """``queue status``'s counts: each status as reading every task gives it, and the
    oldest queued task's time; a task ended, retried and ended again counts once, as it
    ended last."""

    def by_reading() -> dict[Status, int]:
        found = {s: 0 for s in Status}
        for task in queue.other.tasks():
            found[task.status] += 1
        return found

    assert queue.q.status_counts() == ({s: 0 for s in Status}, None)
    first = env("@a.example")
    queue.q.publish(first)
    for context in ("@b.example", "@c.example", "@d.example", "@e.example"):
        queue.q.publish(env(context))
    queue.q.publish(env("@f.example"), delay=3600)
    for outcome in ("success", "warning", "error"):
        start(queue.q, c := claim_one(queue.q, skip_contexts={"@a.example"}))
        queue.q.finish(c, outcome)
    start(queue.q, claim_one(queue.q, skip_contexts={"@a.example"}))  # running
    queue.other.cancel_queued(first.id)
    again = next(t for t in queue.other.tasks() if t.status is Status.ERROR)
    queue.other.retry(again.id)
    start(queue.q, c := claim_one(queue.q, skip_contexts={"@a.example"}))
    queue.q.finish(c, "success")
    counts = queue.other.status_counts()
    assert counts.by_status == by_reading()
    assert [counts.by_status[s] for s in Status] == [1, 1, 2, 0, 1, 1]
    deferred = next(t for t in queue.other.tasks() if t.status is Status.QUEUED)
    assert counts.oldest_queued is not None
    assert abs(counts.oldest_queued - parse_iso(deferred.envelope.created)) < 0.002


def test_a_foreground_task_is_published_already_claimed(queue: Queue) -> None:
    e = env()
    c = queue.q.publish_claimed(e, wait=True)
    assert queue.other.get(e.id).status is Status.PROCESSING
    assert queue.other.claim() == [] and queue.other.context_busy(e.context)
    start(queue.q, c)
    queue.q.finish(c, "success")
    assert queue.other.get(e.id).status is Status.SUCCESS


def test_a_claim_is_ended_through_another_handle_of_its_process(queue: Queue) -> None:
    """provision-TYPE publishes through the home's queue and runs through its worker's."""
    second = queue.open()  # this process, another handle (the spool: another object)
    c = queue.q.publish_claimed(e := env(), wait=True)
    start(second, c)
    second.heartbeat(c)
    second.finish(c, "success")
    assert queue.other.get(e.id).status is Status.SUCCESS


def test_a_tasks_log_is_written_while_held_and_read_by_anyone(queue: Queue) -> None:
    queue.q.publish(e := env())
    c = claim_one(queue.q)
    log = queue.q.open_log(c.task.envelope)
    log.write(b"line one\n")
    log.write(b"line two\n")
    start(queue.q, c)
    queue.q.finish(c, "success")
    log.close()
    assert b"".join(queue.other.read_log(e.id, follow=False)) == b"line one\nline two\n"
    assert b"".join(queue.other.read_log(e.id, follow=True, poll=0.01)).endswith(b"two\n")
    assert os.path.isabs(queue.q.result_path(e))


# -- the queue as a whole ---------------------------------------------------------------

def test_pause_and_resume(queue: Queue) -> None:
    assert not queue.other.paused()
    queue.q.pause()
    assert queue.other.paused()
    queue.q.resume()
    assert not queue.other.paused()


def test_one_leader_at_a_time(queue: Queue) -> None:
    with queue.q.leader() as first:
        with queue.other.leader() as second:
            assert (first, second) == (True, False)
    with queue.other.leader() as again:
        assert again


def test_records_are_kept_whole(queue: Queue) -> None:
    assert queue.q.read_record("queues") is None
    queue.q.write_record("queues", b'{"version": 2}\n')
    assert queue.other.read_record("queues") == b'{"version": 2}\n'
    with pytest.raises(InvalidInput):
        queue.q.write_record("../escape", b"x")


def test_a_registered_worker_is_listed_while_it_lives(queue: Queue) -> None:
    reg = queue.q.register_worker(os.getpid(), utc_iso(), 60.0)
    reg.update(7)
    [info] = queue.other.workers()
    assert (info.pid, info.tasks_run, info.alive) == (os.getpid(), 7, True)
    reg.close()
    assert queue.other.workers() == []


def test_a_dead_workers_registration_is_reported_then_forgotten(queue: Queue) -> None:
    ready, go = multiprocessing.get_context("fork").Pipe()

    def worker() -> None:
        queue.open().register_worker(os.getpid(), utc_iso(), 60.0)
        go.send("registered")
        time.sleep(60)

    proc = multiprocessing.get_context("fork").Process(target=worker)
    proc.start()
    assert ready.poll(30) and ready.recv() == "registered"
    assert [w.alive for w in queue.q.workers()] == [True]
    proc.kill()
    proc.join(30)
    # the spool knows at once (a flock goes with its process); a database server learns
    # that a client's connection closed a moment later
    deadline = time.monotonic() + 10
    while (seen := [w.alive for w in queue.q.workers()]) == [True]:
        assert time.monotonic() < deadline, "the dead worker still shows as alive"
        time.sleep(0.02)
    assert seen == [False]
    assert queue.q.workers() == []


def test_finished_tasks_are_collected_after_their_retention(queue: Queue) -> None:
    for ctx in ("@a.example", "@b.example"):
        queue.q.publish(env(ctx))
    for c in queue.q.claim(limit=2):
        start(queue.q, c)
        queue.q.finish(c, "success")
    queue.q.publish(kept := env("@c.example"))
    assert queue.q.collectable(1.0, time.time()) == 0
    later = time.time() + 2 * 86400
    assert queue.q.collectable(1.0, later) == 2
    assert queue.q.collect(1.0, later, limit=1) == 1
    assert queue.q.collect(1.0, later, limit=10) == 1
    assert [t.id for t in queue.other.tasks()] == [kept.id]


def test_nothing_submitted_nothing_admitted(queue: Queue) -> None:
    assert not queue.q.has_submissions()
    assert queue.q.admit(lambda _e: None) == []


def test_a_watch_wakes_on_a_publish_from_elsewhere(queue: Queue) -> None:
    watch = queue.q.watch()
    if watch is None:
        pytest.skip("this backend offers nothing to sleep on")
    try:
        watch.drain()
        assert select.select([watch], [], [], 0)[0] == []
        queue.other.publish(env())
        assert select.select([watch], [], [], 5)[0] == [watch]
        watch.drain()
        queue.other.pause()
        queue.other.resume()  # a resume wakes a sleeping worker too
        assert select.select([watch], [], [], 5)[0] == [watch]
    finally:
        watch.close()


def _race(opener: Callable[[Path, str], Any], where: Path, dsn: str, out: Any) -> None:
    q = OnlyQueue(opener(where, dsn))
    done = []
    idle = 0
    while idle < 20:
        claims = q.claim(limit=2)
        if not claims:
            idle += 1
            time.sleep(0.01)
            continue
        idle = 0
        for c in claims:
            start(q, c)
            q.finish(c, "success")
            done.append(c.task.id)
    out.send(done)


def test_workers_racing_run_every_task_exactly_once(queue: Queue) -> None:
    ids = [queue.q.publish(env(f"@s{i % 7}.example", val=str(i)))[0] for i in range(60)]
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for _ in range(4):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_race, args=(queue.opener, queue.where, queue.dsn, w))
        p.start()
        pipes.append(r)
        procs.append(p)
    ran: Counter[str] = Counter()
    for r in pipes:
        assert r.poll(120)
        ran.update(r.recv())
    for p in procs:
        p.join(30)
    assert ran == Counter(ids)  # each once, none lost
    assert all(t.status is Status.SUCCESS for t in queue.q.tasks())


# -- the runners on nothing but the interface ---------------------------------------------

class ProxiedHome(Home):
    """A home whose every queue object is an interface-only proxy."""

    used: set[str] = set()

    def open_queue(self) -> Any:
        proxy = OnlyQueue(super().open_queue())
        proxy.used = ProxiedHome.used
        return proxy


@pytest.mark.parametrize("backend", sorted(IMPLEMENTATIONS))
def test_the_runners_need_nothing_but_the_interface(run_hostctl, home: Path, tmp_path: Path,
                                                    backend: str,
                                                    request: pytest.FixtureRequest) -> None:
    config: dict[str, Any] = {
        "tasks": {"ok": sh_task('echo "ran on $HOSTCTL_CONTEXT"'),
                  "slow": sh_task('sleep 30')},
        "queues": {"task_gc": {"frequency": 1}},
    }
    if backend == "postgresql":
        config["cluster"] = {"dsn": new_database(request.getfixturevalue("pg_server"),
                                                 "queue", init=True)}
    write_config(home, config)
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    ProxiedHome.used = set()
    h = ProxiedHome(Paths(home))
    assert type(h.queue._inner) is {"spool": Spool, "postgresql": PgQueue}[backend]
    added = ops.add(h, "ok", "@a.example", {}, {})
    assert added.created and added.task.status is Status.QUEUED
    assert [t.id for t in ops.list_tasks(h, ops.task_query("queued"))] == [added.task.id]
    assert drain_once(h).started == 1
    assert ops.get(h, added.task.id).status is Status.SUCCESS
    assert b"ran on @a.example" in b"".join(ops.follow_log(h, added.task.id, False))
    assert ops.retry(h, added.task.id).status is Status.QUEUED
    report = Dispatcher(h).run(force=True)
    assert not report.failed and report.started == 1
    slow = ops.add(h, "slow", "@b.example", {}, {}).task
    assert ops.cancel(h, slow.id).status is Status.CANCELLED
    status = ops.queue_status(h)
    assert status.counts["success"] == 1 and status.counts["cancelled"] == 1
    assert pause(h, wait=True).waited_for == 0
    resume(h)
    ops.add(h, "ok", "@c.example", {}, {})
    daemon = WaitQueue(h, max_runtime=1.0, housekeeping_every=0.2)
    assert daemon.run() == 0
    assert daemon.worker is not None and daemon.worker.summary.started == 1
    assert {"publish", "claim", "finish", "get", "status_counts", "counts", "read_log", "retry",
            "cancel_queued", "pause", "resume", "running", "sweep", "leader",
            "read_record", "write_record", "register_worker", "watch", "collect",
            "paused"} <= ProxiedHome.used
