"""A store's state in Prometheus' text format: what ``GET /metrics`` serves.

``metrics_text(store)`` asks the store for its ``status`` (the summary ``conveyor status``
prints: a scan of the tasks table, for people and dashboards, never on a worker's path) and
renders it with ``prometheus_client`` through a custom collector: one scrape, one read.
It reads only through the ``Store`` interface; the server that calls it gives it a store
handle of its own. Metric names match the OpenTelemetry ones (``conveyor.tasks`` ->
``conveyor_tasks``); docs/telemetry.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import UsageError
from conveyor.store.base import Store

try:
    from prometheus_client import CollectorRegistry, exposition, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - the extra is in `dev`
    raise UsageError("/metrics needs prometheus-client: pip install -e '.[otel]'") from None

__all__ = ["CONTENT_TYPE", "StoreCollector", "metrics_text"]

#: The text format every Prometheus server reads (0.0.4); the names here need nothing newer.
CONTENT_TYPE: str = getattr(
    exposition, "CONTENT_TYPE_PLAIN_0_0_4", "text/plain; version=0.0.4; charset=utf-8"
)

#: Per endpoint, over the workers' last reports (``merge_endpoints``): gauge name, status key,
#: help text.
_ENDPOINT_GAUGES = (
    ("conveyor_endpoint_limit", "limit", "Adaptive concurrency limit, summed over workers"),
    ("conveyor_endpoint_in_flight", "in_flight", "Requests in flight, summed over workers"),
    ("conveyor_endpoint_waiting", "waiting", "Requests waiting for a slot, summed over workers"),
    ("conveyor_endpoint_workers", "workers", "Workers that reported using the endpoint"),
)


class StoreCollector(Collector):
    """Collects a store's state at each scrape (``Store.status`` once per ``collect``)."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        return iter(store_metrics(self.store.status(self.clock.wall())))


def store_metrics(st: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one ``Store.status`` summary."""
    graph = st.get("graph") or ""
    out: list[Metric] = []
    info = GaugeMetricFamily("conveyor_graph_info", "The graph the store holds", labels=["graph"])
    info.add_metric([graph], 1)
    out.append(info)
    counts: Mapping[str, int] = st.get("counts", {})
    tasks = GaugeMetricFamily("conveyor_tasks", "Tasks by state", labels=["state"])
    for state, n in counts.items():
        tasks.add_metric([state], n)
    out.append(tasks)
    groups = GaugeMetricFamily(
        "conveyor_group_tasks", "Tasks by group and state", labels=["group", "state"]
    )
    for group, by_state in st.get("groups", {}).items():
        for state, n in by_state.items():
            groups.add_metric([group, state], n)
    out.append(groups)
    finished = CounterMetricFamily(
        "conveyor_tasks_finished",
        "Tasks finished for good: done or failed (a retry of failed tasks lowers it)",
        labels=["outcome"],
    )
    for outcome in ("done", "failed"):
        finished.add_metric([outcome], counts.get(outcome, 0))
    out.append(finished)
    unfinished, alive = st.get("unfinished"), st.get("workers_alive")
    out.append(_gauge("conveyor_unfinished_tasks", "Tasks not finished yet", unfinished))
    out.append(_gauge("conveyor_workers_alive", "Workers with a live lease", alive))
    out.append(
        _gauge("conveyor_tasks_per_second", "Tasks done per second, last minute",
               st.get("tasks_per_s"))
    )  # fmt: skip
    if st.get("eta_s") is not None:
        out.append(_gauge("conveyor_eta_seconds", "Seconds left at the current rate", st["eta_s"]))
    endpoints: Mapping[str, Mapping[str, Any]] = st.get("endpoints", {})
    for name, key, what in _ENDPOINT_GAUGES:
        fam = GaugeMetricFamily(name, what, labels=["endpoint"])
        for ep, stats in endpoints.items():
            fam.add_metric([ep], stats.get(key, 0))
        out.append(fam)
    throttled = CounterMetricFamily(
        "conveyor_endpoint_rate_limited", "429 responses, summed over workers", labels=["endpoint"]
    )
    for ep, stats in endpoints.items():
        throttled.add_metric([ep], stats.get("rate_limited", 0))
    out.append(throttled)
    return out


def _gauge(name: str, what: str, value: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, what, value=float(value or 0))


def metrics_text(store: Store) -> tuple[bytes, str]:
    """``(body, content type)`` of the store's state in Prometheus' text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry), CONTENT_TYPE
