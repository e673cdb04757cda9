"""Periodic queues (Aegir's hook_hosting_queues): tasks, cron, backup, task_gc.

Each queue has a ``type``: serial, batch or spread, and Aegir's formulas turn its
``frequency`` and ``items`` and the number of things it covers (``total``) into how often it
runs and how much it does each time:

    serial  every ``frequency`` s, ``items`` per run
    batch   threads = total / threshold, clamped to [min_threads, max_threads];
            every ceil(frequency / threads) s, ceil(total / threads) per run
    spread  total > 0: every max(60, frequency / total) s,
                       ceil(calc_frequency / frequency * total) per run
            total = 0: every 86400 s, nothing per run

The last run of each queue and, for ``cron`` and ``backup``, each site's bookkeeping live
in the queue's record ``queues`` (the spool keeps it in ``HOME/spool/queues.json``),
written whole under the leader lock::

    {"version": 2,
     "last_run": {"QUEUE": UNIX_TIME, ...},
     "sites":    {"cron": {"@SITE": UNIX_TIME, ...}, "backup": {...}},
     "pending":  {"cron": {"@SITE": "TASK_ID", ...}, "backup": {...}},
     "failures": {"cron": {"@SITE": COUNT, ...}, "backup": {...}},
     "totals":   {"cron": {"total": N, "stamp": "..."}, "backup": {...}}}

The queue picks the sites with the oldest time in ``sites`` (none: first). That is when the
site's last cron (or backup) task *finished successfully* (success or warning): a site whose
task failed keeps its older time, so it is picked first again at the next run. If that retry
fails too (``failures``: the failed runs in a row), the failed run's end becomes its time:
the site takes its turn with the others again, and one site that keeps failing never holds
the queue's items for itself. ``pending`` holds the task each site was last given that has
not been settled yet: the next run of the queue reads where that task is (queued or
running: the site is passed over, never given a second one; finished: as above, and the
entry goes). Files written before version 2 hold the time a task was queued in ``sites``
and nothing else; they are read as they are.

``totals`` keeps, for each queue over sites, how many sites it covered when they were last
counted, and a stamp of what that count depends on (the identities of the contexts folder,
the secrets folder and config.toml, which change with every save, delete, install, removal
and configuration edit). While the stamp is unchanged, a pass decides whether the queue is
due from that count and lists no site at all; a queue that runs counts its sites afresh.
A context edited by hand in place (or an application's manifest) changes no stamp: it is
counted when the queue next runs. A record without ``totals`` (an older hostctl's) is
counted once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hostctl.config import QueueSettings
from hostctl.formats import refuse_newer
from hostctl.queues.backend import QueueBackend

# a queue whose frequency is cron's minute must run at every tick, although ticks come a
# little early or late: a queue this close to due counts as due
TICK_SLACK = 5.0


@dataclass(frozen=True)
class Computed:
    settings: QueueSettings
    total: int
    frequency: float
    items: int
    threads: int | None = None

    @property
    def name(self) -> str:
        return self.settings.name


def compute(q: QueueSettings, total: int) -> Computed:
    if q.type == "batch":
        threads = int(min(max(total / q.threshold, q.min_threads), q.max_threads))
        return Computed(q, total, float(math.ceil(q.frequency / threads)),
                        math.ceil(total / threads), threads)
    if q.type == "spread":
        if total > 0:
            freq = max(60.0, q.frequency / total)
            return Computed(q, total, freq, math.ceil(freq / q.frequency * total))
        return Computed(q, total, 86400.0, 0)
    return Computed(q, total, q.frequency, q.items)


def is_due(c: Computed, last: float | None, now: float, force: bool = False) -> bool:
    """Whether the queue runs now: ``force`` runs an enabled queue before its time, and
    never a disabled one."""
    if not c.settings.enabled:
        return False
    if force:
        return True
    return last is None or now - last >= c.frequency - min(TICK_SLACK, c.frequency / 10)


def next_run(c: Computed, last: float | None, now: float) -> float | None:
    """When the queue runs next (Aegir's estimate, on the computed frequency)."""
    if not c.settings.enabled:
        return None
    if last is None or now - last >= c.frequency:
        return now  # due: the next dispatch (or the daemon) runs it
    return last + c.frequency


FORMAT_VERSION = 2
#: the record the queue keeps this in (the spool: ``spool/queues.json``)
RECORD = "queues"


class QueueState:
    """Last runs and per-site bookkeeping, in one JSON file (see the module docstring)."""

    def __init__(self, queue: QueueBackend, name: str = RECORD) -> None:
        self.queue = queue
        self.name = name
        self.doc: dict[str, Any] = {}
        self._saved = b""  # what the record holds: a save that changes nothing writes nothing
        raw = queue.read_record(name)
        try:
            loaded = json.loads(raw) if raw is not None else None
            if isinstance(loaded, dict) and raw is not None:
                self.doc, self._saved = loaded, raw
        except ValueError:
            self.doc = {}
        # a newer hostctl's record is never saved over in this format
        refuse_newer(self.doc.get("version"), FORMAT_VERSION,
                     f"the periodic queues' record {name!r} (spool/{name}.json)")

    def last_run(self, queue: str) -> float | None:
        value = self._get("last_run", queue)
        return float(value) if isinstance(value, int | float) else None

    def set_last_run(self, queue: str, when: float) -> None:
        outer = self.doc.get("last_run")
        if not isinstance(outer, dict):
            outer = self.doc["last_run"] = {}
        outer[queue] = when

    def site_times(self, queue: str) -> Mapping[str, float]:
        """Site -> when its last task of this queue finished successfully."""
        value = self._get("sites", queue)
        return {k: float(v) for k, v in value.items() if isinstance(v, int | float)} \
            if isinstance(value, dict) else {}

    def set_site_time(self, queue: str, site: str, when: float) -> None:
        """Record a finished run; an older one never replaces a newer one."""
        sites = self._table("sites", queue)
        before = sites.get(site)
        if not isinstance(before, int | float) or when > before:
            sites[site] = when

    def pending(self, queue: str) -> Mapping[str, str]:
        """Site -> the id of the task it was given and that is not settled yet."""
        value = self._get("pending", queue)
        return {k: v for k, v in value.items() if isinstance(v, str)} \
            if isinstance(value, dict) else {}

    def set_pending(self, queue: str, site: str, task_id: str) -> None:
        self._table("pending", queue)[site] = task_id

    def clear_pending(self, queue: str, site: str) -> None:
        self._table("pending", queue).pop(site, None)

    def failures(self, queue: str, site: str) -> int:
        """The site's failed runs in a row (since its last success)."""
        value = self._get("failures", queue)
        count = value.get(site) if isinstance(value, dict) else None
        return count if isinstance(count, int) and count > 0 else 0

    def set_failures(self, queue: str, site: str, count: int) -> None:
        if count:
            self._table("failures", queue)[site] = count
        else:
            self._table("failures", queue).pop(site, None)

    def known_total(self, queue: str, stamp: str) -> int | None:
        """The queue's last count of its sites, if it was taken under ``stamp``."""
        value = self._get("totals", queue)
        if isinstance(value, dict) and value.get("stamp") == stamp:
            total = value.get("total")
            if type(total) is int and total >= 0:
                return total
        return None

    def set_total(self, queue: str, total: int, stamp: str) -> None:
        outer = self.doc.get("totals")
        if not isinstance(outer, dict):
            outer = self.doc["totals"] = {}
        outer[queue] = {"total": total, "stamp": stamp}

    def _get(self, key: str, queue: str) -> Any:
        outer = self.doc.get(key)
        return outer.get(queue) if isinstance(outer, dict) else None

    def _table(self, key: str, queue: str) -> dict[str, Any]:
        outer = self.doc.get(key)
        if not isinstance(outer, dict):
            outer = self.doc[key] = {}
        inner = outer.get(queue)
        if not isinstance(inner, dict):
            inner = outer[queue] = {}
        return inner

    def save(self) -> None:
        self.doc["version"] = FORMAT_VERSION
        data = (json.dumps(self.doc, indent=1, sort_keys=True) + "\n").encode()
        if data != self._saved:
            self.queue.write_record(self.name, data)
            self._saved = data


def now() -> float:
    return time.time()
