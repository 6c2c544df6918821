"""Tasks that call a rate-limited endpoint, through the engine, against the real HTTP server.

The engine starts no more tasks for an endpoint than its adaptive limit (plus headroom) allows,
so a 429-ing endpoint cannot hold slots that other endpoints' tasks could use.
"""

from __future__ import annotations

import threading

import httpx
import pytest

import conveyor
from conveyor.store.memory import MemoryStore
from conveyor.testing import EventLog
from rate_limited_server import RateLimitedServer

pytestmark = pytest.mark.timeout(60)


class Peak:
    """Thread-safe count of tasks running at once, per endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def enter(self, key: str) -> None:
        with self.lock:
            self.now[key] = self.now.get(key, 0) + 1
            self.peak[key] = max(self.peak.get(key, 0), self.now[key])

    def leave(self, key: str) -> None:
        with self.lock:
            self.now[key] -= 1


def test_endpoint_tasks_capped_by_adaptive_limit_and_other_endpoint_runs(tmp_path):
    peak = Peak()
    with RateLimitedServer(capacity=4, latency=0.05) as server:
        url = server.url + "/work"

        async def call(i: int) -> int:
            ctx = conveyor.current()
            peak.enter(ctx.endpoint)
            try:
                async with httpx.AsyncClient() as client:
                    for _attempt in range(50):
                        async with ctx.acquire() as slot:
                            resp = await client.get(url)
                            slot.report(
                                resp.status_code, retry_after=resp.headers.get("Retry-After")
                            )
                        if resp.status_code == 200:
                            return i
                raise RuntimeError("never served")
            finally:
                peak.leave(ctx.endpoint)

        def local(i: int) -> int:
            peak.enter("local")
            peak.leave("local")
            return i

        g = conveyor.Graph("ep")
        for i in range(40):
            g.add(call, i, id=f"slow-{i}", endpoint="test/model/slow")
        for i in range(10):
            g.add(local, i, id=f"local-{i}")
        log = EventLog()
        limiter = conveyor.EndpointLimiter(initial_limit=1, max_limit=8)
        result = conveyor.run(g, workers=16, emit=log, limiter=limiter)
    assert result.ok, result.failed
    stats = limiter.key_statistics("test/model/slow")
    # tasks started for the endpoint never exceeded ceil(max limit seen * 1.5) = 12 of the 16
    # slots: a 429-ing endpoint did not take every slot
    assert peak.peak["test/model/slow"] <= -(-8 * 3 // 2)
    assert stats.successes == 40
    assert log.of("endpoint_limit_changed")
    # the local tasks did not wait for all endpoint tasks: they started among the first starts
    starts = log.tasks("task_started")
    assert max(starts.index(f"local-{i}") for i in range(10)) < 30


def test_endpoint_explain_reports_endpoint_limited():
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        release.wait(10)

    g = conveyor.Graph("ep2")
    for i in range(4):
        g.add(hold, id=f"t{i}", endpoint="svc/m/d")
    store = MemoryStore()
    from conveyor.runtime.engine import Engine

    store.open_graph(g.spec(), 0)
    engine = Engine(store, workers=4, limiter=conveyor.EndpointLimiter(initial_limit=1),
                    endpoint_headroom=1.0)  # fmt: skip
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        assert started.acquire(timeout=10) and started.acquire(timeout=10)
        waiting = [t for t in ("t2", "t3") if engine.explain(t).code == "endpoint_limited"]
        assert waiting, [engine.explain(t).as_dict() for t in ("t2", "t3")]
        why = engine.explain(waiting[0])
        assert why.details["task_cap"] == 2 and why.details["running"] == 2
    finally:
        release.set()
        runner.join(20)
    assert store.counts()["done"] == 4


def test_status_shows_endpoint_statistics_from_workers(tmp_path):
    """A durable run's workers publish their limiter statistics; `conveyor status` shows them."""
    import json
    import subprocess
    import sys

    mod = tmp_path / "eptasks.py"
    mod.write_text(
        "import httpx, conveyor\n"
        "def call(url):\n"
        "    ctx = conveyor.current()\n"
        "    for _ in range(100):\n"
        "        with ctx.acquire_sync() as slot:\n"
        "            r = httpx.get(url)\n"
        "            slot.report(r.status_code, retry_after=r.headers.get('Retry-After'))\n"
        "        if r.status_code == 200:\n"
        "            return r.status_code\n"
        "    raise RuntimeError('never served')\n"
    )
    db = f"sqlite:///{tmp_path / 'run.db'}"
    with RateLimitedServer(capacity=2, latency=0.05) as server:
        graph = {
            "name": "ep-status",
            "tasks": [
                {"id": f"t{i}", "fn": "eptasks:call", "args": [server.url + "/work"],
                 "endpoint": "local/test/work"}
                for i in range(24)
            ],
        }  # fmt: skip
        (tmp_path / "g.json").write_text(json.dumps(graph))
        run = subprocess.run(
            [sys.executable, "-m", "conveyor.cli", "run", str(tmp_path / "g.json"), "--db", db,
             "--workers", "8", "--quiet"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        served = server.served
    out = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "status", "--db", db, "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    ep = json.loads(out.stdout)["endpoints"]["local/test/work"]
    assert served >= 24 and ep["workers"] == 1 and ep["limit"] >= 1
    assert ep["in_flight"] == 0
    text = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "status", "--db", db],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "endpoint local/test/work: limit" in text


def test_the_engine_limiter_runs_on_the_engine_clock():
    from conveyor.runtime.engine import Engine
    from conveyor.testing import FakeClock

    clock = FakeClock()
    assert Engine(MemoryStore(), clock=clock).limiter.clock is clock
