"""OpenTelemetry spans and metrics of real runs (``conveyor[otel]``), read back through the
SDK's in-memory span exporter and metric reader: threads on the memory store, a durable worker
joining a SQLite store in process, and `conveyor run|worker --otel` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="conveyor[otel] is not installed")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

import conveyor
from conveyor.api import open_run
from conveyor.core.retry import RetryPolicy
from conveyor.fingerprints import open_graph
from conveyor.graph import as_graph
from conveyor.observe.otel import Telemetry, error_type
from conveyor.store.urls import open_store

pytestmark = pytest.mark.timeout(60)

FAST_RETRY = RetryPolicy(base=0.01, jitter=0.0)
SRC = str(Path(__file__).resolve().parents[1] / "src")


class Otel:
    """A ``Telemetry`` on SDK providers of its own, with what they recorded."""

    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        tracer = TracerProvider()
        tracer.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.telemetry = Telemetry(tracer, MeterProvider(metric_readers=[self.reader]))

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_out.get_finished_spans())

    def attempts(self) -> dict[tuple[str, int], ReadableSpan]:
        """Attempt spans by (task id, attempt); fails on two spans for one attempt."""
        out: dict[tuple[str, int], ReadableSpan] = {}
        for s in self.spans():
            a = s.attributes or {}
            if "conveyor.task.id" in a:
                key = (str(a["conveyor.task.id"]), int(a["conveyor.attempt"]))  # type: ignore[arg-type]
                assert key not in out, f"two spans for attempt {key}"
                out[key] = s
        return out

    def root(self) -> ReadableSpan:
        roots = [s for s in self.spans() if "conveyor.task.id" not in (s.attributes or {})]
        assert len(roots) == 1, roots
        return roots[0]

    def metrics(self) -> dict[str, dict[frozenset[tuple[str, Any]], Any]]:
        """Metric name -> attributes -> value (sums and gauges) or count (histograms)."""
        out: dict[str, dict[frozenset[tuple[str, Any]], Any]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for dp in m.data.data_points:
                        value = getattr(dp, "value", None)
                        out.setdefault(m.name, {})[frozenset((dp.attributes or {}).items())] = (
                            dp.count if value is None else value  # type: ignore[union-attr]
                        )
        return out


def point(metrics: dict[str, Any], name: str, **attrs: Any) -> Any:
    """The value of ``name`` at exactly these attributes (``conveyor.`` prefixed), else 0."""
    key = frozenset((f"conveyor.{k}", v) for k, v in attrs.items())
    return metrics.get(name, {}).get(key, 0)


@pytest.fixture
def otel() -> Iterator[Otel]:
    yield Otel()


# -- in process, threads ---------------------------------------------------------------------
def test_telemetry_threads_run_one_span_per_attempt_with_real_times_and_metrics(
    otel: Otel,
) -> None:
    ran: dict[str, list[tuple[float, float]]] = {}  # task -> (entered, left) per attempt
    lock = threading.Lock()

    def timed(task: str, fail_first: bool, error: type[Exception] | None) -> Any:
        entered = time.time()
        with lock:
            first = task not in ran
        try:
            if error is not None:
                raise error(f"{task} broke")
            if fail_first and first:
                raise ValueError(f"{task} fails once")
            return task
        finally:
            with lock:
                ran.setdefault(task, []).append((entered, time.time()))

    g = conveyor.Graph("otel-threads")
    a = g.add(timed, "a", False, None, id="a", group="alice")
    g.add(timed, "b", True, None, id="b", deps=[a], retries=1, group="alice")
    c = g.add(timed, "c", False, KeyError, id="c", group="bob")
    g.add(timed, "d", False, None, id="d", deps=[c], group="bob")  # skipped: never starts
    result = conveyor.run(g, workers=2, retry=FAST_RETRY, telemetry=otel.telemetry)
    assert result.counts["done"] == 2 and result.counts["failed"] == 1
    assert result.counts["skipped"] == 1

    spans = otel.attempts()
    assert set(spans) == {("a", 1), ("b", 1), ("b", 2), ("c", 1)}
    root = otel.root()
    assert root.name == "conveyor run" and root.parent is None
    assert root.attributes is not None and root.attributes["conveyor.graph"] == "otel-threads"
    worker = root.attributes["conveyor.worker"]
    expected = {
        ("a", 1): ("alice", "done", None),
        ("b", 1): ("alice", "retrying", "ValueError"),
        ("b", 2): ("alice", "done", None),
        ("c", 1): ("bob", "failed", "KeyError"),
    }
    for (task, attempt), (group, outcome, error) in expected.items():
        s = spans[(task, attempt)]
        assert s.name.endswith("timed"), s.name  # named by the function it runs
        attrs = dict(s.attributes or {})
        assert attrs.pop("conveyor.function").endswith("timed")
        assert attrs == {
            "conveyor.graph": "otel-threads", "conveyor.task.id": task,
            "conveyor.attempt": attempt, "conveyor.group": group, "conveyor.worker": worker,
            "conveyor.outcome": outcome, **({"error.type": error} if error else {}),
        }  # fmt: skip
        assert s.status.status_code is (StatusCode.ERROR if error else StatusCode.UNSET)
        # a child of the run's span, inside it in time
        assert s.parent is not None and s.parent.span_id == root.context.span_id
        assert s.context.trace_id == root.context.trace_id
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time  # type: ignore[operator]
        # the span covers the function's real run (the claim before it, the record after)
        entered, left = ran[task][attempt - 1]
        assert s.start_time <= int(entered * 1e9) and s.end_time >= int(left * 1e9)  # type: ignore[operator]
    # a child starts after its parent ended; the retry after the first attempt
    assert spans[("b", 1)].start_time >= spans[("a", 1)].end_time  # type: ignore[operator]
    assert spans[("b", 2)].start_time >= spans[("b", 1)].end_time  # type: ignore[operator]

    m = otel.metrics()
    graph = {"graph": "otel-threads"}
    assert point(m, "conveyor.tasks.finished", **graph, group="alice", outcome="done") == 2
    assert point(m, "conveyor.tasks.finished", **graph, group="bob", outcome="failed") == 1
    assert point(m, "conveyor.task.attempts", **graph, group="alice", outcome="retrying") == 1
    assert point(m, "conveyor.task.attempts", **graph, group="alice", outcome="done") == 2
    for state, n in result.counts.items():
        assert point(m, "conveyor.tasks", **graph, state=state) == n, state


def test_telemetry_endpoint_metrics_are_the_limiters(otel: Otel) -> None:
    def call(i: int) -> int:
        with conveyor.current().acquire_sync() as slot:
            slot.report(429 if i % 3 == 0 else 200)
        return i

    g = conveyor.Graph("otel-endpoint")
    for i in range(9):
        g.add(call, i, id=f"call-{i}", endpoint="test/api/chat")
    limiter = conveyor.EndpointLimiter(initial_limit=2, max_limit=4)
    result = conveyor.run(g, workers=2, limiter=limiter, telemetry=otel.telemetry)
    assert result.ok, result.failed
    st = limiter.key_statistics("test/api/chat")
    assert st.rate_limited == 3
    m = otel.metrics()
    at = {"graph": "otel-endpoint", "endpoint": "test/api/chat"}
    assert point(m, "conveyor.endpoint.rate_limited", **at) == 3
    assert point(m, "conveyor.endpoint.limit", **at) == st.limit
    assert point(m, "conveyor.endpoint.in_flight", **at) == 0
    assert point(m, "conveyor.endpoint.waiting", **at) == 0


# -- a durable worker joining a SQLite store, in process --------------------------------------
JOBS = """
from pathlib import Path

def double(x):
    return 2 * x

def flaky(marker):
    if not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "ok"
"""


def submit(tmp_path: Path, name: str) -> str:
    """A graph of import-path functions submitted to a SQLite store (nothing run yet)."""
    (tmp_path / "otel_jobs.py").write_text(JOBS)
    tasks: list[dict[str, Any]] = [
        {"id": f"d{i}", "fn": "otel_jobs:double", "args": [i], "group": "g1" if i % 2 else "g2"}
        for i in range(6)
    ]
    tasks.append({"id": "flaky", "fn": "otel_jobs:flaky", "args": [str(tmp_path / "m")],
                  "retries": 1, "deps": ["d0"], "group": "g1"})  # fmt: skip
    db = f"sqlite:///{tmp_path}/run.db"
    store = open_store(db)
    open_graph(store, as_graph({"name": name, "tasks": tasks}), time.time())
    store.close()
    return db


def test_telemetry_durable_worker_joins_sqlite_store_spans_and_metrics(
    otel: Otel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    db = submit(tmp_path, "otel-durable")
    with open_run(None, db=db, workers=2, retry=FAST_RETRY, telemetry=otel.telemetry) as run:
        result = run.run()
        history = {t: run.store.history(t) for t in ("flaky", "d3")}
        worker = run.worker_id
        assert result.exit_code == 0 and result.counts["done"] == 7

    spans = otel.attempts()
    assert set(spans) == {*((f"d{i}", 1) for i in range(6)), ("flaky", 1), ("flaky", 2)}
    root = otel.root()
    assert root.name == "conveyor worker"
    for (task, _attempt), s in spans.items():
        a = s.attributes or {}
        # the group comes from the claim: events do not carry it, and this run has no graph
        assert a["conveyor.group"] == ("g1" if task == "flaky" or int(task[1:]) % 2 else "g2")
        assert a["conveyor.graph"] == "otel-durable" and a["conveyor.worker"] == worker
        assert s.name == ("otel_jobs:flaky" if task == "flaky" else "otel_jobs:double")
        assert s.parent is not None and s.parent.span_id == root.context.span_id
    assert spans[("flaky", 1)].attributes["conveyor.outcome"] == "retrying"  # type: ignore[index]
    assert spans[("flaky", 1)].attributes["error.type"] == "RuntimeError"  # type: ignore[index]
    assert spans[("flaky", 2)].attributes["conveyor.outcome"] == "done"  # type: ignore[index]
    assert spans[("flaky", 2)].start_time >= spans[("d0", 1)].end_time  # type: ignore[operator]
    # start and end are the store's audit timestamps of the attempt, not when the sink heard
    for task in ("flaky", "d3"):
        started = [e["ts"] for e in history[task] if e["event"] == "task_started"]
        ended = [e["ts"] for e in history[task] if e["event"] in ("task_retrying", "task_finished")]
        for attempt, (t0, t1) in enumerate(zip(started, ended, strict=True), 1):
            s = spans[(task, attempt)]
            assert (s.start_time, s.end_time) == (int(t0 * 1e9), int(t1 * 1e9))

    m = otel.metrics()
    graph = {"graph": "otel-durable"}
    assert point(m, "conveyor.tasks.finished", **graph, group="g1", outcome="done") == 4
    assert point(m, "conveyor.tasks.finished", **graph, group="g2", outcome="done") == 3
    assert point(m, "conveyor.task.attempts", **graph, group="g1", outcome="retrying") == 1
    assert point(m, "conveyor.tasks", **graph, state="done") == 7
    assert point(m, "conveyor.tasks", **graph, state="running") == 0


def test_telemetry_worker_loop_spans_cover_the_loop_body(otel: Otel, tmp_path: Path) -> None:
    g = conveyor.Graph("otel-loop")
    first = g.add(id="first", group="g1")
    g.add(id="second", deps=[first], retries=1, group="g2")
    db = f"sqlite:///{tmp_path}/loop.db"
    body: dict[tuple[str, int], tuple[float, float]] = {}
    with conveyor.worker(g, db=db, retry=FAST_RETRY, telemetry=otel.telemetry) as loop:
        for task in loop:
            entered = time.time()
            body[(task.id, task.attempt)] = (entered, time.time())
            if task.id == "second" and task.attempt == 1:
                loop.fail("RuntimeError: not yet")
    spans = otel.attempts()
    assert set(spans) == {("first", 1), ("second", 1), ("second", 2)}
    assert otel.root().name == "conveyor worker"
    outcomes = {k: (s.attributes or {})["conveyor.outcome"] for k, s in spans.items()}
    assert outcomes == {("first", 1): "done", ("second", 1): "retrying", ("second", 2): "done"}
    assert (spans[("second", 1)].attributes or {})["error.type"] == "RuntimeError"
    assert (spans[("second", 2)].attributes or {})["conveyor.group"] == "g2"
    for key, (entered, left) in body.items():
        s = spans[key]  # from the claim that handed the task out to the call that ended it
        assert s.start_time <= int(entered * 1e9) and s.end_time >= int(left * 1e9)  # type: ignore[operator]
    m = otel.metrics()
    assert point(m, "conveyor.tasks", graph="otel-loop", state="done") == 2
    assert point(m, "conveyor.tasks.finished", graph="otel-loop", group="g2", outcome="done") == 1


def test_error_type_is_the_exception_class_the_error_starts_with() -> None:
    assert error_type("ValueError: boom (f.py:3 in g)") == "ValueError"
    assert error_type("pkg.errors.Bad: no") == "pkg.errors.Bad"
    assert error_type("TimeoutError") == "TimeoutError"
    assert error_type("command exited 1: false") == "error"
    assert error_type(None) == "error"


# -- real processes: the global providers, --otel ---------------------------------------------
def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "conveyor.cli", *args]
    full = {**os.environ, **(env or {})}
    return subprocess.run(argv, cwd=cwd, text=True, capture_output=True, timeout=60, env=full)


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects the SDK's console exporter printed, one after another."""
    decoder, out, i = json.JSONDecoder(), [], 0
    text = stdout.strip()
    while i < len(text):
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def test_telemetry_true_uses_the_global_providers(tmp_path: Path) -> None:
    script = """
import json, conveyor
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
out = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(out))
trace.set_tracer_provider(provider)
def one():
    return 1
g = conveyor.Graph("global")
g.add(one, id="first")
g.add(id="second")
with trace.get_tracer("app").start_as_current_span("app") as app:
    conveyor.run(g, telemetry=True)
spans = {s.name: s for s in out.get_finished_spans()}
print(json.dumps({"names": sorted(spans),
                  "run_parent": spans["conveyor run"].parent.span_id == app.context.span_id}))
"""
    got = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert got.returncode == 0, got.stderr
    answer = json.loads(got.stdout)
    assert sorted(answer["names"]) == sorted(["app", "conveyor run", "__main__:one", "second"])
    assert answer["run_parent"]  # the run's span is a child of the span current at the call


def test_cli_otel_console_exporter_run_and_worker_processes(tmp_path: Path) -> None:
    (tmp_path / "otel_jobs.py").write_text(JOBS)
    tasks = [{"id": "x", "fn": "otel_jobs:double", "args": [1], "group": "g"},
             {"id": "y", "cmd": "false", "deps": ["x"]}]  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps({"name": "cli-otel", "tasks": tasks}))
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"}
    ran = cli("run", "g.json", "--otel", "-q", cwd=tmp_path, env=env)
    assert ran.returncode == 1, ran.stderr  # y failed
    names = {s["name"]: s for s in console_spans(ran.stdout)}
    assert set(names) == {"conveyor run", "otel_jobs:double", "y"}
    assert names["y"]["attributes"]["conveyor.outcome"] == "failed"
    assert names["otel_jobs:double"]["attributes"]["conveyor.group"] == "g"

    db = f"sqlite:///{tmp_path}/w.db"
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    worked = cli("worker", "--db", db, "--otel", "-q", cwd=tmp_path, env=env)
    assert worked.returncode == 1, worked.stderr
    spans = console_spans(worked.stdout)
    assert sorted(s["name"] for s in spans) == ["conveyor worker", "otel_jobs:double", "y"]
    root = next(s for s in spans if s["name"] == "conveyor worker")
    assert all(s["parent_id"] == root["context"]["span_id"] for s in spans if s is not root)


def test_cli_otel_bad_exporter_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text(json.dumps({"name": "n", "tasks": [{"id": "a"}]}))
    got = cli("run", "g.json", "--otel", cwd=tmp_path, env={"OTEL_TRACES_EXPORTER": "jaeger"})
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == [
        "conveyor: error: OTEL_TRACES_EXPORTER='jaeger': expected one of otlp, console, none"
    ]


def test_telemetry_that_is_neither_a_flag_nor_a_telemetry_is_a_usage_error() -> None:
    from conveyor.errors import UsageError

    wanted = r"^telemetry must be True, False or a conveyor\.Telemetry, got 'yes'$"
    with pytest.raises(UsageError, match=wanted):
        conveyor.run({"tasks": [{"id": "a"}]}, telemetry="yes")


def test_conveyor_telemetry_is_exported_without_importing_opentelemetry_on_import() -> None:
    code = (
        "import sys, conveyor\n"
        "before = any(m.split('.')[0] == 'opentelemetry' for m in sys.modules)\n"
        "from conveyor import Telemetry\n"
        "from conveyor.observe.otel import Telemetry as T\n"
        "print(before, Telemetry is T)"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": SRC})  # fmt: skip
    assert got.stdout.split() == ["False", "True"], got.stderr
