"""The benchmark harness works: ``bench/run.py --quick`` exits 0 and writes well-formed
results and tables. Timings are never asserted here, only their shape."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
STATS = ("n", "p50", "p90", "p99", "max")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    doc = out / "performance.md"
    doc.write_text("# Performance\n\nHand-written text stays.\n")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--json", str(out / "r.json"),
         "--doc", str(doc)],
        capture_output=True, text=True, timeout=180, cwd=out,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"results": json.loads((out / "r.json").read_text()), "doc": doc.read_text(),
            "stdout": proc.stdout}


def _latency(stats: dict[str, Any]) -> None:
    assert set(STATS) <= set(stats)
    assert stats["n"] > 0
    values = [stats[k] for k in STATS[1:]]
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    assert values == sorted(values)  # p50 <= p90 <= p99 <= max


def test_quick_run_covers_every_section(quick: dict[str, Any]) -> None:
    res = quick["results"]
    assert res["mode"] == "quick"
    assert res["errors"] == {}
    assert res["peers"] == []
    assert {"nproc", "memory_gib", "kernel", "python", "date"} <= set(res["machine"])
    assert "--quick" in res["command"]
    for key in ("pickup", "end_to_end"):
        assert "hostctl" in res[key]
        for stats in res[key].values():
            _latency(stats)
    assert "floor: spawn" in res["pickup"]
    assert "floor: python3 -c pass" in res["end_to_end"]


def test_quick_run_drain_idle_claim_memory_kill(quick: dict[str, Any]) -> None:
    res = quick["results"]
    runs = res["drain"]["hostctl"]
    assert set(runs) == {"1", "2", "1x2"}
    for run in runs.values():
        assert run["succeeded"] == run["tasks"] > 0
        assert run["rate"] > 0
    idle = res["idle"]["hostctl wait-queue"]
    assert idle["window_s"] > 0 and idle["cpu_ms"] >= 0 and idle["voluntary"] >= 0
    sizes = [row["queued"] for row in res["claim"]]
    assert sizes == sorted(sizes) and len(sizes) >= 2
    assert all(row["p50"] > 0 for row in res["claim"])
    memory = res["memory"]
    assert memory["rss_before_kib"] > 0 and memory["rss_after_kib"] > 0
    kill = res["kill9"]["hostctl"]
    assert kill["behind"]["status"] in ("success", "error", "warning")
    assert kill["interrupted"]["status"] in ("success", "error", "warning")
    assert isinstance(kill["interrupted_rerun"], bool)


def test_targets_are_listed_not_judged(quick: dict[str, Any]) -> None:
    targets = quick["results"]["targets"]
    assert len(targets) >= 8
    for target in targets:
        assert {"target", "goal", "measured", "met"} <= set(target)
        assert target["met"] in (True, False, None)
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
