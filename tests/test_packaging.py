"""The wheel holds every module the editable install imports, under one ``hostctl`` package,
and runs on its own."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import hostctl

REPO = Path(__file__).resolve().parent.parent
# what a build must not pick up from a working tree
SKIP = shutil.ignore_patterns(".git", ".*_cache", ".hypothesis", "build", "dist", "*.egg-info",
                              "__pycache__", "*.pyc")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the repository (the working tree is left untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=SKIP, symlinks=True)
    out = base / "dist"
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    (found,) = out.glob("hostctl-*.whl")
    return found


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def importable_modules() -> set[str]:
    """Every hostctl.* module the installed (editable) package can import.

    The mapped sub-packages live outside ``hostctl.__path__`` in an editable install, so each
    importable package declared in pyproject.toml, and each one the CLI imports, is walked.
    """
    import hostctl.cli.main  # noqa: F401  (loads every sub-package the CLI uses)

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = config.get("tool", {}).get("setuptools", {})
    roots = {"hostctl", *setuptools.get("package-dir", {}), *setuptools.get("packages", [])}
    roots |= {n for n, m in list(sys.modules.items())
              if n.startswith("hostctl.") and hasattr(m, "__path__")}
    found: set[str] = set()
    for root in sorted(roots):
        if root != "hostctl" and not root.startswith("hostctl."):
            continue
        try:
            package = importlib.import_module(root)
        except ImportError:
            continue
        found.add(root)
        for info in pkgutil.walk_packages(package.__path__, root + "."):
            found.add(info.name)
    return found


def module_of(name: str) -> str | None:
    if not name.endswith(".py") or ".dist-info/" in name:
        return None
    parts = name[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_editable_install_is_walked_beyond_src() -> None:
    modules = importable_modules()
    # the sub-packages mapped from top-level folders are seen, not only src/hostctl
    for name in ("hostctl.cli.main", "hostctl.contexts.store", "hostctl.contexts.names",
                 "hostctl.queues.spool", "hostctl.provision.registry", "hostctl.errors"):
        assert name in modules
    assert Path(hostctl.__file__).resolve().is_relative_to(REPO)


def test_wheel_holds_every_importable_module(wheel_files: list[str]) -> None:
    in_wheel = {m for m in map(module_of, wheel_files) if m}
    missing = sorted(importable_modules() - in_wheel)
    assert missing == []


def test_wheel_has_one_top_level_package(wheel_files: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_files}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"hostctl"}
    assert "hostctl/py.typed" in wheel_files
    # generic folder names (cli, queues, ...) must not land in site-packages
    assert not tops & {"cli", "contexts", "queues", "provision", "src", "tests"}


def test_wheel_declares_the_console_script(wheel: Path, wheel_files: list[str]) -> None:
    (entry_points,) = [n for n in wheel_files if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert "[console_scripts]" in text
    assert "hostctl = hostctl.cli.entry:run" in text.replace("  ", " ")


def test_the_wheel_runs_on_its_own(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    home = tmp_path / "home"
    check = (
        "import importlib, sys, pkgutil\n"
        "import hostctl\n"
        f"names = {sorted(m for m in importable_modules())!r}\n"
        "for n in names:\n"
        "    m = importlib.import_module(n)\n"
        "    assert m.__file__.startswith(sys.argv[1]), (n, m.__file__)\n"
        "from hostctl.cli.main import main\n"
        "sys.exit(main(['provision-save', '@srv', '--context_type', 'server']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HOSTCTL_HOME": str(home)}
    p = subprocess.run([sys.executable, "-c", check, str(target)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (home / "contexts" / "srv.toml").is_file()
    p = subprocess.run([sys.executable, "-m", "hostctl", "--version"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert (p.returncode, p.stdout) == (0, f"hostctl {hostctl.__version__}\n"), p.stderr


def test_python_m_hostctl_version(home: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "hostctl", "--version"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "HOSTCTL_HOME": str(home)})
    assert (p.returncode, p.stdout, p.stderr) == (0, f"hostctl {hostctl.__version__}\n", "")
    assert not home.exists()
