"""The run facade (``open_run`` / ``Run``) that ``conveyor.run``, ``run_iter`` and the CLI share:
Ctrl-C propagates (in process and with a real SIGINT), joining a store's graph, closing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.api import open_run
from conveyor.errors import UsageError
from conveyor.model import TaskResult
from conveyor.store.urls import open_store
from sigint import interrupt_when


def chain(n: int, name: str = "chain") -> conveyor.Graph:
    """``n`` calls of ``int()`` in a chain (functions: no-ops would all finish in one claim)."""
    g = conveyor.Graph(name)
    prev: list[str] = []
    for i in range(n):
        g.add(int, id=f"t{i}", deps=prev)
        prev = [f"t{i}"]
    return g


def interrupt_at_first_result(res: TaskResult) -> None:
    raise KeyboardInterrupt  # what Ctrl-C does while the engine hands out a result


# -- Ctrl-C ------------------------------------------------------------------------------------
def test_run_reraises_keyboard_interrupt_and_cancels_what_is_left() -> None:
    with open_run(chain(5), workers=1, on_result=interrupt_at_first_result) as run:
        with pytest.raises(KeyboardInterrupt):
            run.run()
        result = run.result()
        assert run.interrupted and result.exit_code == 130 and not result.ok
        counts = result.counts
    assert counts["done"] == 1 and counts["cancelled"] == 4, counts


def test_conveyor_run_and_run_iter_do_not_swallow_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt):
        conveyor.run(chain(3), on_result=interrupt_at_first_result)
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for res in conveyor.run_iter(chain(3), on_result=interrupt_at_first_result):
            seen.append(res.id)
    assert seen == []  # interrupted before the first result reached the loop


@pytest.mark.skipif(os.name != "posix", reason="a real SIGINT")
def test_one_ctrl_c_landing_after_the_loop_read_its_messages_still_waits_for_threads() -> None:
    """One SIGINT is one Ctrl-C wherever it lands. The handler sets the engine's flag and posts
    a wake-up; landing after the loop had read its messages (here: in ``on_result``), the
    wake-up read on the next pass once set the flag again and counted as a second Ctrl-C:
    the run stopped at once instead of waiting for the thread task still running (seen as
    ``conveyor build`` exiting 130 on the first Ctrl-C, its notice never printed)."""
    import signal
    import threading

    from helpers import wait_until

    gate = threading.Event()

    def held() -> str:
        gate.wait(30)
        return "held"

    g = conveyor.Graph("held")
    g.add(held, id="held")
    g.add(int, id="quick")
    sent: list[str] = []

    def ctrl_c(res: TaskResult) -> None:
        if not sent:
            sent.append(res.id)
            os.kill(os.getpid(), signal.SIGINT)  # handled here, on the engine's thread

    with open_run(g, workers=2, on_result=ctrl_c) as run:
        opener = threading.Thread(target=lambda: (
            wait_until(lambda: run.stats.interrupted, what="the first Ctrl-C taken"),
            gate.set()))  # fmt: skip
        opener.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                run.run()
        finally:
            gate.set()
            opener.join()
        counts = run.result().counts
    assert sent == ["quick"]
    assert counts["done"] == 2, counts  # the thread task was waited for and recorded


SCRIPT = """
import sys
import conveyor

g = conveyor.Graph("slow")
slow = g.cmd("sleep 60", id="slow")
g.add(None, id="after", deps=[slow])
try:
    conveyor.run(g, workers=1, events=sys.argv[1])
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    raise SystemExit(3)
print("returned", flush=True)
"""


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_sigint_to_a_conveyor_run_script_raises_keyboard_interrupt_there(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    events = tmp_path / "e.jsonl"
    code, stdout, stderr = interrupt_when(
        [sys.executable, "script.py", str(events)],
        tmp_path,
        lambda: any(e["event"] == "task_started" for e in read_events(events)),
        what="a task_started event",
    )
    assert code == 3, stderr
    assert stdout.split() == ["KeyboardInterrupt"]  # raised in the script; run never returned
    started = [e["task"] for e in read_events(events) if e["event"] == "task_started"]
    assert started == ["slow"]


# -- joining a store's graph -------------------------------------------------------------------
def test_open_run_without_a_graph_joins_the_graph_the_store_holds(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/run.db"
    conveyor.run(chain(4, "held"), db=db, workers=1, max_tasks=2).store.close()
    with open_run(None, db=db, workers=2) as run:
        assert run.graph is None and run.opened is None
        result = run.run()
        assert result.joined and result.exit_code == 0
        assert result.counts["done"] == 4 and result["t3"] == 0
        assert run.stats.done == 2  # this worker's own share


@pytest.mark.parametrize("where", ["memory", "sqlite"])
def test_open_run_without_a_graph_on_an_empty_store_is_a_usage_error(
    where: str, tmp_path: Path
) -> None:
    db = "memory://" if where == "memory" else f"sqlite:///{tmp_path}/empty.db"
    with pytest.raises(UsageError, match="holds no graph"):
        open_run(None, db=db)


# -- closing -----------------------------------------------------------------------------------
def test_run_closes_what_it_opened_and_leaves_a_given_store_open(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/run.db"
    events = tmp_path / "e.jsonl"
    with open_run(chain(2), db=db, events=events) as run:
        run.run()
    assert events.read_text().count("task_finished") == 2
    with pytest.raises(Exception):  # noqa: B017 - the backend's own "closed" error
        run.store.counts()

    store = open_store(db)
    try:
        with open_run(chain(2), store=store) as run:
            assert run.run().ok
        assert store.counts()["done"] == 2  # still open: it was the caller's
    finally:
        store.close()


def test_conveyor_run_keeps_the_store_open_for_the_result(tmp_path: Path) -> None:
    g = conveyor.Graph("sq")
    ref = g.add(pow, 3, 2)
    result = conveyor.run(g, db=f"sqlite:///{tmp_path}/run.db")
    try:
        assert result[ref.id] == 9 and result.counts["done"] == 1
    finally:
        result.store.close()


def test_unknown_executor_is_refused_naming_the_valid_ones() -> None:
    graph = {"tasks": [{"id": "a", "cmd": "true"}]}
    for bogus in ("bogus", "Ray"):
        with pytest.raises(UsageError) as caught:
            conveyor.run(graph, executor=bogus)
        assert str(caught.value) == (
            f"executor must be thread, inline, process or ray, got {bogus!r}"
        )


def test_a_ray_address_without_the_ray_executor_is_worded_for_python() -> None:
    with pytest.raises(UsageError) as caught:
        conveyor.run({"tasks": [{"id": "a", "cmd": "true"}]}, ray_address="auto")
    assert str(caught.value) == "ray_address names a Ray cluster: it needs executor='ray'"


def test_run_result_answers_in_for_its_task_ids() -> None:
    g = conveyor.Graph("g")
    g.add(print, id="hot")
    r = conveyor.run(g, workers=1)
    assert "hot" in r and "cold" not in r and 0 not in r


@pytest.mark.parametrize("lease_s", [0.001, 0.0, float("nan"), float("inf")])
def test_a_lease_out_of_range_is_refused_by_the_api_as_by_the_cli(
    tmp_path: Path, lease_s: float
) -> None:
    """``conveyor.run`` and ``conveyor.worker`` hold ``lease_s`` to ``--lease``'s range (at
    least 0.1 s) before they open the store; a lease in range runs."""
    db = f"sqlite:///{tmp_path}/run.db"
    graph = {"name": "g", "tasks": [{"id": "a", "cmd": "true"}]}
    with pytest.raises(UsageError, match="lease_s"):
        conveyor.run(graph, db=db, lease_s=lease_s)
    with pytest.raises(UsageError, match="lease_s"):
        conveyor.worker(graph, db=db, lease_s=lease_s)
    assert not (tmp_path / "run.db").exists()
    assert conveyor.run(graph, db=db, lease_s=0.5).ok
