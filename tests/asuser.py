"""Run hostctl, or any Python callable, as another UNIX user: a real second user's side.

The interpreter may live under a folder other users cannot enter, so a fresh ``python``
started as that user could not even import hostctl. Instead the test process imports every
module the child needs, forks, and the child drops its privileges (groups, gid, uid) before
it runs ``hostctl.cli.entry.main`` (the console script's) or the callable. The parent
collects stdout, stderr and the exit status.

:func:`frontend_users` makes the users and their group (as root) and removes them after.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pkgutil
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_preloaded = False
Env = dict[str, str | None]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path  # its own folder (HOME), 0700
    receipts: Path  # its HOSTCTL_RECEIPTS folder, inside ``home``
    groups: tuple[int, ...] = ()  # supplementary groups


@dataclass(frozen=True)
class Users:
    group: str  # the front-end group
    gid: int
    base: Path  # 0711: every user may pass through, none may list it
    members: tuple[User, ...]  # primary group: the front-end group
    guest: User  # in the front-end group only as a supplementary group
    outsider: User  # not in the front-end group
    backend: User  # a back end's own user: another primary group, the front-end group too


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


def can_make_users() -> str:
    """Why users cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "needs root: the tests create UNIX users and drop privileges to them"
    for tool in ("useradd", "groupadd", "userdel", "groupdel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def frontend_users(count: int = 2) -> Iterator[Users]:
    """A fresh front-end group with ``count`` members (primary group), a guest (another
    primary group, the front-end group as a supplementary one), an outsider (not in it)
    and a back-end user (as the guest: it must be in the group to give its folders to
    it); no logins, no homes made by useradd. Each user gets its own 0700 folder inside a
    base folder under /tmp that every user may pass through."""
    import grp
    import pwd

    tag = secrets.token_hex(3)
    group, other = f"hcfe{tag}", f"hcfe{tag}x"
    base = Path(tempfile.mkdtemp(prefix="hostctl-fe-", dir="/tmp"))
    groups: list[str] = []
    made: list[str] = []

    def user(name: str, *flags: str) -> User:
        _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", *flags, name)
        made.append(name)
        pw = pwd.getpwnam(name)
        own = base / name
        receipts = own / "receipts"
        for folder in (own, receipts):
            folder.mkdir(mode=0o700)
            os.chown(folder, pw.pw_uid, pw.pw_gid)
        extra = tuple(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
        return User(name, pw.pw_uid, pw.pw_gid, own, receipts, extra)

    try:
        os.chmod(base, 0o711)
        for name in (group, other):
            _run("groupadd", name)
            groups.append(name)
        members = tuple(user(f"hcfe{tag}u{i}", "-g", group) for i in range(count))
        guest = user(f"hcfe{tag}g", "-g", other, "-G", group)
        outsider = user(f"hcfe{tag}o", "-g", other)
        backend = user(f"hcfe{tag}b", "-g", other, "-G", group)
        yield Users(group, grp.getgrnam(group).gr_gid, base, members, guest, outsider,
                    backend)
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=60)
        for name in groups:
            subprocess.run(["groupdel", name], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def preload() -> None:
    """Import, in this process, everything a child will need once it cannot read the
    interpreter's folders any more."""
    global _preloaded
    if _preloaded:
        return
    import bz2  # noqa: F401  (tarfile's, loaded lazily by backups and restores)
    import gzip  # noqa: F401
    import lzma  # noqa: F401

    import filelock  # noqa: F401  (loaded lazily by what writes contexts)
    import platformdirs
    import tomli_w  # noqa: F401
    import typer._click

    import hostctl

    # hostctl's subpackages live in folders of their own (see pyproject.toml's
    # package-dir), which a walk of hostctl's own folder does not find
    subpackages = [importlib.import_module(f"hostctl.{name}")
                   for name in ("cli", "contexts", "queues", "provision")]
    with contextlib.suppress(ImportError):
        import zstandard  # noqa: F401  (a backup's compression, where installed)
    walked: list[Any] = []
    with contextlib.suppress(ImportError):  # a home in a cluster: the database's driver
        import psycopg

        walked.append(psycopg)
    subpackages.append(importlib.import_module("hostctl.runners"))
    for pkg in (hostctl, *subpackages, typer._click, platformdirs, *walked):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            with contextlib.suppress(Exception):
                importlib.import_module(info.name)
    from hostctl.cli.main import main

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        main(["--help"])
        main(["task", "add", "--help"])
    _preloaded = True


def _child(user: User | None, env: Env, w_out: int, w_err: int,
           body: Callable[[], int]) -> None:
    """In the forked child: become ``user`` (None: stay root), run ``body``, never return."""
    code = 70
    try:
        os.dup2(w_out, 1)
        os.dup2(w_err, 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8")
        if user is not None:
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.environ.clear()
            os.environ.update({"HOME": str(user.home), "PATH": CHILD_PATH,
                               "HOSTCTL_RECEIPTS": str(user.receipts), "LC_ALL": "C.UTF-8"})
            os.chdir(user.home)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        code = body()
    except BaseException as exc:  # report anything, then leave
        with contextlib.suppress(Exception):
            sys.stderr.write(f"child: {type(exc).__name__}: {exc}\n")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 70)


def _fork(user: User | None, env: Env, body: Callable[[], int], timeout: float) -> Outcome:
    preload()
    sys.stdout.flush()
    sys.stderr.flush()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r_out)
        os.close(r_err)
        _child(user, env, w_out, w_err, body)
    os.close(w_out)
    os.close(w_err)
    chunks: dict[int, list[bytes]] = {r_out: [], r_err: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0 and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
            for key, _ in sel.select(1.0 if killed else max(left, 0.05)):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
    finally:
        sel.close()
        os.close(r_out)
        os.close(r_err)
        _, status = os.waitpid(pid, 0)
    who = user.name if user else "root"
    if killed:
        raise AssertionError(f"the child running as {who} did not end within {timeout} s")
    out = b"".join(chunks[r_out]).decode("utf-8", "replace")
    err = b"".join(chunks[r_err]).decode("utf-8", "replace")
    return Outcome(os.waitstatus_to_exitcode(status), out, err)


def spawn_as(user: User | None, argv: list[str], env: Env, log: Path) -> int:
    """Start ``hostctl argv`` as ``user`` in the background, in a session of its own, its
    output appended to ``log``; its pid (the caller stops it: :func:`stop_spawned`)."""
    preload()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        def body() -> int:
            from hostctl.cli.entry import main

            return int(main(list(argv)))

        _child(user, env, fd, fd, body)
    return pid


def stop_spawned(pid: int, sig: int = signal.SIGKILL, timeout: float = 30) -> int | None:
    """Signal a spawned process's session and reap it; its exit code (None: it did not
    exit within ``timeout``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    return None


def hostctl_as(user: User | None, *argv: str, env: Env | None = None,
               timeout: float = 60) -> Outcome:
    """``hostctl argv`` run as ``user`` (None: as root, in a child all the same); ``env``
    adds to (a None value: removes from) its environment, for a user a bare one of HOME,
    PATH and HOSTCTL_RECEIPTS."""

    def body() -> int:
        from hostctl.cli.entry import main  # the console script's: task add's fast path

        return int(main(list(argv)))

    return _fork(user, dict(env or {}), body, timeout)


def call_as(user: User, fn: Callable[[], Any], timeout: float = 60) -> Any:
    """``fn()`` run as ``user``; its result must be JSON-serialisable."""

    def body() -> int:
        result = fn()
        sys.stdout.write(json.dumps({"result": result}))
        return 0

    got = _fork(user, {}, body, timeout)
    if got.code != 0:
        raise AssertionError(f"call as {user.name} failed ({got.code}): {got.err}")
    return json.loads(got.out)["result"]


def attempt(action: Callable[[], Any]) -> str:
    """Run a file-system action; return 'ok' or the name of the OSError it raised."""
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "ok"
