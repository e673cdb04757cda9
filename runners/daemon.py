"""``hostctl wait-queue``: the daemon that runs each task as soon as it is queued.

It blocks in the kernel (epoll) on the queue's watch (``QueueBackend.watch``; the spool's
is inotify on ``new/``, ``incoming/``, ``deferred/`` and the spool itself), on its
children's pipes and exit notifications, and on a self-pipe that
signals write to; it wakes on its own only for what is due: the next deferred task and the
housekeeping pass (every ``housekeeping_every`` seconds, 60 by default: the sweep of lost
tasks, the rescan, the periodic queues and the liveness record). The rescan is the safety
net for what inotify does not report (no inotify at all: the instances or watches of the
user ran out, say): the pass admits what lies in ``incoming/`` and claims from ``new/``
whatever the wake-ups missed.

Pause: while the queue is paused (the spool: ``spool/paused`` exists) the daemon starts no
task; it keeps sweeping and admitting, and ``queue resume`` wakes it at once.

Signals (handlers only record them; the loop acts and logs one sentence):
  TERM or INT, first   stop claiming, let the running tasks finish, exit 0
  TERM or INT, second  TERM the running tasks' groups, KILL after the grace period; the
                       interrupted runs are queued again (if their type allows), exit 0;
                       no more waiting for the notices' sender (it finishes alone)
  HUP                  re-read config.toml (task types, limits, queues)

config.toml is followed without a signal too (an inotify watch on the home wakes the
daemon when a file there is written or renamed into place): before each pass and before
each admission the daemon compares the file's identity (inode, size, times) with the one
it loaded, and reloads when it changed. A task whose type the loaded configuration does
not know is never quarantined for it: it stays queued (see ``Spool.claim``) until a
configuration knows it, so an id that ``task add`` printed from a newer config.toml is
never lost to an older one.

systemd (``Type=notify``, see runners/service.py): with ``NOTIFY_SOCKET`` in its
environment the daemon says ``READY=1`` once it listens (watches set, first sweep done),
``WATCHDOG=1`` every half ``WATCHDOG_USEC`` from the loop itself (a loop that hangs, or a
process that is stopped, stops the pings, and systemd kills and restarts it), a short
``STATUS=`` line when its counts change, and ``STOPPING=1`` when it starts to stop; without
it, nothing (``hostctl.sdnotify``).

Notices of task ends (runners/notify.py): a thread of the daemon starts a sender process
(``hostctl notify-send``, a session of its own) when a delivery is due and no sender is at
work, and waits for it, one at a time; a kill -9 of the daemon leaves it to finish alone.
A sender that failed, or that found every delivery due held by another process (its exit
status 75), is followed by the next one COURIER_IDLE seconds later. While the last reload
of config.toml failed, no sender is started (each reads config.toml afresh, and would
fail on it): the notices wait, said once in the log, for a config.toml that reads. When
the daemon stops, its sender finishes the delivery in flight (TERM) and the daemon waits
for that, as long as the longest hook's timeout and a few seconds
(``notify.stop_wait``), or until a second TERM or INT.

Liveness: the daemon registers with the queue for its life (``register_worker``; the
spool keeps ``spool/workers/PID.json``, pid, start, last seen, tasks run, next to an flock
on ``spool/locks/worker.PID.lock``): ``queue status`` shows a
daemon as alive exactly while that lock is held.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from hostctl.config import SETTLE, file_stamp, unsettled_for
from hostctl.errors import HostctlError
from hostctl.inotify import IN_CLOSE_WRITE, IN_MOVED_TO, Inotify
from hostctl.queues.backend import Registration, Watch
from hostctl.runners.dispatcher import Dispatcher, DispatchReport
from hostctl.runners.home import Home
from hostctl.runners.notify import SENDER_BLOCKED, start_sender, stop_wait
from hostctl.runners.worker import Summary, Worker
from hostctl.sdnotify import Notifier
from hostctl.times import utc_iso

log = logging.getLogger("hostctl")
HOUSEKEEPING_EVERY = 60.0  # sweep, rescan, liveness, periodic queues
COURIER_IDLE = 30.0  # the notices' thread looks at the folder at least this often
SENDER_POLL = 1.0  # ... and this often while another runner's sender is at work
STOP_SLICE = 0.1  # the stop's wait for the sender looks at the signals this often


class WaitQueue:
    def __init__(self, home: Home, max_runtime: float = 3600.0,
                 concurrency: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 housekeeping_every: float = HOUSEKEEPING_EVERY) -> None:
        self.home = home
        self.max_runtime = max_runtime
        self.concurrency = concurrency
        self.clock = clock
        self.housekeeping_every = housekeeping_every
        self.stop_requests = 0
        self.reload_requested = False
        self.hard_stopped = False
        self.worker: Worker | None = None
        self._start = 0.0
        self._next_housekeeping = 0.0
        self._announced_stop = False
        self._registration: Registration | None = None
        self._told_started = 0  # the tasks started that the registration says
        self._courier_wake = threading.Event()
        self._courier_done = False
        self._sender_fd: int | None = None  # a pidfd of the notices' sender at work
        self._sender_guard = threading.Lock()
        #: why the last reload of config.toml failed ("": it read): no sender meanwhile
        self._notices_wait = ""
        self._watch: Watch | None = None
        self._pipe: tuple[int, int] | None = None
        self._config_seen: tuple[int, ...] | None = None
        self._settles_at: float | None = None  # (clock) config.toml changed, not settled
        #: that change (its stamp) and since when (clock) this daemon has seen it
        self._pending: tuple[tuple[int, ...] | None, float] | None = None
        self._last_failure = ""
        self.notifier = Notifier.from_environment()  # tasks must not inherit its socket
        self._next_ping = 0.0
        self._told_stopping = False

    # -- signals: record only ---------------------------------------------------------

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop_requests += 1

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self.home.writable()
        self._config_seen = self._config_stamp()  # before it is read: a change after counts
        self.worker = worker = Worker.of(self.home, self.concurrency)
        worker.registry.names()  # look for plugin types now, not at the first pickup
        worker.prefetch = True  # claim one task ahead while tasks run (see Worker)
        worker.may_claim = self._may_claim
        # a drop is judged by the configuration it was written for: none while a change
        # of config.toml settles
        worker.may_admit = lambda: self._settles_at is None
        self._start = self.clock()
        self._register_liveness()
        # a publish, a drop, a resume: wake at once (the worker's own queue, which a
        # publish may hand a task to)
        watch = worker.queue.watch()
        if watch is not None:
            self._watch = watch
            worker.watch(watch, self._on_queue_change)
        try:  # config.toml written or renamed into place: wake, and the pass reloads it
            config = Inotify([self.home.paths.home], IN_CLOSE_WRITE | IN_MOVED_TO)
            worker.watch(config, config.drain)
        except OSError as exc:
            log.warning("no inotify (%s): config.toml is looked at once a pass", exc)
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe = (r, w)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        worker.watch(r, self._drain_pipe)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        worker.sweep()
        # the notices go out from a sender process that a thread of its own starts: a
        # slow receiver never holds a task back, a kill -9 never cuts a request off
        # (runners/notify.py)
        worker.on_delivery = self._courier_wake.set
        threading.Thread(target=self._courier, name="webhooks", daemon=True).start()
        # what start-up made (the modules, the schemas, the registry) lives as long as the
        # daemon: out of the collector's sight, a full collection walks only the objects
        # of the task loop
        gc.collect()
        gc.freeze()
        log.info("wait-queue %d started (max runtime %g s)", os.getpid(), self.max_runtime)
        self.notifier.ready(self._status_line())
        self._next_ping = self.clock()

    def step(self, now: float) -> None:
        """One pass: react to signals, do what is due, claim what fits."""
        worker = self.worker
        assert worker is not None
        if self.stop_requests and not self._announced_stop:
            self._announced_stop = True
            log.warning("stopping: %d running task(s) will finish first", len(worker.running))
        if self.stop_requests >= 2 and not self.hard_stopped:
            self.hard_stopped = True
            log.warning("stopping now: the running tasks are stopped and queued again")
            worker.stop_all("wait-queue was stopped", requeue=True)
        self._follow_config()
        if self.reload_requested:
            self.reload_requested = False
            self._reload()
            if worker.queue.has_submissions():
                worker.admit()  # (the drops left while the change settled)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + self.housekeeping_every
            self._housekeeping()
        if not self.stopping(now) and not worker.queue.paused():
            try:
                worker.step()
                self._last_failure = ""
            except HostctlError as exc:  # the queue cannot be reached now: next pass
                self._said_once(exc.message)
                worker.hold_off()
        else:
            worker.hold_off()  # a task claimed ahead goes back: nothing more starts

    def _may_claim(self) -> bool:
        """May a task be claimed as one ends, between two passes? Not while stopping,
        the queue paused, or config.toml changed since it was read (the next pass claims
        with the configuration it has until the change settles)."""
        worker = self.worker
        return (worker is not None and not self.stopping(self.clock())
                and not self.reload_requested and self._config_stamp() == self._config_seen
                and not worker.queue.paused())

    def _said_once(self, message: str) -> None:
        """Log a failure of the queue once while it lasts."""
        if message != self._last_failure:
            self._last_failure = message
            log.error("%s", message)

    def stopping(self, now: float) -> bool:
        return self.stop_requests > 0 or now - self._start >= self.max_runtime

    def run(self) -> int:
        self.start()
        worker = self.worker
        assert worker is not None
        try:
            while True:
                now = self.clock()
                self.step(now)
                if worker.summary.started != self._told_started:
                    # queue status and the status page show this daemon's count as it
                    # is, not as it was at the last housekeeping pass
                    self._told_started = worker.summary.started
                    with suppress(HostctlError, OSError):
                        self._touch_liveness()
                self._notify(now)
                if self.stopping(now) and not worker.running:
                    break
                worker.wait(self.wake_in(now))
        finally:
            worker.report_ends()  # what ended and is not said yet, whatever stops the loop
            self._close()
            self.notifier.close()
        log.info("wait-queue %d exits after %d task(s)", os.getpid(), worker.summary.started)
        return 0

    def wake_in(self, now: float) -> float:
        """Seconds the loop may sleep in the kernel before something of its own is due
        (the housekeeping pass, the max runtime, the next deferred task)."""
        waits = [self._next_housekeeping - now]
        if self._settles_at is not None:  # a change of config.toml to take once settled
            waits.append(self._settles_at - now)
        if self.notifier.watchdog_every is not None:
            waits.append(self._next_ping - now)
        if not self.stopping(now):
            waits.append(self._start + self.max_runtime - now)
            assert self.worker is not None
            due = self.worker.queue.next_due()  # the worker's: its view of deferred/
            if due is not None:
                waits.append(due - time.time())
        return max(0.0, min(waits))

    # -- helpers ----------------------------------------------------------------------

    def _status_line(self) -> str:
        worker = self.worker
        if worker is None:
            return "starting"
        return (f"{len(worker.running)} task(s) running, {worker.summary.started} started"
                + (", stopping" if self._told_stopping else ""))

    def _notify(self, now: float) -> None:
        """systemd's side of one pass (nothing without NOTIFY_SOCKET): the loop came
        round, so it is alive."""
        if not self.notifier.enabled:
            return
        if self.stopping(now) and not self._told_stopping:
            self._told_stopping = True
            self.notifier.stopping(self._status_line())
        every = self.notifier.watchdog_every
        if every is not None and now >= self._next_ping:
            self._next_ping = now + every
            self.notifier.ping()
        self.notifier.status(self._status_line())

    def _on_queue_change(self) -> None:
        assert self.worker is not None
        if self._watch is not None:
            self._watch.drain()
        self.worker.check_cancels()  # a cancel asked on another host
        if self.worker.queue.has_submissions():
            self._follow_config()  # judge the drops by the configuration of now
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            self.worker.admit()  # (none while a change of config.toml settles)

    def _drain_pipe(self) -> None:
        assert self._pipe is not None
        with suppress(BlockingIOError):
            while os.read(self._pipe[0], 512):
                pass

    def _config_stamp(self) -> tuple[int, ...] | None:
        return file_stamp(self.home.paths.config_file)

    def _follow_config(self) -> None:
        """Ask for a reload when config.toml changed since it was last read, once it has
        settled (hostctl.config.SETTLE: an editor's write caught halfway, empty or cut
        short, is never taken for the configuration): a stat or two; until it settles,
        the loop wakes when it will have."""
        stamp = self._config_stamp()
        if stamp == self._config_seen:
            self._settles_at = self._pending = None
            return
        now = self.clock()
        if self._pending is None or self._pending[0] != stamp:
            self._pending = (stamp, now)  # this change, seen since now
        # settled by the wall clock, or seen unchanged for SETTLE here (a file dated
        # ahead of the clock)
        wait = min(unsettled_for(self.home.paths.config_file),
                   self._pending[1] + SETTLE - now)
        if wait > 0:
            self._settles_at = now + wait
            return
        self._settles_at = self._pending = None
        self._config_seen = stamp
        self.reload_requested = True

    def _reload(self) -> None:
        stamp = self._config_stamp()
        fresh = Home(self.home.paths)
        try:
            self._check_notices(fresh)
            fresh.registry.names()  # parse now, so a broken file keeps the old one
        except HostctlError as exc:
            log.error("config not reloaded: %s", exc)
            return
        if self._config_stamp() != stamp:  # written again as it was read: once settled
            return
        self._config_seen = stamp  # (a HUP's reload too: the config read is this one)
        assert self.worker is not None
        if fresh.config.cluster.dsn != self.home.config.cluster.dsn or (
                fresh.config.cluster.server != self.home.config.cluster.server):
            # another queue altogether (a home that joined or left a cluster): a fresh
            # process takes it, once the running tasks are done
            log.warning("config reloaded: the home's cluster changed; exiting, for the "
                        "supervisor to start wait-queue on the new queue")
            self.stop_requests = max(self.stop_requests, 1)
            return
        self.home = fresh
        self.worker.reconfigure(fresh.config, fresh.registry,
                                keep_concurrency=self.concurrency is not None)
        log.warning("config reloaded")

    def _check_notices(self, fresh: Home) -> None:
        """config.toml as a sender reads it: while it does not, the courier starts none
        (it would fail on it); once it does again, the courier looks at once."""
        try:
            fresh.config.path  # noqa: B018 - config.toml read now (a cached property)
        except HostctlError as exc:
            self._notices_wait = exc.message
            raise
        if self._notices_wait:
            self._notices_wait = ""
            self._courier_wake.set()

    def _housekeeping(self) -> None:
        """Sweep, the periodic queues, liveness: a failure is logged and tried again at
        the next round; it never stops the daemon."""
        assert self.worker is not None
        for job in (self.worker.sweep, self._periodic, self._touch_liveness):
            try:
                job()
            except (HostctlError, OSError) as exc:
                message = exc.message if isinstance(exc, HostctlError) else str(exc)
                log.error("housekeeping: %s", message)

    def _periodic(self) -> None:
        """The periodic queues (not tasks: that is this daemon's own job), if due."""
        if self.home.queue.paused() or self.stopping(self.clock()) or self.worker is None:
            return
        self.home.store.watch()  # the queues' listings of sites: kept until one changes
        with self.home.queue.leader() as mine:
            if not mine:
                return
            report = DispatchReport()  # run_due logs each queue that ran, and each failure
            Dispatcher(self.home).run_due(self.worker, report,
                                          only=("task_gc", "cron", "backup", "ssl"))

    def _register_liveness(self) -> None:
        self._registration = self.home.queue.register_worker(os.getpid(), utc_iso(),
                                                             self.max_runtime)

    def _touch_liveness(self) -> None:
        if self._registration is not None and self.worker is not None:
            self._registration.update(self.worker.summary.started)

    def _courier(self) -> None:
        """Start a sender of notices (runners/notify.py) when a delivery is due and no
        sender is at work, and wait for it: one at a time, until the daemon ends (its
        sender is then asked to stop after the delivery in flight: see :meth:`_close`)."""
        worker = self.worker
        assert worker is not None
        deliveries = worker.deliveries
        not_before = 0.0  # (monotonic) no sender is started before this
        told = False  # that the notices wait for config.toml
        while not self._courier_done:
            wait = COURIER_IDLE
            try:
                why = self._notices_wait
                if told and not why:
                    told = False
                    log.warning("notices: config.toml reads again: senders start again")
                due = deliveries.next_due()
                if due is not None and due <= time.time():
                    if why:  # a sender would fail on config.toml: woken once it reads
                        if not told:
                            told = True
                            log.error("notices: none is sent until config.toml reads "
                                      "again (%s)", why)
                    elif deliveries.sending():  # another runner's sender: it sends them
                        wait = SENDER_POLL
                    elif time.monotonic() < not_before:
                        wait = not_before - time.monotonic()
                    else:
                        code = self._run_sender()
                        # one that failed, or found every delivery due held by another
                        # process, is not followed at once; one that ended well leaves at
                        # most what it skipped
                        not_before = time.monotonic() + (
                            SENDER_POLL if code == 0 else COURIER_IDLE)
                        continue
                elif due is not None:
                    wait = min(COURIER_IDLE, due - time.time())
            except Exception as exc:  # noqa: BLE001 - the thread must live on: said, then again
                log.error("notices: %s: %s", type(exc).__name__, exc)
            self._courier_wake.wait(max(0.0, wait))
            self._courier_wake.clear()

    def _run_sender(self) -> int:
        """Start a sender and wait for it; its exit status."""
        with self._sender_guard:
            if self._courier_done:
                return 0
            sender = start_sender(self.home.paths.home, stderr=True)
            try:
                # its handle for _stop_sender: no pid reused meanwhile is ever signalled
                self._sender_fd = os.pidfd_open(sender.pid)
            except OSError as exc:  # no fd left, say: it is waited for all the same
                log.warning("notices: sender %d has no handle (%s): a stop of wait-queue "
                            "leaves it to finish alone", sender.pid, exc.strerror or exc)
        try:
            code = sender.wait()
        finally:
            with self._sender_guard:
                if self._sender_fd is not None:
                    os.close(self._sender_fd)
                    self._sender_fd = None
        if code not in (0, SENDER_BLOCKED):
            log.error("notices: the sender exited with status %d", code)
        return code

    def _stop_sender(self) -> None:
        """The daemon ends: its sender, if it is at work, finishes the delivery in flight
        and starts no other (TERM); wait for that, as long as one request may take, so
        that a service manager that kills what is left of the service cuts nothing off.
        A second stop request (TERM or INT) ends the wait: the sender finishes alone."""
        with self._sender_guard:
            if self._sender_fd is None:
                return
            try:
                signal.pidfd_send_signal(self._sender_fd, signal.SIGTERM)
            except ProcessLookupError:
                return  # it has ended
            try:
                handle = os.dup(self._sender_fd)  # the courier closes its own
            except OSError as exc:
                log.warning("notices: the sender is not waited for (%s); wait-queue exits",
                            exc.strerror or exc)
                return
        assert self.worker is not None
        try:
            poller = select.poll()  # any fd number (select() takes none above 1023)
            poller.register(handle, select.POLLIN)
            until = time.monotonic() + stop_wait(self.worker.config)
            log.info("notices: waiting for the sender's delivery in flight")
            while True:
                if self.stop_requests >= 2:
                    log.warning("notices: stopping now: the sender finishes its delivery "
                                "alone")
                    return
                left = until - time.monotonic()
                if left <= 0:
                    log.warning("notices: the sender is still at work; wait-queue exits")
                    return
                if poller.poll(math.ceil(min(left, STOP_SLICE) * 1000)):
                    return  # it has ended
        finally:
            os.close(handle)

    def _close(self) -> None:
        with self._sender_guard:
            self._courier_done = True  # no sender is started after this
        self._courier_wake.set()
        self._stop_sender()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if self._registration is not None:
            self._registration.close()
            self._registration = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None


def drain_once(home: Home, concurrency: int | None = None) -> Summary:
    """``wait-queue --once``: sweep, admit, run every ready task, return when none is left;
    while the queue is paused it starts nothing (and stops starting once it is paused)."""
    worker = Worker.of(home, concurrency)
    if home.queue.paused():
        worker.queue.ensure()
        worker.sweep()
        summary = worker.summary
    else:
        summary = worker.run(once=True, should_stop=home.queue.paused)
    worker.deliveries.flush(home.paths.home)
    return summary
