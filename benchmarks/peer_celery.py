"""The Celery app ``bench_durable.py`` runs as a peer: Redis as broker and result backend.

Configured as a Celery user would, from the documented settings only: ``broker_url`` and
``result_backend`` both the benchmark's own redis-server (``$CONVEYOR_BENCH_REDIS``), everything
else Celery's defaults (JSON serializer, early acknowledgement, prefetch multiplier 4, results
stored). Workers run as ``celery -A peer_celery worker -c SLOTS``; the tasks are the functions in
``durable_tasks.py`` that conveyor runs.
"""

from __future__ import annotations

import os

import durable_tasks
from celery import Celery

URL = os.environ.get("CONVEYOR_BENCH_REDIS", "redis://127.0.0.1:6379/0")

app = Celery("peer_celery", broker=URL, backend=URL)
# the documented way to keep Celery 5's start-up deprecation warning quiet; same behaviour
app.conf.broker_connection_retry_on_startup = True

fn = app.task(name="fn")(durable_tasks.fn)
sleep_1ms = app.task(name="sleep_1ms")(durable_tasks.sleep_1ms)
