"""The crontab entry for ``hostctl dispatch``, between marker lines.

``install`` adds or replaces the block and keeps every other line byte for byte; it is
idempotent (the same crontab is not written again). ``remove`` removes only the block.
Unbalanced markers are refused, the previous crontab is saved under the home first, and the
whole ``crontab -l`` / edit / ``crontab -`` cycle runs under an flock so that two hostctl
processes cannot lose each other's edit. The real ``crontab`` command does the reading and
writing, so cron's own checks and permissions apply.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hostctl.errors import Conflict, InvalidInput, OperationFailed
from hostctl.files import flocked, write_atomic
from hostctl.paths import Paths

BEGIN = "# BEGIN hostctl"
END = "# END hostctl"


def hostctl_argv() -> list[str]:
    """How to run this very hostctl from a bare environment (cron, a supervisor)."""
    first = sys.argv[0] if sys.argv else ""
    if first.endswith("__main__.py") or not first:
        return [sys.executable, "-P", "-m", "hostctl"]  # -P: not the working folder's
    found = first if os.sep in first else (shutil.which(first) or first)
    return [os.path.abspath(found)]


#: what a bare environment (cron's /usr/bin:/bin, a supervisor's) lacks for tasks
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def search_path(executable: str) -> str:
    """PATH for hostctl started by cron or a supervisor, and so for its tasks: the folder
    of ``executable`` (hostctl's) first, then the system's."""
    first = os.path.dirname(executable)
    folders = [first] if first and ":" not in first else []
    folders += [f for f in SYSTEM_PATH if f not in folders]
    return ":".join(folders)


def line_safe(what: str, text: str) -> str:
    """``text`` if a line-based configuration (crontab, Supervisor, systemd) can hold it;
    else InvalidInput: a control character would end the line or hide in it."""
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        bad = bad or "?"
    if bad is not None:
        raise InvalidInput(f"{what} {text!r} holds a control character or bytes that are "
                           "not UTF-8; a configuration line cannot carry it: choose "
                           "another path")
    return text


def dispatch_line(paths: Paths) -> str:
    argv = [*hostctl_argv(), "--home", str(paths.home), "dispatch"]
    for arg in argv:
        line_safe("the path", arg)
    # cron runs the line with sh and PATH=/usr/bin:/bin; tasks inherit dispatch's PATH
    line = " ".join([f"PATH={shlex.quote(search_path(argv[0]))}",
                     *(shlex.quote(a) for a in argv)])
    if "\\%" in line:
        raise InvalidInput(f"a path in {line!r} holds a backslash before a '%', which cron "
                           "cannot carry; choose another path")
    # cron turns an unescaped '%' into a new line (crontab(5)); '\%' reaches sh as '%'
    return "* * * * * " + line.replace("%", "\\%")


def block(paths: Paths) -> str:
    return f"{BEGIN}\n{dispatch_line(paths)}\n{END}\n"


@dataclass(frozen=True)
class CronChange:
    changed: bool
    crontab: str
    backup: Path | None = None


def split(text: str) -> tuple[str, str | None, str]:
    """(before, block or None, after); refuses unbalanced or repeated markers."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == END]
    if not begins and not ends:
        return text, None, ""
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise Conflict(
            f"the crontab has unbalanced hostctl markers ({len(begins)} '{BEGIN}', "
            f"{len(ends)} '{END}'); fix it with crontab -e first"
        )
    b, e = begins[0], ends[0]
    return "".join(lines[:b]), "".join(lines[b:e + 1]), "".join(lines[e + 1:])


def read_crontab() -> str:
    proc = _crontab(["-l"], None, check=False)
    if proc.returncode != 0:
        if "no crontab" in proc.stderr.lower():
            return ""
        raise OperationFailed(f"crontab -l failed: {proc.stderr.strip()}")
    return proc.stdout


def write_crontab(text: str) -> None:
    _crontab(["-"], text, check=True)


def _crontab(args: list[str], stdin: str | None, check: bool) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("crontab")
    if exe is None:
        raise OperationFailed("the crontab command is not installed (Debian: apt install cron)")
    proc = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)
    if check and proc.returncode != 0:
        raise OperationFailed(f"crontab {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    folder = paths.ensure_dir(paths.home / "crontab")
    with flocked(folder / ".lock"):
        yield


def _backup(paths: Paths, text: str) -> Path:
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:]
    path = paths.home / "crontab" / f"crontab.{stamp}"
    write_atomic(path, text.encode())
    return path


def install(paths: Paths) -> CronChange:
    wanted = block(paths)  # a home no line can carry is refused before anything is made
    with _locked(paths):
        text = read_crontab()
        before, current, after = split(text)
        if current == wanted:
            return CronChange(False, text)
        if current is None:
            sep = "" if not before or before.endswith("\n") else "\n"
            new = before + sep + wanted
        else:
            new = before + wanted + after
        saved = _backup(paths, text)
        write_crontab(new)
        return CronChange(True, new, saved)


def remove(paths: Paths) -> CronChange:
    with _locked(paths):
        text = read_crontab()
        before, current, after = split(text)
        if current is None:
            return CronChange(False, text)
        saved = _backup(paths, text)
        new = before + after
        write_crontab(new)
        return CronChange(True, new, saved)


def show() -> str | None:
    return split(read_crontab())[1]
