"""Periodic queues: Aegir's formulas (serial, batch, spread), when a queue is due, and
``hostctl queue list``."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from runnerhelpers import add_task, save_sites, sh_task, write_config

from hostctl.config import DEFAULT_QUEUES, QueueSettings
from hostctl.runners.periodic import TICK_SLACK, compute, is_due, next_run


def iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


# -- formulas ---------------------------------------------------------------------------


def test_batch_aegir_worked_example_250_sites() -> None:
    """Aegir's cron queue: 250 sites, threshold 100, 6 to 12 threads, every hour."""
    cron = DEFAULT_QUEUES["cron"]
    assert (cron.type, cron.frequency, cron.threshold) == ("batch", 3600.0, 100)
    c = compute(cron, 250)
    assert c.threads == 6
    assert c.frequency == 600
    assert c.items == 42
    assert c.total == 250


@pytest.mark.parametrize(("total", "threads", "frequency", "items"), [
    (0, 6, 600, 0),          # nothing to do: the minimum number of threads
    (600, 6, 600, 100),      # 6 threads exactly
    (900, 9, 400, 100),      # between the bounds: total / threshold
    (2000, 12, 300, 167),    # clamped to max_threads
])
def test_batch_threads_are_clamped(total: int, threads: int, frequency: float,
                                   items: int) -> None:
    c = compute(DEFAULT_QUEUES["cron"], total)
    assert (c.threads, c.frequency, c.items) == (threads, frequency, items)


def test_batch_frequency_and_items_round_up() -> None:
    q = QueueSettings("backup", "batch", 1000.0, 5, threshold=10, min_threads=1, max_threads=7)
    c = compute(q, 61)  # 6.1 threads -> 6
    assert c.threads == 6
    assert c.frequency == 167  # ceil(1000 / 6)
    assert c.items == 11  # ceil(61 / 6)


def test_serial_keeps_frequency_and_items() -> None:
    q = QueueSettings("tasks", "serial", 60.0, 5)
    for total in (0, 1, 1000):
        c = compute(q, total)
        assert (c.frequency, c.items, c.threads) == (60.0, 5, None)


@pytest.mark.parametrize(("frequency", "total", "calc_frequency", "items"), [
    (3600.0, 10, 360.0, 1),       # one item every 6 minutes
    (3600.0, 1000, 60.0, 17),     # never more often than every minute: more per run
    (86400.0, 250, 345.6, 1),
    (3600.0, 0, 86400.0, 0),      # nothing to spread: once a day, nothing per run
])
def test_spread(frequency: float, total: int, calc_frequency: float, items: int) -> None:
    q = QueueSettings("backup", "spread", frequency, 5)
    c = compute(q, total)
    assert c.frequency == pytest.approx(calc_frequency)
    assert c.items == items


def test_spread_covers_everything_within_the_frequency() -> None:
    q = QueueSettings("backup", "spread", 3600.0, 5)
    for total in (1, 7, 59, 60, 61, 250, 5000):
        c = compute(q, total)
        runs = q.frequency / c.frequency
        assert c.frequency >= 60
        assert runs * c.items >= total - 1e-9, total


# -- due and next run -------------------------------------------------------------------


def test_is_due() -> None:
    c = compute(QueueSettings("tasks", "serial", 600.0, 5), 0)
    now = 1_000_000.0
    assert is_due(c, None, now)  # never ran
    assert is_due(c, now - 600, now)
    assert is_due(c, now - 700, now)
    assert not is_due(c, now - 300, now)
    assert not is_due(c, now, now)
    assert is_due(c, now, now, force=True)


def test_a_minute_queue_runs_at_every_cron_tick_even_a_little_early() -> None:
    c = compute(QueueSettings("tasks", "serial", 60.0, 5), 0)
    now = 1_000_000.0
    assert TICK_SLACK > 0
    assert is_due(c, now - 60 + TICK_SLACK / 2, now)  # this tick came early
    assert not is_due(c, now - 30, now)


def test_a_disabled_queue_is_never_due_not_even_forced() -> None:
    c = compute(QueueSettings("backup", "batch", 60.0, 5, enabled=False), 10)
    now = 1_000_000.0
    assert not is_due(c, None, now)
    assert not is_due(c, now - 10_000, now)
    assert not is_due(c, None, now, force=True)
    assert next_run(c, None, now) is None


def test_next_run() -> None:
    c = compute(QueueSettings("tasks", "serial", 600.0, 5), 0)
    now = 1_000_000.0
    assert next_run(c, None, now) == now
    assert next_run(c, now - 100, now) == now - 100 + 600
    assert next_run(c, now - 601, now) == now
    batch = compute(DEFAULT_QUEUES["cron"]._replace(), 250)
    assert next_run(batch, now - 10, now) == now - 10 + 600


# -- queue list -------------------------------------------------------------------------


def test_queue_list_json_shows_every_queue(run_hostctl, home) -> None:
    write_config(home, {
        "tasks": {"cron": sh_task("true")},
        "queues": {
            "cron": {"type": "batch", "frequency": 3600, "threshold": 1, "min_threads": 1,
                     "max_threads": 6},
            "backup": {"type": "spread", "frequency": 86400, "enabled": True},
            "tasks": {"frequency": 120, "items": 7},
        },
    })
    save_sites(run_hostctl, home, ["a.example", "b.example", "c.example"])
    add_task(run_hostctl, "verify", "@a.example")
    res = run_hostctl("queue", "list", "--json")
    assert res.code == 0, res
    doc = {q["name"]: q for q in json.loads(res.out)}
    assert set(doc) == {"tasks", "cron", "backup", "task_gc", "ssl"}
    for q in doc.values():
        for key in ("type", "frequency", "items", "enabled", "pending", "last_run",
                    "next_run"):
            assert key in q, (q["name"], key)
        assert q["last_run"] is None  # nothing ran yet

    tasks = doc["tasks"]
    assert (tasks["type"], tasks["frequency"], tasks["items"]) == ("serial", 120, 7)
    assert tasks["enabled"] is True
    assert tasks["pending"] == 1
    cron = doc["cron"]
    assert cron["type"] == "batch"
    assert cron["total"] == 3 and cron["threads"] == 3
    assert cron["calc_frequency"] == 1200 and cron["calc_items"] == 1
    assert cron["next_run"] is not None  # never ran: due now
    backup = doc["backup"]
    assert backup["type"] == "spread" and backup["enabled"] is True
    # the built-in backup type covers the installed sites: none of these is
    assert backup["total"] == 0 and backup["calc_frequency"] == 86400
    gc = doc["task_gc"]
    assert gc["type"] == "batch" and gc["pending"] == 0


def test_queue_list_after_a_dispatch_shows_last_and_next_run(run_hostctl, home) -> None:
    write_config(home, {"queues": {"backup": {"enabled": False}}})
    save_sites(run_hostctl, home, ["a.example"])
    res = run_hostctl("dispatch")
    assert res.code == 0, res
    res = run_hostctl("queue", "list", "--json")
    assert res.code == 0, res
    doc = {q["name"]: q for q in json.loads(res.out)}
    tasks = doc["tasks"]
    assert tasks["last_run"] is not None
    assert iso(tasks["next_run"]) == pytest.approx(iso(tasks["last_run"]) + 60, abs=0.01)
    gc = doc["task_gc"]
    assert iso(gc["next_run"]) == pytest.approx(iso(gc["last_run"]) + gc["calc_frequency"],
                                                abs=0.01)
    assert doc["backup"]["enabled"] is False
    assert doc["backup"]["last_run"] is None and doc["backup"]["next_run"] is None

    res = run_hostctl("queue", "list")
    assert res.code == 0, res
    lines = res.out.splitlines()
    header = lines[0].split()
    for word in ("QUEUE", "TYPE", "EVERY", "ITEMS", "ENABLED", "PENDING", "LAST", "NEXT"):
        assert word in header
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"tasks", "cron", "backup", "task_gc", "ssl"}
    assert "serial" in rows["tasks"] and "60s" in rows["tasks"]
    assert " no " in rows["backup"] and "never" in rows["backup"]
    assert tasks["last_run"] in rows["tasks"] and tasks["next_run"] in rows["tasks"]
