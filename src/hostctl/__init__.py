"""hostctl: the backend of a hosting control panel.

The package is assembled from the repository's top-level folders (see pyproject.toml),
in floors that import only downward (docs/architecture.md; tests/test_architecture.py):

    hostctl.cli        cli/          the typer command line; the only layer that prints
    hostctl.runners    runners/      worker, dispatch, wait-queue, periodic queues, the
                                     composition root (Home)
    hostctl.queues     queues/       the task model, the queue seam, the spool
    hostctl.provision  provision/    what each task type does
    hostctl.contexts   contexts/     named servers, platforms and sites (provision-save)
    hostctl            src/hostctl   version, errors, paths and settings, file and OS helpers
"""

from __future__ import annotations

__version__ = "0.1.0"
