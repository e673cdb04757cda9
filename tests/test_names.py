"""Context names: what is refused (exit 2, nothing written anywhere) and what is accepted."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hostctl.contexts.names import MAX_LENGTH, is_valid, parse_name
from hostctl.errors import ExitStatus, InvalidName

BAD_NAMES = {
    "dotdot-slash": "../x",
    "dotdot-inside": "a..b",
    "slash": "a/b",
    "upper": "UPPER",
    "mixed-case": "Example.com",
    "empty": "",
    "only-at": "@",
    "236-chars": "a" * 236,
    "leading-dot": ".hidden",
    "space": "a b",
    "unicode": "café",
    "unicode-lookalike": "ｅxample",
    "newline": "a\nb",
    "nul": "a\x00b",
}
# the cases every other command is tried with
SOME_BAD_NAMES = {k: BAD_NAMES[k] for k in ("dotdot-slash", "slash", "empty", "nul")}

# every other command that takes a context name
OTHER_COMMANDS: dict[str, Callable[[str], tuple[str, ...]]] = {
    "save-update": lambda n: ("provision-save", n, "--http_port", "81"),
    "save-delete": lambda n: ("provision-save", n, "--delete"),
    "show": lambda n: ("context", "show", n),
    "task-add": lambda n: ("task", "add", "verify", n),
    "provision-verify": lambda n: ("provision-verify", n),
}

GOOD_NAMES = {
    "235-chars": "a" * MAX_LENGTH,
    "235-chars-at": "@" + "b" * MAX_LENGTH,
    "domain": "example.com",
    "domain-at": "@example.com",
    "underscore": "server_master",
    "dashes": "my-site.example-host.org",
    "digit-first": "0day",
}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for a folder)."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            found[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cwd"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def assert_refused(r) -> None:
    assert r.code == ExitStatus.USAGE, r
    assert r.out == ""
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "Traceback" not in r.err


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_name_is_refused_and_nothing_is_written(
    run_hostctl, home: Path, tmp_path: Path, cwd: Path, name: str
) -> None:
    before = snapshot(tmp_path)
    r = run_hostctl("provision-save", name, "--context_type", "server")
    assert_refused(r)
    assert not home.exists()
    assert snapshot(tmp_path) == before
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("command", list(OTHER_COMMANDS.values()), ids=list(OTHER_COMMANDS))
@pytest.mark.parametrize("name", list(SOME_BAD_NAMES.values()), ids=list(SOME_BAD_NAMES))
def test_bad_name_is_refused_by_every_command(
    run_hostctl, home: Path, tmp_path: Path, cwd: Path, name: str, command
) -> None:
    before = snapshot(tmp_path)
    assert_refused(run_hostctl(*command(name)))
    assert not home.exists()
    assert snapshot(tmp_path) == before


def test_bad_names_leave_an_existing_home_untouched(
    run_hostctl, home: Path, tmp_path: Path, cwd: Path
) -> None:
    assert run_hostctl("provision-save", "@keep", "--context_type", "server").code == 0
    before = snapshot(tmp_path)
    for name in BAD_NAMES.values():
        r = run_hostctl("provision-save", name, "--context_type", "server", "--http_port", "8080")
        assert r.code == ExitStatus.USAGE, (name, r)
        assert snapshot(tmp_path) == before, name


def test_the_error_names_the_bad_name(run_hostctl) -> None:
    r = run_hostctl("provision-save", "../x", "--context_type", "server")
    assert r.code == ExitStatus.USAGE
    assert "../x" in r.err
    assert r.err.startswith("hostctl: ")


@pytest.mark.parametrize("ref", ["../x", "a/b", "UPPER", "a" * 236],
                         ids=["dotdot", "slash", "upper", "236-chars"])
def test_bad_name_in_a_reference_field_writes_nothing(
    run_hostctl, home: Path, tmp_path: Path, cwd: Path, ref: str
) -> None:
    before = snapshot(tmp_path)
    r = run_hostctl("provision-save", "@site.example", "--context_type", "site",
                    "--platform", ref)
    assert_refused(r)
    assert not home.exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", list(GOOD_NAMES.values()), ids=list(GOOD_NAMES))
def test_good_name_is_accepted(run_hostctl, home: Path, name: str) -> None:
    bare = name.removeprefix("@")
    r = run_hostctl("provision-save", name, "--context_type", "server")
    assert r.code == 0, r
    assert (home / "contexts" / f"{bare}.toml").is_file()
    # the '@' is optional on input and always shown on output
    shown = run_hostctl("context", "show", bare if name.startswith("@") else f"@{bare}",
                        "--json")
    assert shown.code == 0, shown
    assert json.loads(shown.out)["name"] == f"@{bare}"
    listed = run_hostctl("context", "list", "--json")
    assert [c["name"] for c in json.loads(listed.out)] == [f"@{bare}"]


def test_name_with_and_without_at_is_one_context(run_hostctl, home: Path) -> None:
    assert run_hostctl("provision-save", "example.com", "--context_type", "server").code == 0
    r = run_hostctl("provision-save", "@example.com", "--http_port", "8080")
    assert r.code == 0, r
    assert sorted(p.name for p in (home / "contexts").glob("*.toml")) == ["example.com.toml"]
    doc = json.loads(run_hostctl("context", "show", "example.com", "--json").out)
    assert doc["fields"]["http_port"] == 8080


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_parse_name_refuses(name: str) -> None:
    with pytest.raises(InvalidName):
        parse_name(name)
    assert not is_valid(name.removeprefix("@"))


@pytest.mark.parametrize("name", list(GOOD_NAMES.values()), ids=list(GOOD_NAMES))
def test_parse_name_accepts(name: str) -> None:
    assert parse_name(name) == name.removeprefix("@")
    assert is_valid(name.removeprefix("@"))
