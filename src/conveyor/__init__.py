"""conveyor: run graphs of tasks across workers — depth-first, fair, adaptive, durable, fast."""

from __future__ import annotations

from typing import Any

from conveyor.errors import (
    ConveyorError,
    DropRow,
    GraphError,
    StoreError,
    TaskFailed,
    WouldBlock,
)
from conveyor.model import GraphSpec, TaskRef, TaskResult, TaskSpec, TaskState

__version__ = "0.1.0"

__all__ = [
    "ConveyorError",
    "DropRow",
    "EndpointLimiter",
    "Graph",
    "GraphError",
    "GraphSpec",
    "RunResult",
    "StoreError",
    "Table",
    "TaskFailed",
    "TaskRef",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "Telemetry",
    "WouldBlock",
    "category",
    "choice",
    "current",
    "integers",
    "llm_structured",
    "llm_text",
    "load",
    "run",
    "run_iter",
    "seed_file",
    "task",
    "uniform",
    "worker",
]

_LAZY = {
    "Graph": "conveyor.graph",
    "RunResult": "conveyor.api",
    "Telemetry": "conveyor.observe.otel",
    "run": "conveyor.api",
    "run_iter": "conveyor.api",
    "task": "conveyor.graph",
    "current": "conveyor.runtime.context",
    "EndpointLimiter": "conveyor.limiter",
    "worker": "conveyor.runtime.worker",
    "Table": "conveyor.table.spec",
    "load": "conveyor.table.output",
    "category": "conveyor.table.samplers",
    "choice": "conveyor.table.samplers",
    "integers": "conveyor.table.samplers",
    "seed_file": "conveyor.table.samplers",
    "uniform": "conveyor.table.samplers",
    "llm_text": "conveyor.table.llm",
    "llm_structured": "conveyor.table.llm",
}


def __getattr__(name: str) -> Any:
    """Import the heavier parts only when used (keeps ``import conveyor`` light)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
