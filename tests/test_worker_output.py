"""What the worker keeps of a task's output: secrets replaced where they stand as values
(a path that happens to contain one is left whole), a line without end cut at MAX_LINE
(the worker's memory stays bounded), and one line in hostctl.log for every task's end."""

from __future__ import annotations

import json
from pathlib import Path

from runnerhelpers import Procs, add_task, hostctl_log, save_sites, sh_task, status_of
from taskhelpers import wait_for, write_config

from hostctl.runners.worker import MAX_LINE
from hostctl.text import Redactor

KEY = "shopkey1"


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status figure in KiB (VmHWM: the peak resident size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_secret_is_replaced_where_it_stands_never_inside_a_path(
        run_hostctl, home: Path) -> None:
    script = ('k=$HOSTCTL_FIELD_CRON_KEY; echo "key=$k"; echo "url: https://u:$k@example.org/"'
              '; echo "twice $k$k"; echo "path /srv/$k.d/file and /srv/x-$k/y"; echo "said $k."')
    write_config(home, {"tasks": {"show": sh_task(script)}})
    save_sites(run_hostctl, home, ["shop.example"], cron_key=KEY)
    task = add_task(run_hostctl, "show", "@shop.example")
    assert run_hostctl("wait-queue", "--once").code == 0
    log = run_hostctl("task", "log", task).out
    assert "key=[secret]" in log
    assert "url: https://u:[secret]@example.org/" in log
    assert "twice [secret][secret]" in log
    assert "said [secret]." in log
    assert f"path /srv/{KEY}.d/file and /srv/x-{KEY}/y" in log  # whole, as it was


def test_the_redactor_never_changes_text_around_a_value() -> None:
    r = Redactor(["s3cret", "ab"])
    assert r.text("ab s3cret") == "ab [secret]"  # under 4 characters: left alone
    assert r.text("/tmp/s3cret/x s3crets s3cret_x") == "/tmp/s3cret/x s3crets s3cret_x"
    assert r.data(b"pw 's3cret'\n") == b"pw '[secret]'\n"
    assert not Redactor([]) and r


def test_a_huge_line_is_cut_and_the_worker_stays_small(run_hostctl, home: Path) -> None:
    # 200 MB without a newline, then two short lines
    script = "head -c 200000000 /dev/zero | tr '\\000' x; echo; echo after"
    write_config(home, {"tasks": {"flood": sh_task(script)}})
    save_sites(run_hostctl, home, ["a.example"])
    procs = Procs(home)
    try:
        daemon = procs.start("wait-queue", "--max-runtime", "300")
        wait_for(lambda: "started" in hostctl_log(home), 30, "wait-queue to start")
        before = vm(daemon.pid, "VmHWM")
        task = add_task(run_hostctl, "flood", "@a.example")
        wait_for(lambda: status_of(run_hostctl, task) == "success", 120, "the flood to end")
        grown = vm(daemon.pid, "VmHWM") - before
    finally:
        procs.cleanup()
    assert grown < 64 * 1024, f"the worker's peak grew by {grown} KiB"
    lines = (home / "logs" / f"{task}.log").read_bytes().split(b"\n")
    cut = next(ln for ln in lines if ln.startswith(b"xxx"))
    assert cut.startswith(b"x" * MAX_LINE)
    assert cut.endswith(f" [... {200_000_000 - MAX_LINE} more bytes of this line not kept]"
                        .encode())
    assert b"after" in lines


def test_every_task_end_is_one_line_in_hostctl_log(run_hostctl, home: Path) -> None:
    write_config(home, {"tasks": {"fine": sh_task("true"), "bad": sh_task("exit 3")}})
    save_sites(run_hostctl, home, ["a.example", "b.example"])
    fine = add_task(run_hostctl, "fine", "@a.example")
    bad = add_task(run_hostctl, "bad", "@b.example")
    assert run_hostctl("wait-queue", "--once").code == 0
    text = hostctl_log(home)
    assert f"task {fine} (fine on @a.example) ended: success" in text
    line = next(ln for ln in text.splitlines() if f"task {bad} (bad on @b.example)" in ln)
    assert "WARNING" in line and "ended: error: exited with status 3" in line, line
    doc = json.loads(run_hostctl("task", "show", bad, "--json").out)
    assert doc["status"] == "error"
