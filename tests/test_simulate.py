"""``conveyor simulate``: the engine's core on a simulated clock. Checked against the real engine
(one worker: the same start order), an independent model of the depth-first order, schedules
worked out by hand, and each policy's defining order."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.graphfile import graph_from_dict, load_graph
from conveyor.sim import SimConfig, SimulationStuck, simulate
from conveyor.sim.inputs import batch_of, layered
from conveyor.sim.report import percentile
from conveyor.testing import EventLog
from helpers import expected_start_order

DATA = Path(__file__).resolve().parent / "data"
CLI = [sys.executable, "-m", "conveyor.cli"]


def sim(graph: dict[str, Any], **config: Any) -> Any:
    spec = graph_from_dict(graph)
    return simulate([batch_of(spec)], SimConfig(**{"workers": 1, **config}))


def random_dag(n: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    tasks = []
    for i in range(n):
        parents = sorted({f"t{rnd.randrange(i)}" for _ in range(rnd.randrange(3))}) if i else []
        tasks.append({"id": f"t{i}", "deps": parents, "fn": "time:sleep",
                      "args": [rnd.choice([0, 0.001, 0.002])],
                      "expected_s": rnd.choice([0.5, 1, 2])})  # fmt: skip
    return {"name": f"dag{seed}", "tasks": tasks}


def test_one_worker_starts_tasks_in_the_real_engines_order() -> None:
    graph = random_dag(120, seed=7)
    log = EventLog()
    conveyor.run(graph, workers=1, emit=log)
    real = [e["task"] for e in log.of("task_started")]
    simulated = sim(graph, record_starts=True).starts
    assert len(real) == 120
    assert simulated == real
    ids = [t["id"] for t in graph["tasks"]]
    assert simulated == expected_start_order(ids, [t["deps"] for t in graph["tasks"]])


def test_a_fork_join_schedule_worked_out_by_hand() -> None:
    # a (1 s), then b1..b4 (2 s each), then c (1 s), on 2 workers: a 0-1, b1 b2 1-3, b3 b4 3-5,
    # c 5-6. Busy 10 slot-seconds of 12.
    tasks = [{"id": "a", "runtime_s": 1}]
    tasks += [{"id": f"b{k}", "parents": ["a"], "runtime_s": 2} for k in range(1, 5)]
    tasks += [{"id": "c", "parents": [f"b{k}" for k in range(1, 5)], "runtime_s": 1}]
    r = sim({"tasks": tasks}, workers=2)
    assert r.makespan == 6
    assert r.utilisation == pytest.approx(10 / 12)
    assert r.root_done == [6]
    # Two workers of two slots each halve it again; speed 2 halves every duration.
    assert sim({"tasks": tasks}, workers=2, slots_per_worker=2).makespan == 4
    assert sim({"tasks": tasks}, workers=2, speed=2.0).makespan == 3


POLICY_GRAPH = {
    "tasks": [
        {"id": "r1", "runtime_s": 1},
        {"id": "c1", "parents": ["r1"], "runtime_s": 1},
        {"id": "r2", "runtime_s": 5},
        {"id": "r3", "runtime_s": 2},
        {"id": "c3", "parents": ["r3"], "runtime_s": 10},
    ]
}


@pytest.mark.parametrize(
    ("policy", "order"),
    [
        ("depth_first", ["r1", "c1", "r2", "r3", "c3"]),  # a started root's child first
        ("fifo", ["r1", "r2", "r3", "c1", "c3"]),  # c1 became ready after r2, r3
        ("breadth_first", ["r1", "r2", "r3", "c1", "c3"]),
        ("critical_path", ["r3", "c3", "r2", "r1", "c1"]),  # remaining work 12, 10, 5, 2, 1
        ("shortest_first", ["r1", "c1", "r3", "r2", "c3"]),  # 1, 1, 2, then 5 before 10
    ],
)
def test_each_policy_starts_in_its_own_order(policy: str, order: list[str]) -> None:
    assert sim(POLICY_GRAPH, policy=policy, record_starts=True).starts == order


def jobs(n: int) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = []
    for j in range(n):
        tasks.append({"id": f"r{j}", "runtime_s": 1})
        tasks.append({"id": f"c{j}", "parents": [f"r{j}"], "runtime_s": 1})
    return {"tasks": tasks}


def test_depth_first_keeps_few_roots_in_progress_and_finishes_them_early() -> None:
    df = sim(jobs(4), policy="depth_first")
    fifo = sim(jobs(4), policy="fifo")
    assert df.root_done == [2, 4, 6, 8] and df.peak_roots == 1
    assert fifo.root_done == [5, 6, 7, 8] and fifo.peak_roots == 4
    assert df.makespan == fifo.makespan == 8
    assert percentile(df.root_done, 50) == 4 and percentile(fifo.root_done, 95) == 8


def test_fair_share_splits_the_workers_by_weight() -> None:
    tasks = [{"id": f"{g}{k}", "group": g, "runtime_s": 1} for g in "ab" for k in range(200)]
    graph = {"groups": {"a": {"weight": 3}, "b": {"weight": 1}}, "tasks": tasks}
    spec = graph_from_dict(graph)
    r = simulate([batch_of(spec)], SimConfig(workers=8), groups={"a": (3.0, None), "b": (1, None)})
    first = r.shares[0][2]
    assert first == {"a": pytest.approx(0.75), "b": pytest.approx(0.25)}
    # b's work outlasts a's: alone, b has every slot. While a's last tasks run, b borrows at
    # most 2 slots beyond its share (bounded, the default: 25% of 8), so a slot idles once:
    # 51 s, not 50 (work_conserving's makespan).
    assert r.shares[-2][2]["b"] == pytest.approx(1.0)
    assert r.makespan == 51


def test_a_gang_larger_than_any_worker_is_reported_not_hung() -> None:
    tasks = [{"id": f"g{k}", "gang": "g", "runtime_s": 1} for k in range(3)]
    with pytest.raises(SimulationStuck, match="3 task"):
        sim({"tasks": tasks}, workers=4, slots_per_worker=2)
    assert sim({"tasks": tasks}, workers=1, slots_per_worker=3).makespan == 1


def test_the_synthetic_layered_graph_and_its_bound() -> None:
    b = layered(1000, layers=5, width=3)
    r = simulate([b], SimConfig(workers=4))
    assert r.tasks == len(b.ids) == 13 * (1000 // 13)
    assert len(r.root_done) == 1000 // 13
    assert r.makespan >= sum(b.durations) / 4


def test_cli_json_is_deterministic_and_compares_policies() -> None:
    path = DATA / "wfformat" / "cycles-1l-1c-9p-v1.4.json"
    args = [*CLI, "simulate", str(path), "-w", "4", "--policy", "depth_first,fifo", "--json"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    out, out_again = json.loads(first.stdout), json.loads(again.stdout)
    for run in (out, out_again):
        for p in run["policies"]:
            assert p.pop("wall_s") >= 0  # the one field that is measured, not simulated
    assert out == out_again
    assert [p["policy"] for p in out["policies"]] == ["depth_first", "fifo"]
    assert out["tasks"] == len(load_graph(path).tasks) == 67
    df = out["policies"][0]
    assert df["makespan_s"] >= max(out["lower_bound_s"].values())
    assert df["peak_roots_in_progress"] <= out["policies"][1]["peak_roots_in_progress"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy nope"),
        (["--groups", "a=0"], "--groups: 'a=0'"),
        (["--speed", "0"], "--speed must be a number > 0"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_cli_bad_options_are_one_line_exit_2(args: list[str], message: str) -> None:
    path = DATA / "wfformat" / "helloworld-forkjoin-10-v1.5.json"
    out = subprocess.run([*CLI, "simulate", str(path), *args], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "simulate", *map(str, args), "--json"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_cli_two_runs_of_one_workflow_family_keep_their_ids_apart(tmp_path: Path) -> None:
    """Two traces of one family share task ids: each file stays its own graph and group (ids
    as ``graph-name:id``); before, ``duplicate task id`` without a file named."""
    src = DATA / "wfformat" / "cycles-1l-1c-9p-v1.4.json"
    a, b = tmp_path / "runA.json", tmp_path / "runB.json"
    a.write_bytes(src.read_bytes())
    b.write_bytes(src.read_bytes())
    out = run_cli(a, b, "-w", "4")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["tasks"] == 2 * 67
    assert set(got["policies"][0]["groups"]) == {"runA", "runB"}
    twice = run_cli(a, a, "-w", "4")  # the same file twice: two graphs, the second runA#2
    assert twice.returncode == 0, twice.stderr
    assert set(json.loads(twice.stdout)["policies"][0]["groups"]) == {"runA", "runA#2"}


def test_cli_ids_that_clash_even_with_graph_names_name_both_files(tmp_path: Path) -> None:
    one = {"name": "x", "tasks": [{"id": "y:z"}, {"id": "q"}]}
    two = {"name": "x:y", "tasks": [{"id": "z"}, {"id": "q"}]}
    a, b = tmp_path / "one.json", tmp_path / "two.json"
    a.write_text(json.dumps(one))
    b.write_text(json.dumps(two))
    out = run_cli(a, b)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "one.json" in out.stderr and "two.json" in out.stderr and "'x:y:z'" in out.stderr


def test_cli_groups_naming_an_unknown_group_is_refused_with_the_known_ones() -> None:
    files = [DATA / "wfformat" / "cycles-1l-1c-9p-v1.4.json",
             DATA / "wfformat" / "helloworld-forkjoin-10-v1.5.json"]  # fmt: skip
    out = run_cli(*files, "--groups", "a=2,b=1/8")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "unknown group 'a', 'b'" in out.stderr
    assert "cycles-1l-1c-9p-v1.4, helloworld-forkjoin-10-v1.5" in out.stderr
    ok = run_cli(*files, "--groups", "cycles-1l-1c-9p-v1.4=2,helloworld-forkjoin-10-v1.5=1/8")
    assert ok.returncode == 0, ok.stderr


def test_cli_notes_once_that_resources_are_not_simulated(tmp_path: Path) -> None:
    g = {"name": "r", "tasks": [{"id": f"t{i}", "runtime_s": 1, "resources": {"gpu": 1}}
                                for i in range(3)] + [{"id": "plain", "runtime_s": 1}]}  # fmt: skip
    path = tmp_path / "r.json"
    path.write_text(json.dumps(g))
    out = run_cli(path, "-w", "2")
    assert out.returncode == 0, out.stderr
    notes = [ln for ln in out.stderr.splitlines() if "not accounted" in ln]
    assert len(notes) == 1 and "3 task(s)" in notes[0] and "(gpu)" in notes[0], out.stderr
    plain = tmp_path / "p.json"
    plain.write_text(json.dumps({"tasks": [{"id": "a", "runtime_s": 1}]}))
    assert "not accounted" not in run_cli(plain).stderr
