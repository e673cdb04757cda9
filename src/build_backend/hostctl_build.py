"""hostctl's PEP 517 build backend: setuptools', run in a copy of the source tree.

setuptools writes ``hostctl.egg-info`` and ``build/`` into the tree it builds from, so
``pip install`` or ``pip wheel`` of a checkout the building user cannot write (another
user's, or a read-only one) fails with "Permission denied". Each hook that builds a
wheel or an sdist, or their metadata, therefore runs here in a temporary copy of the tree
(without version control, caches and earlier builds), and the checkout is never written.
The editable hooks pass straight through: an editable install is made from one's own
checkout, which it must point at.

Before it builds a wheel, the copy gets the data files under the names they are installed
as (pyproject.toml's ``[tool.setuptools.data-files]`` lists them from ``share/``): the shell
completions under the names bash-completion, zsh and fish look for, the man page, and the
example service files.

This module is not installed: pyproject.toml's ``backend-path`` finds it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (every hook setuptools offers)

__all__ = list(_setuptools.__all__)

ConfigSettings = Mapping[str, Any] | None

#: (file or folder in the tree, where the wheel's data files take it from); a folder's
#: files all go
DATA_FILES: tuple[tuple[str, str], ...] = (
    ("completions/hostctl.bash", "share/bash-completion/completions/hostctl"),
    ("completions/hostctl.zsh", "share/zsh/site-functions/_hostctl"),
    ("completions/hostctl.fish", "share/fish/vendor_completions.d/hostctl.fish"),
    ("docs/hostctl.1", "share/man/man1/hostctl.1"),
    ("examples/service", "share/hostctl/examples"),
)

#: what a build never needs from a working tree
_SKIP = shutil.ignore_patterns(".*", "__pycache__", "*.py[co]", "*.egg-info")
#: the same, at the top of the tree only (``share``: where the data files are laid out)
_SKIP_TOP = {"build", "dist", "share"}


def _ignorer(top: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(_SKIP(folder, names))
        if Path(folder) == top:
            skipped |= _SKIP_TOP & set(names)
        # a virtual environment inside the checkout
        skipped.update(n for n in names
                       if os.path.isfile(os.path.join(folder, n, "pyvenv.cfg")))
        return skipped

    return ignore


@contextmanager
def _in_copy() -> Iterator[Path]:
    """A writable copy of the tree in the current folder, made the current folder."""
    source = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="hostctl-build-") as scratch:
        copy = Path(scratch) / source.name
        shutil.copytree(source, copy, ignore=_ignorer(source), symlinks=True)
        for folder, _, files in os.walk(copy):  # a read-only tree copies read-only
            for path in [folder, *(os.path.join(folder, name) for name in files)]:
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
        os.chdir(copy)
        try:
            yield copy
        finally:
            os.chdir(source)


def _stage_data_files(tree: Path) -> None:
    for source, target in DATA_FILES:
        found = tree / source
        if found.is_dir():
            (tree / target).mkdir(parents=True, exist_ok=True)
            for item in sorted(found.iterdir()):
                if item.is_file():
                    shutil.copy2(item, tree / target / item.name)
        elif found.is_file():
            (tree / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, tree / target)
        else:
            raise FileNotFoundError(f"{source} is missing: the wheel's data files come from "
                                    "it (run python completions/generate.py)")


def _out(directory: str) -> str:
    return os.path.abspath(directory)


def _copied(hook: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with _in_copy():
        return hook(*args, **kwargs)


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    return list(_copied(_setuptools.get_requires_for_build_wheel, config_settings))


def get_requires_for_build_sdist(config_settings: ConfigSettings = None) -> list[str]:
    return list(_copied(_setuptools.get_requires_for_build_sdist, config_settings))


def prepare_metadata_for_build_wheel(metadata_directory: str,
                                     config_settings: ConfigSettings = None) -> str:
    return str(_copied(_setuptools.prepare_metadata_for_build_wheel,
                       _out(metadata_directory), config_settings))


def build_wheel(wheel_directory: str, config_settings: ConfigSettings = None,
                metadata_directory: str | None = None) -> str:
    with _in_copy() as tree:
        _stage_data_files(tree)
        return str(_setuptools.build_wheel(
            _out(wheel_directory), config_settings,
            _out(metadata_directory) if metadata_directory else None))


def build_sdist(sdist_directory: str, config_settings: ConfigSettings = None) -> str:
    return str(_copied(_setuptools.build_sdist, _out(sdist_directory), config_settings))
