"""Task functions for examples/pipeline.json: sync, async, and one that submits a child job."""

from __future__ import annotations

import asyncio
import hashlib

import conveyor


def make_shards(n: int) -> list[int]:
    """A sync task: returns the shard ids later tasks process."""
    return list(range(n))


async def fetch(shard: int) -> str:
    """An async task (runs on conveyor's asyncio loop): pretend to call a service."""
    await asyncio.sleep(0.05)
    return hashlib.sha256(f"shard-{shard}".encode()).hexdigest()[:12]


def train(epochs: int) -> dict[str, float]:
    """A long task that spawns an evaluation job at run time and waits for it.

    The child job is one level deeper than this task, so it runs before any newer shallow
    work; while this task waits, its worker slot is lent to the child (no starvation).
    """
    ctx = conveyor.current()
    loss = 1.0
    for _ in range(epochs):
        loss *= 0.5
    child = ctx.submit(evaluate, loss, id="train/eval")
    score = child.result(timeout=60)
    return {"loss": loss, "score": score}


def evaluate(loss: float) -> float:
    return round(1.0 - loss, 4)


def report() -> str:
    """Reads its parents' results through the task context."""
    parents = conveyor.current().parent_results
    fetched = sum(1 for k in parents if k.startswith("fetch"))
    return f"fetched {fetched} shards, trained: {parents['train']}"
