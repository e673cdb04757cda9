"""The wheel holds every module the editable install imports, under one ``hostctl`` package,
and runs on its own; it and the sdist carry the licence, the wheel the generated data files;
the in-tree build backend offers every hook of setuptools' and builds without writing into
the tree (tests/test_install_as_user.py: as another user, from a read-only checkout)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import setuptools.build_meta

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
    # built in a copy of its own: nothing was written into the tree it was built from
    assert not [n for n in os.listdir(source) if n in ("build", "dist", "share")
                or n.endswith(".egg-info")]
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
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"hostctl"}
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


#: each data file the wheel installs (under the environment's prefix) and its source
DATA_FILES = {
    "share/bash-completion/completions/hostctl": "completions/hostctl.bash",
    "share/zsh/site-functions/_hostctl": "completions/hostctl.zsh",
    "share/fish/vendor_completions.d/hostctl.fish": "completions/hostctl.fish",
    "share/man/man1/hostctl.1": "docs/hostctl.1",
    **{f"share/hostctl/examples/{p.name}": f"examples/service/{p.name}"
       for p in (REPO / "examples" / "service").iterdir()},
}


def test_the_wheel_carries_the_data_files(wheel: Path, wheel_files: list[str]) -> None:
    prefix = f"hostctl-{hostctl.__version__}.data/data/"
    assert {n.removeprefix(prefix) for n in wheel_files if n.startswith(prefix)} == set(
        DATA_FILES)
    assert {"hostctl-wait-queue.service", "hostctl-wait-queue.conf", "hostctl.logrotate",
            "hostctl.crontab"} <= {Path(n).name for n in DATA_FILES}
    with zipfile.ZipFile(wheel) as zf:
        for installed, source in DATA_FILES.items():
            assert zf.read(prefix + installed) == (REPO / source).read_bytes(), installed


def test_the_licence_is_the_gpl_2_pyproject_names() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:6] == ["GNU", "GENERAL", "PUBLIC", "LICENSE", "Version", "2,"]
    assert "either version 2 of the License, or (at your option) any later version" in " ".join(
        text.split())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "GPL-2.0-or-later"
    assert project["license-files"] == ["LICENSE"]


def test_the_wheel_carries_the_licence(wheel: Path, wheel_files: list[str]) -> None:
    (found,) = [n for n in wheel_files if n.endswith(".dist-info/licenses/LICENSE")]
    (metadata,) = [n for n in wheel_files if n.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read(found) == (REPO / "LICENSE").read_bytes()
        headers = zf.read(metadata).decode()
    assert "License-Expression: GPL-2.0-or-later" in headers.splitlines()
    assert "License-File: LICENSE" in headers.splitlines()


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist made by the build backend from a copy of the repository."""
    base = tmp_path_factory.mktemp("sdist")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=SKIP, symlinks=True)
    out = base / "dist"
    hook = ("import sys; sys.path[:0] = ['src/build_backend']; import hostctl_build; "
            f"print(hostctl_build.build_sdist({str(out)!r}))")
    p = subprocess.run([sys.executable, "-c", hook], cwd=source, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not [n for n in os.listdir(source) if n.endswith(".egg-info")]
    return out / p.stdout.strip().splitlines()[-1]


def test_the_sdist_carries_the_licence_and_builds_the_same_wheel(
    sdist: Path, wheel: Path, wheel_files: list[str], tmp_path: Path
) -> None:
    import tarfile

    top = f"hostctl-{hostctl.__version__}/"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
        license_file = tf.extractfile(top + "LICENSE")
        assert license_file is not None
        assert license_file.read() == (REPO / "LICENSE").read_bytes()
    # what building a wheel from the sdist needs: the backend, the data files' sources
    for needed in ("pyproject.toml", "src/build_backend/hostctl_build.py", *DATA_FILES.values()):
        assert top + needed in names, needed
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(tmp_path), str(sdist)],
        capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (again,) = tmp_path.glob("hostctl-*.whl")
    with zipfile.ZipFile(again) as zf:
        assert sorted(zf.namelist()) == sorted(wheel_files)


def load_backend() -> object:
    spec = importlib.util.spec_from_file_location(
        "hostctl_build", REPO / "src" / "build_backend" / "hostctl_build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_backend_offers_every_setuptools_hook() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    assert config["build-backend"] == "hostctl_build"
    assert config["backend-path"] == ["src/build_backend"]
    backend = load_backend()
    for name in setuptools.build_meta.__all__:
        assert hasattr(backend, name), name
        assert name in backend.__all__  # type: ignore[attr-defined]
    # the editable hooks are setuptools' own (an editable install points at the checkout)
    for name in ("build_editable", "get_requires_for_build_editable",
                 "prepare_metadata_for_build_editable"):
        assert getattr(backend, name) is getattr(setuptools.build_meta, name)
    # the others build in a copy
    for name in ("build_wheel", "build_sdist", "prepare_metadata_for_build_wheel",
                 "get_requires_for_build_wheel", "get_requires_for_build_sdist"):
        assert getattr(backend, name) is not getattr(setuptools.build_meta, name)


def test_the_build_backend_is_not_installed(wheel_files: list[str]) -> None:
    assert not [n for n in wheel_files if "hostctl_build" in n or "build_backend" in n]
