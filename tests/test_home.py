"""The home: --home beats HOSTCTL_HOME, created 0700 on the first write, never created by a
read, and a home owned by another user is refused."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import hostctl_exe

from hostctl.errors import ExitStatus

NOBODY = 65534


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_home_flag_beats_the_environment(run_hostctl, home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    r = run_hostctl("--home", str(other), "provision-save", "@srv", "--context_type", "server")
    assert r.code == 0, r
    assert (other / "contexts" / "srv.toml").is_file()
    assert not home.exists()
    listed = run_hostctl("--home", str(other), "context", "list", "--json")
    assert [c["name"] for c in json.loads(listed.out)] == ["@srv"]
    # and the environment's home is what is used without the flag
    assert json.loads(run_hostctl("context", "list", "--json").out) == []
    assert run_hostctl("context", "show", "@srv").code == ExitStatus.USAGE


def test_environment_home_is_used(run_hostctl, home: Path) -> None:
    assert run_hostctl("provision-save", "@srv", "--context_type", "server").code == 0
    assert (home / "contexts" / "srv.toml").is_file()


def test_relative_home_flag_is_taken_from_the_cwd(
    run_hostctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = run_hostctl("--home", "rel/home", "provision-save", "@srv", "--context_type", "server")
    assert r.code == 0, r
    assert (tmp_path / "rel" / "home" / "contexts" / "srv.toml").is_file()
    monkeypatch.chdir("/")
    r = run_hostctl("--home", str(tmp_path / "rel" / "home"), "context", "show", "@srv")
    assert r.code == 0, r


def test_home_is_created_on_first_write_with_mode_0700(
    run_hostctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / "a" / "b" / "home"
    monkeypatch.setenv("HOSTCTL_HOME", str(deep))
    old = os.umask(0o022)
    try:
        r = run_hostctl("provision-save", "@srv", "--context_type", "server")
    finally:
        os.umask(old)
    assert r.code == 0, r
    assert stat.S_IMODE(deep.stat().st_mode) == 0o700
    assert deep.stat().st_uid == os.geteuid()
    assert stat.S_IMODE((deep / "contexts").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "argv",
    [
        ("context", "list"),
        ("context", "list", "--json"),
        ("context", "list", "--type", "site"),
        ("context", "show", "@missing"),
        ("context", "show", "@missing", "--json"),
        ("context", "fields"),
        ("task", "list", "--json"),
        ("queue", "list"),
        ("--version",),
        ("--help",),
    ],
    ids=lambda a: " ".join(a),
)
def test_reading_does_not_create_the_home(run_hostctl, home: Path, argv) -> None:
    r = run_hostctl(*argv)
    assert r.code in (0, ExitStatus.USAGE), r
    assert "Traceback" not in r.err
    assert not home.exists()


def test_reading_a_missing_context_is_a_clean_error(run_hostctl, home: Path) -> None:
    r = run_hostctl("context", "show", "@missing")
    assert r.code == ExitStatus.USAGE
    assert len(r.err.strip().splitlines()) == 1
    assert "@missing" in r.err
    assert not home.exists()


@pytest.fixture
def foreign_home(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    path = tmp_path / "foreign"
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY, NOBODY)
    return path


def refused(r, path: Path) -> None:
    assert r.code == ExitStatus.USAGE, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    assert str(path) in lines[0]


def test_foreign_home_is_refused_for_writing(run_hostctl, foreign_home: Path) -> None:
    r = run_hostctl("--home", str(foreign_home), "provision-save", "@srv",
                    "--context_type", "server")
    refused(r, foreign_home)
    assert tree(foreign_home) == []
    assert foreign_home.stat().st_uid == NOBODY


def test_foreign_home_from_the_environment_is_refused(
    run_hostctl, foreign_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTCTL_HOME", str(foreign_home))
    refused(run_hostctl("provision-save", "@srv", "--context_type", "server"), foreign_home)
    assert tree(foreign_home) == []


def test_foreign_home_with_contexts_is_not_written(
    run_hostctl, foreign_home: Path, tmp_path: Path
) -> None:
    # a home that was filled by its owner, then visited by root
    own = tmp_path / "own"
    assert run_hostctl("--home", str(own), "provision-save", "@srv",
                       "--context_type", "server").code == 0
    contexts = foreign_home / "contexts"
    contexts.mkdir(mode=0o700)
    (contexts / "srv.toml").write_bytes((own / "contexts" / "srv.toml").read_bytes())
    for p in (contexts, contexts / "srv.toml"):
        os.chown(p, NOBODY, NOBODY)
    before = {p: p.read_bytes() for p in contexts.iterdir()}
    for argv in (("provision-save", "@srv", "--http_port", "81"),
                 ("provision-save", "@new", "--context_type", "server"),
                 ("provision-save", "@srv", "--delete"),
                 ("task", "add", "verify", "@srv")):
        refused(run_hostctl("--home", str(foreign_home), *argv), foreign_home)
    assert {p: p.read_bytes() for p in contexts.iterdir()} == before
    assert tree(foreign_home) == ["contexts", "contexts/srv.toml"]


def test_foreign_home_in_a_real_process(hostctl_process, foreign_home: Path) -> None:
    p = hostctl_process("provision-save", "@srv", "--context_type", "server",
                        env={"HOSTCTL_HOME": str(foreign_home)})
    assert p.returncode == ExitStatus.USAGE, p
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stdout == ""
    assert tree(foreign_home) == []


def test_own_home_beside_a_foreign_one_works(
    run_hostctl, foreign_home: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTCTL_HOME", str(foreign_home))
    r = run_hostctl("--home", str(home), "provision-save", "@srv", "--context_type", "server")
    assert r.code == 0, r
    assert (home / "contexts" / "srv.toml").is_file()
    assert tree(foreign_home) == []


def test_without_flag_or_environment_the_home_is_the_user_data_folder(
        tmp_path: Path) -> None:
    """No --home, no HOSTCTL_HOME: platformdirs' user data folder for "hostctl" (on Linux,
    $XDG_DATA_HOME/hostctl), in a real process."""
    data = tmp_path / "xdg-data"
    env = {k: v for k, v in os.environ.items() if k != "HOSTCTL_HOME"}
    env.update(XDG_DATA_HOME=str(data), HOME=str(tmp_path / "user"))
    res = subprocess.run(
        [hostctl_exe(), "provision-save", "@s", "--context_type", "server"],
        capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (data / "hostctl" / "contexts" / "s.toml").is_file()
    assert stat.S_IMODE((data / "hostctl").stat().st_mode) == 0o700
    assert not (tmp_path / "home").exists()  # the fixture's home was not used
