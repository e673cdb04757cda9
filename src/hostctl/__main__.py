"""``python -m hostctl``: the same entry point as the console script."""

from __future__ import annotations

from hostctl.cli.entry import run

if __name__ == "__main__":
    run()
