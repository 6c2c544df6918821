"""The task bodies ``bench_durable.py``'s rows run, one module for every system.

conveyor names them in the graph file (``"fn": "durable_tasks:fn"``, this file copied beside the
graph file, as a user keeps a module beside a graph); Celery and procrastinate register these same
functions as their tasks (``peer_celery.py``, ``peer_procrastinate.py``). Every side runs the same
code.
"""

from __future__ import annotations

import time


def fn() -> None:
    """A trivial Python function: returns None."""
    return None


def sleep_1ms() -> None:
    """A 1 ms task."""
    time.sleep(0.001)
