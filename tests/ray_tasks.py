"""Functions the Ray tests name by import path (``"ray_tasks:..."``): Ray workers import them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import conveyor


def double(x: int) -> int:
    return 2 * x


def add(a: int, b: int) -> int:
    return a + b


def whoami() -> dict[str, Any]:
    """Where and as what the task ran: its process, ``current()``, Ray's assigned resources."""
    import ray

    ctx = conveyor.current()
    return {
        "pid": os.getpid(),
        "task": ctx.task_id,
        "attempt": ctx.attempt,
        "parents": dict(ctx.parent_results),
        "assigned": ray.get_runtime_context().get_assigned_resources(),
    }


def boom() -> None:
    raise ValueError("nope")


def flaky(marker: str) -> str:
    """Fails on its first attempt, succeeds on the second (the marker file remembers)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        raise RuntimeError("first attempt fails")
    return "second attempt"


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def log_then_nap(log: str, seconds: float) -> str:
    """Sleep, then append this task's id to ``log``: a line means the task ran to its end."""
    time.sleep(seconds)
    task = conveyor.current().task_id
    with open(log, "a") as f:
        f.write(task + "\n")
    return task


def spawn_children(n: int) -> int:
    """Submit ``n`` children (by import path) through the store, and return."""
    for i in range(n):
        conveyor.current().submit("ray_tasks:double", i, id=f"kid{i}")
    return n


def wait_for_child() -> Any:
    child = conveyor.current().submit("ray_tasks:double", 1, id="kid")
    return child.result()


def submit_child() -> str:
    return conveyor.current().submit("ray_tasks:double", 1, id="kid").id


def note(log: str) -> str:
    """Append this task's id to ``log`` when it starts (the order tasks started in)."""
    task = conveyor.current().task_id
    with open(log, "a") as f:
        f.write(task + "\n")
    return task


def wait_for_ray_child() -> Any:
    """On a thread of the driver: submit a child (which runs on Ray) and wait for it."""
    child = conveyor.current().submit("ray_tasks:whoami", id="kid")
    return child.result()["pid"]


def crash_once(marker: str) -> str:
    """Kills its own Ray worker process on the first attempt; returns on the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        os._exit(1)
    return "survived"


def unpicklable() -> Any:
    """A result Ray cannot send back: a lock."""
    import threading

    return threading.Lock()
