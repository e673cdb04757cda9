"""``pip install`` of a checkout an unprivileged user cannot write, and of the wheel it
builds, into that user's own venv on the system's own python3 (Debian 12's is 3.11.2, the
oldest Python the README supports); then the installed ``hostctl`` runs real commands as
that user, and the wheel's data files (completions, man page, example service files) are
under the venv's prefix.

As root, the checkout is root's and the user is ``nobody``; otherwise the checkout is made
read-only and the user is the one running the tests. The dependencies come from a wheelhouse
downloaded once for the module, so that the installs themselves need no index.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hostctl

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = os.environ.get("DEBIAN_PYTHON") or "/usr/bin/python3"
PATH = "/usr/local/bin:/usr/bin:/bin"
#: what a clean clone does not hold (when the tree is not a git checkout)
SKIP = shutil.ignore_patterns(".git", ".*_cache", ".hypothesis", "build", "dist", "*.egg-info",
                              "__pycache__", "*.pyc")
#: the installed data files and the checked-in files they are
DATA_FILES = {
    "share/bash-completion/completions/hostctl": "completions/hostctl.bash",
    "share/zsh/site-functions/_hostctl": "completions/hostctl.zsh",
    "share/fish/vendor_completions.d/hostctl.fish": "completions/hostctl.fish",
    "share/man/man1/hostctl.1": "docs/hostctl.1",
    "share/hostctl/examples/hostctl-wait-queue.service":
        "examples/service/hostctl-wait-queue.service",
    "share/hostctl/examples/hostctl-wait-queue.conf": "examples/service/hostctl-wait-queue.conf",
    "share/hostctl/examples/hostctl.logrotate": "examples/service/hostctl.logrotate",
    "share/hostctl/examples/hostctl.crontab": "examples/service/hostctl.crontab",
}


def _system_python_problem() -> str:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON}"
    p = subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True,
                       timeout=60)
    return "" if p.returncode == 0 else f"{SYSTEM_PYTHON} cannot make a venv (python3-venv)"


pytestmark = pytest.mark.skipif(bool(_system_python_problem()),
                                reason=_system_python_problem() or "-")


@dataclass(frozen=True)
class Sandbox:
    checkout: Path  # the repository, as a clean clone holds it; read-only, not the user's
    wheelhouse: Path  # the dependencies and the build's, as wheels
    user_dir: Path  # the user's own folder (its HOME)
    uid: int | None  # None: the user running the tests
    gid: int | None

    def run(self, *argv: str | Path, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.user_dir), "PATH": PATH, "LANG": "C.UTF-8",
               "TMPDIR": str(self.user_dir / "tmp"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "PIP_NO_CACHE_DIR": "1", "PIP_NO_INPUT": "1", **(env or {})}
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env,
                              cwd=self.user_dir, timeout=timeout, user=self.uid,
                              group=self.gid,
                              extra_groups=[] if self.uid is not None else None)

    def ok(self, *argv: str | Path, timeout: float = 300,
           env: dict[str, str] | None = None) -> str:
        p = self.run(*argv, timeout=timeout, env=env)
        assert p.returncode == 0, f"{argv}: {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p.stdout

    def venv(self, name: str) -> Path:
        venv = self.user_dir / name
        self.ok(SYSTEM_PYTHON, "-m", "venv", venv)
        return venv

    def pip(self, venv: Path, *args: str | Path) -> str:
        return self.ok(venv / "bin" / "python", "-m", "pip", *args[:1], "--no-index",
                       "--find-links", self.wheelhouse, *args[1:])


def clean_clone(target: Path) -> None:
    """The files a clone of this tree would hold, with what is not committed yet."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, timeout=60)
    if listed.returncode != 0 or shutil.which("git") is None:
        shutil.copytree(REPO, target, ignore=SKIP, symlinks=True)
        return
    for rel in sorted({n for n in listed.stdout.decode().split("\0") if n}):
        source = REPO / rel
        if not source.is_file() or source.is_symlink():
            continue  # deleted in the working tree, or a link: not needed to build
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / rel)


def read_only(top: Path) -> None:
    for folder, _, files in os.walk(top, topdown=False):
        for name in files:
            path = Path(folder, name)
            path.chmod(path.stat().st_mode & ~0o222 | 0o444)
        Path(folder).chmod(0o555)


def snapshot(top: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(top)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
            for p in [top, *top.rglob("*")]}


def requirements() -> list[str]:
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [*doc["project"]["dependencies"], *doc["build-system"]["requires"]]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    base = Path(tempfile.mkdtemp(prefix="hostctl-as-user-"))
    try:
        base.chmod(0o755)  # /tmp/pytest-of-USER is closed to other users
        checkout = base / "checkout"
        clean_clone(checkout)
        wheelhouse = base / "wheelhouse"
        version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % "
                                  "sys.version_info[:2])"], capture_output=True, text=True,
                                 timeout=60).stdout.strip()
        p = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--only-binary=:all:", "--python-version", version, "-d", str(wheelhouse),
             *requirements()], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"the wheelhouse (needs the package index):\n{p.stderr}"
        for path in [wheelhouse, *wheelhouse.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        user_dir = base / "user"
        (user_dir / "tmp").mkdir(parents=True)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            for path in (user_dir, user_dir / "tmp"):
                os.chown(path, uid, gid)
            user_dir.chmod(0o700)
            sandbox = Sandbox(checkout, wheelhouse, user_dir, uid, gid)
        else:
            sandbox = Sandbox(checkout, wheelhouse, user_dir, None, None)
        read_only(checkout)
        yield sandbox
    finally:
        for folder, dirs, _ in os.walk(base):
            for name in dirs:
                path = Path(folder, name)
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)


def use_hostctl(sandbox: Sandbox, venv: Path) -> None:
    """The installed console script, run as the user: its version and real commands."""
    exe = venv / "bin" / "hostctl"
    assert sandbox.ok(exe, "--version") == f"hostctl {hostctl.__version__}\n"
    home = sandbox.user_dir / f"home-{venv.name}"
    sandbox.ok(exe, "--home", home, "provision-save", "@s", "--context_type", "server")
    listed = sandbox.ok(exe, "--home", home, "context", "list")
    assert "@s" in listed and "server" in listed
    assert (home / "contexts" / "s.toml").is_file()
    # the installed package is the venv's, not the checkout's, on the system's python3, run
    # by the user
    where, version, uid = sandbox.ok(
        venv / "bin" / "python", "-c", "import hostctl.cli.main as m, os, sys; "
        "print(m.__file__, sys.version.split()[0], os.geteuid(), sep=chr(10))").split()
    assert Path(where).is_relative_to(venv)
    assert version == subprocess.run([SYSTEM_PYTHON, "-c", "import sys; "
                                      "print(sys.version.split()[0])"], capture_output=True,
                                     text=True, timeout=60).stdout.strip()
    assert int(uid) == (os.geteuid() if sandbox.uid is None else sandbox.uid)


def assert_data_files(venv: Path) -> None:
    for installed, source in DATA_FILES.items():
        path = venv / installed
        assert path.is_file(), installed
        assert path.read_bytes() == (REPO / source).read_bytes(), installed


def test_user_pip_installs_a_read_only_checkout_of_another_user(sandbox: Sandbox) -> None:
    before = snapshot(sandbox.checkout)
    if sandbox.uid is not None:
        assert sandbox.run("touch", sandbox.checkout / "probe").returncode != 0
    venv = sandbox.venv("from-checkout")
    sandbox.pip(venv, "install", sandbox.checkout)
    use_hostctl(sandbox, venv)
    assert_data_files(venv)
    assert snapshot(sandbox.checkout) == before  # not one file written into the checkout


def test_user_builds_a_wheel_of_it_and_installs_the_wheel(sandbox: Sandbox) -> None:
    before = snapshot(sandbox.checkout)
    builder = sandbox.venv("builder")
    dist = sandbox.user_dir / "dist"
    sandbox.pip(builder, "wheel", "--no-deps", "-w", dist, sandbox.checkout)
    (wheel,) = dist.glob("hostctl-*.whl")
    assert wheel.name == f"hostctl-{hostctl.__version__}-py3-none-any.whl"
    assert snapshot(sandbox.checkout) == before
    venv = sandbox.venv("from-wheel")
    sandbox.pip(venv, "install", wheel)
    use_hostctl(sandbox, venv)
    assert_data_files(venv)
    man = shutil.which("man")
    if man:  # the installed page is found and read as man reads it
        p = sandbox.run(man, "--warnings", "-l", venv / "share/man/man1/hostctl.1")
        assert p.returncode == 0 and "provision-save" in p.stdout, p.stderr
        assert p.stderr == "", p.stderr


@pytest.mark.skipif(shutil.which("pipx") is None, reason="needs pipx (Debian's pipx)")
def test_user_pipx_installs_a_read_only_checkout_of_another_user(sandbox: Sandbox) -> None:
    """The same with pipx, as the README offers it: the package in a venv of pipx's own
    under the user's folder, the command linked into the user's bin folder."""
    before = snapshot(sandbox.checkout)
    pipx = {"PIPX_HOME": str(sandbox.user_dir / "pipx"),
            "PIPX_BIN_DIR": str(sandbox.user_dir / "bin")}
    sandbox.ok(shutil.which("pipx") or "pipx", "install", "--python", SYSTEM_PYTHON,
               "--pip-args", f"--no-index --find-links {sandbox.wheelhouse}",
               sandbox.checkout, env=pipx)
    venv = sandbox.user_dir / "pipx" / "venvs" / "hostctl"
    use_hostctl(sandbox, venv)
    linked = sandbox.user_dir / "bin" / "hostctl"
    assert sandbox.ok(linked, "--version") == f"hostctl {hostctl.__version__}\n"
    assert_data_files(venv)
    assert snapshot(sandbox.checkout) == before
