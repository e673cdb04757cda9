"""The Celery application of bench/cluster.py: RabbitMQ as the broker (the URL in
HOSTCTL_BENCH_BROKER), no result backend, the settings Celery's documentation gives for
long tasks (one message prefetched per process, acknowledged once the task has run)."""

from __future__ import annotations

import os

import jobs_cluster
from celery import Celery

app = Celery("bench", broker=os.environ.get("HOSTCTL_BENCH_BROKER", "amqp://127.0.0.1//"))
app.conf.update(task_default_queue="bench", worker_prefetch_multiplier=1,
                task_acks_late=True, task_ignore_result=True,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="celery_app.stamp")
def stamp(where: str, name: str) -> None:
    jobs_cluster.stamp(where, name)


@app.task(name="celery_app.nap")
def nap(where: str, name: str) -> None:
    jobs_cluster.nap(where, name)
