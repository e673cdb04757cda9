"""examples/quickstart.sh, the README's first command, runs to the end on a fresh home."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from runnerhelpers import REPO, hostctl_exe

TASK_ROW = re.compile(r"^([0-9a-f]{20})\s+(\S+)\s+(@\S+)\s+(\S+)\s", re.M)


def test_quickstart_runs_tasks_to_success(tmp_path: Path) -> None:
    script = REPO / "examples" / "quickstart.sh"
    assert script.exists()
    bindir = str(Path(hostctl_exe()).parent)
    env = {**os.environ, "TMPDIR": str(tmp_path),  # the script makes its home in TMPDIR
           "HOSTCTL_HOME": str(tmp_path / "fresh-home"),
           "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    res = subprocess.run(["sh", str(script)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout

    homes = [p for p in tmp_path.iterdir() if p.name.startswith("hostctl-demo.")]
    assert len(homes) == 1 and (homes[0] / "spool").is_dir()
    assert f"home: {homes[0]}" in out

    # the task list before and after the run: queued, then every task in success
    lists = [m for m in TASK_ROW.finditer(out)]
    statuses: dict[str, list[str]] = {}
    for m in lists:
        statuses.setdefault(m.group(1), []).append(m.group(4))
    assert len(statuses) == 3, out
    for task_id, seen in statuses.items():
        assert seen == ["queued", "success"], (task_id, seen)
    types = {m.group(2) for m in lists}
    assert types == {"verify", "hello"}

    # the command type's log, and the end line of its run
    assert f"hello from example.com on platform root {homes[0]}/www/app" in out
    assert re.search(r"--- hostctl: .*: success$", out, re.M)
    counts = dict(re.findall(r"^(success|error|queued)\s+(\d+)$", out, re.M))
    assert counts == {"success": "3", "error": "0", "queued": "0"}
