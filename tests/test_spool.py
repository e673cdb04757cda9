"""Unit tests of the Spool class: publish, claim, finish, defer, sweep, cancel, retry and
garbage, against the on-disk protocol of docs/spool.md (real files, real flocks)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostctl.errors import Conflict, InvalidInput, NotFound, NotJudgedYet
from hostctl.queues.listing import Listing
from hostctl.queues.model import Envelope, Policy, Status, backoff, encode_event, new_id
from hostctl.queues.spool import Spool
from hostctl.times import utc_iso


@pytest.fixture
def sp(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool", tmp_path / "logs")
    s.ensure()
    return s


def env(context: str = "@a.example", priority: int = 5, type_: str = "note",
        options: dict[str, str] | None = None, task_id: str | None = None) -> Envelope:
    return Envelope(task_id or new_id(), type_, context, dict(options or {}), {}, priority,
                    utc_iso())


def names(s: Spool, folder: str) -> list[str]:
    return sorted(n for n in os.listdir(s.dir(folder)))


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def rerun(max_attempts: int = 3, rerun_on_loss: bool = True, base: float = 0.0):
    return lambda _env: Policy(max_attempts, rerun_on_loss, base, base)


# -- publish ----------------------------------------------------------------------------

def test_publish_writes_one_line_into_new_under_priority_and_id(sp: Spool) -> None:
    e = env(priority=7)
    task_id, created = sp.publish(e)
    assert created and task_id == e.id
    assert names(sp, "new") == [f"2{e.id}.task"]
    data = (sp.dir("new") / f"2{e.id}.task").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    doc = json.loads(data)
    assert doc["id"] == e.id and doc["type"] == "note" and doc["context"] == "@a.example"
    assert doc["format"] == 1 and doc["priority"] == 7 and doc["created"]
    assert os.listdir(sp.dir("tmp")) == []
    assert (sp.dir("new") / f"2{e.id}.task").stat().st_mode & 0o777 == 0o600


def test_ids_are_20_hex_digits_and_sort_by_time() -> None:
    a, b = new_id(1_700_000_000.0), new_id(1_700_000_000.5)
    assert len(a) == 20 and all(c in "0123456789abcdef" for c in a)
    assert a[:12] == f"{1_700_000_000_000:012x}"
    assert a < b


def test_identical_queued_task_dedups_to_the_same_id(sp: Spool) -> None:
    first = env(options={"x": "1"})
    assert sp.publish(first) == (first.id, True)
    again = env(options={"x": "1"})
    assert sp.publish(again) == (first.id, False)
    other = env(options={"x": "2"})
    assert sp.publish(other) == (other.id, True)
    assert len(names(sp, "new")) == 2
    forced = env(options={"x": "1"})
    assert sp.publish(forced, dedup=False) == (forced.id, True)
    assert len(names(sp, "new")) == 3


def test_dedup_ends_when_the_first_task_is_no_longer_queued(sp: Spool) -> None:
    first = env()
    sp.publish(first)
    [claim] = sp.claim()
    second = env()
    assert sp.publish(second) == (second.id, True)  # the first one is running
    sp.finish(claim, "success", exit=0)
    third = env()
    assert sp.publish(third) == (second.id, False)


def test_publishing_an_existing_id_is_a_conflict(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    with pytest.raises(Conflict):
        sp.publish(env(task_id=e.id, options={"other": "y"}))
    assert names(sp, "new") == [f"4{e.id}.task"]
    assert os.listdir(sp.dir("tmp")) == []


def test_publish_with_delay_goes_to_deferred_with_its_due_time(sp: Spool) -> None:
    e = env(priority=9)
    before = time.time()
    sp.publish(e, delay=120)
    [name] = names(sp, "deferred")
    due_hex, _, rest = name.partition(".")
    assert len(due_hex) == 13 and rest == f"0{e.id}.task"
    assert before + 119 <= int(due_hex, 16) / 1000 <= time.time() + 121
    task = sp.get(e.id)
    assert task.state == "deferred" and task.status is Status.QUEUED
    assert sp.claim() == []
    assert sp.promote_due(now=time.time() + 60) == 0
    assert sp.promote_due(now=time.time() + 130) == 1
    assert names(sp, "new") == [f"0{e.id}.task"]


# -- claim ------------------------------------------------------------------------------

def test_claim_order_is_priority_then_first_queued(sp: Spool) -> None:
    order = []
    for prio in (5, 5, 9, 0, 9):
        e = env(context=f"@c{len(order)}.example", priority=prio)
        sp.publish(e)
        order.append((prio, e.id))
        time.sleep(0.002)
    want = [i for _, i in sorted(order, key=lambda p: (-p[0], p[1]))]
    got = []
    while True:
        claims = sp.claim()
        if not claims:
            break
        got.append(claims[0].task.id)
        sp.finish(claims[0], "success", exit=0)
    assert got == want


def test_claim_moves_to_active_and_holds_the_file_lock(sp: Spool, tmp_path: Path) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    assert claim.path == sp.dir("active") / f"4{e.id}.task"
    assert names(sp, "new") == [] and claim.path.exists()
    assert not lock_is_free(claim.path)
    assert sp.get(e.id).status is Status.PROCESSING
    other = Spool(sp.root, sp.logs)
    assert other.sweep(rerun()) == []  # a live owner: left alone
    assert claim.path.exists()
    claim.release()
    assert lock_is_free(claim.path)


def test_one_task_per_context_across_spool_instances(sp: Spool) -> None:
    a1, a2, b1 = env("@a.example"), env("@a.example", options={"n": "2"}), env("@b.example")
    for e in (a1, a2, b1):
        sp.publish(e)
    first = sp.claim(limit=10)
    assert sorted(c.task.id for c in first) == sorted([a1.id, b1.id])
    other = Spool(sp.root, sp.logs)
    assert other.claim(limit=10) == []  # @a is busy in another "process"
    for c in first:
        if c.task.envelope.context == "@a.example":
            sp.finish(c, "success", exit=0)
    [next_a] = other.claim(limit=10)
    assert next_a.task.id == a2.id
    assert sp.claim(limit=10, skip_contexts=set()) == []
    next_a.release()
    for c in first:
        c.release()


def test_skip_contexts_is_honoured(sp: Spool) -> None:
    sp.publish(env("@a.example"))
    assert sp.claim(skip_contexts={"@a.example"}) == []
    assert len(sp.claim()) == 1


def test_a_file_locked_by_another_claimer_is_skipped(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    path = sp.dir("new") / f"4{e.id}.task"
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert sp.claim() == []
        assert path.exists()
    finally:
        os.close(fd)
    assert [c.task.id for c in sp.claim()] == [e.id]


def test_check_rejection_quarantines_with_a_reason(sp: Spool) -> None:
    bad, good = env(type_="nope"), env("@b.example")
    sp.publish(bad)
    sp.publish(good)

    def check(e: Envelope) -> None:
        if e.type == "nope":
            raise InvalidInput("unknown task type 'nope'")

    [claim] = sp.claim(check, limit=5)
    assert claim.task.id == good.id
    q = sp.set_aside()
    assert [n for n, _ in q] == [f"4{bad.id}.task"]
    assert "unknown task type" in q[0][1]


# -- the claim's view of new/ and deferred/ (kept by inotify, not listed per claim) ------

@pytest.fixture(params=["inotify", "listing"])
def view(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test below runs with the inotify-kept view and with a plain listing."""
    if request.param == "listing":
        from hostctl.queues import listing as listing_module

        monkeypatch.setattr(listing_module.Listing, "refresh", lambda self: False)
    return str(request.param)


def test_claim_sees_what_others_queue_after_its_first_look(sp: Spool, view: str) -> None:
    assert sp.claim() == []
    other = Spool(sp.root, sp.logs)
    later, first = env("@b.example"), env("@a.example", priority=9)
    other.publish(later)
    other.publish(first)
    (sp.dir("new") / ".half-written").write_bytes(b"{")  # dot-names are never claimed
    assert [c.task.id for c in sp.claim(limit=5)] == [first.id, later.id]
    assert (sp._listings["new"].ino is not None) == (view == "inotify")


def test_claim_passes_over_what_others_took_or_cancelled(sp: Spool, view: str) -> None:
    a, b, c = env("@a.example"), env("@b.example"), env("@c.example")
    for e in (a, b, c):
        sp.publish(e)
        time.sleep(0.002)
    assert sp.claim(skip_contexts={"@a.example", "@b.example", "@c.example"}) == []
    other = Spool(sp.root, sp.logs)
    [taken] = other.claim()
    assert taken.task.id == a.id
    assert other.cancel_queued(b.id) is not None
    assert [x.task.id for x in sp.claim(limit=5)] == [c.id]
    taken.release()


def test_a_requeued_task_is_claimed_again(sp: Spool, view: str) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    assert sp.claim() == []
    sp.requeue(claim)
    [again] = sp.claim()
    assert again.task.id == e.id
    again.release()


def test_tasks_skipped_for_a_busy_context_wait_for_it(sp: Spool, view: str) -> None:
    a1, a2, b1 = env("@a.example"), env("@a.example", options={"n": "2"}), env("@b.example")
    for e in (a1, a2, b1):
        sp.publish(e)
        time.sleep(0.002)
    other = Spool(sp.root, sp.logs)
    [held] = other.claim()
    assert held.task.id == a1.id
    assert [c.task.id for c in sp.claim(limit=5)] == [b1.id]  # a2 waits for @a
    assert sp.claim(limit=5) == []
    other.finish(held, "success", exit=0)
    assert [c.task.id for c in sp.claim(limit=5)] == [a2.id]


def test_a_burst_on_a_busy_context_is_looked_at_once_not_at_every_claim(
        sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site with hundreds of queued tasks while one of them runs: each claim (the
    worker's claim ahead, another worker's pass) must not pass over every one of them
    again, and when the site is free its next task, in run order, is the one claimed."""
    burst = [env("@a.example", options={"n": str(n)}) for n in range(200)]
    for e in burst:
        sp.publish(e, dedup=False)
    [first] = sp.claim()
    assert first.task.id == burst[0].id
    looked: list[str] = []  # every queued name a claim considered
    real = Listing.smallest

    def counting(self: Listing, passed: list[str]) -> Iterator[str]:
        for name in real(self, passed):
            looked.append(name)
            yield name

    monkeypatch.setattr(Listing, "smallest", counting)
    assert sp.claim(skip_contexts={"@a.example"}) == []  # learns where they all wait
    assert len(looked) == len(burst) - 1
    looked.clear()
    for _ in range(20):
        assert sp.claim(skip_contexts={"@a.example"}) == []
    assert looked == []
    other = env("@b.example")
    sp.publish(other)
    assert [c.task.id for c in sp.claim(skip_contexts={"@a.example"})] == [other.id]
    assert len(looked) == 1
    for expected in burst[1:4]:  # the site free again: its tasks one at a time, in order
        sp.finish(first, "success", exit=0)
        looked.clear()
        [first] = sp.claim(limit=5)
        assert first.task.id == expected.id
        assert len(looked) == 1


def test_a_parked_task_whose_type_waits_does_not_hold_up_its_context(sp: Spool) -> None:
    """Tasks parked while their site was busy; the site is free, but the first of them
    is of a type this configuration does not know yet (it waits, unclaimed): the next
    task of the site runs all the same."""
    later, then = env("@a.example", type_="later"), env("@a.example", options={"n": "2"})
    for e in (later, then):
        sp.publish(e)
        time.sleep(0.002)
    assert sp.claim(skip_contexts={"@a.example"}) == []  # both wait for @a: parked

    def check(e: Envelope) -> None:
        if e.type == "later":
            raise NotJudgedYet("not in this configuration")

    got = sp.claim(check) or sp.claim(check)
    assert [c.task.id for c in got] == [then.id]
    assert sp.claim(check) == []  # "later" still waits, untouched, in new/
    assert later.id in " ".join(names(sp, "new"))


def test_claim_follows_a_replaced_new_folder(sp: Spool, view: str, tmp_path: Path) -> None:
    old = env("@a.example")
    sp.publish(old)
    assert sp.claim(skip_contexts={"@a.example"}) == []
    sp.dir("new").rename(tmp_path / "old-new")
    sp.dir("new").mkdir()
    e = env("@b.example")
    Spool(sp.root, sp.logs).publish(e)
    assert [c.task.id for c in sp.claim(limit=5)] == [e.id]


def test_next_due_follows_deferred(sp: Spool, view: str) -> None:
    assert sp.next_due() is None
    other = Spool(sp.root, sp.logs)
    later, sooner = env("@a.example"), env("@b.example")
    other.publish(later, delay=600)
    assert abs((sp.next_due() or 0) - (time.time() + 600)) < 5
    other.publish(sooner, delay=60)
    assert abs((sp.next_due() or 0) - (time.time() + 60)) < 5
    assert other.promote_due(time.time() + 120) == 1
    assert abs((sp.next_due() or 0) - (time.time() + 600)) < 5
    assert sp.promote_due(time.time() + 1200) == 1
    assert sp.next_due() is None and sp.get(later.id).state == "new"


# -- finish, defer, retry, cancel --------------------------------------------------------

def test_finish_appends_an_end_event_and_moves_to_done(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    claim.append("start", attempt=1, pid=1, pgid=None)
    sp.finish(claim, "warning", exit=0, reason="finished with warnings", result={"k": 1})
    assert names(sp, "done") == [f"{e.id}.task"] and names(sp, "active") == []
    task = sp.get(e.id)
    assert task.status is Status.WARNING and task.status.code == 3
    assert task.result == {"k": 1}
    doc = task.to_json()
    assert doc["status"] == "warning" and doc["finished"] and doc["started"]
    [attempt] = doc["attempts"]
    assert attempt["outcome"] == "warning" and attempt["exit_code"] == 0
    with open(sp.dir("done") / f"{e.id}.task", "rb") as fh:
        lines = fh.read().splitlines()
    assert [json.loads(x)["event"] for x in lines[1:]] == ["start", "end"]


def test_defer_queues_again_after_the_delay(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    claim.append("start", attempt=1)
    sp.defer(claim, 30, exit=75, reason="asked to be tried again")
    [name] = names(sp, "deferred")
    assert name.endswith(f".4{e.id}.task")
    task = sp.get(e.id)
    assert task.status is Status.QUEUED and task.attempt_count == 1
    assert [ev["event"] for ev in task.events] == ["start", "end", "defer"]
    assert task.to_json()["due"]
    assert sp.claim() == []
    assert sp.promote_due(now=time.time() + 31) == 1
    [again] = sp.claim()
    assert again.task.id == e.id
    again.release()


def test_backoff_grows_and_has_jitter() -> None:
    p = Policy(5, True, 10.0, 100.0)
    import random

    rng = random.Random(1)
    for attempts, ceiling in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)):
        values = {backoff(p, attempts, rng) for _ in range(20)}
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert len(values) > 1


def test_retry_requeues_a_finished_task_under_the_same_id(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    claim.append("start", attempt=1)
    sp.finish(claim, "error", exit=1, reason="exited with status 1")
    task = sp.retry(e.id)
    assert task.id == e.id and task.status is Status.QUEUED and task.attempt_count == 0
    assert names(sp, "new") == [f"4{e.id}.task"] and names(sp, "done") == []
    [claim] = sp.claim()
    claim.append("start", attempt=1)
    sp.finish(claim, "success", exit=0)
    task = sp.get(e.id)
    assert [a.outcome for a in task.attempts] == ["error", "success"]
    assert task.status is Status.SUCCESS
    with pytest.raises(NotFound):
        sp.retry(new_id())


def test_retry_refuses_a_queued_or_running_task(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    with pytest.raises(Conflict):
        sp.retry(e.id)
    [claim] = sp.claim()
    with pytest.raises(Conflict):
        sp.retry(e.id)
    claim.release()


def test_cancel_queued_never_runs(sp: Spool) -> None:
    e, d = env(), env("@b.example")
    sp.publish(e)
    sp.publish(d, delay=600)
    for task_id in (e.id, d.id):
        task = sp.cancel_queued(task_id)
        assert task is not None and task.status is Status.CANCELLED
    assert sp.claim() == [] and sp.promote_due(now=time.time() + 700) == 0
    assert sorted(names(sp, "done")) == sorted([f"{e.id}.task", f"{d.id}.task"])


def test_cancel_queued_is_none_for_a_running_task(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    assert sp.cancel_queued(e.id) is None
    task = sp.request_cancel(e.id)
    assert task.cancel_requested and task.status is Status.PROCESSING
    claim.release()


def test_get_refuses_malformed_and_unknown_ids(sp: Spool) -> None:
    with pytest.raises(InvalidInput):
        sp.get("../../etc/passwd")
    with pytest.raises(NotFound):
        sp.get(new_id())


def test_a_torn_last_line_is_ignored(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    claim.append("start", attempt=1)
    os.write(claim.fd, b'{"event":"end","outco')
    task = claim.reload()
    assert [ev["event"] for ev in task.events] == ["start"]
    claim.release()


# -- sweep ------------------------------------------------------------------------------

def crashed(sp: Spool, started: bool, context: str = "@a.example",
            attempts: int = 1) -> str:
    """A task whose owner died: claimed (and maybe started), then its fds closed."""
    e = env(context)
    sp.publish(e)
    [claim] = sp.claim()
    if started:
        for n in range(1, attempts + 1):
            claim.append("start", attempt=n, pid=2 ** 22 + 1, pgid=2 ** 22 + 1,
                         pgid_start=1, worker=2 ** 22 + 2)
            if n < attempts:
                claim.append("end", attempt=n, outcome="lost", reason="earlier")
    claim.release()  # the kernel drops both locks when the owner dies
    return e.id


def test_sweep_requeues_a_claim_that_never_started_without_counting_it(sp: Spool) -> None:
    task_id = crashed(sp, started=False)
    notes = sp.sweep(rerun())
    assert len(notes) == 1 and "never started" in notes[0]
    assert sp.get(task_id).state == "new"
    assert sp.get(task_id).attempts == []


def test_sweep_defers_a_lost_run_with_the_reason(sp: Spool) -> None:
    task_id = crashed(sp, started=True)
    [note] = sp.sweep(rerun(base=600))
    assert task_id in note
    task = sp.get(task_id)
    assert task.state == "deferred" and task.due and task.due > time.time() + 250
    [attempt] = task.attempts
    assert attempt.outcome == "lost" and "died" in attempt.reason and attempt.finished


def test_sweep_ends_a_lost_run_in_error_without_rerun_on_loss(sp: Spool) -> None:
    task_id = crashed(sp, started=True)
    sp.sweep(rerun(rerun_on_loss=False))
    task = sp.get(task_id)
    assert task.status is Status.ERROR and task.state == "done"
    assert "died" in task.reason and task.attempts[-1].outcome == "lost"


def test_sweep_ends_a_lost_run_in_error_after_the_last_attempt(sp: Spool) -> None:
    task_id = crashed(sp, started=True, attempts=2)
    sp.sweep(rerun(max_attempts=2))
    task = sp.get(task_id)
    assert task.status is Status.ERROR
    assert "no attempts left" in task.reason
    assert [a.outcome for a in task.attempts] == ["lost", "lost"]


def test_sweep_finishes_the_move_of_a_task_that_ended(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    claim.append("start", attempt=1)
    claim.append("end", attempt=1, outcome="success", exit=0, reason="", result={})
    claim.release()  # died between the end event and the rename
    sp.sweep(rerun())
    task = sp.get(e.id)
    assert task.status is Status.SUCCESS and [a.outcome for a in task.attempts] == ["success"]


def test_sweep_of_a_cancelled_lost_run_ends_cancelled(sp: Spool) -> None:
    e = env()
    sp.publish(e)
    [claim] = sp.claim()
    claim.append("start", attempt=1)
    sp.request_cancel(e.id)
    claim.release()
    sp.sweep(rerun())
    assert sp.get(e.id).status is Status.CANCELLED


def test_sweep_promotes_due_tasks_and_drops_stale_temp_files(sp: Spool) -> None:
    e = env()
    sp.publish(e, delay=5)
    stale, fresh = sp.dir("tmp") / ".old.tmp", sp.dir("tmp") / ".fresh.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    sp.sweep(rerun(), now=time.time() + 10)
    assert sp.get(e.id).state == "new"
    assert os.listdir(sp.dir("tmp")) == [".fresh.tmp"]


def test_publish_claimed_is_locked_before_it_is_visible(sp: Spool) -> None:
    e = env()
    claim = sp.publish_claimed(e, wait=False)
    assert claim.path.parent == sp.dir("active")
    assert not lock_is_free(claim.path)
    assert Spool(sp.root, sp.logs).sweep(rerun()) == []
    assert sp.context_busy("@a.example")
    with pytest.raises(BlockingIOError):
        Spool(sp.root, sp.logs).publish_claimed(env(), wait=False)
    sp.finish(claim, "success", exit=0)
    assert not sp.context_busy("@a.example")


def test_events_are_json_lines_with_utc_times() -> None:
    line = encode_event("start", attempt=1)
    doc = json.loads(line)
    assert line.endswith(b"\n") and doc["event"] == "start" and doc["at"].endswith("Z")


def test_claims_come_from_a_view_of_new_that_a_sweep_lists_again(sp: Spool) -> None:
    """Claims read new/ through a view kept up to date by inotify, so their cost does not
    grow with the queue; a name the view missed (a lost event) is found at the next
    sweep, which lists the folder again."""
    first, _ = sp.publish(env("@a.example"))
    second, _ = sp.publish(env("@b.example"))
    [claim] = sp.claim(limit=1)
    assert claim.task.id == first
    listing = sp._listings["new"]
    assert listing.broken is False  # inotify: the view is in use
    # forget the second name, as if its event had been lost
    [name] = [n for n in listing.present if second in n]
    listing.discard(name)
    assert sp.claim(limit=1) == []
    sp.finish(claim, "success", exit=0, reason="", result={})
    sp.sweep(rerun())
    [again] = sp.claim(limit=1)
    assert again.task.id == second
    again.release()


def test_a_cancel_as_its_deferred_task_falls_due_records_one_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A promotion (deferred/ to new/) takes no lock: one that moves the file while a
    cancel, holding its lock, has written its end, is followed by the cancel's move to
    done/; the end is not written a second time, and nothing is left queued."""
    spool = Spool(tmp_path / "spool", tmp_path / "logs")
    spool.ensure()
    promoter = Spool(tmp_path / "spool", tmp_path / "logs")
    env = Envelope(new_id(), "verify", "@a.example", {}, {}, 5, utc_iso())
    spool.publish(env, delay=3600)
    real = Spool._note_end

    def promoted_meanwhile(self: Spool, *args: object) -> None:
        real(self, *args)  # type: ignore[arg-type]
        assert promoter.promote_due(now=time.time() + 7200) == 1

    monkeypatch.setattr(Spool, "_note_end", promoted_meanwhile)
    done = spool.cancel_queued(env.id)
    monkeypatch.undo()
    assert done is not None and done.status is Status.CANCELLED
    assert [e["event"] for e in done.events].count("end") == 1
    assert [t.id for t in spool.tasks()] == [env.id] and spool.claim() == []


def test_a_cancel_cut_short_before_its_move_is_moved_on_not_recorded_again(
        tmp_path: Path) -> None:
    """A ``task cancel`` killed between its write (the cancel and its end, in one) and
    the move to done/ leaves a queued file that ends with that end: the next claim, or
    the next cancel, moves it on; neither runs it, nor writes a second end."""
    spool = Spool(tmp_path / "spool", tmp_path / "logs")
    spool.ensure()
    ids = []
    for context in ("@a.example", "@b.example"):
        env = Envelope(new_id(), "verify", context, {}, {}, 5, utc_iso())
        spool.publish(env)
        [name] = [n for n in os.listdir(tmp_path / "spool" / "new") if env.id in n]
        with open(tmp_path / "spool" / "new" / name, "ab") as fh:  # as the kill leaves it
            fh.write(encode_event("cancel") + encode_event(
                "end", outcome="cancelled", reason="cancelled before it started"))
        ids.append(env.id)
    done = spool.cancel_queued(ids[0])
    assert done is not None and done.status is Status.CANCELLED
    assert spool.claim(limit=2) == []
    for task_id in ids:
        task = spool.get(task_id)
        assert task.status is Status.CANCELLED and task.state == "done"
        assert [e["event"] for e in task.events].count("end") == 1, task.events
