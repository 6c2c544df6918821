"""The procrastinate app ``bench_durable.py`` runs as a peer (PostgreSQL).

Configured as its documentation shows: ``App(connector=PsycopgConnector(conninfo=...))`` on a
fresh database of the benchmark's own PostgreSQL server (``$CONVEYOR_BENCH_PG``), schema applied
with ``procrastinate --app=peer_procrastinate.app schema --apply``, workers run as
``procrastinate --app=peer_procrastinate.app worker -c SLOTS --one-shot`` (exit once every job is
processed, as conveyor's workers do). The tasks are the functions in ``durable_tasks.py``.
"""

from __future__ import annotations

import os

import durable_tasks
import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("CONVEYOR_BENCH_PG", ""))
)

fn = app.task(name="fn")(durable_tasks.fn)
sleep_1ms = app.task(name="sleep_1ms")(durable_tasks.sleep_1ms)
