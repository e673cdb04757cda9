"""Shell completion: the checked-in scripts are current, and the real mechanism (the
_HOSTCTL_COMPLETE protocol the scripts use) offers commands, task types and the context
names of the current home after '@'."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hostctl_exe

from hostctl.cli.main import COMPLETE_VAR

REPO = Path(__file__).resolve().parent.parent
COMPLETIONS = REPO / "completions"
SHELLS = ("bash", "zsh", "fish")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def bash_instruction() -> str:
    """The completion instruction the generated bash script sends to hostctl."""
    found = re.search(rf"{COMPLETE_VAR}=(\w+)", (COMPLETIONS / "hostctl.bash").read_text())
    assert found, "the bash script does not use the completion variable"
    return found.group(1)


def complete(home: Path, line: str, *, extra_env: dict[str, str] | None = None) -> list[str]:
    """Ask the installed hostctl for the candidates of the last word of ``line``."""
    words = line.split(" ")
    env = {**os.environ, "HOSTCTL_HOME": str(home), COMPLETE_VAR: bash_instruction(),
           "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1), **(extra_env or {})}
    p = subprocess.run([hostctl_exe()], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


def bash_complete(home: Path, *words: str) -> list[str]:
    """Source the generated bash script in bash and run its completion function."""
    exe_dir = str(Path(hostctl_exe()).parent)
    quoted = " ".join(f"'{w}'" for w in words)
    script = (
        f"source '{COMPLETIONS / 'hostctl.bash'}'\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        "_hostctl_completion hostctl\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    env = {**os.environ, "HOSTCTL_HOME": str(home),
           "PATH": exe_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop(COMPLETE_VAR, None)
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


@pytest.fixture
def contexts(run_hostctl) -> None:
    for name in ("@example.com", "@example.org", "@other"):
        assert run_hostctl("provision-save", name, "--context_type", "server").code == 0


def test_checked_in_completions_are_current(tmp_path: Path) -> None:
    for shell in SHELLS:
        assert (COMPLETIONS / f"hostctl.{shell}").is_file(), shell
    p = subprocess.run([sys.executable, str(COMPLETIONS / "generate.py"), "--check"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr


def test_check_fails_on_a_stale_script(tmp_path: Path) -> None:
    copy = tmp_path / "completions"
    copy.mkdir()
    for name in ("generate.py", *(f"hostctl.{s}" for s in SHELLS)):
        shutil.copy(COMPLETIONS / name, copy / name)
    stale = copy / "hostctl.zsh"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    p = subprocess.run([sys.executable, str(copy / "generate.py"), "--check"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode != 0
    assert "hostctl.zsh" in p.stderr
    assert "hostctl.bash" not in p.stderr
    assert stale.read_text().endswith("# edited by hand\n")  # --check writes nothing


def test_scripts_call_hostctl_through_the_completion_variable() -> None:
    for shell in SHELLS:
        text = (COMPLETIONS / f"hostctl.{shell}").read_text()
        assert COMPLETE_VAR in text, shell
        assert "hostctl" in text
    assert re.search(r"^complete .*hostctl$", (COMPLETIONS / "hostctl.bash").read_text(), re.M)


@needs_bash
def test_bash_script_offers_the_provision_commands(home: Path) -> None:
    offered = bash_complete(home, "hostctl", "provision-")
    assert "provision-save" in offered
    assert "provision-verify" in offered
    assert all(w.startswith("provision-") for w in offered)


@needs_bash
def test_bash_script_offers_context_names(home: Path, contexts) -> None:
    assert sorted(bash_complete(home, "hostctl", "context", "show", "@ex")) == [
        "@example.com", "@example.org"]


@needs_bash
def test_bash_completes_a_name_after_at_as_readline_splits_it(home: Path, contexts) -> None:
    # Interactive bash splits the line at the characters of COMP_WORDBREAKS, which holds
    # '@' by default: "@ex" then reaches the function as two words, "@" and "ex", and the
    # candidates replace "ex" only. The script may instead take '@' out of the word breaks.
    probe = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c",
         f"source '{COMPLETIONS / 'hostctl.bash'}'; printf '%s' \"$COMP_WORDBREAKS\""],
        capture_output=True, text=True, timeout=60)
    if "@" in probe.stdout:
        offered = bash_complete(home, "hostctl", "context", "show", "@", "ex")
        assert sorted(offered) == ["example.com", "example.org"]
    else:
        offered = bash_complete(home, "hostctl", "context", "show", "@ex")
        assert sorted(offered) == ["@example.com", "@example.org"]


def test_context_names_complete_after_at(home: Path, contexts) -> None:
    assert sorted(complete(home, "hostctl context show @ex")) == [
        "@example.com", "@example.org"]
    assert sorted(complete(home, "hostctl provision-save @")) == [
        "@example.com", "@example.org", "@other"]


def test_context_names_come_from_the_home_named_on_the_line(
    run_hostctl, home: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    assert run_hostctl("--home", str(other), "provision-save", "@elsewhere",
                       "--context_type", "server").code == 0
    assert run_hostctl("provision-save", "@here", "--context_type", "server").code == 0
    assert complete(home, f"hostctl --home {other} context show @") == ["@elsewhere"]
    assert complete(home, "hostctl context show @") == ["@here"]


def test_task_types_complete_after_task_add(home: Path) -> None:
    offered = complete(home, "hostctl task add ")
    assert "verify" in offered
    assert not home.exists()  # completing writes nothing
