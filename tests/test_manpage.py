"""The man page (docs/hostctl.1) and the example service files (examples/service/) are what
completions/generate.py makes from the CLI now; the page documents every command, every
exit code, and renders without a warning."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer

from hostctl.cli.main import app
from hostctl.errors import ExitStatus

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "hostctl.1"
EXAMPLES = REPO / "examples" / "service"


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", REPO / "completions" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page(generate: ModuleType) -> str:
    text = generate.man_page()
    assert isinstance(text, str)
    return text


def test_checked_in_man_page_is_current(page: str) -> None:
    assert PAGE.read_text() == page, "docs/hostctl.1 is stale: run python completions/generate.py"


def test_checked_in_examples_are_current(generate: ModuleType) -> None:
    made = generate.examples()
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(made)
    for name, text in made.items():
        assert (EXAMPLES / name).read_text() == text, (
            f"examples/service/{name} is stale: run python completions/generate.py")


def test_check_names_a_stale_man_page(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    for folder in ("completions", "docs", "examples/service"):
        shutil.copytree(REPO / folder, copy / folder)
    stale = copy / "docs" / "hostctl.1"
    stale.write_text(stale.read_text().replace(".SH FILES", ".SH FILES\nedited by hand"))
    p = subprocess.run([sys.executable, str(copy / "completions" / "generate.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert "docs/hostctl.1" in p.stderr
    assert "hostctl.bash" not in p.stderr and "examples" not in p.stderr
    assert "edited by hand" in stale.read_text()  # --check writes nothing


def all_commands() -> list[str]:
    """Every command and sub-command of the CLI, as words after ``hostctl`` (a hidden one,
    which only hostctl itself runs, excepted)."""
    root = typer.main.get_command(app)
    found: list[str] = []

    def walk(words: list[str], command: Any, ctx: Any) -> None:
        found.append(" ".join(words))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                walk([*words, name], sub, typer.Context(sub, info_name=name, parent=ctx))

    ctx = typer.Context(root, info_name="hostctl")
    for name in root.list_commands(ctx):
        sub = root.get_command(ctx, name)
        if not sub.hidden:
            walk([name], sub, typer.Context(sub, info_name=name, parent=ctx))
    return found


def test_every_command_has_its_section(page: str) -> None:
    sections = [line for line in page.splitlines() if line.startswith(".SS ")]
    documented = {s.removeprefix(".SS ").strip('"').replace("\\-", "-") for s in sections}
    for words in all_commands():
        assert f"hostctl {words}" in documented, words
    for words in ("task add", "context list", "service systemd", "provision-save",
                  "provision-verify", "provision-install"):
        assert f"hostctl {words}" in documented
    assert "hostctl notify-send" not in documented  # the runners' own, hidden


def test_every_option_is_documented(page: str) -> None:
    text = page.replace("\\-", "-")
    for option in ("--home", "--context_type", "--follow", "--max-runtime", "--show-secrets",
                   "--housekeeping-every", "--token-file"):
        assert f"\\fB{option}\\fR" in text, option


def test_documents_only_the_built_in_task_types(generate: ModuleType, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[tasks.mine]\ncommand = ["/bin/true"]\ncontext_types = ["site"]\n')
    monkeypatch.setenv("HOSTCTL_HOME", str(home))
    page = generate.man_page()
    assert "provision\\-mine" not in page
    assert page == PAGE.read_text()


def test_every_exit_status_is_explained(page: str) -> None:
    section = page.split(".SH EXIT STATUS\n")[1].split(".SH ")[0]
    for status in ExitStatus:
        assert f".TP\n.B {int(status)}\n" in section, status.name


def test_sections(page: str) -> None:
    heads = [line.split(" ", 1)[1] for line in page.splitlines() if line.startswith(".SH ")]
    assert heads == ["NAME", "SYNOPSIS", "DESCRIPTION", "GLOBAL OPTIONS", "COMMANDS",
                     "EXIT STATUS", "ENVIRONMENT", "FILES",
                     "SEE ALSO"]
    assert page.startswith('.\\" generated by completions/generate.py')
    assert '\n.TH HOSTCTL 1 "" "hostctl ' in page


def test_roff_escaping(generate: ModuleType) -> None:
    roff = generate.roff_text
    assert roff("a\\b") == "a\\eb"
    assert roff("--home") == "\\-\\-home"
    assert roff(".hidden") == "\\&.hidden"
    assert roff("'quoted'") == "\\&'quoted'"
    assert roff("one\n.two") == "one\n\\&.two"
    assert roff("it's") == "it's"
    assert roff("café") == "caf\\[u00E9]"
    assert roff("run `task add`") == "run \\fBtask add\\fR"
    assert generate.roff_arg('say "hi"') == '"say \\(dqhi\\(dq"'
    assert generate.roff_term("-o, --option KEY=VALUE") == (
        "\\fB\\-o\\fR, \\fB\\-\\-option\\fR \\fIKEY=VALUE\\fR")


def test_no_line_starts_with_a_stray_control_character(page: str) -> None:
    for line in page.splitlines():
        if line.startswith(("'", ".")):
            assert line[:3] in (".\\\"", ".TH", ".SH", ".SS", ".TP", ".PP", ".B ", ".I ",
                                ".nh", ".ad"), line
        assert "\t" not in line


def renderers() -> list[list[str]]:
    found = []
    if shutil.which("groff"):
        found.append(["groff", "-man", "-ww", "-z", str(PAGE)])
    if shutil.which("man"):
        found.append(["man", "--warnings", "-l", str(PAGE)])
    return found


@pytest.mark.skipif(not renderers(), reason="neither groff nor man is installed")
def test_the_page_renders_without_warnings() -> None:
    for argv in renderers():
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANWIDTH": "80"})
        assert p.returncode == 0, p.stderr
        assert p.stderr == "", (argv[0], p.stderr)
        if argv[0] == "man":
            assert "provision-save" in p.stdout and "EXIT STATUS" in p.stdout
