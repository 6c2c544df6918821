"""Shared helpers for the tests: the workflow graphs, an independent model of the depth-first
order and module-level functions that worker processes can import. The fake clock and the event
log are ``conveyor.testing``'s (``EventLog`` is re-exported here for older imports)."""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from conveyor.testing import EventLog as EventLog  # re-exported for older imports

#: Small real WfCommons graphs vendored with the tests (see tests/data/workflows/README.md).
VENDORED_WORKFLOWS = Path(__file__).resolve().parent / "data" / "workflows"
#: Names a directory of graphs to run the workflow tests on instead (e.g. all of WfInstances).
WORKFLOWS_ENV = "CONVEYOR_WORKFLOWS"


def workflow_files() -> list[Path]:
    """The WfCommons graph files the workflow tests run: every ``*.json`` in the directory that
    ``$CONVEYOR_WORKFLOWS`` names, else the vendored set. A variable that is set but names no
    directory, or a directory without graphs, is an error (never a skip or a quiet fallback)."""
    named = os.environ.get(WORKFLOWS_ENV)
    if named is None:
        directory = VENDORED_WORKFLOWS
    elif not named.strip():
        raise RuntimeError(f"{WORKFLOWS_ENV} is set but empty: name a directory of graphs")
    else:
        directory = Path(named).expanduser()
        if not directory.is_dir():
            raise RuntimeError(f"{WORKFLOWS_ENV}={named}: no such directory")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise RuntimeError(f"no workflow graphs (*.json) in {directory}")
    return files


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


def expected_start_order(
    ids: Sequence[str], parents: Sequence[Sequence[str]], band: Mapping[str, int] | None = None
) -> list[str]:
    """One worker, no-op tasks: repeatedly start the ready task with the smallest key
    ``(band, -depth, root_seq, submit_seq)`` (one root graph, so root_seq is constant; no
    ``band``: all in one band)."""
    depth = nx_depths(ids, parents)
    pos = {tid: i for i, tid in enumerate(ids)}
    rank = {tid: 0 for tid in ids} if band is None else band
    children: dict[str, list[str]] = {tid: [] for tid in ids}
    waiting = {tid: len(set(ps)) for tid, ps in zip(ids, parents, strict=True)}
    for tid, ps in zip(ids, parents, strict=True):
        for p in set(ps):
            children[p].append(tid)
    heap = [(rank[t], -depth[t], pos[t]) for t in ids if waiting[t] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        *_, i = heapq.heappop(heap)
        tid = ids[i]
        order.append(tid)
        for c in children[tid]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(heap, (rank[c], -depth[c], pos[c]))
    return order


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, what: str = "", every: float = 0.01
) -> Any:
    """Poll ``predicate`` every ``every`` seconds until it answers something truthy, and return
    that; fail after ``timeout`` seconds (a bound, not a check)."""
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(every)
    return got


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


def store_history(db: str, task: str) -> list[dict[str, Any]]:
    """``task``'s audit trail in the store at ``db`` (a handle of its own, closed after)."""
    from conveyor.store.urls import open_store

    store = open_store(db)
    try:
        return store.history(task)
    finally:
        store.close()
