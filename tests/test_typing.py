"""``mypy --strict`` (pyproject's [tool.mypy]) over the whole hostctl package, as CI runs it.

The package is assembled from the repository's folders (pyproject's package-dir), which
mypy does not follow through an editable install; it checks a tree of links that lays
them out as the installed package is laid out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = {"cli": "cli", "contexts": "contexts", "queues": "queues", "provision": "provision",
         "runners": "runners"}


def test_mypy_strict_finds_nothing(tmp_path: Path) -> None:
    if not _has_mypy():
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    package = tmp_path / "tree" / "hostctl"
    package.mkdir(parents=True)
    for item in (ROOT / "src" / "hostctl").iterdir():
        if item.name != "__pycache__":
            (package / item.name).symlink_to(item)
    for name, folder in PARTS.items():
        (package / name).symlink_to(ROOT / folder)
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "-p", "hostctl"],
        cwd=package.parent, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success: no issues found" in res.stdout


def _has_mypy() -> bool:
    import importlib.util

    return importlib.util.find_spec("mypy") is not None
