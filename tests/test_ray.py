"""The Ray executor on a real local Ray cluster (one head for the module, started by the
tests): functions and commands run in Ray's worker processes; resources and labels reach Ray;
conveyor still decides the order, retries and children; bad input is one line and exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.core.retry import RetryPolicy
from conveyor.errors import GraphError
from helpers import wait_until
from rayhelp import RayHead, free_port, ray_missing

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ray_missing() is not None,
                                                   reason=str(ray_missing()))]  # fmt: skip


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    node = RayHead(cpus=2).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def driver(head: RayHead) -> Iterator[str]:
    """This process as a Ray driver of ``head`` (its workers are reused by every test here:
    conveyor keeps a driver's own connection)."""
    import ray

    from conveyor.runtime.rayexec import worker_pythonpath

    ray.init(address=head.address, runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}},
             logging_level="warning", log_to_driver=False)  # fmt: skip
    try:
        yield head.address
    finally:
        ray.shutdown()


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


# -- through the API, on this process's driver -----------------------------------------------
def test_ray_functions_commands_and_parents_run_in_ray_workers(driver: str) -> None:
    graph = {"tasks": [
        {"id": "a", "fn": "ray_tasks:double", "args": [21]},
        {"id": "b", "fn": "ray_tasks:whoami", "deps": ["a"]},
        {"id": "c", "cmd": "echo ran $CONVEYOR_TASK_ID", "deps": ["a"]},
    ]}  # fmt: skip
    result = conveyor.run(graph, executor="ray")
    assert result.ok, result.failed
    assert result["a"] == 42
    b = result["b"]
    assert b["pid"] != os.getpid()  # a Ray worker process, not a thread of ours
    assert b["task"] == "b" and b["attempt"] == 1 and b["parents"] == {"a": 42}
    assert result["c"] == "ran c"


def test_ray_python_callables_and_taskrefs(driver: str) -> None:
    from ray_tasks import add, double

    g = conveyor.Graph()
    x = g.add(double, 5)
    y = g.add(add, x, 1)
    result = conveyor.run(g, executor="ray")
    assert result[y.id] == 11


def test_ray_failures_are_retried_by_conveyor_not_ray(driver: str, tmp_path: Path) -> None:
    marker = str(tmp_path / "attempted")
    graph = {"tasks": [
        {"id": "flaky", "fn": "ray_tasks:flaky", "args": [marker], "retries": 1},
        {"id": "bad", "fn": "ray_tasks:boom"},
        {"id": "sh", "cmd": "exit 3"},
    ]}  # fmt: skip
    result = conveyor.run(graph, executor="ray", retry=RetryPolicy(base=0.01))
    assert result["flaky"] == "second attempt"
    assert result.result("flaky").attempt == 2  # conveyor's second attempt
    assert result.failed["bad"].startswith("ValueError: nope (ray_tasks.py")
    assert result.failed["sh"].startswith("command exited 3")


def test_ray_worker_that_dies_is_a_failed_attempt_conveyor_retries(
    driver: str, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    graph = {"tasks": [{"id": "c", "fn": "ray_tasks:crash_once",
                        "args": [str(tmp_path / "crashed")], "retries": 1}]}  # fmt: skip
    result = conveyor.run(graph, executor="ray", retry=RetryPolicy(base=0.01), emit=events.append)
    assert result["c"] == "survived"
    assert result.result("c").attempt == 2  # Ray did not retry it on its own
    retried = [e for e in events if e["event"] == "task_retrying"]
    assert len(retried) == 1 and "ray: WorkerCrashedError" in retried[0]["error"]


def test_ray_result_that_cannot_be_pickled_fails_with_the_cause(driver: str) -> None:
    graph = {"tasks": [{"id": "u", "fn": "ray_tasks:unpicklable"}]}
    result = conveyor.run(graph, executor="ray")
    error = result.failed["u"]
    assert "cannot pickle '_thread.lock' object" in error, error
    assert len(error.splitlines()) == 1


def test_ray_resources_and_labels_reach_ray(driver: str) -> None:
    graph = {"tasks": [
        {"id": "r", "fn": "ray_tasks:whoami", "resources": {"cpu": 1, "slot": 1},
         "labels": {"zone": "a"}},
    ]}  # fmt: skip
    result = conveyor.run(graph, executor="ray")
    assert result["r"]["assigned"] == {"CPU": 1.0, "slot": 1.0}


def test_ray_task_the_cluster_cannot_hold_is_refused_up_front(driver: str) -> None:
    for asks in ({"resources": {"gpu": 1}}, {"labels": {"zone": "b"}}):
        graph = {"tasks": [{"id": "x", "fn": "ray_tasks:double", "args": [1], **asks}]}
        with pytest.raises(GraphError, match="can never run"):
            conveyor.run(graph, executor="ray")


def test_ray_task_the_cluster_cannot_hold_is_refused_though_resources_are_given(
    driver: str,
) -> None:
    # the worker says slot=5 (--resources); the cluster has slot=1: Ray would wait for ever
    graph = {"tasks": [{"id": "x", "fn": "ray_tasks:double", "args": [1],
                        "resources": {"slot": 3}}]}  # fmt: skip
    with pytest.raises(GraphError, match=r"'x' can never run on the Ray cluster.*'slot': 1"):
        conveyor.run(graph, executor="ray", resources={"cpu": 2, "slot": 5})


def test_ray_task_no_node_can_hold_fails_clearly_on_a_shared_store(
    driver: str, tmp_path: Path
) -> None:
    # a durable store's workers come and go (no refusal up front): the task fails at start
    graph = {"tasks": [{"id": "x", "cmd": "true", "resources": {"slot": 3}}, {"id": "y"}]}
    result = conveyor.run(graph, executor="ray", resources={"cpu": 2, "slot": 5},
                          db=f"sqlite:///{tmp_path / 'run.db'}")  # fmt: skip
    assert set(result.failed) == {"x"} and result["y"] is None
    assert "can never run on the Ray cluster: it asks slot=3" in str(result.failed["x"])


def test_ray_start_order_is_conveyors_depth_first_order(driver: str, tmp_path: Path) -> None:
    def graph(log: Path) -> dict[str, Any]:
        tasks = [("a", []), ("b", []), ("a1", ["a"]), ("a2", ["a"]), ("b1", ["b"]),
                 ("a11", ["a1"])]  # fmt: skip
        return {"tasks": [{"id": t, "fn": "ray_tasks:note", "args": [str(log)], "deps": d}
                          for t, d in tasks]}  # fmt: skip

    threads, ray = tmp_path / "threads.log", tmp_path / "ray.log"
    assert conveyor.run(graph(threads), workers=1).ok
    assert conveyor.run(graph(ray), workers=1, executor="ray").ok
    order = ray.read_text().split()
    assert order == threads.read_text().split()
    assert order == ["a", "a1", "a11", "a2", "b", "b1"]


def test_ray_children_go_through_a_durable_store(driver: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'kids.db'}"
    graph = {"tasks": [{"id": "p", "fn": "ray_tasks:spawn_children", "args": [3]}]}
    result = conveyor.run(graph, executor="ray", db=db)
    assert result.ok, result.failed
    assert [result[f"kid{i}"] for i in range(3)] == [0, 2, 4]
    assert result.counts["done"] == 4


def test_ray_children_need_a_durable_store_and_cannot_be_waited_for(
    driver: str, tmp_path: Path
) -> None:
    mem = conveyor.run({"tasks": [{"id": "p", "fn": "ray_tasks:submit_child"}]}, executor="ray")
    assert "only to a durable store" in str(mem.failed["p"])
    db = f"sqlite:///{tmp_path / 'wait.db'}"
    waited = conveyor.run({"tasks": [{"id": "w", "fn": "ray_tasks:wait_for_child"}]},
                          executor="ray", db=db)  # fmt: skip
    assert "cannot wait for child" in str(waited.failed["w"])


def test_ray_parent_on_a_thread_waits_for_its_child_on_ray(driver: str) -> None:
    graph = {"tasks": [{"id": "p", "fn": "ray_tasks:wait_for_ray_child", "executor": "thread"}]}
    result = conveyor.run(graph, executor="ray", workers=1)  # one slot: the parent lends it
    assert result.ok, result.failed
    assert result["p"] != os.getpid()  # the child ran in a Ray worker


def test_ray_timeout_fails_the_task_and_cancels_it_on_ray(driver: str) -> None:
    graph = {"tasks": [{"id": "slow", "fn": "ray_tasks:nap", "args": [60], "timeout_s": 0.5},
                       {"id": "fast", "fn": "ray_tasks:double", "args": [1]}]}  # fmt: skip
    result = conveyor.run(graph, executor="ray")
    assert result.failed == {"slow": "timeout: no result after 0.5 s"}
    assert result["fast"] == 2


# -- through the CLI, as its own driver -------------------------------------------------------
def test_cli_worker_on_ray_runs_a_submitted_graph(head: RayHead, tmp_path: Path) -> None:
    # (`conveyor run --executor ray --address` is run by test_ray_lost.py)
    (tmp_path / "g.json").write_text(
        '{"tasks": [{"id": "a", "fn": "ray_tasks:double", "args": [4]},'
        ' {"id": "b", "cmd": "echo $CONVEYOR_TASK_ID", "deps": ["a"]}]}'
    )
    db = f"sqlite:///{tmp_path / 'run.db'}"
    assert cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    proc = cli("worker", "--db", db, "--executor", "ray", "--address", head.address, "-q",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = cli("status", "--db", db, cwd=tmp_path)
    assert "done 2" in shown.stdout


def test_cli_ray_address_that_does_not_answer_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text('{"tasks": [{"id": "a", "cmd": "true"}]}')
    proc = cli("run", "g.json", "--executor", "ray", "--address", f"127.0.0.1:{free_port()}",
               cwd=tmp_path, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("conveyor: error: no Ray cluster answers at 127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_ray_address_of_a_web_server_is_one_line_exit_2(tmp_path: Path) -> None:
    # something that accepts TCP but is no Ray cluster: ray.init would retry for minutes
    (tmp_path / "g.json").write_text('{"tasks": [{"id": "a", "cmd": "true"}]}')
    port = free_port()
    # every interface, as `python -m http.server` does: Ray turns 127.0.0.1 into the node's IP
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port)], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: _accepts(port), timeout=30, what="http.server")
        proc = cli("run", "g.json", "--executor", "ray", "--address", f"127.0.0.1:{port}",
                   cwd=tmp_path, timeout=60)  # fmt: skip
    finally:
        web.kill()
        web.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"conveyor: error: no Ray cluster answers at 127.0.0.1:{port}")
    assert "does not speak Ray's protocol" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("address", [["--address", "auto"], []])
def test_cli_bad_ray_address_variable_is_named(tmp_path: Path, address: list[str]) -> None:
    (tmp_path / "g.json").write_text('{"tasks": [{"id": "a", "cmd": "true"}]}')
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_ADDRESS": "garbage"}
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", "g.json", "--executor", "ray", *address],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (
        2, "conveyor: error: $RAY_ADDRESS must be host:port or auto, got 'garbage'\n"
    )  # fmt: skip


def test_cli_address_without_ray_executor_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text('{"tasks": [{"id": "a", "cmd": "true"}]}')
    proc = cli("run", "g.json", "--address", "auto", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (
        2, "conveyor: error: --address names a Ray cluster: it needs --executor ray\n"
    )  # fmt: skip


def test_cli_ray_executor_without_ray_installed_is_exit_2(tmp_path: Path) -> None:
    # a `ray` package that cannot be imported, ahead of the real one: as if Ray were missing
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    (tmp_path / "g.json").write_text('{"tasks": [{"id": "a", "cmd": "true"}]}')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT / "src")])}
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", "g.json", "--executor", "ray"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == (
        "conveyor: error: the ray executor needs Ray, which is not installed: "
        "pip install -e '.[ray]'\n"
    )


def test_importing_conveyor_and_its_cli_does_not_import_ray() -> None:
    code = (
        "import sys, conveyor, conveyor.cli, conveyor.api, conveyor.runtime.engine, "
        "conveyor.runtime.rayexec\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "[]"
