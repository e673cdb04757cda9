"""examples/quickstart.sh, the README's first command, runs to the end on a fresh home:
it installs a real site on the embedded default and shows it answering through nginx."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from provisionhelpers import need, world_readable_dir
from runnerhelpers import REPO, hostctl_exe

TASK_ROW = re.compile(r"^([0-9a-f]{20})\s+(\S+)\s+(@\S+)\s+(\S+)\s", re.M)


def test_quickstart_installs_a_site_that_answers() -> None:
    need("nginx", "/usr/sbin/nginx")  # CI installs it (tests/debian-packages)
    script = REPO / "examples" / "quickstart.sh"
    assert script.exists()
    # the script makes its folder in TMPDIR; nginx's workers must be able to reach it
    tmp = world_readable_dir("hostctl-quickstart-")
    try:
        bindir = str(Path(hostctl_exe()).parent)
        env = {**os.environ, "TMPDIR": str(tmp), "HOSTCTL_HOME": str(tmp / "not-this-one"),
               "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
        res = subprocess.run(["sh", str(script)], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout

        demos = [p for p in tmp.iterdir() if p.name.startswith("hostctl-demo.")]
        assert len(demos) == 1
        home = demos[0] / "home"
        assert (home / "spool").is_dir() and f"home: {home}" in out
        assert not (tmp / "not-this-one").exists()

        # the task list before and after the run: queued, then every task in success
        statuses: dict[str, list[str]] = {}
        types = set()
        for m in TASK_ROW.finditer(out):
            statuses.setdefault(m.group(1), []).append(m.group(4))
            types.add(m.group(2))
        assert len(statuses) == 3, out
        for task_id, seen in statuses.items():
            assert seen == ["queued", "success"], (task_id, seen)
        assert types == {"verify", "install", "hello"}

        # the install's log, then the backup run in the foreground
        assert "@example.com installed: example.com" in out
        assert "installed example.com" in out  # the platform's own install command
        assert re.search(r"--- hostctl: .*: success$", out, re.M)
        assert re.search(r"^backup .*/home/backups/example\.com-\d{8}\.\d{6}\.tar\.zst", out,
                         re.M)
        counts = dict(re.findall(r"^(success|error|queued)\s+(\d+)$", out, re.M))
        assert counts == {"success": "4", "error": "0", "queued": "0"}

        # the site answered through the script's own nginx, which is gone now
        assert "<h1>Welcome to example.com</h1>" in out
        assert "its database: sqlite examplecom" in out
        assert re.search(r"^HTTP 200$", out, re.M), out
        assert (home / "databases" / "server_master" / "examplecom.sqlite").is_file()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                assert str(demos[0]).encode() not in cmdline, "the demo's nginx still runs"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
