"""``metrics_text(store)``: a real SQLite store's state in Prometheus' text format, during and
after a real run, read back with prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client", reason="conveyor[otel] is not installed")

from prometheus_client.parser import text_string_to_metric_families

import conveyor
from conveyor.observe.prometheus import metrics_text
from conveyor.store.urls import open_store

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type."""
    samples: Samples = {}
    types = {}
    for fam in text_string_to_metric_families(body.decode("utf-8")):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def at(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(db: str) -> tuple[bytes, str]:
    """What ``/metrics`` serves: ``metrics_text`` on a store handle of its own."""
    store = open_store(db)
    try:
        return metrics_text(store)
    finally:
        store.close()


def test_metrics_text_of_a_sqlite_store_during_and_after_a_real_run(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/run.db"
    seen: dict[str, Any] = {}

    def work(i: int) -> int:
        return i

    def watch() -> None:  # runs while the run is live: a scrape from inside it
        seen["during"] = scrape(db)

    def broken() -> None:
        raise ValueError("broken")

    def call(i: int) -> int:
        with conveyor.current().acquire_sync() as slot:
            slot.report(429 if i < 2 else 200)
        return i

    g = conveyor.Graph("prom")
    first = [g.add(work, i, id=f"a{i}", group="alice") for i in range(5)]
    g.add(watch, id="watch", deps=first, group="bob")
    bad = g.add(broken, id="broken", group="bob")
    g.add(work, 0, id="after-broken", deps=[bad], group="bob")
    for i in range(6):
        g.add(call, i, id=f"call{i}", endpoint="test/api/chat")
    limiter = conveyor.EndpointLimiter(initial_limit=2, max_limit=4)
    result = conveyor.run(g, db=db, workers=2, limiter=limiter)
    counts = result.counts
    result.store.close()
    assert counts["done"] == 12 and counts["failed"] == 1 and counts["skipped"] == 1

    body, content_type = seen["during"]
    assert content_type.startswith("text/plain; version=0.0.4")
    during, _ = parse(body)
    assert at(during, "conveyor_workers_alive") == 1  # the run's own engine
    assert at(during, "conveyor_tasks", state="running") >= 1  # watch itself, at least
    assert at(during, "conveyor_group_tasks", group="alice", state="done") == 5
    assert at(during, "conveyor_graph_info", graph="prom") == 1

    body, _ = scrape(db)
    after, types = parse(body)
    for state, n in counts.items():
        assert at(after, "conveyor_tasks", state=state) == n, state
    assert at(after, "conveyor_group_tasks", group="alice", state="done") == 5
    assert at(after, "conveyor_group_tasks", group="bob", state="failed") == 1
    assert at(after, "conveyor_group_tasks", group="bob", state="skipped") == 1
    assert at(after, "conveyor_tasks_finished_total", outcome="done") == 12
    assert at(after, "conveyor_tasks_finished_total", outcome="failed") == 1
    assert types["conveyor_tasks_finished"] == "counter"
    assert at(after, "conveyor_unfinished_tasks") == 0
    assert at(after, "conveyor_workers_alive") == 0  # the run's worker left
    # the endpoint as the worker last reported it (on leaving): what `conveyor status` shows
    stats = limiter.key_statistics("test/api/chat")
    ep = "test/api/chat"
    assert at(after, "conveyor_endpoint_rate_limited_total", endpoint=ep) == 2
    assert at(after, "conveyor_endpoint_limit", endpoint=ep) == stats.limit
    assert at(after, "conveyor_endpoint_in_flight", endpoint=ep) == 0
    assert at(after, "conveyor_endpoint_waiting", endpoint=ep) == 0
    assert at(after, "conveyor_endpoint_workers", endpoint=ep) == 1
    assert types["conveyor_endpoint_rate_limited"] == "counter"
    assert at(after, "conveyor_tasks_per_second") > 0


def test_metrics_text_of_an_empty_store_has_zero_counts(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/empty.db"
    open_store(db).close()
    samples, _ = parse(scrape(db)[0])
    assert at(samples, "conveyor_tasks", state="done") == 0
    assert at(samples, "conveyor_workers_alive") == 0
    assert ("conveyor_eta_seconds", frozenset()) not in samples  # no rate: no ETA
