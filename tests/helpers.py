"""Shared helpers for the issue-3 tests: small graphs, an independent model of the depth-first
order and module-level functions that worker processes can import. The fake clock and the event
log are ``conveyor.testing``'s (``EventLog`` is re-exported here for older imports)."""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from conveyor.testing import EventLog as EventLog  # re-exported for older imports

WORKFLOWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "workflows"


def nx_depths(ids: Sequence[str], parents: Sequence[Sequence[str]]) -> dict[str, int]:
    """Longest path (in edges) from any root to each task, computed with networkx."""
    g = nx.DiGraph()
    g.add_nodes_from(ids)
    for tid, ps in zip(ids, parents, strict=True):
        g.add_edges_from((p, tid) for p in ps)
    depth: dict[str, int] = {}
    for v in nx.topological_sort(g):
        preds = list(g.predecessors(v))
        depth[v] = 1 + max(depth[p] for p in preds) if preds else 0
    return depth


def expected_start_order(ids: Sequence[str], parents: Sequence[Sequence[str]]) -> list[str]:
    """One worker, no-op tasks: repeatedly start the ready task with the smallest key
    ``(-depth, root_seq, submit_seq)`` (one root graph, so root_seq is constant)."""
    depth = nx_depths(ids, parents)
    pos = {tid: i for i, tid in enumerate(ids)}
    children: dict[str, list[str]] = {tid: [] for tid in ids}
    waiting = {tid: len(set(ps)) for tid, ps in zip(ids, parents, strict=True)}
    for tid, ps in zip(ids, parents, strict=True):
        for p in set(ps):
            children[p].append(tid)
    heap = [(-depth[t], pos[t]) for t in ids if waiting[t] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, i = heapq.heappop(heap)
        tid = ids[i]
        order.append(tid)
        for c in children[tid]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(heap, (-depth[c], pos[c]))
    return order


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (a bound, not a check)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


# -- module-level functions: importable by graph files and by spawned worker processes -----------
def square(x: int) -> int:
    return x * x


def pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def add(x: int, y: int) -> int:
    return x + y


def noop(*args: Any, **kwargs: Any) -> None:
    return None


NOT_CALLABLE = 42
