"""``hostctl metrics``: Prometheus's text format, read back by Prometheus's own client's
parser; counters that only grow, whoever counted, whatever task_gc removed; a tally that
loses nothing and counts nothing twice when the processes that count are killed while
others fold their counts."""

from __future__ import annotations

import math
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import hostctl_exe
from prometheus_client.parser import text_string_to_metric_families
from taskhelpers import popen_hostctl, stop, wait_for, write_config

SITES = ["a.example", "b.example", "c.example"]


def families(text: str) -> dict[str, Any]:
    """name -> family, as Prometheus's parser reads the text (it raises on bad input)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    found = [s.value for s in fams[name].samples
             if (sample is None or s.name == sample) and
             all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, fams[name].samples)
    return float(found[0])


def setup_home(run_hostctl: Any, home: Path) -> Path:
    root = home.parent / "www"
    root.mkdir(parents=True, exist_ok=True)
    write_config(home, {
        "worker": {"backoff_base": 0.05, "backoff_max": 0.1, "kill_grace": 1},
        "tasks": {
            "ok": {"command": ["sh", "-c", "sleep 0.2"], "context_types": ["site"]},
            "fail": {"command": ["sh", "-c", "exit 3"], "context_types": ["site"]},
            "tempfail": {"command": ["sh", "-c", "exit 75"], "context_types": ["site"],
                         "max_attempts": 2},
            "slow": {"command": ["sh", "-c", "sleep 60"], "context_types": ["site"]},
        }})
    for argv in (["@srv", "--context_type", "server"],
                 ["@plat", "--context_type", "platform", "--root", str(root),
                  "--web_server", "@srv"],
                 *[[f"@{s}", "--context_type", "site", "--platform", "@plat"]
                   for s in SITES]):
        assert run_hostctl("provision-save", *argv).code == 0
    return root


def add(run_hostctl: Any, *argv: str) -> str:
    res = run_hostctl("task", "add", *argv)
    assert res.code == 0, res
    return res.out.strip()


def metrics(run_hostctl: Any) -> dict[str, Any]:
    res = run_hostctl("metrics")
    assert res.code == 0, res
    return families(res.out)


def test_metrics_count_attempts_and_read_the_queue_now(run_hostctl: Any, home: Path) -> None:
    setup_home(run_hostctl, home)
    fams = metrics(run_hostctl)  # a home with nothing run yet: valid, all zero
    assert fams["hostctl_task_attempts"].samples == []
    assert value(fams, "hostctl_queue_tasks", queue="hostctl", state="ready") == 0
    for argv in (("ok", "@a.example"), ("fail", "@b.example"), ("tempfail", "@c.example")):
        add(run_hostctl, *argv)
    assert run_hostctl("wait-queue", "--once").code == 0
    wait_for(lambda: run_hostctl("dispatch").code in (0, 1) and
             run_hostctl("task", "list", "--status", "queued").out.strip() == "", 30,
             "the retry to run")
    fams = metrics(run_hostctl)
    attempts = "hostctl_task_attempts"
    assert value(fams, attempts, type="ok", outcome="success") == 1
    assert value(fams, attempts, type="fail", outcome="error") == 1
    assert value(fams, attempts, type="tempfail", outcome="retry") == 1
    assert value(fams, attempts, type="tempfail", outcome="error") == 1
    # the histogram: cumulative buckets, +Inf = count, a 0.2 s run in (0.1, 0.5]
    hist = "hostctl_task_duration_seconds"
    buckets = sorted((float(s.labels["le"]), s.value) for s in fams[hist].samples
                     if s.name == hist + "_bucket" and s.labels["type"] == "ok")
    assert [b for b, _ in buckets][-1] == math.inf
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert dict(buckets)[0.1] == 0 and dict(buckets)[0.5] == 1 and dict(buckets)[math.inf] == 1
    assert value(fams, hist, hist + "_count", type="ok", outcome="success") == 1
    assert 0.2 <= value(fams, hist, hist + "_sum", type="ok", outcome="success") < 5
    assert value(fams, "hostctl_periodic_last_run_timestamp_seconds", queue="tasks") > 0
    # gauges, now: a paused queue with a ready task and a delayed one
    assert run_hostctl("queue", "pause").code == 0
    add(run_hostctl, "ok", "@a.example")
    add(run_hostctl, "ok", "@b.example", "--delay", "600")
    time.sleep(1.1)
    fams = metrics(run_hostctl)
    assert value(fams, "hostctl_queue_paused") == 1
    assert value(fams, "hostctl_queue_tasks", queue="hostctl", state="ready") == 1
    assert value(fams, "hostctl_queue_tasks", queue="hostctl", state="deferred") == 1
    assert value(fams, "hostctl_queue_oldest_ready_age_seconds", queue="hostctl") >= 1
    assert value(fams, "hostctl_tasks_running") == 0


def test_a_running_task_and_a_live_worker_show(run_hostctl: Any, home: Path) -> None:
    setup_home(run_hostctl, home)
    slow = add(run_hostctl, "slow", "@a.example")
    daemon = popen_hostctl(home, "wait-queue")
    try:
        wait_for(lambda: value(metrics(run_hostctl), "hostctl_tasks_running") == 1, 30,
                 "the task to run")
        fams = metrics(run_hostctl)
        [alive] = [s for s in fams["hostctl_workers_alive"].samples]
        assert alive.value == 1 and alive.labels["host"]
    finally:
        run_hostctl("task", "cancel", slow)
        stop(daemon)


def test_counters_stay_when_their_processes_end_and_tasks_are_collected(
        run_hostctl: Any, home: Path) -> None:
    setup_home(run_hostctl, home)
    for site in SITES:  # three processes count, one task each, then end
        add(run_hostctl, "ok", f"@{site}")
        ran = subprocess.run([hostctl_exe(), "wait-queue", "--once"], capture_output=True,
                             text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
    # each later process's sweep folded what the ended ones counted
    assert len(list((home / "spool" / "tally").glob("*.json"))) == 2
    before = value(metrics(run_hostctl), "hostctl_task_attempts", type="ok",
                   outcome="success")
    assert before == 3
    tally = home / "spool" / "tally"
    # the sweep folds what ended processes counted into the total, and no more
    assert run_hostctl("dispatch").code == 0
    assert sorted(p.name for p in tally.iterdir() if not p.name.startswith(".")) == \
        ["total.json"]
    from hostctl.paths import Paths
    from hostctl.runners.home import Home

    # task_gc's own call, with every finished task past its retention
    assert Home(Paths(home)).queue.collect(0, time.time() + 60, 100) == 3
    assert run_hostctl("task", "list").out.strip() == ""  # the tasks are gone ...
    assert value(metrics(run_hostctl), "hostctl_task_attempts", type="ok",
                 outcome="success") == before  # ... their count is not
    assert stat.S_IMODE(os.stat(tally).st_mode) == 0o700


def test_metrics_write_replaces_a_file_for_the_textfile_collector(
        run_hostctl: Any, home: Path, tmp_path: Path) -> None:
    setup_home(run_hostctl, home)
    out = tmp_path / "textfile" / "hostctl.prom"
    out.parent.mkdir()
    out.write_text("old")
    res = run_hostctl("metrics", "--write", str(out))
    assert res.code == 0 and res.out == "", res
    assert "hostctl_queue_paused 0" in out.read_text()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["hostctl.prom"]
    res = run_hostctl("metrics", "--write", str(tmp_path / "missing" / "x.prom"))
    assert res.code == 1 and res.err.startswith("hostctl: error: cannot write") \
        and len(res.err.splitlines()) == 1, res


_COUNTER = """
import os, sys, time
sys.path[:0] = [{src!r}]
from pathlib import Path
from hostctl.queues.tally import TallyBook
book = TallyBook(Path({folder!r}))
n = 0
while True:
    book.count("t" + str(n % 3), "success", n % 7 * 0.3)
    n += 1
    os.write(1, b"+")
"""


def test_the_tally_storm_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    """Counting processes killed with kill -9 at random while others fold: the sum read
    is every count acknowledged (a killed process may have written one more before it
    could say so, never less, never one counted twice)."""
    from hostctl.queues.tally import TallyBook

    folder = tmp_path / "tally"
    src = str(Path(__import__("hostctl").__file__).resolve().parents[1])
    code = _COUNTER.format(src=src, folder=str(folder))
    rng = random.Random(7)
    acked, kills = 0, 0
    folder_book = TallyBook(folder)
    deadline = time.monotonic() + 8
    procs: list[subprocess.Popen[bytes]] = []
    while time.monotonic() < deadline:
        while len(procs) < 4:
            procs.append(subprocess.Popen([sys.executable, "-c", code],
                                          stdout=subprocess.PIPE))
        time.sleep(rng.uniform(0.01, 0.2))
        victim = procs.pop(rng.randrange(len(procs)))
        victim.send_signal(signal.SIGKILL)
        out = victim.communicate()[0]
        acked += out.count(b"+")
        kills += 1
        folder_book.fold()
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        acked += proc.communicate()[0].count(b"+")
        kills += 1
    total = sum(t.attempts for t in TallyBook(folder).read())
    assert acked > 1000
    assert acked <= total <= acked + kills, (acked, total, kills)
    folder_book.fold()  # every counter is dead now: one total, the same sum
    assert sum(t.attempts for t in TallyBook(folder).read()) == total
    assert sorted(os.listdir(folder)) == [".fold", "total.json"]
    for t in TallyBook(folder).read():
        assert t.buckets[-1] == t.timed == t.attempts
        assert list(t.buckets) == sorted(t.buckets)


def test_a_fold_cut_short_is_finished_without_counting_twice(tmp_path: Path) -> None:
    """The total names what it folded before the files go: a fold killed in between
    leaves files the next fold removes without adding them again."""
    from hostctl.queues import tally

    folder = tmp_path / "tally"
    book = tally.TallyBook(folder)
    book.count("t", "success", 1.0)
    book.count("t", "error", None)
    name = book._name
    os.close(book._lock_fd)  # this process "dies": its lock is free
    real_remove = tally.TallyBook._remove

    def crash(self: Any, name: str) -> None:
        raise OSError("killed here")

    tally.TallyBook._remove = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError):
            tally.TallyBook(folder).fold()
    finally:
        tally.TallyBook._remove = real_remove  # type: ignore[method-assign]
    assert (folder / f"{name}.json").exists()  # left behind, but already in the total
    assert {(t.outcome, t.attempts) for t in tally.TallyBook(folder).read()} == \
        {("success", 1), ("error", 1)}
    assert tally.TallyBook(folder).fold() == 0
    assert not (folder / f"{name}.json").exists()
    assert {(t.outcome, t.attempts, t.timed) for t in tally.TallyBook(folder).read()} == \
        {("success", 1, 1), ("error", 1, 0)}
