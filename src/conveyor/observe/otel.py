"""OpenTelemetry for a run: a span per task attempt and the run's metrics (``conveyor[otel]``).

``RunTelemetry`` is an event sink (``conveyor.events``): it sees the same committed transitions
as ``--events`` files, for in-process runs and durable workers alike, and turns each attempt --
``task_started`` up to the event that ends it (``task_finished``, ``task_retrying``,
``task_failed``, ``task_released``, ``task_preempted``, ``lease_expired``, ``task_cancelled``)
-- into one span whose start and end are those events' timestamps (the store's record of the
transition, not when the sink heard of it). Spans are children of one span for the whole run
(``conveyor run`` or ``conveyor worker``), itself a child of whatever span is current where the
run was opened.

Size: the instruments (``Telemetry``) and the run's event sink (``RunTelemetry``) that feeds them
are one job, turning conveyor's transitions into OpenTelemetry, and share the snapshot types.

The engine hands it each claim (``on_claim``: the task's group and function, which events do
not carry) and calls it every tick on its own thread (``on_tick``: the store's counts by state
and the endpoint limiter's statistics, read there because a store handle belongs to its
thread). Metrics go through observable instruments whose callbacks read those snapshots.

Providers: by default OpenTelemetry's global ones (``trace.set_tracer_provider``,
``metrics.set_meter_provider``, or ``opentelemetry-instrument``); ``Telemetry(tracer_provider=,
meter_provider=)`` names others (tests use the SDK's in-memory exporter and reader).
This module imports OpenTelemetry at its top: it is itself imported only when a run asks.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.clock import Clock
from conveyor.errors import UsageError
from conveyor.events import Event, combine

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - the extra is in `dev`
    raise UsageError("telemetry needs OpenTelemetry: pip install -e '.[otel]'") from None

if TYPE_CHECKING:
    from conveyor.limiter import EndpointStatistics
    from conveyor.store.base import Claim, Store


class Ticking(Protocol):
    """What ``on_tick`` reads of the engine (``conveyor.runtime.engine.Engine``)."""

    @property
    def store(self) -> Store: ...

    def endpoint_statistics(self) -> Mapping[str, EndpointStatistics]: ...


__all__ = [
    "ATTEMPT_ENDS", "RunTelemetry", "Telemetry", "default_telemetry", "error_type", "observe_store",
]  # fmt: skip

#: The events that end an attempt, and the ``conveyor.outcome`` each gives its span.
ATTEMPT_ENDS = {
    "task_finished": "done", "task_retrying": "retrying", "task_failed": "failed",
    "task_released": "released", "task_preempted": "preempted", "lease_expired": "lease_expired",
    "task_cancelled": "cancelled",
}  # fmt: skip
#: Outcomes that end a task for good: what ``conveyor.tasks.finished`` counts.
_FINAL = {"task_finished": "done", "task_failed": "failed"}
_FAILED = frozenset({"retrying", "failed", "lease_expired"})
_ERROR_TYPE = re.compile(r"([A-Za-z_][\w.]*)(?::|\s*$)")
#: Seconds between two reads of the store's counts by state (a cheap read, on the engine's
#: thread; the metric is exported every minute by default, so once a second is plenty).
COUNTS_EVERY_S = 1.0


def error_type(error: str | None) -> str:
    """The exception class an error text starts with (``"ValueError: boom (f.py:3 in g)"``
    -> ``"ValueError"``), else ``"error"``: what the ``error.type`` attribute holds."""
    m = _ERROR_TYPE.match(error or "")
    return m[1] if m else "error"


def function_name(spec: Any) -> str | None:
    """The function a task runs, for span names: its import path ``module:qualname``;
    ``None`` for commands and no-ops (their spans are named by task id)."""
    fn = spec.fn
    if isinstance(fn, str):
        return fn
    if fn is not None:
        fn = getattr(fn, "__wrapped_task__", fn)
        module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
        if qual:
            return f"{module}:{qual}" if module else str(qual)
    return None


@dataclass(slots=True)
class _Attempt:
    attempt: int | None
    worker: str | None
    start: float


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What the observable instruments report for one graph, as the last tick read it."""

    counts: Mapping[str, int]
    endpoints: Mapping[str, EndpointStatistics]


class Telemetry:
    """The tracer and the instruments conveyor reports through; one per pair of providers
    (``None``: OpenTelemetry's global ones). Runs observed through it share its instruments;
    the gauges report, per graph, the latest run's last snapshot (it stays after the run)."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        counts_every_s: float = COUNTS_EVERY_S,
    ) -> None:
        from conveyor import __version__

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.counts_every_s = counts_every_s
        self.tracer = trace.get_tracer("conveyor", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("conveyor", __version__, meter_provider=meter_provider)
        self._lock = threading.Lock()
        self._latest: dict[str, _Snapshot] = {}  # graph -> what its latest run last read
        # Counted here and observed at export: an SDK counter's ``add`` costs ~10x a dict
        # increment, paid per attempt on the engine's path.
        self._attempts: Counter[tuple[str, str, str]] = Counter()  # (graph, group, outcome)
        self._finished: Counter[tuple[str, str, str]] = Counter()
        meter.create_observable_counter(
            "conveyor.task.attempts", [self._tally(self._attempts)], unit="{attempt}",
            description="Task attempts that ended, by outcome and group",
        )  # fmt: skip
        meter.create_observable_counter(
            "conveyor.tasks.finished", [self._tally(self._finished)], unit="{task}",
            description="Tasks that finished for good (outcome done or failed): throughput",
        )  # fmt: skip
        meter.create_observable_gauge(
            "conveyor.tasks", [self._observe_counts], unit="{task}",
            description="Tasks by state, as the run's store counts them",
        )  # fmt: skip
        for name, field, what in (
            ("conveyor.endpoint.limit", "limit", "Adaptive concurrency limit per endpoint"),
            ("conveyor.endpoint.in_flight", "in_flight", "Requests in flight per endpoint"),
            ("conveyor.endpoint.waiting", "waiting", "Requests waiting for a slot per endpoint"),
        ):
            meter.create_observable_gauge(
                name, [self._endpoint_callback(field)], unit="{request}", description=what
            )
        meter.create_observable_counter(
            "conveyor.endpoint.rate_limited", [self._endpoint_callback("rate_limited")],
            unit="{response}", description="429 responses per endpoint",
        )  # fmt: skip

    def observe(
        self, *, graph: str, worker: str, clock: Clock, joined: bool = False
    ) -> RunTelemetry:
        """Start observing one run (its span starts now). ``observe_store`` calls this and
        joins the store's ``emit``; the run hands it claims and ticks and closes it."""
        return RunTelemetry(self, graph, worker, clock, joined)

    def count(self, graph: str, group: str, outcome: str | None, final: str | None) -> None:
        """One attempt ended (``outcome``), maybe ending its task for good (``final``)."""
        with self._lock:
            if outcome is not None:
                self._attempts[graph, group, outcome] += 1
            if final is not None:
                self._finished[graph, group, final] += 1

    def publish(self, graph: str, snapshot: _Snapshot) -> None:
        with self._lock:
            self._latest[graph] = snapshot

    def flush(self) -> None:
        """Export what is buffered now (providers that can: the SDK's)."""
        for provider in (
            self.tracer_provider or trace.get_tracer_provider(),
            self.meter_provider or metrics.get_meter_provider(),
        ):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush()

    # -- observable instruments' callbacks (on the exporting thread) -------------------------
    def _snapshots(self) -> list[tuple[str, _Snapshot]]:
        with self._lock:
            return list(self._latest.items())

    def _tally(self, counts: Counter[tuple[str, str, str]]) -> Any:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                items = list(counts.items())
            return [
                Observation(n, _labels(graph, group, outcome))
                for (graph, group, outcome), n in items
            ]

        return observe

    def _observe_counts(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {"conveyor.graph": graph, "conveyor.state": state})
            for graph, snap in self._snapshots()
            for state, n in snap.counts.items()
        ]

    def _endpoint_callback(self, field: str) -> Any:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(getattr(st, field), {"conveyor.graph": graph, "conveyor.endpoint": key})
                for graph, snap in self._snapshots()
                for key, st in snap.endpoints.items()
            ]

        return observe


class RunTelemetry:
    """One run's spans and metrics (see the module docstring). Thread-safe: stores emit on
    whichever thread committed (the engine's, a pool thread's, the heartbeat's)."""

    def __init__(
        self, telemetry: Telemetry, graph: str, worker: str, clock: Clock, joined: bool
    ) -> None:
        self.telemetry = telemetry
        self.graph = graph
        self.worker = worker
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Attempt] = {}  # task id -> its attempt running now
        self._tasks: dict[str, tuple[str, str | None]] = {}  # task id -> (group, function)
        self._next_counts = 0.0
        #: Where the gauges read from, on the run's thread: its store, its endpoint statistics.
        self._store: Store | None = None
        self._endpoints: Callable[[], Mapping[str, EndpointStatistics]] = dict
        self._closed = False
        self.span = telemetry.tracer.start_span(
            "conveyor worker" if joined else "conveyor run",
            attributes={"conveyor.graph": graph, "conveyor.worker": worker},
            start_time=_ns(clock.wall()),
        )
        self._context = trace.set_span_in_context(self.span)

    # -- what the run hands it ---------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        task = event.get("task")
        if task is None or self._closed:  # a store handed in stays: its later runs are not ours
            return
        if kind == "task_started":
            with self._lock:
                self._open[task] = _Attempt(event.get("attempt"), event.get("worker"), event["ts"])
            return
        outcome = ATTEMPT_ENDS.get(str(kind))
        if outcome is None:
            return
        with self._lock:
            began = self._open.get(task)
            if began is not None and event.get("attempt", began.attempt) == began.attempt:
                del self._open[task]
                group, function = self._tasks.pop(task, ("", None))
            else:  # an attempt this process did not see start (another worker's)
                began = None
                group, function = self._task(task)
        final = _FINAL.get(str(kind))
        if kind == "lease_expired" and event.get("to") == "failed":
            final = "failed"
        self.telemetry.count(self.graph, group, outcome if began else None, final)
        if began is not None:
            self._span(task, began, event, outcome, group, function)

    def on_claim(self, claim: Claim) -> None:
        """The task's group and function: what its span and metrics are labelled with."""
        spec = claim.spec
        with self._lock:
            self._tasks[spec.id] = (spec.group, function_name(spec))

    def on_tick(self, engine: Ticking) -> None:
        """Every engine tick, on its thread (see ``tick``)."""
        self.tick(engine.store, engine.endpoint_statistics)

    def tick(
        self,
        store: Store,
        endpoints: Callable[[], Mapping[str, EndpointStatistics]] = dict,
    ) -> None:
        """On the thread that owns ``store``: read its counts and ``endpoints()`` for the
        gauges, at most every ``counts_every_s`` (and once more at ``close``)."""
        self._store, self._endpoints = store, endpoints
        now = self.clock.wall()
        if now >= self._next_counts:
            self._next_counts = now + self.telemetry.counts_every_s
            self._read()

    def close(self) -> None:
        """End the run's span (and attempts still open: ``conveyor.outcome`` ``unfinished``),
        read the counts one last time, export. Idempotent; call before the store closes."""
        if self._closed:
            return
        self._closed = True
        if self._store is not None:
            with contextlib.suppress(Exception):  # a store already closed: the last read stays
                self._read()
        now = self.clock.wall()
        with self._lock:
            left, self._open = self._open, {}
        for task, began in left.items():
            group, function = self._task(task)
            self._span(task, began, {"ts": now}, "unfinished", group, function)
        self.span.end(end_time=_ns(now))
        self.telemetry.flush()

    # -- helpers ------------------------------------------------------------------------------
    def _task(self, task: str) -> tuple[str, str | None]:
        return self._tasks.get(task, ("", None))

    def _read(self) -> None:
        assert self._store is not None
        snap = _Snapshot(dict(self._store.counts()), dict(self._endpoints()))
        self.telemetry.publish(self.graph, snap)

    def _span(
        self, task: str, began: _Attempt, end: Event, outcome: str, group: str, fn: str | None
    ) -> None:
        attrs: dict[str, Any] = {
            "conveyor.graph": self.graph, "conveyor.task.id": task,
            "conveyor.outcome": outcome,
        }  # fmt: skip
        if group:
            attrs["conveyor.group"] = group
        if fn is not None:
            attrs["conveyor.function"] = fn
        if began.worker is not None:
            attrs["conveyor.worker"] = began.worker
        if began.attempt is not None:
            attrs["conveyor.attempt"] = began.attempt
        error = end.get("error")
        if outcome in _FAILED:
            attrs["error.type"] = error_type(error) if outcome != "lease_expired" else outcome
        span = self.telemetry.tracer.start_span(
            fn or task, context=self._context, attributes=attrs, start_time=_ns(began.start)
        )
        if outcome in _FAILED:
            span.set_status(Status(StatusCode.ERROR, (error or outcome).splitlines()[0][:500]))
        span.end(end_time=_ns(max(began.start, end["ts"])))


def _labels(graph: str, group: str, outcome: str) -> dict[str, str]:
    out = {"conveyor.graph": graph, "conveyor.outcome": outcome}
    if group:
        out["conveyor.group"] = group
    return out


def observe_store(
    telemetry: bool | Telemetry,
    store: Store,
    *,
    worker: str,
    clock: Clock,
    graph: str | None = None,
    joined: bool = True,
) -> RunTelemetry:
    """Start observing a run on ``store`` (``telemetry``: ``True`` for the global providers,
    or a ``Telemetry``): the store's events go to it from now on. The caller hands it the
    claims (``on_claim``) and ticks (``on_tick``/``tick``) and closes it before the store."""
    if telemetry is not True and not isinstance(telemetry, Telemetry):
        raise UsageError(
            f"telemetry must be True, False or a conveyor.Telemetry, got {telemetry!r}"
        )
    tel = default_telemetry() if telemetry is True else telemetry
    name = graph if graph is not None else store.graph_name() or ""
    observer = tel.observe(graph=name, worker=worker, clock=clock, joined=joined)
    store.emit = combine([store.emit, observer])
    return observer


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


_DEFAULT: Telemetry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_telemetry() -> Telemetry:
    """The ``Telemetry`` on OpenTelemetry's global providers (``telemetry=True``): one per
    process, so runs one after another share its instruments."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Telemetry()
        return _DEFAULT
