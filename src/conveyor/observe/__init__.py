"""Watching runs from outside: OpenTelemetry spans and metrics (``otel.py``, the
``conveyor[otel]`` extra) and a store's state in Prometheus' text format (``prometheus.py``).

Nothing here is imported unless a run asks for telemetry or a server asks for ``/metrics``;
both only read: events as the stores emit them, and the ``Store`` interface.
"""
