"""The spool under random interleavings of publish, claim (by several Spool objects on one
folder, each with its own open files, so their flocks conflict as between processes),
start, complete, retry, fail, crash, sweep and promote.

Invariants after every step:
- no task is lost: every published id is in exactly one of new/, deferred/, active/, done/;
- no task is claimed twice while its owner lives, and every live claim lies in active/;
- at most one task per context is held at a time;
- a claim pass that could take a task does take one (the queue never gets stuck);
- a finished task ends with a final ``end`` event.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from taskhelpers import QUEUE_FOLDERS

from hostctl.queues.model import Envelope, Policy, Task, new_id
from hostctl.queues.spool import Claim, Spool, _id_of
from hostctl.times import utc_iso

CONTEXTS = ("@a.example", "@b.example", "@c.example")
FINAL = {"success", "warning", "error", "cancelled", "lost", "retry"}


def policy(env: Envelope) -> Policy:
    # tasks on @c must not simply run again after a lost worker; two attempts at most
    return Policy(max_attempts=2, rerun_on_loss=env.context != "@c.example",
                  backoff_base=0.0, backoff_max=0.0)


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="hostctl-spool-"))
        self.spools = [Spool(self.tmp / "spool", self.tmp / "logs") for _ in range(3)]
        self.envelopes: dict[str, Envelope] = {}
        self.live: dict[str, tuple[Claim, int]] = {}
        self.serial = 0

    def teardown(self) -> None:
        for claim, _ in self.live.values():
            claim.release()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------

    def where(self) -> dict[str, list[str]]:
        """Every queue folder each id lies in."""
        found: dict[str, list[str]] = {}
        root = self.tmp / "spool"
        for folder in QUEUE_FOLDERS:
            for name in os.listdir(root / folder) if (root / folder).exists() else ():
                task_id = _id_of(name)
                assert task_id is not None, f"a stray name {folder}/{name}"
                found.setdefault(task_id, []).append(folder)
        return found

    def live_contexts(self) -> set[str]:
        return {c.task.envelope.context for c, _ in self.live.values()}

    def take(self, claims: list[Claim], owner: int) -> list[Claim]:
        busy = self.live_contexts()
        seen: set[str] = set()
        for claim in claims:
            task_id = claim.task.id
            assert task_id not in self.live, f"task {task_id} claimed twice"
            ctx = claim.task.envelope.context
            assert ctx not in busy and ctx not in seen, f"two tasks at once on {ctx}"
            seen.add(ctx)
            assert claim.path.parent.name == "active" and claim.path.exists()
            self.live[task_id] = (claim, owner)
        return claims

    # -- rules ------------------------------------------------------------------------

    @rule(context=st.sampled_from(CONTEXTS), priority=st.integers(0, 9),
          delay=st.sampled_from([0.0, 0.0, 0.0, 3600.0]), spool=st.integers(0, 2))
    def publish(self, context: str, priority: int, delay: float, spool: int) -> None:
        self.serial += 1
        env = Envelope(new_id(), "note", context, {"n": str(self.serial)}, {}, priority,
                       utc_iso())
        task_id, created = self.spools[spool].publish(env, delay=delay)
        assert (task_id, created) == (env.id, True)
        self.envelopes[task_id] = env

    @precondition(lambda self: self.envelopes)
    @rule(data=st.data(), spool=st.integers(0, 2))
    def publish_identical(self, data: st.DataObject, spool: int) -> None:
        original = self.envelopes[data.draw(st.sampled_from(sorted(self.envelopes)))]
        env = Envelope(new_id(), original.type, original.context, dict(original.options), {},
                       original.priority, utc_iso())
        task_id, created = self.spools[spool].publish(env)
        if created:
            assert task_id == env.id
            self.envelopes[task_id] = env
        else:
            # an identical task that is still queued was returned instead
            assert task_id in self.envelopes
            assert self.envelopes[task_id].dedup_key() == env.dedup_key()
            assert self.where()[task_id][0] in ("new", "deferred")

    @rule(spool=st.integers(0, 2), limit=st.integers(1, 3),
          skip=st.sets(st.sampled_from(CONTEXTS), max_size=2))
    def claim(self, spool: int, limit: int, skip: set[str]) -> None:
        """A claim takes the ready tasks in run order (priority, then age), the first of
        each context that is neither held nor skipped, up to ``limit``: the same whether
        tasks waited for their context in earlier claims (parked) or not."""
        new = self.tmp / "spool" / "new"
        names = sorted(os.listdir(new)) if new.exists() else []
        busy = self.live_contexts() | skip
        expected: list[str] = []
        for name in names:
            task_id = _id_of(name)
            assert task_id is not None
            context = self.envelopes[task_id].context
            if len(expected) < limit and context not in busy:
                expected.append(task_id)
                busy.add(context)
        got = self.take(self.spools[spool].claim(limit=limit, skip_contexts=set(skip)),
                        spool)
        assert [c.task.id for c in got] == expected

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        claim, _ = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        task = claim.reload()
        if not _running(task):
            claim.append("start", attempt=task.attempt_count + 1, worker=os.getpid())

    @precondition(lambda self: self.live)
    @rule(data=st.data(),
          how=st.sampled_from(["success", "error", "retry", "retry_later", "crash"]))
    def end(self, data: st.DataObject, how: str) -> None:
        claim, owner = self.live.pop(data.draw(st.sampled_from(sorted(self.live))))
        spool = self.spools[owner]
        if how == "crash":
            claim.release()  # the owner dies: the kernel closes its files, locks go
        elif how in ("retry", "retry_later"):  # exit 75: deferred with backoff
            spool.defer(claim, 0.0 if how == "retry" else 3600.0, exit=75,
                        reason="asked to be tried again")
        else:
            spool.finish(claim, how, exit=0 if how == "success" else 1, reason="")
        assert claim.released

    @rule(spool=st.integers(0, 2))
    def sweep(self, spool: int) -> None:
        before = {i for i, f in self.where().items() if f == ["active"]}
        self.spools[spool].sweep(policy)
        after = self.where()
        for task_id in before:
            if task_id in self.live:
                assert after[task_id] == ["active"], "the sweep took a live claim"
            else:
                assert after[task_id] != ["active"], "the sweep left a dead claim"

    @rule(spool=st.integers(0, 2))
    def promote_all_due(self, spool: int) -> None:
        self.spools[spool].promote_due(now=time.time() + 7200)
        stuck = [i for i, f in self.where().items() if f == ["deferred"]]
        assert not stuck, f"deferred tasks not promoted when due: {stuck}"

    @precondition(lambda self: self.envelopes)
    @rule(data=st.data(), spool=st.integers(0, 2))
    def retry_or_cancel(self, data: st.DataObject, spool: int) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.envelopes)))
        folder = self.where()[task_id][0]
        sp = self.spools[spool]
        if folder == "done":
            task = sp.retry(task_id)
            assert task.state == "new" and task.attempt_count == 0
        elif folder in ("new", "deferred"):
            task = sp.cancel_queued(task_id)
            assert task is not None and task.status.label == "cancelled"

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def no_task_lost_or_doubled(self) -> None:
        where = self.where()
        assert set(where) == set(self.envelopes), "a task appeared or vanished"
        for task_id, folders in where.items():
            assert len(folders) == 1, f"task {task_id} is in {folders}"
        quarantine = self.tmp / "spool" / "quarantine"
        assert not quarantine.exists() or os.listdir(quarantine) == []

    @invariant()
    def live_claims_are_held_in_active(self) -> None:
        where = self.where()
        contexts = [c.task.envelope.context for c, _ in self.live.values()]
        assert len(contexts) == len(set(contexts))
        for task_id, (claim, _) in self.live.items():
            assert where[task_id] == ["active"] and claim.path.exists()

    @invariant()
    def finished_tasks_have_a_final_end(self) -> None:
        for task in self.spools[0].tasks_in(("done",)):
            end = task.last("end")
            assert end is not None and end.get("outcome") in FINAL
            assert task.status.finished


def _running(task: Task) -> bool:
    start = task.last("start")
    if start is None:
        return False
    tail = task.events[task.events.index(start):]
    return not any(ev.get("event") == "end" for ev in tail)


SpoolMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSpoolStateful = SpoolMachine.TestCase
