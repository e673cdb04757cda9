"""Shared fixtures: every test gets its own home; run_hostctl runs the CLI in-process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hostctl.cli.entry import main  # the console script: task add takes its fast path


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """The session's PostgreSQL, started on first use, with the role ``hostctl`` (see
    tests/pghelpers.py)."""
    from pghelpers import SECRET
    from provisionhelpers import start_postgres

    server = start_postgres()
    try:
        server.psql(f"CREATE ROLE hostctl LOGIN PASSWORD '{SECRET}'")
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated, not yet created home for each test (HOSTCTL_HOME points at it)."""
    path = tmp_path / "home"
    monkeypatch.setenv("HOSTCTL_HOME", str(path))
    monkeypatch.delenv("_HOSTCTL_COMPLETE", raising=False)
    yield path


@pytest.fixture(autouse=True)
def every_backup_restores(home: Path, tmp_path: Path) -> Iterator[None]:
    """After each test: every backup its homes now hold passes the restore checker."""
    yield
    problems = backups_that_would_not_restore(tmp_path)
    assert not problems, "backups that would not restore: " + "; ".join(problems)


def backups_that_would_not_restore(top: Path) -> list[str]:
    """Each backup under ``top`` (in a home's backups/ folder, down to ``*/*/backups``)
    that this version of hostctl made (its manifest lists what was ``skipped``) and that
    the restore checker refuses, would leave something out of, or cannot extract into
    a scratch folder: its name and why."""
    from hostctl.errors import HostctlError
    from hostctl.provision.backup import Archive

    problems = []
    found = {p for pattern in ("*/backups/*.tar.gz", "*/*/backups/*.tar.gz",
                               "*/backups/*.tar.zst", "*/*/backups/*.tar.zst")
             for p in top.glob(pattern)}
    for path in sorted(found):
        try:
            archive = Archive(path)
        except HostctlError:
            continue  # not a backup (a test's stand-in file)
        with archive:
            if "skipped" not in archive.doc:
                continue  # an older version's archive a test made on purpose
            scratch = Path(tempfile.mkdtemp(prefix="restore-check-"))
            try:
                left_out = archive.extract_files(scratch / "site", warn=lambda _: None)
                if left_out:
                    problems.append(f"{path.name}: restore leaves out "
                                    + ", ".join(str(s) for s in left_out))
            except HostctlError as exc:
                problems.append(f"{path.name}: {exc}")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return problems


@pytest.fixture
def run_hostctl(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``hostctl *argv`` in this process; return exit code, stdout and stderr."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(int(code), captured.out, captured.err)

    return run


def hostctl_exe() -> str:
    """The installed console script (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).with_name("hostctl")
    found = str(beside) if beside.exists() else shutil.which("hostctl")
    if not found:
        pytest.fail("the hostctl console script is not installed: pip install -e .")
    return found


@pytest.fixture
def hostctl_process(home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed ``hostctl`` console script as a real subprocess."""

    def run(*argv: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOSTCTL_HOME": str(home)}
        env.update(kw.pop("env", {}) or {})  # type: ignore[call-overload]
        return subprocess.run(
            [hostctl_exe(), *argv], capture_output=True, text=True, timeout=timeout,
            env=env, **kw,  # type: ignore[arg-type]
        )

    return run


@pytest.fixture
def procs(home: Path):
    """Background hostctl processes of this test's home, stopped when it ends."""
    from runnerhelpers import Procs

    p = Procs(home)
    yield p
    p.cleanup()
