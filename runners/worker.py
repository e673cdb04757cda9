"""The worker: claims tasks, runs each in a child, streams its output, records the end.

One loop, written as :meth:`Worker.step` (claim and start what fits) plus
:meth:`Worker.wait` (block on the children's pipes and exit notifications, enforce
timeouts) and :meth:`Worker.run` (repeat until drained or told to stop). The worker is
single-threaded; every child gets its own session, so a timeout or a cancel reaches the
whole tree, background jobs in process groups of their own included (TERM, then KILL
after the grace period; what is left of a stopped run is killed before its leader is
reaped: see src/hostctl/process.py).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from hostctl.config import Config
from hostctl.contexts.store import ContextStore
from hostctl.errors import HostctlError, Unreachable
from hostctl.paths import Paths
from hostctl.process import boot_ticks, host_name, signal_session
from hostctl.provision.registry import Registry
from hostctl.provision.runner import (
    Verdict,
    judge,
    launch,
    prepare,
    read_result,
    secret_values,
)
from hostctl.provision.secrets import SecretStore
from hostctl.provision.secretstores import open_secrets
from hostctl.queues.backend import LeaseLost, QueueBackend, TaskClaim, TaskLog
from hostctl.queues.model import Policy, backoff
from hostctl.queues.spool import Spool
from hostctl.runners.home import Home, open_store, retry_policy
from hostctl.runners.notify import Deliveries, Held, Notices
from hostctl.text import Redactor, printable
from hostctl.times import utc_iso

log = logging.getLogger("hostctl")
#: of one line of a task's output, at most this much is kept in its log
MAX_LINE = 64 * 1024
#: no room on the disk for a task's log or its start: wait this long before claiming again
NO_ROOM_WAIT = 10.0
#: held back by the load: look at it again this often (nothing else may wake the daemon)
LOAD_RECHECK = 5.0
#: a running task's owner tells the queue it lives this often (a lease, for a backend
#: that has no locks; the spool's claims are flocks, and it only touches the file)
HEARTBEAT_EVERY = 30.0
#: a task claimed ahead (see Worker.prefetch) is given back if not started within this
HOLD_AHEAD = 0.05
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
#: tests only: the worker kills itself right after a spawn, before it records the start
_DIE_AFTER_SPAWN = os.environ.get("HOSTCTL_TEST_DIE_AFTER_SPAWN") == "1"


def _start_failure(exc: HostctlError | OSError) -> str:
    return exc.message if isinstance(exc, HostctlError) else f"cannot start: {exc}"


def redact(value: Any, secrets: Redactor) -> Any:
    """``value`` (a task's structured result) with every secret replaced, as in its log."""
    if isinstance(value, str):
        return secrets.text(value)
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


@dataclass
class Running:
    claim: TaskClaim
    pid: int
    out_fd: int
    pidfd: int
    log: TaskLog
    policy: Policy
    result_path: str
    deadline: float
    timeout: float
    started: float
    attempt: int
    serial: int  # the attempt's number among all the task's (a manual retry goes on)
    buffer: bytes = b""
    exit_status: int | None = None
    out_open: bool = True
    term_at: float | None = None
    timed_out: float = 0.0
    cancelled: bool = False
    interrupted: str = ""  # the worker itself was stopped: run it again later
    secrets: Redactor = field(default_factory=lambda: Redactor(()))  # out of the log
    cut: int = 0  # bytes of the current output line past MAX_LINE, not kept
    log_error: str = ""  # the log could not be written: the task ends in error
    beat_at: float = 0.0  # the last heartbeat to the queue (clock)
    said: str = ""  # the last line it printed (redacted): what failed, when it fails
    ended_at: float | None = None  # (clock) its child was seen to exit, not reaped yet

    @property
    def context(self) -> str:
        return self.claim.task.envelope.context


@dataclass
class Summary:
    started: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    last_status: str = ""

    def count(self, outcome: str) -> None:
        self.finished[outcome] = self.finished.get(outcome, 0) + 1
        self.last_status = outcome


class Worker:
    def __init__(
        self,
        paths: Paths,
        config: Config,
        registry: Registry,
        *,
        concurrency: int | None = None,
        echo: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        queue: QueueBackend | None = None,
        store: ContextStore | None = None,
        secrets: SecretStore | None = None,
    ) -> None:
        self.paths = paths
        self.config = config
        self.registry = registry
        # the home's own, when it has them: one connection each in a cluster, and the
        # contexts its queue reads with a claim are known to this store (see reading())
        self.store = store if store is not None else open_store(paths, config)
        self.secrets = secrets if secrets is not None else open_secrets(
            paths, config.cluster.dsn)
        # the only way to the queue (see backend.py); its own Spool, so that its view of
        # the spool's folders is kept up to date by this worker alone
        self.queue: QueueBackend = queue if queue is not None else Spool(
            paths.spool, paths.logs, config.spool.allow_network_filesystem)
        self.concurrency = concurrency or config.worker.concurrency
        self.echo = echo
        self.clock = clock
        self.running: dict[int, Running] = {}
        self.selector = selectors.DefaultSelector()
        self.summary = Summary()
        self._check = registry.check_envelope(self.store)
        self.policy = retry_policy(registry)
        registry.load_functions()  # once here, not in every task's child
        self.load_note = False
        self.no_room_until = 0.0  # the disk was full: claim nothing before this (clock)
        # Claim one task ahead while tasks run (``prefetch``): when a child ends, the next
        # one is spawned before the ended one's end is recorded (and before it is
        # reaped), and the claim after it is made while the new child runs, so the
        # bookkeeping overlaps the tasks instead of coming between them. A task claimed
        # ahead holds its lock (and its context's) but has no ``start``; it is started
        # only while the worker is ``accepting`` and given back (no attempt counted) when
        # it stops; if the worker dies, the sweep queues it again as "claimed but never
        # started". It is held at most HOLD_AHEAD seconds: a long task must not keep the
        # next one from another, idle worker; so none is claimed ahead while every
        # running task looks set to run longer than that (the last attempt of its type
        # did) but shortly before one should end, as long as its type's last attempt
        # ran (the loop wakes for it); a task that ends before anything was claimed
        # ahead has the next one claimed as it ends.
        self.prefetch = False
        self.accepting = True
        #: whether a task may be claimed now, between two passes of the loop that runs
        #: this worker (not stopping, the queue not paused): asked when a child ends
        self.may_claim: Callable[[], bool] = lambda: True
        #: whether submissions may be judged now (the daemon: not while a change of its
        #: configuration settles)
        self.may_admit: Callable[[], bool] = lambda: True
        #: how long the last attempt of each task type ran (seconds, by this worker)
        self.took: dict[str, float] = {}
        # attempts ended and recorded, whose log line and count wait until the next task
        # has started (see report_ends): on a busy context the next task can only be
        # claimed once the last one's end is recorded, and what follows the record need
        # not come before it
        self._ends: list[tuple[TaskClaim, str, str, float | None]] = []
        self.held: list[TaskClaim] = []
        self.held_until = 0.0  # (clock) a task claimed ahead is given back after this
        self.ahead_given_back = False  # ... and none is claimed ahead until a task ends
        #: the webhooks' deliveries (runners/notify.py), the notices of the ends this
        #: worker records (and its sweeps), and who is told of a new delivery
        self.deliveries = Deliveries(paths.spool / "notify")
        self.on_delivery: Callable[[], object] = lambda: None
        self.notices = Notices(self.deliveries, lambda: self.config,
                               lambda task_id: self.queue.get(task_id),
                               lambda: self.on_delivery(), paths.config_file)

    @classmethod
    def of(cls, home: Home, concurrency: int | None = None,
           echo: TextIO | None = None) -> Worker:
        """A worker for ``home``'s queue, with its settings and task types."""
        home.paths.ensure_home()
        return cls(home.paths, home.config, home.registry, concurrency=concurrency,
                   echo=echo, queue=home.open_queue(), store=home.store,
                   secrets=home.secrets)

    def reconfigure(self, config: Config, registry: Registry,
                    keep_concurrency: bool = False) -> None:
        """Take a reloaded configuration: its task types, their checks, its settings
        (the concurrency too, unless the command line fixed it), and, when the home joined
        or left a cluster, its stores."""
        if config.cluster.dsn != self.config.cluster.dsn:
            self.store = open_store(self.paths, config)
            self.secrets = open_secrets(self.paths, config.cluster.dsn)
        self.config = config
        self.registry = registry
        self._check = registry.check_envelope(self.store)
        self.policy = retry_policy(registry)
        if not keep_concurrency:
            self.concurrency = config.worker.concurrency

    # -- the loop ---------------------------------------------------------------------

    def sweep(self) -> None:
        """Recover what dead workers left: their tasks (the queue's sweep, whose ends get
        their notices), then the notices' holds (runners/notify.py); admit submissions."""
        for note in self.queue.sweep(self.policy, ends=self.notices):
            log.warning("%s", note)
        self.notices.recover()
        self.admit()

    def admit(self) -> None:
        if not self.may_admit():
            return
        for note in self.queue.admit(self._check):
            log.info("%s", note)

    def step(self) -> int:
        """Claim and start as many ready tasks as there are free slots (a task claimed
        ahead first); then, with ``prefetch``, claim one ahead."""
        self.accepting = True
        free = self.concurrency - len(self.running)
        if free <= 0:
            self._claim_ahead()
            return 0
        if self.clock() < self.no_room_until or self.overloaded():
            self.hold_off()
            return 0
        self.queue.promote_due()
        # a task's check when claimed and its preparation read its contexts once
        with self.store.reading():
            started = self._start_held(free)
            free -= started
            claims = (self.queue.claim(self._check, limit=free, skip_contexts=self._busy())
                      if free > 0 else [])
            for claim in claims:
                if self.clock() < self.no_room_until:  # the disk filled up: give them back
                    self._give_back(claim)
                    continue
                started += self.start(claim, queued=True)
        self._claim_ahead()
        self.report_ends()
        return started

    def hold_off(self) -> None:
        """Start nothing more until the next :meth:`step`: a stopping or paused runner,
        a full disk, the load. Tasks claimed ahead go back to the queue."""
        self.accepting = False
        try:
            self._give_back_held()
            self.queue.hold()
        finally:
            self.report_ends()

    def _give_back_held(self) -> None:
        while self.held:
            self._give_back(self.held.pop())

    def _busy(self) -> set[str]:
        return {r.context for r in self.running.values()} | {
            c.task.envelope.context for c in self.held}

    def _start_held(self, free: int) -> int:
        started = 0
        while self.held and started < free and self.accepting:
            claim = self.held.pop(0)
            try:
                cancelled = claim.grew() and claim.reload().cancel_requested
            except HostctlError:  # cannot be read now: back to the queue, for later
                self._give_back(claim)
                continue
            if cancelled:
                try:  # cancelled while claimed ahead: it never starts (its notices held)
                    with self.notices.ending(claim.task, "cancelled"):
                        self.queue.finish(claim, "cancelled",
                                          reason="cancelled before it started")
                except (OSError, HostctlError):
                    claim.release()
                continue
            started += self.start(claim, queued=True)
        return started

    def _claim_ahead(self) -> None:
        if (not self.prefetch or not self.accepting or self.held
                or len(self.running) < self.concurrency  # a slot free: none to hold
                or self.ahead_given_back or self.clock() < self.no_room_until
                or not self._ends_soon() or self.overloaded()):
            return
        try:
            self.held = self.queue.claim(self._check, limit=1, skip_contexts=self._busy(),
                                         ahead=True)
        except HostctlError as exc:  # the queue cannot be reached now: the next step
            log.warning("cannot claim a task ahead: %s", exc)
            return
        self.held_until = self.clock() + HOLD_AHEAD

    def _expected_end(self, run: Running) -> float:
        """When the run should end (clock): as long after its start as the last attempt
        of its type ran (by this worker); at its start for a type not run yet."""
        return run.started + self.took.get(run.claim.task.envelope.type, 0.0)

    def _ends_soon(self) -> bool:
        """May a running task end within HOLD_AHEAD?"""
        soon = self.clock() + HOLD_AHEAD
        return any(self._expected_end(r) <= soon for r in self.running.values())

    def _ahead_due(self, now: float) -> float:
        """When a task should be claimed ahead (prefetch): half of HOLD_AHEAD before a
        running task is expected to end, as long as the last attempt of its type ran;
        infinity when no such moment is to come."""
        if (not self.prefetch or not self.accepting or self.ahead_given_back
                or len(self.running) < self.concurrency):
            return float("inf")
        return min((due for due in (self._expected_end(r) - HOLD_AHEAD / 2
                                    for r in self.running.values()
                                    if r.claim.task.envelope.type in self.took)
                    if due > now), default=float("inf"))

    def _start_next(self) -> None:
        """A child ended (not reaped yet, so that its pid and session stay its own): the
        next task starts in its slot first (see prefetch), the one claimed ahead or else
        one claimed now; nothing while the runner may not claim (the one claimed ahead is
        then the next pass's to start or give back). The queue out of reach: the loop's
        next pass claims."""
        if not self.accepting or not self.may_claim():
            return
        free = self.concurrency - len(self.running) + 1
        with self.store.reading():
            free -= self._start_held(free)
            if free <= 0 or self.clock() < self.no_room_until or self.overloaded():
                return
            try:
                claims = self.queue.claim(self._check, limit=free,
                                          skip_contexts=self._busy())
            except HostctlError as exc:
                log.debug("no task claimed as one ended: %s", exc)
                return
            for claim in claims:
                if self.clock() < self.no_room_until:  # the disk filled up: give it back
                    self._give_back(claim)
                    continue
                self.start(claim, queued=True)

    def _expire_held(self) -> None:
        if self.held and self.clock() >= self.held_until:
            self.ahead_given_back = True
            self._give_back_held()

    def wait(self, timeout: float | None) -> None:
        """Handle output and exits for up to ``timeout`` seconds; enforce deadlines."""
        self.report_ends()
        if self.running:
            now = self.clock()
            soonest = min(min(r.term_at + self.config.worker.kill_grace if r.term_at
                              else r.deadline, r.beat_at + HEARTBEAT_EVERY)
                          for r in self.running.values())
            if self.held:
                soonest = min(soonest, self.held_until)
            else:
                soonest = min(soonest, self._ahead_due(now))
            limit = max(0.0, soonest - now)
            timeout = limit if timeout is None else min(timeout, limit)
        # held back by a full disk or by the load: no event says when that ends, so look
        # again in a while
        recheck = (max(0.0, self.no_room_until - self.clock())
                   if self.no_room_until > self.clock() else
                   LOAD_RECHECK if self.load_note else None)
        if recheck is not None:
            timeout = recheck if timeout is None else min(timeout, recheck)
        for key, _ in self.selector.select(timeout):
            kind, target = key.data
            if kind == "wake":  # a watched folder changed, or a signal came
                target()
                continue
            if kind == "out":
                if not target.out_open:  # closed by a reap earlier in this batch
                    continue
                self._read_output(target)
            else:
                if target.exit_status is not None:
                    continue
                if self.prefetch and target.ended_at is None and _exited(target):
                    target.ended_at = self.clock()
                    try:  # the next task first, then this one's bookkeeping
                        self._start_next()
                    except (OSError, HostctlError) as exc:  # this one is recorded still
                        log.error("no task started as task %s ended: %s",
                                  target.claim.task.id, exc)
                self._reap(target)
            if target.exit_status is not None and not target.out_open:
                self._complete(target)
                self.ahead_given_back = False
                self._claim_ahead()
        self._expire_held()
        self._enforce_deadlines()
        self._heartbeats()

    def _heartbeats(self) -> None:
        """Tell the queue that this worker still runs its tasks (see backend.py). A claim
        that is no longer this worker's (LeaseLost) has its run killed at once: another
        host may run the task now. A heartbeat the queue cannot take now is tried again
        at the next one."""
        now = self.clock()
        for run in self.running.values():
            if now >= run.beat_at + HEARTBEAT_EVERY:
                run.beat_at = now
                try:
                    self.queue.heartbeat(run.claim)
                except LeaseLost as exc:
                    self._lost_claim(run, exc.message)
                except (HostctlError, OSError) as exc:
                    log.warning("task %s: heartbeat not recorded: %s", run.claim.task.id,
                                exc)

    def _lost_claim(self, run: Running, why: str) -> None:
        """Stop a run whose claim is gone: KILL now, record nothing (it is not ours)."""
        if run.exit_status is not None:
            return
        log.error("task %s: %s; its run is stopped", run.claim.task.id, why)
        run.interrupted = why
        run.term_at = self.clock() - self.config.worker.kill_grace
        signal_session(run.pid, signal.SIGKILL)

    def check_cancels(self) -> None:
        """Stop the runs a ``task cancel`` asked to stop (from any host: the queue says
        so when it changes): TERM now, KILL after the grace period."""
        for run in list(self.running.values()):
            if run.cancelled or run.term_at is not None or run.exit_status is not None:
                continue
            try:
                asked = run.claim.grew() and run.claim.reload().cancel_requested
            except (HostctlError, OSError):
                continue
            if asked:
                run.cancelled = True
                self._run_log(run, "--- hostctl: cancel requested; sending TERM\n")
                self._terminate(run)

    def overloaded(self) -> bool:
        """Is the machine too busy to start another task? (``[worker] max_load``)"""
        limit = self.config.worker.max_load
        if limit <= 0:
            return False
        load = os.getloadavg()[0]
        cpus = os.cpu_count() or 1
        busy = load > limit * cpus
        if busy and not self.load_note:
            log.warning("load %.2f is above %g x %d CPUs: queued tasks wait", load, limit, cpus)
        self.load_note = busy
        return busy

    def watch(self, fileobj: int | _HasFileno, callback: Callable[[], object]) -> None:
        """Wake ``wait`` when ``fileobj`` is readable, and call ``callback``."""
        self.selector.register(fileobj, selectors.EVENT_READ, ("wake", callback))

    def run(self, once: bool = True, should_stop: Callable[[], bool] = lambda: False) -> Summary:
        """Sweep, then run tasks until none is ready (``once``) or until told to stop."""
        self.queue.ensure()
        self.sweep()
        prefetch, self.prefetch = self.prefetch, True
        may_claim, self.may_claim = self.may_claim, lambda: not should_stop()
        try:
            while True:
                stopping = should_stop()
                if stopping:
                    self.hold_off()
                started = 0 if stopping else self.step()
                if not self.running and not self.held and (
                        stopping or (once and started == 0)):
                    return self.summary
                self.wait(None if self.running else 0.5)
        finally:
            self.prefetch, self.may_claim = prefetch, may_claim
            self.hold_off()

    def run_claim(self, claim: TaskClaim) -> Summary:
        """Run one claimed task to its end (a foreground provision-TYPE)."""
        self.start(claim, queued=False)
        try:
            while self.running:
                try:
                    self.wait(None)
                except KeyboardInterrupt:  # Ctrl-C: stop the task, then report it
                    self.stop_all("interrupted")
        finally:
            self.report_ends()
        return self.summary

    # -- one task ---------------------------------------------------------------------

    def start(self, claim: TaskClaim, queued: bool = False) -> bool:
        """Start the claimed task's child; False if it was given back to the queue.

        A ``queued`` task that finds no room on the disk for its log or its start is
        given back (it has not run) and the worker claims nothing for a while; a
        foreground one ends in error."""
        env = claim.task.envelope
        attempt = claim.task.attempt_count + 1
        serial = len(claim.task.attempts) + 1
        result_path = self.queue.result_path(env)
        self.summary.started += 1
        task_log: TaskLog | None = None
        try:
            task_log = self.queue.open_log(env)
            _write(task_log, f"--- hostctl: attempt {attempt} of {env.type} on "
                              f"{env.context}, task {env.id}, {utc_iso()}\n")
        except OSError as exc:
            return self._cannot_write(claim, attempt, task_log, queued, exc, "log")
        try:
            prep = prepare(env, self.registry, self.store, self.paths, result_path)
            secrets = Redactor(secret_values(prep.context, self.store, self.secrets))
        except (HostctlError, OSError) as exc:
            if queued and isinstance(exc, Unreachable):
                # the cluster's database is away: the task has not run, it waits for it
                self._hold_back(claim, task_log, exc.message)
                return False
            self._fail_start(claim, attempt, task_log, _start_failure(exc))
            return True
        earliest = boot_ticks()
        try:
            # the intent, before anything of the task can run: a worker that dies between
            # the spawn and the `start` event leaves this, and the sweep stops whatever
            # was spawned before the task may run again (process.kill_spawned)
            claim.append("spawn", attempt=attempt, worker=os.getpid(), not_before=earliest,
                         host=host_name())
        except OSError as exc:
            return self._cannot_write(claim, attempt, task_log, queued, exc, "start")
        try:
            pid, out_fd = launch(prep, env, self.store, self.paths, result_path)
            latest = boot_ticks(up=True)
        except (HostctlError, OSError) as exc:
            self._fail_start(claim, attempt, task_log, _start_failure(exc))
            return True
        if _DIE_AFTER_SPAWN:  # tests only: the worst moment for a worker to die
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            claim.append("start", attempt=attempt, pid=pid, pgid=pid,
                         pgid_start=earliest, pgid_start_by=latest, worker=os.getpid(),
                         host=host_name())
        except OSError as exc:
            # the start cannot be recorded (a full disk): a child that runs unrecorded
            # could run twice, so stop it at once; the task has not started
            signal_session(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(out_fd)
            return self._cannot_write(claim, attempt, task_log, queued, exc, "start")
        self.queue.started(claim)
        timeout = self.registry.timeout(prep.ttype)
        now = self.clock()
        assert task_log is not None
        run = Running(claim, pid, out_fd, os.pidfd_open(pid), task_log,
                      self.policy(env), result_path, now + timeout, timeout, now,
                      attempt, serial, secrets=secrets, beat_at=now)
        os.set_blocking(out_fd, False)
        self.selector.register(out_fd, selectors.EVENT_READ, ("out", run))
        self.selector.register(run.pidfd, selectors.EVENT_READ, ("exit", run))
        self.running[pid] = run
        return True

    def _record(self, claim: TaskClaim, serial: int, outcome: str,
                record: Callable[[], object]) -> Held:
        """Record an attempt's end as ``outcome`` (``record``), its notices' holds made
        before it (runners/notify.py): a worker killed at any moment after the record
        leaves them to the next sweep."""
        held = self.notices.hold(claim.task.id, claim.task.envelope.type, serial, outcome)
        try:
            record()
        except (LeaseLost, OSError) as exc:
            if isinstance(exc, LeaseLost) or exc.errno == errno.ESTALE:
                # taken over: not recorded here; whoever took it records that end, and
                # writes its notices
                self.notices.withdraw(held)
            else:
                self.notices.release(held)  # recorded or not: the recovery finds out
            raise
        except BaseException:
            self.notices.release(held)
            raise
        return held

    def _ended(self, claim: TaskClaim, outcome: str, reason: str,
               seconds: float | None, held: Held) -> None:
        """An attempt's end is recorded (a retry and a loss included): its notices'
        holds become due deliveries at once; its line in hostctl.log and its count
        (``hostctl metrics``) follow once the next task has had its chance to start
        (:meth:`report_ends`)."""
        self.notices.complete(held)
        self._ends.append((claim, outcome, reason, seconds))

    def report_ends(self) -> None:
        """The log lines and counts of the attempts ended since the last call:
        at the end of :meth:`step`, before :meth:`wait` sleeps, and when the worker holds
        off or runs its last task."""
        while self._ends:
            self._report_end(*self._ends.pop(0))

    def _report_end(self, claim: TaskClaim, outcome: str, reason: str,
                    seconds: float | None) -> None:
        env = claim.task.envelope
        level = logging.INFO if outcome in ("success", "warning") else logging.WARNING
        log.log(level, "task %s (%s on %s) ended: %s%s", env.id, env.type, env.context,
                outcome, f": {printable(reason)}" if reason else "")
        try:
            self.queue.tally(env.type, outcome, seconds)
        except (OSError, HostctlError) as exc:  # a count is never worth a task
            log.warning("task %s: its end is not counted: %s", env.id, exc)

    def _cannot_write(self, claim: TaskClaim, attempt: int, task_log: TaskLog | None,
                      queued: bool,
                      exc: OSError, what: str) -> bool:
        """The task's log or its start could not be written before it ran: a queued task
        on a full disk is given back (False: it did not start), else it ends in error."""
        if queued and exc.errno in _NO_ROOM:
            self._no_room(claim, task_log, f"its {what}: {exc.strerror}")
            return False
        verb = "write the task's log" if what == "log" else "record the task's start"
        self._fail_start(claim, attempt, task_log, f"cannot {verb}: {exc.strerror or exc}")
        return True

    def _fail_start(self, claim: TaskClaim, attempt: int, task_log: TaskLog | None,
                    reason: str) -> None:
        if task_log is not None:
            with suppress(OSError):
                _write(task_log, f"--- hostctl: {reason}\n")
            task_log.close()
        serial = len(claim.task.attempts) + 1  # the task as claimed: before this start

        def record() -> None:
            claim.append("start", attempt=attempt, worker=os.getpid())
            self.queue.finish(claim, "error", exit=None, reason=reason, result={})

        try:
            held = self._record(claim, serial, "error", record)
        except (OSError, HostctlError) as exc:
            # e.g. a full disk: let go of the task; the next sweep finds it
            log.error("task %s: cannot record its end (%s): %s", claim.task.id, reason, exc)
            claim.release()
            self.summary.count("lost")
            return
        self.summary.count("error")
        self._ended(claim, "error", reason, None, held)

    def _no_room(self, claim: TaskClaim, task_log: TaskLog | None, what: str) -> None:
        """No room on the disk to start a queued task: give it back, claim nothing for a
        while (a dispatch exits, a daemon looks again later)."""
        self._hold_back(claim, task_log, f"no room on the disk for {what}")

    def _hold_back(self, claim: TaskClaim, task_log: TaskLog | None, why: str) -> None:
        """A queued task cannot start for a reason of this host's (a full disk, the
        cluster's database away): give it back, claim nothing for NO_ROOM_WAIT s."""
        if task_log is not None:
            with suppress(OSError):
                task_log.close()
        self.summary.started -= 1
        if self.clock() >= self.no_room_until:
            log.error("%s; task %s and the others stay queued (next try in %g s)", why,
                      claim.task.id, NO_ROOM_WAIT)
        self.no_room_until = self.clock() + NO_ROOM_WAIT
        self._give_back(claim)

    def _give_back(self, claim: TaskClaim) -> None:
        """Queue a claimed task that did not start again (no attempt counted)."""
        try:
            self.queue.requeue(claim)
        except (OSError, HostctlError):
            claim.release()  # left in active/: the next sweep queues it again

    def stop_all(self, reason: str, requeue: bool = False) -> None:
        """Stop every running task: TERM to its group now, KILL after the grace period.

        With ``requeue`` the attempt ends as lost (the task runs again later, if its type
        allows); otherwise the task ends as cancelled.
        """
        self.hold_off()
        for run in self.running.values():
            if run.term_at is None:
                if requeue:
                    run.interrupted = reason
                else:
                    run.cancelled = True
                    run.claim.append("cancel", reason=reason)
                self._run_log(run, f"--- hostctl: {reason}; sending TERM\n")
                self._terminate(run)

    def _terminate(self, run: Running) -> None:
        run.term_at = self.clock()
        signal_session(run.pid, signal.SIGTERM)

    def _enforce_deadlines(self) -> None:
        now = self.clock()
        for run in list(self.running.values()):
            if run.exit_status is not None:
                continue
            if run.term_at is None and now >= run.deadline:
                run.timed_out = run.timeout
                self._run_log(run, f"--- hostctl: timed out after {run.timeout:g} s; "
                                      "sending TERM\n")
                self._terminate(run)
            elif run.term_at is not None and now >= run.term_at + self.config.worker.kill_grace:
                signal_session(run.pid, signal.SIGKILL)

    def _read_output(self, run: Running) -> None:
        try:
            chunk = os.read(run.out_fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            self._close_output(run)
            return
        self._write_output(run, chunk)

    def _write_output(self, run: Running, chunk: bytes) -> None:
        """Whole lines to the log; of a line longer than MAX_LINE only its head is kept
        (the worker's memory stays bounded whatever a task prints), then a note of how
        much of it was left out, once the line ends."""
        data = run.buffer + chunk
        if run.cut:  # inside a line already cut: drop up to its end
            end = data.find(b"\n")
            if end < 0:
                run.cut += len(data)
                run.buffer = b""
                return
            self._emit(run, f" [... {run.cut + end} more bytes of this line not kept]\n"
                       .encode())
            run.cut, data = 0, data[end + 1:]
        whole, sep, rest = data.rpartition(b"\n")
        if sep:
            self._emit(run, whole + sep)
        if len(rest) > MAX_LINE:
            self._emit(run, rest[:MAX_LINE])
            run.cut, rest = len(rest) - MAX_LINE, b""
        run.buffer = rest

    def _emit(self, run: Running, data: bytes) -> None:
        data = run.secrets.data(data)
        for line in reversed(data[-2048:].splitlines()):
            text = line.strip()
            if text and not text.startswith(b"[... "):
                run.said = printable(text.decode("utf-8", "replace"))[:300]
                break
        self._run_log(run, data)
        if self.echo is not None:
            self.echo.write(data.decode("utf-8", "replace"))
            self.echo.flush()

    def _run_log(self, run: Running, data: str | bytes) -> None:
        """Write to a running task's log; a failure is kept and ends the task in error."""
        if run.log_error:
            return
        try:
            _write(run.log, data)
        except OSError as exc:
            run.log_error = f"cannot write the task's log: {exc.strerror or exc}"
            log.error("task %s: %s", run.claim.task.id, run.log_error)

    def _close_output(self, run: Running) -> None:
        if run.out_open:
            run.out_open = False
            self.selector.unregister(run.out_fd)
            os.close(run.out_fd)

    def _reap(self, run: Running) -> None:
        if self._stopped(run):
            # a stopped run ends whole: what its leader left (a job in a process group of
            # its own, a child that outlived the TERM) is killed while the unreaped
            # leader still keeps its session's id from being handed out again
            signal_session(run.pid, signal.SIGKILL)
        pid, status = os.waitpid(run.pid, os.WNOHANG)
        if pid == 0:
            return
        run.exit_status = status
        self.selector.unregister(run.pidfd)
        os.close(run.pidfd)
        # what the child wrote before it ended; a grandchild that kept the pipe open
        # does not hold the task up
        while run.out_open:
            try:
                chunk = os.read(run.out_fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            self._write_output(run, chunk)
        self._close_output(run)

    @staticmethod
    def _stopped(run: Running) -> bool:
        """Was the run told to stop (a timeout, a cancel, the worker stopping)?"""
        if run.term_at is not None or run.cancelled:
            return True
        try:
            if run.claim.grew() and run.claim.reload().cancel_requested:  # `task cancel`
                run.cancelled = True
                return True
        except (OSError, HostctlError):  # unreadable now: _record_end says what it can
            pass
        return False

    def _complete(self, run: Running) -> None:
        try:
            self._record_end(run)
        except (OSError, HostctlError) as exc:
            # e.g. a full disk: let go of the task; the next sweep finds it as lost
            log.error("task %s: cannot record its end: %s", run.claim.task.id, exc)
            run.claim.release()
            self.summary.count("lost")

    def _record_end(self, run: Running) -> None:
        del self.running[run.pid]
        if run.buffer:
            self._emit(run, run.buffer + b"\n")
        if run.cut:
            self._emit(run, f" [... {run.cut} more bytes of this line not kept]\n".encode())
        claim = run.claim
        cancelled = run.cancelled or (claim.grew() and claim.reload().cancel_requested)
        result = redact(read_result(run.result_path), run.secrets)
        assert run.exit_status is not None
        verdict = judge(run.exit_status, result, cancelled=cancelled,
                        timed_out=run.timed_out,
                        attempts_left=run.attempt < run.policy.max_attempts, said=run.said)
        elapsed = (self.clock() if run.ended_at is None else run.ended_at) - run.started
        self.took[claim.task.envelope.type] = elapsed
        self._run_log(run, f"--- hostctl: {verdict.reason or 'exited with status 0'} "
                              f"after {elapsed:.2f} s: {verdict.outcome}\n")
        with suppress(OSError):
            run.log.close()
        fields: dict[str, Any] = {"exit": verdict.exit, "reason": verdict.reason,
                                  "result": dict(verdict.result)}
        if run.log_error and verdict.outcome in ("success", "warning", "retry"):
            verdict = Verdict("error", verdict.exit, run.log_error, verdict.result)
            fields.update(reason=run.log_error)
        if run.interrupted and verdict.outcome != "cancelled":
            reason = f"{run.interrupted}; {verdict.reason}"
            fields.update(exit=verdict.exit, reason=reason)

            def record_loss() -> None:
                if run.policy.rerun_on_loss and run.attempt < run.policy.max_attempts:
                    self.queue.defer(claim, backoff(run.policy, run.attempt),
                                     outcome="lost", **fields)
                else:
                    self.queue.finish(claim, "lost", **fields)

            held = self._record(claim, run.serial, "lost", record_loss)
            self.summary.count("lost")
            self._ended(claim, "lost", reason, elapsed, held)
            return
        outcome = verdict.outcome

        def record_end() -> None:
            if outcome == "retry":
                self.queue.defer(claim, backoff(run.policy, run.attempt), **fields)
            else:
                self.queue.finish(claim, outcome, **fields)

        held = self._record(claim, run.serial, outcome, record_end)
        self.summary.count(outcome)
        self._ended(claim, outcome, str(fields["reason"]), elapsed, held)


def _exited(run: Running) -> bool:
    """Has the run's child exited? (It stays unreaped: a zombie keeps its pid.)"""
    try:
        return os.waitid(os.P_PID, run.pid,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def _write(task_log: TaskLog, data: str | bytes) -> None:
    task_log.write(data.encode() if isinstance(data, str) else data)
