"""What OpenTelemetry costs a run: the same graph with ``telemetry`` off and on, side by side.

    python benchmarks/bench_telemetry.py            # 20,000 tasks in memory, 5,000 on SQLite
    python benchmarks/bench_telemetry.py --quick    # small sizes (a smoke run)

Tasks are Python no-op *functions* (each has a span when telemetry is on), in process,
``workers=4``. "on" uses the SDK as a user would: a ``BatchSpanProcessor`` and a periodic metric
reader, with exporters that drop what they are given (what an exporter does with the data is
not conveyor's cost). Both sides run the same graph, the same options and the same window
(``conveyor.run`` from graph to result, the store opened inside it); runs alternate off, on, off,
on ... and each row is the median of ``--reps`` (default 3). Prints seconds, tasks/s and the
ratio on/off.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import conveyor
from conveyor.observe.otel import Telemetry


class DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class DropMetrics(MetricExporter):
    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def noop(i: int) -> int:
    return i


def graph(n: int) -> conveyor.Graph:
    """Chains of 10 tasks, in 4 groups."""
    g = conveyor.Graph("bench-telemetry")
    prev: Any = None
    for i in range(n):
        deps = [prev] if prev is not None and i % 10 else []
        prev = g.add(noop, i, id=f"t{i}", deps=deps, group=f"g{i % 4}")
    return g


def telemetry() -> Telemetry:
    tracer = TracerProvider()
    tracer.add_span_processor(BatchSpanProcessor(DropSpans()))
    reader = PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=1000)
    return Telemetry(tracer, MeterProvider(metric_readers=[reader]))


def timed(n: int, db: str | None, tel: Telemetry | None) -> float:
    g = graph(n)
    t0 = time.perf_counter()
    result = conveyor.run(g, db=db, workers=4, telemetry=tel or False)
    took = time.perf_counter() - t0
    assert result.counts["done"] == n, result.counts
    result.store.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    tel = telemetry()
    sizes = {"memory": 2_000, "sqlite": 500} if args.quick else {"memory": 20_000, "sqlite": 5_000}
    head = ("store", "tasks", "off s", "on s", "off/s", "on/s", "on/off")
    print("{:8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}".format(*head))
    with tempfile.TemporaryDirectory() as tmp:
        for where, n in sizes.items():
            off: list[float] = []
            on: list[float] = []
            for rep in range(args.reps):
                for side, out in (("off", off), ("on", on)):
                    db = None if where == "memory" else f"sqlite:///{Path(tmp)}/{side}{rep}.db"
                    out.append(timed(n, db, tel if side == "on" else None))
            a, b = statistics.median(off), statistics.median(on)
            print(f"{where:8} {n:>7} {a:7.2f} {b:7.2f} {n / a:8.0f} {n / b:8.0f} {a / b:7.2f}")


if __name__ == "__main__":
    main()
