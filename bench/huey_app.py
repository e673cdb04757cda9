"""The huey application of the benchmark: SqliteHuey in the file named by
``HOSTCTL_BENCH_HUEY_DB``, with the jobs of jobs.py as tasks."""

from __future__ import annotations

import os

import jobs
from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["HOSTCTL_BENCH_HUEY_DB"])


@huey.task()
def stamp(path: str) -> None:
    jobs.stamp(path)


@huey.task()
def noop() -> None:
    jobs.noop()


@huey.task()
def hold(path: str) -> None:
    jobs.hold(path)
