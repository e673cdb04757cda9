"""The floors of the code base (docs/architecture.md): imports run only downward, and
nowhere in a circle.

    face      hostctl.cli                    the command line
    runners   hostctl.runners                worker, dispatcher, daemon, composition root
    core      hostctl.contexts, .queues,     contexts; the queue model and its backends;
              .provision                     what a task does
    ground    hostctl (src/hostctl/*.py)     errors, paths, settings, files, OS helpers

Within the core, the queue and provisioning stand side by side on the contexts: a task's
code knows the queue only through plain data. Every first-party import is read from the
source (at the top, inside functions, under TYPE_CHECKING alike), so that no import can
hide from these rules; the only imports inside functions are the command line's, each
loaded only by the command that needs it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"src/hostctl": "hostctl", "cli": "hostctl.cli", "contexts": "hostctl.contexts",
           "queues": "hostctl.queues", "provision": "hostctl.provision",
           "runners": "hostctl.runners"}
#: what each part may import (itself and the ground always)
ALLOWED = {
    "ground": set(),
    "contexts": set(),
    "queues": {"contexts"},
    "provision": {"contexts"},
    "runners": {"contexts", "queues", "provision"},
    "cli": {"contexts", "queues", "provision", "runners"},
}


def modules() -> Iterator[tuple[str, Path]]:
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def part(module: str) -> str:
    if module == "hostctl.__main__":  # python -m hostctl: the command line's entry
        return "cli"
    pieces = module.split(".")
    if len(pieces) > 1 and pieces[1] in ALLOWED and pieces[1] != "ground":
        return pieces[1]
    return "ground"


def imports(module: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every first-party import."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inner.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # "from hostctl.queues import dropbox" is a module
                targets.append(f"{source}.{alias.name}" if is_module(f"{source}.{alias.name}")
                               else source)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            if target == "hostctl" or target.startswith("hostctl."):
                yield target, node.lineno, id(node) in inner


_KNOWN = {name for name, _ in modules()}


def is_module(name: str) -> bool:
    return name in _KNOWN


GRAPH = {name: list(imports(name, path)) for name, path in modules()}


def test_every_module_is_read() -> None:
    assert len(GRAPH) > 60
    assert {"hostctl.errors", "hostctl.queues.spool", "hostctl.runners.worker",
            "hostctl.cli.main", "hostctl.provision.site"} <= set(GRAPH)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_only_downward(module: str) -> None:
    here = part(module)
    for target, line, _inner in GRAPH[module]:
        there = part(target)
        if there in (here, "ground"):
            continue
        assert there in ALLOWED[here], (
            f"{module}:{line} imports {target}: the {here} floor may not import "
            f"{there} (see docs/architecture.md)")


#: imports inside a function below the command line, each for a reason other than a circle
LAZY = {
    # psycopg and the cluster's code, for a home in a cluster only
    ("hostctl.runners.home", "hostctl.contexts.pgstore"),
    ("hostctl.provision.secretstores", "hostctl.provision.pgsecrets"),
    ("hostctl.runners.home", "hostctl.queues.pgqueue"),
}


def test_no_import_hides_in_a_function_below_the_command_line() -> None:
    hidden = [f"{m}:{line} imports {t}" for m, edges in GRAPH.items() if part(m) != "cli"
              for t, line, inner in edges if inner and (m, t) not in LAZY]
    assert hidden == []
    used = {(m, t) for m, edges in GRAPH.items() for t, _line, inner in edges if inner}
    assert LAZY <= used  # no stale entry


def test_no_module_imports_itself_back() -> None:
    """No circle, counting every import (a circle is what imports inside functions were
    once written to dodge)."""
    edges = {m: {t for t, _line, _inner in targets if t in GRAPH and t != m}
             for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_core_loads_without_the_layers_above() -> None:
    """Importing every module of the ground and the core loads nothing of the runners or
    the command line (nor typer): the floors hold at run time too."""
    below = [m for m in GRAPH if part(m) in ("ground", "contexts", "queues", "provision")]
    script = ("import sys\n"
              f"for m in {below!r}:\n"
              "    __import__(m)\n"
              "print(' '.join(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    loaded = res.stdout.split()
    assert not [m for m in loaded if m.startswith(("hostctl.runners", "hostctl.cli",
                                                   "typer"))]
