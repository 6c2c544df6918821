"""``conveyor simulate`` with borrow policies, late graphs and bands: schedules worked out by
hand (each test says how), so a change to the core's borrowing or band rule shows here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.core.borrow import BorrowPolicy
from conveyor.core.policies import POLICIES
from conveyor.graphfile import graph_from_dict
from conveyor.sim import SimConfig, simulate
from conveyor.sim.inputs import batch_of, group_per_graph
from conveyor.sim.loop import SimGroup

CLI = [sys.executable, "-m", "conveyor.cli"]
D = 8  # the long tasks' duration


def staggered_and_late() -> tuple[Any, Any]:
    """Group a: 8 chains of 6 tasks on 8 slots; chain c's first task takes c + 1 s, the rest
    D = 8 s, so one of a's tasks ends every second (chain c at c + 1 + 8k). Group b arrives at
    20 s: b0 (4 s), then 8 tasks of D s that need b0."""
    a = []
    for c in range(8):
        for k in range(6):
            a.append({"id": f"a{c}_{k}", "group": "a", "runtime_s": c + 1 if k == 0 else D,
                      "deps": [f"a{c}_{k - 1}"] if k else []})  # fmt: skip
    b = [{"id": "b0", "group": "b", "runtime_s": 4}]
    b += [{"id": f"b{k}", "group": "b", "runtime_s": D, "deps": ["b0"]} for k in range(1, 9)]
    return graph_from_dict({"name": "a", "tasks": a}), graph_from_dict({"name": "b", "tasks": b})


def late_run(policy: str) -> Any:
    a, b = staggered_and_late()
    groups = {"a": SimGroup(), "b": SimGroup()}
    config = SimConfig(workers=8, borrow=BorrowPolicy.parse(policy), record_starts=True)
    return simulate([batch_of(a), batch_of(b, arrive=20.0)], config, groups)


@pytest.mark.parametrize(
    ("policy", "time_to_share", "below_share"),
    [
        # b0 starts at 20 on the slot chain 3 frees. Chains 4, 5, 6 end at 21, 22, 23, chain 7
        # and b0 at 24, chain 0 at 25, chain 1 at 26. Fair share of each: 4 slots.
        # strict: a may hold 4: 21-23 idle; at 24 b takes 4 of the 5 free slots.
        ("strict", 4.0, 0.0),
        # bounded:1: a may hold 5: 21 and 22 idle, 23 refilled; at 24 b takes all 4 free.
        ("bounded:1", 4.0, 0.0),
        # bounded (25% of 8 = 2): a may hold 6: 21 idle; at 24 b takes 3, its 4th at 25.
        ("bounded", 5.0, 1.0),
        # work_conserving: a refills 21-23; at 24 b takes 2, then 25 and 26.
        ("work_conserving", 6.0, 2.0),
    ],
)
def test_a_late_group_reaches_its_share_within_one_task_duration(
    policy: str, time_to_share: float, below_share: float
) -> None:
    r = late_run(policy)
    assert r.borrow == policy and r.arrivals == {"a": 0.0, "b": 20.0}
    assert r.time_to_share["b"] == time_to_share <= D
    assert r.time_to_share["a"] == 0.0  # alone at 0: the whole pool, at once
    # b0 starts at once; b's 8 tasks wait below its share from 24 until it reaches it
    assert r.below_share["b"] == below_share


def test_group_borrow_policy_overrides_the_runs() -> None:
    a, b = staggered_and_late()
    config = SimConfig(workers=8, borrow=BorrowPolicy.parse("work_conserving"))
    groups = {"a": SimGroup(borrow=BorrowPolicy.parse("strict")), "b": SimGroup()}
    r = simulate([batch_of(a), batch_of(b, arrive=20.0)], config, groups)
    assert r.time_to_share["b"] == 4.0  # a held to its share, as under strict


def mixed_bands() -> dict[str, Any]:
    """Batch jobs r0, r1 (each with a 1-s child) come first in the file and are ready first;
    two interactive tasks, one with an interactive child, come after them."""
    tasks: list[dict[str, Any]] = []
    for j in range(2):
        tasks.append({"id": f"r{j}", "runtime_s": 5})
        tasks.append({"id": f"c{j}", "deps": [f"r{j}"], "runtime_s": 1})
    tasks.append({"id": "i0", "band": "interactive", "runtime_s": 2})
    tasks.append({"id": "i1", "band": "interactive", "runtime_s": 1})
    tasks.append({"id": "i2", "band": 10, "deps": ["i1"], "runtime_s": 1})
    tasks.append({"id": "e0", "band": "best_effort", "runtime_s": 1})
    return {"name": "bands", "tasks": tasks}


@pytest.mark.parametrize("policy", POLICIES)
def test_interactive_tasks_start_before_batch_under_every_policy(policy: str) -> None:
    r = simulate([batch_of(graph_from_dict(mixed_bands()))],
                 SimConfig(workers=1, policy=policy, record_starts=True))  # fmt: skip
    starts = r.starts
    # every interactive task (i2 too, ready only after i1) before any batch task, best effort last
    assert set(starts[:3]) == {"i0", "i1", "i2"}
    assert starts[-1] == "e0"


def test_bands_order_first_across_groups_too() -> None:
    # Group x (weight 9) runs batch work; group y's one interactive task is behind by fair
    # share (y would wait), but a higher band goes first whatever the share.
    tasks = [{"id": f"x{k}", "group": "x", "runtime_s": 1} for k in range(4)]
    tasks.append({"id": "y0", "group": "y", "band": "interactive", "runtime_s": 1})
    spec = graph_from_dict({"name": "g", "groups": {"x": {"weight": 9}, "y": {}}, "tasks": tasks})
    for policy in POLICIES:
        r = simulate([batch_of(spec)], SimConfig(workers=1, policy=policy, record_starts=True),
                     {"x": SimGroup(9.0), "y": SimGroup()})  # fmt: skip
        assert r.starts[0] == "y0", policy


def test_critical_path_keeps_fair_share_between_groups() -> None:
    # Long chains in group a, independent tasks in group b, equal weights, 2 workers: one each
    # while both have work (the policy orders inside a group; the share is admission's), even
    # where the policy's own order (a's chains: long remaining work) would favour one group.
    tasks = []
    for c in range(4):
        for k in range(5):
            tasks.append({"id": f"a{c}_{k}", "group": "a", "runtime_s": 30,
                          "deps": [f"a{c}_{k - 1}"] if k else []})  # fmt: skip
    tasks += [{"id": f"b{k}", "group": "b", "runtime_s": 30} for k in range(20)]
    spec = graph_from_dict({"name": "g", "tasks": tasks})
    for policy in POLICIES:
        r = simulate([batch_of(spec)], SimConfig(workers=2, policy=policy),
                     {"a": SimGroup(), "b": SimGroup()})  # fmt: skip
        assert r.shares[0][2]["b"] == pytest.approx(0.5, abs=0.01), policy


def write(tmp_path: Path, name: str, graph: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(graph))
    return path


def test_cli_borrow_side_by_side_with_a_late_file(tmp_path: Path) -> None:
    a, b = staggered_and_late()
    ga = {"name": "a", "tasks": [{"id": t.id, "deps": list(t.deps), "runtime_s": t.runtime_s}
                                 for t in a.tasks]}  # fmt: skip
    gb = {"name": "b", "tasks": [{"id": t.id, "deps": list(t.deps), "runtime_s": t.runtime_s}
                                 for t in b.tasks]}  # fmt: skip
    fa, fb = write(tmp_path, "a.json", ga), write(tmp_path, "b.json", gb)
    args = [*CLI, "simulate", str(fa), f"{fb}@20", "-w", "8", "--json",
            "--borrow", "strict,bounded,work_conserving"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["policies"]
    assert [r["borrow"] for r in runs] == ["strict", "bounded", "work_conserving"]
    assert [r["groups"]["b"]["time_to_share_s"] for r in runs] == [4.0, 5.0, 6.0]
    assert all(r["groups"]["b"]["arrive_s"] == 20 for r in runs)
    # b's one root latency: from its arrival, not from 0
    assert all(r["groups"]["b"]["root_p95_s"] < r["makespan_s"] - 20 + 1e-9 for r in runs)
    args.remove("--json")
    text = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert "depth_first / bounded" in text.stdout and "time to share" in text.stdout
    # --groups sets a group's own policy; the graph file's borrow is the run's
    per_group = [*CLI, "simulate", str(fa), f"{fb}@20", "-w", "8", "--json",
                 "--groups", "a=1:strict,b=1"]  # fmt: skip
    got = json.loads(subprocess.run(per_group, capture_output=True, text=True, timeout=60).stdout)
    assert got["policies"][0]["groups"]["b"]["time_to_share_s"] == 4.0
    fw = write(tmp_path, "w.json", {**ga, "name": "w", "borrow": "work_conserving"})
    own = [*CLI, "simulate", str(fw), f"{fb}@20", "-w", "8", "--json"]
    got = json.loads(subprocess.run(own, capture_output=True, text=True, timeout=60).stdout)
    assert got["policies"][0]["borrow"] == "work_conserving"
    assert got["policies"][0]["groups"]["b"]["time_to_share_s"] == 6.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--borrow", "lenient"], "--borrow: unknown borrow policy 'lenient'"),
        (["--groups", "a=1:nope"], "--groups: 'a=1:nope'"),
        (["{file}@-3"], "the arrival after @ must be a number of seconds >= 0"),
    ],
)
def test_cli_bad_borrow_and_arrival_are_one_line_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    f = write(tmp_path, "g.json", {"tasks": [{"id": "t", "runtime_s": 1}]})
    args = [a.format(file=f) for a in args]
    out = subprocess.run([*CLI, "simulate", str(f), *args], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_a_late_graph_after_an_idle_gap_counts_its_latency_from_its_arrival() -> None:
    # x (one 1-s task) at 0; y (a chain of two 5-s tasks and one 5-s task) at 100: the workers
    # idle from 1 to 100; y's roots finish at 105 and 110, 5 and 10 s after it arrived.
    x = graph_from_dict({"name": "x", "tasks": [{"id": "x0", "runtime_s": 1}]})
    chain = [{"id": "y0", "runtime_s": 5}, {"id": "y1", "deps": ["y0"], "runtime_s": 5},
             {"id": "y2", "runtime_s": 5}]  # fmt: skip
    y = graph_from_dict({"name": "y", "tasks": chain})
    group_per_graph([x, y])  # (as the CLI does with several files)
    groups = {"x": SimGroup(), "y": SimGroup()}
    for xy in ([x, y], [y, x]):  # (the order of the files does not matter, their arrival does)
        batches = [batch_of(s, arrive=100.0 if s is y else 0.0) for s in xy]
        r = simulate(batches, SimConfig(workers=2), groups)
        assert r.makespan == 110 and r.root_done == [1, 105, 110]
        assert r.root_latency == [1, 5, 10] and r.root_groups == ["x", "y", "y"]
        assert r.utilisation == pytest.approx(16 / 220)
        assert r.time_to_share == {"x": 0.0, "y": 0.0}
        assert r.below_share == {"x": 0.0, "y": 0.0}


def test_cli_help_shows_the_syntax_of_groups_and_borrow() -> None:
    # (rich reads [..] in help text as markup: unescaped, "[/CAP]" crashed --help)
    out = subprocess.run([*CLI, "simulate", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "NAME=WEIGHT[/CAP][:BORROW]" in out.stdout
    assert "bounded:P%," in out.stdout and "[default: the graph file's, else bounded]" in out.stdout
    # (typer's rich help prints a doubled %% as it is: the shared --borrow of run and submit)
    run = subprocess.run([*CLI, "run", "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert "bounded (default: 25% of the slots)" in run.stdout, run.stdout


def test_a_graphs_own_band_orders_its_tasks_first(tmp_path: Path) -> None:
    # Two files on one worker: "urgent" (graph-level band interactive) comes second on the
    # command line and in fair share's tie order, yet each of its tasks starts first.
    batch = {"name": "bulk", "tasks": [{"id": f"b{k}", "runtime_s": 1} for k in range(3)]}
    chain = [{"id": "u0", "runtime_s": 1}, {"id": "u1", "deps": ["u0"], "runtime_s": 1}]
    urgent = {"name": "urgent", "band": "interactive", "tasks": chain}
    fb, fu = write(tmp_path, "bulk.json", batch), write(tmp_path, "urgent.json", urgent)
    a, b = graph_from_dict(batch), graph_from_dict(urgent)
    group_per_graph([a, b])
    for policy in POLICIES:
        r = simulate([batch_of(a), batch_of(b)],
                     SimConfig(workers=1, policy=policy, record_starts=True),
                     {"bulk": SimGroup(), "urgent": SimGroup()})  # fmt: skip
        assert r.starts[:2] == ["u0", "u1"], policy
    out = subprocess.run([*CLI, "simulate", str(fb), str(fu), "-w", "1", "--json"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    groups = json.loads(out.stdout)["policies"][0]["groups"]
    assert groups["urgent"]["root_p95_s"] == 2.0 and groups["bulk"]["root_p95_s"] == 5.0
