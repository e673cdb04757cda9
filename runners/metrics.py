"""What ``hostctl metrics`` reports: the queue's figures in Prometheus's text exposition
format (version 0.0.4), for a node exporter's textfile collector, a cron job, or a
scrape of ``/metrics``.

Counters (``hostctl_task_attempts_total``, the histogram of attempts' durations) come
from the queue's tally (queues/backend.py ``tally``): kept across restarts and task
collection, summed over every process, so they only grow. Gauges are read now: the
queues' depths and the oldest ready task's age, the running tasks, the workers alive,
what was set aside, the pause, and each periodic queue's last run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from hostctl.queues.model import DURATION_BUCKETS
from hostctl.runners.home import Home
from hostctl.runners.periodic import QueueState

#: the Content-Type of what render() writes
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    """One metric family: its samples are (name suffix, labels, value)."""

    name: str
    kind: str  # counter, gauge, histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((suffix, tuple(labels.items()), value))


def collect(home: Home, now: float | None = None) -> list[Family]:
    """Every family, read from the home's queue now."""
    now = time.time() if now is None else now
    queue = home.queue
    attempts = Family("hostctl_task_attempts_total", "counter",
                      "Attempts of tasks that ended, by task type and outcome.")
    durations = Family("hostctl_task_duration_seconds", "histogram",
                       "How long attempts ran, by task type and outcome.")
    for t in queue.tallies():
        attempts.add(t.attempts, type=t.type, outcome=t.outcome)
        for bound, n in zip(DURATION_BUCKETS, t.buckets, strict=True):
            durations.add(n, "_bucket", type=t.type, outcome=t.outcome, le=_number(bound))
        durations.add(t.seconds, "_sum", type=t.type, outcome=t.outcome)
        durations.add(t.timed, "_count", type=t.type, outcome=t.outcome)
    waiting = Family("hostctl_queue_tasks", "gauge",
                     "Tasks waiting in each queue: ready to run, or delayed.")
    oldest = Family("hostctl_queue_oldest_ready_age_seconds", "gauge",
                    "Age of the oldest task ready to run in each queue (0: none).")
    for d in queue.depths():
        waiting.add(d.ready, queue=d.queue, state="ready")
        waiting.add(d.deferred, queue=d.queue, state="deferred")
        oldest.add(d.oldest_age or 0.0, queue=d.queue)
    counts = queue.counts()
    running = Family("hostctl_tasks_running", "gauge", "Tasks running now.")
    running.add(counts.processing)
    aside = Family("hostctl_set_aside", "gauge",
                   "Entries set aside: tasks quarantined, submissions rejected, "
                   "submissions not admitted yet.")
    aside.add(counts.quarantined, kind="quarantined")
    aside.add(counts.rejected, kind="rejected")
    aside.add(counts.incoming, kind="incoming")
    workers = Family("hostctl_workers_alive", "gauge", "wait-queue daemons alive, by host.")
    alive: dict[str, int] = {}
    for w in queue.workers():
        alive[w.host] = alive.get(w.host, 0) + int(w.alive)
    for host, n in sorted(alive.items()):
        workers.add(n, host=host)
    paused = Family("hostctl_queue_paused", "gauge", "1 while the queue is paused.")
    paused.add(int(queue.paused()))
    periodic = Family("hostctl_periodic_last_run_timestamp_seconds", "gauge",
                      "When each enabled periodic queue last ran (Unix time; 0: never).")
    state = QueueState(queue)
    for name, settings in sorted(home.config.queues.items()):
        if settings.enabled:
            periodic.add(state.last_run(name) or 0.0, queue=name)
    scraped = Family("hostctl_scrape_timestamp_seconds", "gauge",
                     "When these figures were read (Unix time).")
    scraped.add(now)
    return [attempts, durations, waiting, oldest, running, aside, workers, paused,
            periodic, scraped]


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for f in families:
        lines.append(f"# HELP {f.name} {_help(f.help)}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for suffix, labels, value in f.samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
            lines.append(f"{f.name}{suffix}{{{text}}} {_number(value)}" if text
                         else f"{f.name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
