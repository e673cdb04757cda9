"""``hostctl cron install|remove|show`` against the real ``crontab`` command (Debian's cron
package). The user's crontab is saved first and put back exactly afterwards."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from runnerhelpers import add_task, hostctl_exe, save_sites, sh_task, write_config

SYSTEM_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]

CRONTAB = shutil.which("crontab")
pytestmark = pytest.mark.skipif(
    CRONTAB is None, reason="the crontab command is not installed (Debian package: cron)")

BEGIN, END = "# BEGIN hostctl", "# END hostctl"

# every kind of line a person leaves in a crontab; crontab itself refuses a last line
# without a newline, so that one cannot occur
ODD = (
    "# my own jobs  \n"
    'MAILTO=""\n'
    "SHELL=/bin/sh\n"
    "\n"
    "   # an indented comment\n"
    "0 3 * * * /usr/bin/true   --flag   \n"
    "\t# a tab\n"
    "@reboot echo 'two  spaces # not a comment'\n"
    "*/5 * * * * echo \"a percent \\% sign\" >/dev/null\n"
    "\n"
    "\n"
)


def crontab(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert CRONTAB is not None
    return subprocess.run([CRONTAB, *args], input=stdin, capture_output=True, text=True,
                          timeout=30)


def current() -> str:
    res = crontab("-l")
    if res.returncode != 0:
        assert "no crontab" in res.stderr.lower(), res.stderr
        return ""
    return res.stdout


def set_crontab(text: str) -> None:
    if text:
        res = crontab("-", stdin=text)
        assert res.returncode == 0, res.stderr
    else:
        crontab("-r")
    assert current() == text


@pytest.fixture(autouse=True)
def saved_crontab():
    """Keep the user's real crontab: read it first, write it back exactly at the end."""
    res = crontab("-l")
    original = res.stdout if res.returncode == 0 else None
    if original is None:
        assert "no crontab" in res.stderr.lower(), res.stderr
    yield
    if original is None:
        crontab("-r")
        assert crontab("-l").returncode != 0
    else:
        put = crontab("-", stdin=original)
        assert put.returncode == 0, put.stderr
        assert crontab("-l").stdout == original


def backups(home: Path) -> list[Path]:
    folder = home / "crontab"
    return sorted(folder.glob("crontab.*")) if folder.exists() else []


def block_of(text: str) -> str:
    lines = text.splitlines(keepends=True)
    b = lines.index(BEGIN + "\n")
    e = lines.index(END + "\n")
    return "".join(lines[b:e + 1])


def test_install_keeps_every_other_line_is_idempotent_and_remove_restores(
        home, hostctl_process, run_hostctl) -> None:
    set_crontab(ODD)
    res = hostctl_process("cron", "install")
    assert res.returncode == 0, res.stderr
    assert "Installed" in res.stdout
    after = current()
    assert after.startswith(ODD)  # byte for byte, the block comes after
    block = after[len(ODD):]
    assert block == block_of(after)
    lines = block.splitlines()
    assert lines[0] == BEGIN and lines[-1] == END and len(lines) == 3
    argv = shlex.split(lines[1].removeprefix("* * * * * "))
    assert lines[1].startswith("* * * * * ")
    assert argv[0] == "PATH=" + ":".join([os.path.dirname(hostctl_exe()), *SYSTEM_PATH])
    assert argv[1:] == [hostctl_exe(), "--home", str(home), "dispatch"]
    assert os.path.isabs(argv[1])
    saved = backups(home)
    assert len(saved) == 1
    assert saved[0].read_text() == ODD

    again = hostctl_process("cron", "install")
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stdout
    assert current() == after
    assert len(backups(home)) == 1  # nothing written, nothing saved

    # show and remove do not depend on how hostctl was started: run them in-process
    show = run_hostctl("cron", "show")
    assert show.code == 0, show
    assert show.out == block

    res = run_hostctl("cron", "remove")
    assert res.code == 0, res
    assert "Removed" in res.out
    assert current() == ODD
    assert len(backups(home)) == 2
    assert backups(home)[-1].read_text() == after

    res = run_hostctl("cron", "remove")
    assert res.code == 0, res
    assert "No hostctl crontab entry" in res.out
    assert current() == ODD
    show = run_hostctl("cron", "show")
    assert show.code == 1
    assert "cron install" in show.err


def test_install_replaces_an_old_block_in_place(home, hostctl_process, run_hostctl) -> None:
    before = "# mine\n0 1 * * * /bin/true\n"
    after = "  \n30 2 * * 0 /bin/false # weekly\n"
    old_block = f"{BEGIN}\n* * * * * /old/bin/hostctl --home /old/home dispatch\n{END}\n"
    set_crontab(before + old_block + after)
    res = hostctl_process("cron", "install")
    assert res.returncode == 0, res.stderr
    text = current()
    assert text.startswith(before) and text.endswith(after)
    new_block = text[len(before):len(text) - len(after)]
    assert "/old/" not in new_block
    assert str(home) in new_block and new_block.startswith(BEGIN + "\n")
    assert backups(home)[-1].read_text() == before + old_block + after
    res = run_hostctl("cron", "remove")
    assert res.code == 0, res
    assert current() == before + after


def test_install_into_an_empty_crontab_and_remove(home, hostctl_process, run_hostctl) -> None:
    set_crontab("")
    res = hostctl_process("cron", "install")
    assert res.returncode == 0, res.stderr
    text = current()
    assert text == block_of(text)
    res = run_hostctl("cron", "remove")
    assert res.code == 0, res
    assert current() == ""


@pytest.mark.parametrize("bad", [
    f"0 1 * * * /bin/true\n{BEGIN}\n* * * * * /x dispatch\n",              # no end
    f"{END}\n0 1 * * * /bin/true\n{BEGIN}\n",                              # end first
    f"{BEGIN}\n{END}\n# mine\n{BEGIN}\n* * * * * /x dispatch\n{END}\n",    # two blocks
])
def test_unbalanced_markers_are_refused_and_the_crontab_unchanged(
        home, run_hostctl, bad: str) -> None:
    set_crontab(bad)
    for action in ("install", "remove"):
        res = run_hostctl("cron", action)
        assert res.code == 2, res
        assert "unbalanced hostctl markers" in res.err
        assert "Traceback" not in res.err
        assert current() == bad
    assert backups(home) == []


def test_the_installed_line_works_in_crons_bare_environment(
        home, hostctl_process, tmp_path) -> None:
    set_crontab("")
    assert hostctl_process("cron", "install").returncode == 0
    line = block_of(current()).splitlines()[1]
    command = line.removeprefix("* * * * * ")
    # cron runs the line with sh, a bare PATH and no HOSTCTL_HOME
    res = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""  # cron mails nothing
    assert (home / "spool" / "queues.json").exists()
    assert "queue tasks" in (home / "logs" / "hostctl.log").read_text()


def as_cron_runs(line: str) -> str:
    """The command cron hands to sh: the text after the five fields, where an unescaped
    '%' ends the command and a backslash before '%' is dropped (crontab(5))."""
    text = line.split(" ", 5)[5]
    out, escaped = "", False
    for c in text:
        if escaped:
            out += c if c == "%" else "\\" + c
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "%":
            break
        else:
            out += c
    return out + ("\\" if escaped else "")


@pytest.mark.parametrize("name", ["home with space", "50% off", "a'b\"c$d;e", "%%x"])
def test_the_line_reaches_an_odd_home_and_gives_tasks_a_path(
        run_hostctl, hostctl_process, tmp_path, monkeypatch, name: str) -> None:
    home = tmp_path / name
    monkeypatch.setenv("HOSTCTL_HOME", str(home))
    seen = tmp_path / "seen"
    save_sites(run_hostctl, home, ["a.example"])
    write_config(home, {"tasks": {"record": sh_task('echo "$PATH" > "$0"', str(seen))}})
    add_task(run_hostctl, "record", "@a.example")
    set_crontab("")
    res = hostctl_process("cron", "install", env={"HOSTCTL_HOME": str(home)})
    assert res.returncode == 0, res.stderr
    line = block_of(current()).splitlines()[1]
    res = subprocess.run(["/bin/sh", "-c", as_cron_runs(line)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert (home / "spool" / "queues.json").exists()
    path = seen.read_text().strip().split(":")
    assert path[0] == os.path.dirname(hostctl_exe()) and "/usr/local/bin" in path


def test_a_home_no_crontab_line_can_carry_is_refused(run_hostctl, tmp_path,
                                                     monkeypatch) -> None:
    set_crontab(ODD)
    for name in ("new\nline", "back\\%slash"):
        monkeypatch.setenv("HOSTCTL_HOME", str(tmp_path / name))
        res = run_hostctl("cron", "install")
        assert res.code == 2, res
        assert res.err.count("\n") == 1 and "choose another path" in res.err
        assert current() == ODD
        assert not (tmp_path / name).exists()
