"""``--otel``: OpenTelemetry providers for a command, set up the standard way.

If the program already has global providers (it runs under ``opentelemetry-instrument``, or a
script set them), those are used. Otherwise this makes the SDK's, with the exporters the
standard variables name, and sets them as the global ones (so spans a task makes itself share
them): ``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` each ``otlp`` (the default; needs
``opentelemetry-exporter-otlp``, configured by the ``OTEL_EXPORTER_OTLP_*`` variables),
``console`` (JSON on stdout) or ``none``; ``OTEL_SERVICE_NAME`` (default ``conveyor``) and
``OTEL_RESOURCE_ATTRIBUTES`` describe the process; ``OTEL_METRIC_EXPORT_INTERVAL`` (ms) how
often metrics go out. Bad values are a ``UsageError`` (one line, exit 2).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from conveyor.errors import UsageError

__all__ = ["EXPORTERS", "telemetry_from_env"]

#: The exporter names ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` may take here.
EXPORTERS = ("otlp", "console", "none")
#: Where each OTLP exporter lives: HTTP first (the spec's default protocol), then gRPC.
_OTLP = {
    "traces": (
        ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
        ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ),
    "metrics": (
        ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
        ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ),
}


def telemetry_from_env(environ: Mapping[str, str]) -> Any:
    """The ``Telemetry`` a command with ``--otel`` reports through (see the module docstring)."""
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        raise UsageError("--otel needs OpenTelemetry: pip install -e '.[otel]'") from None
    from conveyor.observe.otel import default_telemetry

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return default_telemetry()  # the program configured OpenTelemetry itself
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    span_exporter = _exporter("traces", environ)
    metric_exporter = _exporter("metrics", environ)
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "conveyor"})
    tracer_provider = TracerProvider(resource=resource)
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    readers = [] if metric_exporter is None else [PeriodicExportingMetricReader(metric_exporter)]
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    return default_telemetry()


def _exporter(signal: str, environ: Mapping[str, str]) -> Any:
    """The exporter ``OTEL_<SIGNAL>_EXPORTER`` names, ``None`` for ``none``."""
    var = f"OTEL_{signal.upper()}_EXPORTER"
    name = (environ.get(var) or "otlp").strip().lower()
    if name == "none":
        return None
    if name == "console":
        if signal == "traces":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if name != "otlp":
        raise UsageError(f"{var}={name!r}: expected one of {', '.join(EXPORTERS)}")
    for module, cls in _OTLP[signal]:
        try:
            return getattr(importlib.import_module(module), cls)()
        except ImportError:
            continue
    raise UsageError(
        f"--otel: {var}=otlp (the default) needs an OTLP exporter: "
        "pip install opentelemetry-exporter-otlp, or set it to console or none"
    )
