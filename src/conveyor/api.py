"""The user-facing names: ``Graph``, ``task``, ``run``, ``run_iter``, ``current``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.clock import SYSTEM_CLOCK
from conveyor.errors import GraphError, TaskFailed, UsageError
from conveyor.events import EventSink, JsonlSink, combine
from conveyor.executorname import check_executor
from conveyor.graph import Graph, as_graph, spec_from_call, task
from conveyor.model import DEFAULT_LEASE_S, GraphSpec, TaskResult, TaskState, checked_lease
from conveyor.runtime.context import current
from conveyor.store.base import Store
from conveyor.store.urls import open_store

if TYPE_CHECKING:
    from conveyor.observe.otel import RunTelemetry, Telemetry
    from conveyor.runtime.engine import Engine, RunStats
    from conveyor.store.base import OpenedGraph

__all__ = [
    "Graph", "Run", "RunResult", "as_graph", "current", "open_run", "run", "run_iter",
    "spec_from_call", "task",
]  # fmt: skip


@dataclass
class RunResult:
    """What ``run`` returns: counts, and every task's result by id (``result["task"]``).

    The store stays open for these lookups (``conveyor.run`` does not close it).
    """

    store: Store
    stats: RunStats
    #: The graph that ran; ``None`` for a run that joined the graph a store held.
    graph: GraphSpec | None
    #: Whether the run joined a graph in a shared store as one worker of many.
    joined: bool = False

    def __getitem__(self, task_id: str) -> Any:
        res = self.store.result(task_id)
        if res.state is not TaskState.DONE:
            raise TaskFailed(f"task {task_id!r} is {res.state.label}: {res.error}")
        return res.value

    def result(self, task_id: str) -> TaskResult:
        return self.store.result(task_id)

    def __contains__(self, task_id: object) -> bool:
        """Whether the run has a task ``task_id`` (whatever its state)."""
        if not isinstance(task_id, str):
            return False
        try:
            self.store.result(task_id)
        except GraphError:
            return False
        return True

    @property
    def counts(self) -> dict[str, int]:
        return self.store.counts()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failed(self) -> dict[str, str | None]:
        """Failed and skipped tasks of ``graph`` with their errors (empty without a graph)."""
        tasks = self.graph.tasks if self.graph is not None else ()
        return {
            t.id: r.error
            for t in tasks
            if (r := self.store.result(t.id)).state in (TaskState.FAILED, TaskState.SKIPPED)
        }

    @property
    def exit_code(self) -> int:
        """0 all done, 1 a task failed or work is left, 130 interrupted (``outcome.exit_code``;
        a joined run is one worker of many: work it leaves to the others is not a failure)."""
        from conveyor.outcome import exit_code

        return exit_code(self.counts, interrupted=self.stats.interrupted, worker=self.joined)


class Run:
    """One run: a store, an engine on it and the graph (``open_run`` makes it).

    ``run()`` runs to the end and returns a ``RunResult``; ``run_iter()`` yields each task's
    result as it finishes. Use it as a context manager (or call ``close()``): it closes the
    event file and the store it opened.

    **Ctrl-C.** On ``KeyboardInterrupt`` the engine stops starting tasks, cancels coroutines,
    shell commands and queued process tasks, waits for running thread tasks (threads cannot be
    stopped; a second Ctrl-C stops waiting), and gives back what it held. Then an in-process
    store cancels what is left (a durable store keeps it: running the graph again resumes it),
    ``interrupted`` is true, and the ``KeyboardInterrupt`` propagates to the caller: nothing
    swallows it. ``result()`` still answers afterwards (exit code 130).
    """

    def __init__(
        self,
        store: Store,
        engine: Engine,
        graph: GraphSpec | None,
        opened: OpenedGraph | None,
        *,
        owns_store: bool,
        closers: list[JsonlSink],
        telemetry: RunTelemetry | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        #: The graph submitted or resumed; ``None`` when the run joined the store's graph.
        self.graph = graph
        #: What submitting did (``None`` when joined).
        self.opened = opened
        self._owns_store = owns_store
        self._closers = closers
        #: The run's OpenTelemetry spans and metrics (``telemetry=``), else ``None``.
        self.telemetry = telemetry
        self._closed = False
        self._started: float | None = None
        self._ended: float | None = None

    # -- running ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run to the end (or ``idle_exit``, ``max_tasks``, ``fail_fast``) and return the
        result. Re-raises ``KeyboardInterrupt`` (see the class docstring)."""
        for _ in self._drive(self.engine.run_iter(yield_results=False)):
            pass
        return self.result()

    def run_iter(self) -> Iterator[TaskResult]:
        """Run, yielding each task's ``TaskResult`` as soon as it finishes."""
        yield from self._drive(self.engine.run_iter())

    def _drive(self, results: Iterator[TaskResult]) -> Iterator[TaskResult]:
        self._started = time.monotonic()
        try:
            yield from results  # the engine cancels what an interrupted in-process run leaves
        finally:
            self._ended = time.monotonic()

    def result(self) -> RunResult:
        return RunResult(self.store, self.engine.stats, self.graph, joined=self.graph is None)

    # -- what a caller shows ------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """Tasks in the store by state label, now (for progress displays)."""
        return self.store.counts()

    @property
    def stats(self) -> RunStats:
        """This run's own numbers: started, done, failed, retried, interrupted."""
        return self.engine.stats

    @property
    def interrupted(self) -> bool:
        return self.engine.stats.interrupted

    @property
    def stuck(self) -> bool:
        """A timed-out thread or process task may still be running: it cannot be stopped, so
        a process that wants to exit now must not wait for it (the CLI uses ``os._exit``)."""
        return self.engine.stuck

    @property
    def worker_id(self) -> str:
        return self.engine.worker_id

    @property
    def elapsed(self) -> float:
        """Seconds ``run``/``run_iter`` has taken so far (0 before it starts)."""
        if self._started is None:
            return 0.0
        end = self._ended if self._ended is not None else time.monotonic()
        return end - self._started

    # -- closing ------------------------------------------------------------------------------
    def close(self, *, keep_store: bool = False) -> None:
        """Close the event file, and the store unless it was passed in or ``keep_store``
        (a ``RunResult`` reads from it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.telemetry is not None:
                self.telemetry.close()  # reads the store's counts a last time: before it closes
            if self._owns_store and not keep_store:
                self.store.close()
        finally:
            for closer in self._closers:
                closer.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run(
    graph: Any = None,
    *,
    db: str | None = None,
    store: Store | None = None,
    events: str | os.PathLike[str] | None = None,
    emit: EventSink | None = None,
    replace: bool = False,
    fingerprints: bool = True,
    lease_s: float = DEFAULT_LEASE_S,
    labels: Mapping[str, Any] | None = None,
    resources: Mapping[str, float] | None = None,
    max_tasks: int | None = None,
    worker_id: str | None = None,
    telemetry: bool | Telemetry = False,
    borrow: str | None = None,
    ray_address: str | None = None,
    **engine_options: Any,
) -> Run:
    """Open a run of ``graph``: open the store, submit (or resume) the graph, make the engine.

    ``graph``: a ``Graph``, ``GraphSpec``, dict, graph file path or ``networkx.DiGraph``; or
    ``None`` to join the graph a durable store already holds, as one worker of many (what
    ``conveyor worker`` does). Options:

    - ``db`` (store URL; default in memory) or ``store`` (an open ``Store``, left open);
    - ``events`` (a JSONL path to append events to) and/or ``emit`` (a callable per event);
    - ``replace`` (discard another graph's unfinished work), ``fingerprints`` (default
      ``True``: against a durable store, run again only what changed; docs/incremental.md);
    - what this worker offers: ``labels``, ``resources``, ``lease_s``, ``max_tasks``,
      ``worker_id`` (default ``host:pid``);
    - ``telemetry``: ``True`` reports a span per task attempt and the run's metrics through
      OpenTelemetry's global providers, or pass a ``conveyor.observe.otel.Telemetry`` naming
      others (``conveyor[otel]``; docs/telemetry.md);
    - ``borrow``: how far a group may run beyond its fair share (``strict``, ``bounded``,
      ``bounded:N``, ``bounded:P%``, ``work_conserving``; docs/fairness.md), for the graph
      submitted here (it overrides the graph's own ``borrow``);
    - the engine's: ``workers`` (default 4), ``fail_fast``, ``executor``, ``retry``,
      ``seed``, ``idle_exit``, ``on_result``, ``on_tick`` (called with the engine), ``preempt``
      (default ``True``: take running tasks of a lower band back for waiting tasks of a higher
      one; ``False``, or a ``core.preempt.PreemptPolicy``; docs/fairness.md), ...
    - ``executor="ray"`` runs every task (functions and commands) as a Ray task on the cluster
      at ``ray_address`` (``"auto"``, ``"host:port"``; default: the one ``ray start`` left on
      this machine, else a new local Ray; a driver's own ``ray.init`` is kept). Unless given,
      ``workers`` is the cluster's CPUs x 16 and ``resources``/``labels`` are the cluster's
      (docs/ray.md).

    Bad input raises before anything runs (``GraphError``; ``UsageError`` when ``graph`` is
    ``None`` and the store holds no graph); a task no worker of this in-process run could ever
    run is refused here too. On any error what was opened is closed again.
    """
    from conveyor.runtime.engine import Engine
    from conveyor.runtime.mainguard import check_main_guard
    from conveyor.store.base import WorkerProfile
    from conveyor.workerid import default_worker_id

    spec = None if graph is None else as_graph(graph)
    lease_s = checked_lease(lease_s)
    if borrow is not None:
        from conveyor.graph import check_borrow

        check_borrow(borrow)
        if spec is not None:
            spec.borrow = borrow
    if engine_options.get("executor") == "process" or (
        spec is not None
        and not spec.structure_only  # (no-ops only: no task names an executor)
        and any(t.executor == "process" for t in spec.tasks)
    ):
        check_main_guard()  # before anything runs: a spawned worker would run this call again
    check_executor(engine_options.get("executor"), ray_address)
    closers = [JsonlSink(events)] if events is not None else []
    emit = combine([emit, *closers])
    owns_store = store is None
    observer: RunTelemetry | None = None
    ray = None
    try:
        if engine_options.get("executor") == "ray":
            from conveyor.runtime.rayexec import connect

            ray = engine_options["ray"] = connect(ray_address)
            offered = ray.offer()
            resources = resources or offered[0]  # not given: what the cluster has
            labels = labels or offered[1]
            engine_options.setdefault("workers", ray.default_slots())
        if store is None:
            store = open_store(db, emit=emit, clock=engine_options.get("clock", SYSTEM_CLOCK))
        elif emit is not None:
            store.emit = emit
        store.configure(
            WorkerProfile(labels=dict(labels or {}), resources=dict(resources) if resources
                          else None, max_batch=max_tasks, lease_s=lease_s)
        )  # fmt: skip
        submitted = None
        if spec is not None and not store.shared:
            # (``fingerprints.open_graph`` computes nothing for an in-process store: it is
            # opened directly, and a run in memory never imports the hashing)
            submitted = store.open_graph(spec, time.time(), replace=replace)
        elif spec is not None:
            from conveyor.fingerprints import open_graph

            submitted = open_graph(
                store, spec, time.time(), replace=replace, fingerprints=fingerprints
            )
        elif not store.shared:
            raise UsageError("an in-process store holds no graph to join: give a graph to run")
        elif store.graph_name() is None:
            where = db if db is not None else store.url
            raise UsageError(
                f"{where} holds no graph yet: run `conveyor submit FILE --db {where}` first"
            )
        functions = (
            None if spec is None or spec.structure_only
            else {t.id: t for t in spec.tasks if callable(t.fn)}
        )  # fmt: skip
        engine = Engine(
            store, worker_id=worker_id or default_worker_id(), lease_s=lease_s,
            max_tasks=max_tasks, functions=functions, emit=emit, labels=dict(labels or {}),
            resources=dict(resources or {}), **engine_options,
        )  # fmt: skip
        if spec is not None and not store.shared:
            engine.check_fit()
            if ray is not None:  # the cluster, too, when resources/labels were given
                ray.check_fit(store, offered)
        if telemetry:
            observer = _observe(telemetry, store, engine, spec)
    except BaseException:
        if observer is not None:
            observer.close()
        if ray is not None:
            ray.shutdown()
        if owns_store and store is not None:
            store.close()
        for closer in closers:
            closer.close()
        raise
    return Run(
        store, engine, spec, submitted, owns_store=owns_store, closers=closers, telemetry=observer
    )


def _observe(
    telemetry: bool | Telemetry, store: Store, engine: Engine, spec: GraphSpec | None
) -> RunTelemetry:
    """Hook OpenTelemetry into a run: its events (as the store emits them), its claims and
    its ticks (``conveyor.observe.otel``)."""
    from conveyor.observe.otel import observe_store

    observer = observe_store(
        telemetry, store, worker=engine.worker_id, clock=engine.clock,
        graph=None if spec is None else spec.name, joined=spec is None,
    )  # fmt: skip
    engine.on_claim = observer.on_claim
    user_tick = engine.on_tick

    def on_tick(eng: Engine) -> None:
        observer.on_tick(eng)
        if user_tick is not None:
            user_tick(eng)

    engine.on_tick = on_tick
    return observer


def run(graph: Any, **options: Any) -> RunResult:
    """Run a graph to the end and return its results.

    Options: ``workers`` (default 4), ``db`` (store URL, default in memory), ``events`` (a
    JSONL path), ``fail_fast``, ``retry`` (a ``RetryPolicy``), ``executor`` ("inline",
    "thread", "process"), ``on_result`` (called with each ``TaskResult`` as it finishes),
    ``fingerprints`` (default ``True``: with a durable ``db``, a second run of the same graph
    runs only what changed and its downstream; docs/incremental.md); all of ``open_run``'s.

    Ctrl-C stops the run (see ``Run``) and raises ``KeyboardInterrupt`` here.
    """
    opened = open_run(graph, **options)
    try:
        result = opened.run()
    except BaseException:
        opened.close()
        raise
    opened.close(keep_store=True)
    return result


def run_iter(graph: Any, **options: Any) -> Iterator[TaskResult]:
    """Run a graph, yielding each task's ``TaskResult`` as soon as it finishes. Ctrl-C stops
    the run and raises ``KeyboardInterrupt`` from the loop."""
    with open_run(graph, **options) as opened:
        yield from opened.run_iter()
