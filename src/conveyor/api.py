"""The user-facing names: ``Graph``, ``task``, ``run``, ``run_iter``, ``current``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from conveyor.errors import TaskFailed
from conveyor.events import EventSink, JsonlSink, combine
from conveyor.graph import Graph, as_graph, spec_from_call, task
from conveyor.model import GraphSpec, TaskResult, TaskState
from conveyor.runtime.context import current
from conveyor.store.base import Store
from conveyor.store.urls import open_store

__all__ = ["Graph", "RunResult", "as_graph", "current", "run", "run_iter", "spec_from_call", "task"]


@dataclass
class RunResult:
    """What ``run`` returns: counts, and every task's result by id (``result["task"]``)."""

    store: Store
    stats: Any
    graph: GraphSpec

    def __getitem__(self, task_id: str) -> Any:
        res = self.store.result(task_id)
        if res.state is not TaskState.DONE:
            raise TaskFailed(f"task {task_id!r} is {res.state.label}: {res.error}")
        return res.value

    def result(self, task_id: str) -> TaskResult:
        return self.store.result(task_id)

    @property
    def counts(self) -> dict[str, int]:
        return self.store.counts()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failed(self) -> dict[str, str | None]:
        return {
            t.id: r.error
            for t in self.graph.tasks
            if (r := self.store.result(t.id)).state in (TaskState.FAILED, TaskState.SKIPPED)
        }

    @property
    def exit_code(self) -> int:
        from conveyor.outcome import exit_code

        return exit_code(self.counts, interrupted=self.stats.interrupted)


def _engine(graph: Any, opts: dict[str, Any]) -> tuple[Any, GraphSpec, list[Any]]:
    from conveyor.runtime.engine import Engine

    spec = as_graph(graph)
    closers: list[Any] = []
    events = opts.pop("events", None)
    sinks: list[EventSink | None] = [opts.pop("emit", None)]
    if events is not None:
        sink = JsonlSink(events)
        closers.append(sink)
        sinks.append(sink)
    emit = combine(sinks)
    store = opts.pop("store", None)
    db = opts.pop("db", None)
    replace = opts.pop("replace", False)
    fingerprints = opts.pop("fingerprints", True)
    if store is None:
        store = open_store(db, emit=emit)
    elif emit is not None:
        store.emit = emit
    import time

    from conveyor.fingerprints import open_graph

    open_graph(store, spec, time.time(), replace=replace, fingerprints=fingerprints)
    functions = {t.id: t for t in spec.tasks if callable(t.fn)}
    engine = Engine(store, functions=functions, emit=emit, **opts)
    if not store.shared:
        engine.check_fit()
    return engine, spec, closers


def run(graph: Any, **options: Any) -> RunResult:
    """Run a graph to the end and return its results.

    Options: ``workers`` (default 4), ``db`` (store URL, default in memory), ``events`` (a
    JSONL path), ``fail_fast``, ``retry`` (a ``RetryPolicy``), ``executor`` ("inline",
    "thread", "process"), ``on_result`` (called with each ``TaskResult`` as it finishes),
    ``fingerprints`` (default ``True``: with a durable ``db``, a second run of the same graph
    runs only what changed and its downstream; docs/incremental.md).
    """
    engine, spec, closers = _engine(graph, dict(options))
    try:
        try:
            engine.run()
        except KeyboardInterrupt:
            pass
        return RunResult(engine.store, engine.stats, spec)
    finally:
        for c in closers:
            c.close()


def run_iter(graph: Any, **options: Any) -> Iterator[TaskResult]:
    """Run a graph, yielding each task's ``TaskResult`` as soon as it finishes."""
    engine, _spec, closers = _engine(graph, dict(options))
    try:
        yield from engine.run_iter()
    finally:
        for c in closers:
            c.close()
