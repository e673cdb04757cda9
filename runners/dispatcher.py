"""``hostctl dispatch``: one pass over every periodic queue that is due, from crontab.

Lock discipline: the dispatcher lock (``spool/locks/dispatch.lock``, an flock) is taken
without waiting; a second dispatcher exits 0 at once. The kernel drops the lock when its
holder dies, so a dispatcher killed with kill -9 never blocks the next one. ``wait-queue``
runs the same periodic queues under the same lock, so cron and the daemon can both be
installed: whichever holds the lock does the periodic work; tasks themselves are claimed
atomically by whoever is free, never twice.

Order of a pass: sweep lost tasks and admit dropped ones, then task_gc, cron and backup
(which queue tasks), then tasks (which runs them). A failing queue is reported and the
others still run.

A queue over sites (cron, backup, ssl) that is not due costs no work per site: whether it
is due comes from its record's last run and the count of its sites kept there (see
runners/periodic.py, ``totals``), as long as nothing that count depends on changed. Only a
queue that runs, or whose count is stale, lists the sites.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hostctl.contexts.store import Context, TomlStore, stamp_of
from hostctl.errors import HostctlError, InvalidInput, MalformedFile
from hostctl.provision.secrets import FileSecrets
from hostctl.queues.model import Status
from hostctl.runners import lifecycle as ops
from hostctl.runners.home import Home
from hostctl.runners.notify import FLUSH_WAIT
from hostctl.runners.periodic import (
    Computed,
    QueueState,
    compute,
    is_due,
    next_run,
)
from hostctl.runners.worker import Worker
from hostctl.times import parse_iso, utc_iso

log = logging.getLogger("hostctl")
ORDER = ("task_gc", "cron", "backup", "ssl", "tasks")
SITE_QUEUES = ("cron", "backup", "ssl")  # the queues whose total is a number of sites


@dataclass
class QueueRun:
    name: str
    ran: bool
    note: str = ""
    error: str = ""


@dataclass
class DispatchReport:
    locked_out: bool = False
    paused: bool = False
    queues: list[QueueRun] = field(default_factory=list)
    started: int = 0
    finished: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(q.error for q in self.queues)


@dataclass(frozen=True)
class PauseResult:
    waited_for: int  # tasks that were running (with a live worker) when the queue paused
    recovered: tuple[str, ...]  # the sweep's notes: running tasks whose worker had died


def pause(home: Home, wait: bool = True, poll: float = 0.2,
          sleep: Callable[[float], None] = time.sleep) -> PauseResult:
    """Pause the queue: no runner starts a task until :func:`resume` (they keep sweeping
    and admitting). With ``wait``, return once no task is running; a task whose worker
    died is not waited for: the sweep at the end recovers it (as a runner's would)."""
    queue = home.writable()
    queue.pause()
    first = queue.running()
    if wait:
        while queue.running():
            sleep(poll)
    notices = ops.home_notices(home)
    recovered = tuple(queue.sweep(home.policy, ends=notices))
    for note in recovered:
        log.warning("%s", note)
    notices.recover()
    # the ends waited for, and those the sweep recorded, are told now (with only cron's
    # dispatch, not at the next resume); without ``wait``, the sender goes on alone
    notices.deliveries.flush(home.paths.home, within=FLUSH_WAIT if wait else 0.0)
    return PauseResult(len(first), recovered)


def resume(home: Home) -> None:
    """Let the runners start tasks again (a waiting wait-queue sees it at once)."""
    home.writable().resume()


@dataclass(frozen=True)
class QueueInfo:
    computed: Computed
    pending: int
    running: int
    last_run: float | None
    next_run: float | None

    def to_json(self) -> dict[str, object]:
        q = self.computed.settings
        return {
            "name": q.name,
            "type": q.type,
            "frequency": q.frequency,
            "items": q.items,
            "enabled": q.enabled,
            "calc_frequency": self.computed.frequency,
            "calc_items": self.computed.items,
            "threads": self.computed.threads,
            "total": self.computed.total,
            "pending": self.pending,
            "running": self.running,
            "last_run": utc_iso(self.last_run) if self.last_run else None,
            "next_run": utc_iso(self.next_run) if self.next_run else None,
        }


class Dispatcher:
    def __init__(self, home: Home, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self.clock = clock
        self._site_cache: dict[str, tuple[list[str], list[MalformedFile]]] = {}
        self._all_sites: tuple[list[Context], list[MalformedFile]] | None = None
        self._stamp: tuple[str | None] | None = None

    # -- what each queue covers -------------------------------------------------------

    def _sites(self, task_type: str, malformed: list[MalformedFile] | None = None) -> list[str]:
        """The enabled sites that want a run of ``task_type`` (its ``wanted``: a built-in
        backup only for installed sites, a built-in cron only where the platform has a
        cron command); a malformed context file is passed over (into ``malformed``).
        Listed once per Dispatcher (one pass) and type: every context file is read."""
        if task_type not in self._site_cache:
            self._site_cache[task_type] = self._list_sites(task_type)
        names, problems = self._site_cache[task_type]
        if malformed is not None:
            malformed.extend(problems)
        return names

    def _list_sites(self, task_type: str) -> tuple[list[str], list[MalformedFile]]:
        ttype = self.home.registry.types.get(task_type)
        if ttype is None:
            return [], []
        store = self.home.store
        if self._all_sites is None:
            unreadable: list[MalformedFile] = []
            self._all_sites = (store.of_type("site", unreadable), unreadable)
        malformed = list(self._all_sites[1])
        out = []
        for c in self._all_sites[0]:
            if not c.get("site_enabled"):
                continue
            try:
                if ttype.wanted is not None and not ttype.wanted(c, store, self.home.secrets):
                    continue
            except HostctlError as exc:  # a broken manifest, a missing platform
                malformed.append(MalformedFile(f"{c.display_name}: {exc.message}"))
                continue
            out.append(c.display_name)
        return out, malformed

    def total(self, name: str) -> tuple[int, int]:
        """(total, pending) of one queue."""
        queue = self.home.queue
        if name == "tasks":
            counts = queue.counts()
            return counts.queued + counts.deferred, counts.queued
        if name == "task_gc":
            retention = self.home.config.queues["task_gc"].retention_days
            gc = queue.collectable(retention, self.clock())
            return gc, gc
        sites = len(self._sites(name))
        return sites, sites

    def stamp(self) -> str | None:
        """What the count of a queue's sites depends on (see periodic.py, ``totals``), as
        one word; None where it cannot be told (a store or secrets other than the home's
        files, or a folder changed a moment ago). Taken once per pass, before any
        listing, so that a change during the pass makes it stale."""
        if self._stamp is None:
            store, secrets = self.home.store, self.home.secrets
            parts = [store.stamp() if isinstance(store, TomlStore) else None,
                     secrets.stamp() if isinstance(secrets, FileSecrets) else None,
                     stamp_of(self.home.paths.config_file)]
            self._stamp = (None if None in parts else " ".join(str(p) for p in parts),)
        return self._stamp[0]

    def _due_total(self, name: str, state: QueueState) -> tuple[int, bool]:
        """The total that decides whether ``name`` is due, and whether it was counted
        now: a queue over sites takes the count its record keeps while the stamp holds
        (no site listed), else counts them and keeps the count."""
        if name not in SITE_QUEUES:
            return self.total(name)[0], True
        stamp = self.stamp()
        known = state.known_total(name, stamp) if stamp is not None else None
        if known is not None:
            return known, False
        return self._count(name, state), True

    def _count(self, name: str, state: QueueState) -> int:
        total = self.total(name)[0]
        stamp = self.stamp()
        if stamp is not None:
            state.set_total(name, total, stamp)
        return total

    def totals(self) -> dict[str, tuple[int, int]]:
        """(total, pending) per queue."""
        return {name: self.total(name) for name in ORDER}

    def info(self) -> list[QueueInfo]:
        state = QueueState(self.home.queue)
        now = self.clock()
        running = self.home.queue.counts().processing
        out = []
        for name, (total, pending) in self.totals().items():
            c = compute(self.home.config.queues[name], total)
            last = state.last_run(name)
            out.append(QueueInfo(c, pending, running if name == "tasks" else 0, last,
                                 next_run(c, last, now)))
        return out

    # -- a pass -----------------------------------------------------------------------

    def run(self, force: bool = False, only: str | None = None) -> DispatchReport:
        if only is not None and only not in ORDER:
            raise InvalidInput(f"unknown queue {only!r}; queues: {', '.join(ORDER)}")
        report = DispatchReport()
        self.home.writable()
        with self.home.queue.leader() as mine:
            if not mine:
                report.locked_out = True
                log.info("another dispatcher is running; nothing to do")
                return report
            worker = Worker.of(self.home)
            worker.sweep()
            if self.home.queue.paused():
                report.paused = True
                log.info("the queue is paused")
            else:
                self.run_due(worker, report, force, only)
            # the notices of tasks that ended, paused or not: a pause stops tasks, not
            # the word of those that ran (nor their deliveries' next tries)
            worker.deliveries.flush(self.home.paths.home)
        return report

    def run_due(self, worker: Worker, report: DispatchReport, force: bool = False,
                only: str | tuple[str, ...] | None = None) -> None:
        """Run each due queue (``only``: that one, or those; the caller holds the
        dispatcher lock)."""
        state = QueueState(self.home.queue)
        wanted = ORDER if only is None else (only,) if isinstance(only, str) else only
        for name in ORDER:
            if name not in wanted:
                continue
            try:  # one broken queue must not stop the others
                total, counted = self._due_total(name, state)
                c = compute(self.home.config.queues[name], total)
                now = self.clock()
                last = state.last_run(name)
                if not is_due(c, last, now, force):
                    due = next_run(c, last, now) or now
                    why = (f"disabled ([queues.{name}] enabled = false)"
                           if not c.settings.enabled else
                           f"not due: next run in {max(0.0, due - now):.0f} s")
                    # asked for by name (--force) and disabled: said without -v
                    log.log(logging.WARNING if force and not c.settings.enabled
                            else logging.INFO, "queue %s did not run: %s", name, why)
                    report.queues.append(QueueRun(name, False, why))
                    continue
                if not counted:  # it runs: on its sites as they are now
                    c = compute(c.settings, self._count(name, state))
                state.set_last_run(name, now)
                note = getattr(self, f"_queue_{name}")(c, state, worker, report)
                log.info("queue %s: %s", name, note)
                report.queues.append(QueueRun(name, True, note))
            except (HostctlError, OSError) as exc:
                message = exc.message if isinstance(exc, HostctlError) else str(exc)
                log.error("queue %s failed: %s", name, message)
                report.queues.append(QueueRun(name, True, error=message))
            except Exception as exc:
                log.exception("queue %s failed", name)
                report.queues.append(QueueRun(name, True, error=f"{type(exc).__name__}: {exc}"))
        try:
            state.save()
        except OSError as exc:
            log.error("cannot save the periodic queues' state: %s", exc)

    def _queue_tasks(self, c: Computed, state: QueueState, worker: Worker,
                     report: DispatchReport) -> str:
        """Run the ready tasks, at most ``items`` minus the tasks already running (by any
        runner) at once; stop starting new ones as soon as the queue is paused."""
        running = self.home.queue.counts().processing
        slots = c.items - running
        if slots <= 0:
            return f"maximum number of tasks ({c.items}) already running"
        worker.concurrency = slots
        summary = worker.run(once=True, should_stop=self.home.queue.paused)
        report.started += summary.started
        for k, v in summary.finished.items():
            report.finished[k] = report.finished.get(k, 0) + v
        return (f"ran {summary.started} task(s), up to {slots} at once "
                f"({c.items} items, {running} already running)")

    def _settle(self, queue: str, state: QueueState) -> set[str]:
        """Record how the tasks this queue gave its sites ended (see periodic.py: a success
        sets the site's time; a first failure leaves it, so the site comes first again; a
        failure after that sets it too); return the sites whose task is still queued or
        running (not to be given another)."""
        waiting = set()
        for site, task_id in list(state.pending(queue).items()):
            try:
                task = self.home.queue.get(task_id)
            except HostctlError:  # removed by task_gc, or unreadable: nothing to wait for
                state.clear_pending(queue, site)
                continue
            if not task.status.finished:
                waiting.add(site)
                continue
            state.clear_pending(queue, site)
            ended = parse_iso(task.finished) if task.finished else self.clock()
            if task.status in (Status.SUCCESS, Status.WARNING):
                state.set_site_time(queue, site, ended)
                state.set_failures(queue, site, 0)
                continue
            failures = state.failures(queue, site) + 1
            state.set_failures(queue, site, failures)
            if failures > 1:
                state.set_site_time(queue, site, ended)
        return waiting

    def _queue_sites(self, queue: str, c: Computed, state: QueueState) -> str:
        """Queue a ``queue`` task for the sites whose last one finished successfully
        longest ago (never: first); a site whose task has not ended yet is passed over."""
        malformed: list[MalformedFile] = []
        sites = self._sites(queue, malformed)
        if queue not in self.home.registry.types:
            return f"no {queue} task type is configured"
        waiting = self._settle(queue, state)
        times = state.site_times(queue)
        due = sorted((s for s in sites if s not in waiting),
                     key=lambda s: (times.get(s, 0.0), s))
        queued = 0
        for site in due[: c.items]:
            try:
                added = ops.add(self.home, queue, site, {}, {}, priority=3)
            except HostctlError as exc:
                log.warning("queue %s: %s: %s", queue, site, exc)
                continue
            state.set_pending(queue, site, added.task.id)
            queued += added.created
        if malformed:  # the good sites got their run; the broken files are the error
            raise MalformedFile(f"queued {queued} {queue} task(s); passed over "
                                f"{len(malformed)} unreadable context(s): {malformed[0].message}")
        note = f"queued {queued} {queue} task(s)"
        return note + (f"; {len(waiting)} site(s) still wait for the last one" if waiting
                       else "")

    def _queue_cron(self, c: Computed, state: QueueState, worker: Worker,
                    report: DispatchReport) -> str:
        return self._queue_sites("cron", c, state)

    def _queue_backup(self, c: Computed, state: QueueState, worker: Worker,
                      report: DispatchReport) -> str:
        return self._queue_sites("backup", c, state)

    def _queue_ssl(self, c: Computed, state: QueueState, worker: Worker,
                   report: DispatchReport) -> str:
        return self._queue_sites("ssl", c, state)

    def _queue_task_gc(self, c: Computed, state: QueueState, worker: Worker,
                       report: DispatchReport) -> str:
        q = c.settings
        removed = self.home.queue.collect(q.retention_days, self.clock(), max(c.items, 1))
        return f"removed {removed} finished task(s) older than {q.retention_days:g} days"
