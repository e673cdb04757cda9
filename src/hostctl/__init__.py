"""hostctl: the backend of a hosting control panel.

The package is assembled from the repository's top-level folders (see pyproject.toml):

    hostctl            src/hostctl   version, errors, paths and settings, file helpers
    hostctl.contexts   contexts/     named servers, platforms and sites (provision-save)
    hostctl.queues     queues/       the task queue (spool) and its runners
    hostctl.provision  provision/    what each task type does
    hostctl.cli        cli/          the typer command line; the only layer that prints

Dependencies point one way: ``cli`` imports the others, never the reverse.
"""

from __future__ import annotations

__version__ = "0.1.0"
