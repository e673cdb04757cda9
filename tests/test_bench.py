"""The benchmark harness works: ``bench/run.py --quick`` exits 0 and writes results that
hold what was asked for and agree with what happened, and tables. Timings are never judged
here: only counts, the order of percentiles, what became of the tasks, and that every
figure is derived from the run."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
STATS = ("n", "p50", "p90", "p99", "max")
FINAL = ("success", "warning", "error", "cancelled")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    doc = out / "performance.md"
    doc.write_text("# Performance\n\nHand-written text stays.\n")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--keep", "--json",
         str(out / "r.json"), "--doc", str(doc)],
        capture_output=True, text=True, timeout=180, cwd=out,
    )
    kept = re.search(r"^bench: kept (\S+)$", proc.stderr, re.M)
    root = Path(kept.group(1)) if kept else None
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert root is not None and root.is_dir(), proc.stderr
        yield {"results": json.loads((out / "r.json").read_text()), "doc": doc.read_text(),
               "stdout": proc.stdout, "root": root}
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def _latency(stats: dict[str, Any], n: int) -> None:
    assert set(STATS) <= set(stats)
    assert stats["n"] == n
    values = [stats[k] for k in ("min", *STATS[1:])]
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    assert values == sorted(values), stats  # min <= p50 <= p90 <= p99 <= max


def _events(task_file: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = task_file.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_quick_run_covers_every_section(quick: dict[str, Any]) -> None:
    res = quick["results"]
    asked = res["settings"]
    assert res["mode"] == "quick"
    assert res["errors"] == {}
    assert res["peers"] == []
    assert {"nproc", "memory_gib", "kernel", "python", "date"} <= set(res["machine"])
    assert "--quick" in res["command"]
    assert set(res["pickup"]) == {"hostctl", "floor: spawn"}
    _latency(res["pickup"]["hostctl"], asked["pickup"])
    _latency(res["pickup"]["floor: spawn"], asked["pickup"])
    assert set(res["end_to_end"]) == {"hostctl", "floor: python3 -c pass"}
    e2e = res["end_to_end"]["hostctl"]
    _latency(e2e, asked["e2e"])
    _latency(e2e["cli_exit"], asked["e2e"])
    _latency(res["end_to_end"]["floor: python3 -c pass"], max(asked["e2e"], 10))


def test_quick_drain_runs_every_task_exactly_once(quick: dict[str, Any]) -> None:
    res = quick["results"]
    n = res["settings"]["drain"]
    runs = res["drain"]["hostctl"]
    assert set(runs) == {"1", "2", "1x2"}
    for key, (workers, concurrency) in {"1": (1, 1), "2": (2, 1), "1x2": (1, 2)}.items():
        run = runs[key]
        assert (run["workers"], run["concurrency"]) == (workers, concurrency)
        assert run["tasks"] == run["succeeded"] == n
        assert run["rate"] > 0 and run["events_rate"] > 0

    # each drain's spool was moved aside (kept by --keep) before the next section: find
    # the three folders of n no-op tasks and read every task's own record
    drains = []
    for done in sorted((quick["root"] / "hostctl" / "trash").glob("*/done")):
        files = sorted(done.iterdir())
        envelopes = [_events(f)[0] for f in files]
        if len(files) == n and all(e["type"] == "noop" for e in envelopes):
            drains.append(files)
    assert len(drains) == 3, [len(d) for d in drains]
    for files in drains:
        ids = set()
        for path in files:
            envelope, events = _events(path)
            ids.add(envelope["id"])
            starts = [e for e in events if e.get("event") == "start"]
            ends = [e for e in events if e.get("event") == "end"]
            assert len(starts) == 1, (path.name, events)  # run once, not twice
            assert [e["outcome"] for e in ends] == ["success"], (path.name, events)
        assert len(ids) == n


def test_quick_idle_claim_and_memory_are_what_was_asked(quick: dict[str, Any]) -> None:
    res = quick["results"]
    asked = res["settings"]
    idle = res["idle"]["hostctl wait-queue"]
    window = asked["idle_s"]
    assert idle["window_s"] == window
    assert idle["wakeups_per_s"] == pytest.approx(idle["voluntary"] / window, abs=0.001)
    assert idle["cpu_ms_per_min"] == pytest.approx(idle["cpu_ms"] * 60 / window, abs=0.02)
    assert 0 <= idle["active_slots"] <= window / 0.1 + 1  # sampled every 100 ms

    claim = res["claim"]
    assert [row["queued"] for row in claim] == list(asked["claim_sizes"])
    for row in claim:
        assert row["n"] == asked["claim_reps"]
        assert 0 < row["min"] <= row["p50"] <= row["max"], row

    memory = res["memory"]
    total, batch = asked["memory"], asked["memory_batch"]
    assert memory["tasks"] == total
    assert [done for done, _ in memory["samples"]] == list(range(batch, total + 1, batch))
    assert all(rss > 0 for _, rss in memory["samples"])
    before, after = memory["rss_before_kib"], memory["rss_after_kib"]
    assert before > 0 and after > 0
    assert memory["growth_pct"] == round((after - before) / before * 100, 1)


def test_quick_kill9_ends_the_interrupted_task_and_runs_the_one_behind(
        quick: dict[str, Any]) -> None:
    kill = quick["results"]["kill9"]["hostctl"]
    assert kill["killed"] >= 2  # the worker and its running task
    interrupted = kill["interrupted"]
    assert interrupted["status"] in FINAL
    assert interrupted["outcomes"][0] == "lost"
    assert interrupted["attempts"] == len(interrupted["outcomes"])
    assert re.search(r"its worker \(pid \d+\) died during attempt 1",
                     interrupted["reasons"][0]), interrupted
    assert kill["interrupted_rerun"] is (interrupted["attempts"] >= 2)
    if kill["interrupted_rerun"]:  # its type may run again: the second run succeeded
        assert interrupted["outcomes"][-1] == "success"
        assert interrupted["status"] == "success"
    behind = kill["behind"]
    assert behind == {"status": "success", "attempts": 1, "outcomes": ["success"],
                      "reasons": []}
    assert kill["behind_ran"] is True

    # the results say what the spool says
    done = quick["root"] / "hostctl" / "home" / "spool" / "done"
    outcomes = {}
    for path in done.iterdir():
        envelope, events = _events(path)
        outcomes[envelope["type"]] = [e["outcome"] for e in events if e.get("event") == "end"]
    assert outcomes == {"hold": interrupted["outcomes"], "stamp": ["success"]}


def test_targets_are_derived_from_this_run(quick: dict[str, Any]) -> None:
    res = quick["results"]
    targets = res["targets"]
    sys.path.insert(0, str(BENCH))
    try:
        import report
    finally:
        sys.path.remove(str(BENCH))
    assert targets == report.targets({k: v for k, v in res.items() if k != "targets"})
    names = {t["target"] for t in targets}
    assert {"pickup p50", "pickup p99", "idle wake-ups", "idle CPU",
            "drain, 1 worker"} <= names
    for target in targets:
        assert {"target", "goal", "measured", "met"} <= set(target)
        assert (target["met"] is None) == (target["measured"] == "–"), target
    measured = {t["target"]: t for t in targets}
    # this run measured hostctl but no peer: a comparison with rq cannot be judged
    assert measured["end-to-end p50 vs rq enqueue"]["met"] is None
    assert measured["pickup p50"]["met"] is not None
    assert "hostctl target" in quick["stdout"]


def test_tables_are_spliced_into_the_document(quick: dict[str, Any]) -> None:
    doc = quick["doc"]
    assert doc.startswith("# Performance\n\nHand-written text stays.\n")
    assert doc.count("<!-- bench:begin") == 1 and doc.count("<!-- bench:end -->") == 1
    for title in ("Pickup latency", "End-to-end latency", "Drain rate", "Idle cost",
                  "Claim cost", "Memory of wait-queue", "kill -9"):
        assert f"### {title}" in doc
    sys.path.insert(0, str(BENCH))
    try:
        import report
    finally:
        sys.path.remove(str(BENCH))
    again = report.splice(doc, "replaced\n")
    assert again.count("<!-- bench:begin") == 1 and "replaced" in again
    assert "Pickup latency" not in again
    assert again.startswith("# Performance\n\nHand-written text stays.\n")


def test_the_cluster_bench_quick_run_measures_both_hostctl_queues(tmp_path: Path) -> None:
    """``bench/cluster.py --quick``: the spool and the cluster (a PostgreSQL it starts
    itself), every figure from this run; no peer started, no document touched."""
    out = tmp_path / "cluster.json"
    before = (REPO / "docs" / "cluster.md").read_bytes()
    res = subprocess.run([sys.executable, str(BENCH / "cluster.py"), "--quick", "--json",
                          str(out)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [r["name"] for r in doc["results"]] == ["hostctl spool",
                                                   "hostctl cluster (PostgreSQL)"]
    for r in doc["results"]:
        assert r["pickup"]["n"] == 40 and r["e2e"]["n"] == 10, r
        p = r["pickup"]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"], p
        assert [d["workers"] for d in r["drain"]] == [1, 2, 4]
        assert [d["tasks"] for d in r["drain"]] == [20, 40, 80]
        assert all(d["rate"] > 0 for d in r["drain"])
        assert r["drain"][0]["scaling"] == 1.0
    cluster = doc["results"][1]
    assert f"({cluster['pickup']['p50']:.1f} ms)" in doc["goals"][0]
    assert (REPO / "docs" / "cluster.md").read_bytes() == before


def test_the_task_list_bench_runs_every_command_on_the_tasks_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "list.json"
    res = subprocess.run([sys.executable, str(BENCH / "task_list.py"), "--tasks", "300",
                          "--runs", "1", "--json", str(out)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["tasks"] == 300 and "300 finished tasks written" in res.stderr
    assert {"task list (the newest 100)", "queue status", "metrics"} <= set(doc["runs"])
    assert {"serve GET /", "serve GET /metrics"} <= set(doc["runs"])
    for figures in doc["runs"].values():
        if "median_ms" in figures:
            assert 0 < figures["min_ms"] <= figures["median_ms"] <= figures["max_ms"]
    assert doc["runs"]["serve resident memory after them"]["rss_mib"] > 0
