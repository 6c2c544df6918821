"""Smoke test for the core benchmark: it runs to the end and prints its table; no timings."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import VENDORED_WORKFLOWS

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_core.py"


@pytest.mark.skipif(
    importlib.util.find_spec("dask") is None,
    reason="dask is not installed (pip install -e '.[dev]'); the benchmark compares against it",
)
@pytest.mark.timeout(300)
def test_bench_core_quick_runs_and_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # the WfCommons column runs on the vendored graphs: nothing outside the repository is read
    env = {**os.environ, "CONVEYOR_WORKFLOWS": str(VENDORED_WORKFLOWS)}
    p = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--skip-distributed", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    text = p.stdout
    assert "| system |" in text
    for row in ("floor (Kahn + heap)", "conveyor inline", "conveyor fn, thread w=2",
                "dask.threaded.get"):  # fmt: skip
        assert f"| {row} |" in text, row
    assert "Targets:" in text
    assert "[PASS]" in text or "[FAIL]" in text
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["cells"] and data["verdicts"]


def test_graph_generators_are_deterministic_and_topological() -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        import graphs
    finally:
        sys.path.remove(str(BENCH.parent))
    assert graphs.layered(500, seed=3) == graphs.layered(500, seed=3)
    assert graphs.layered(500, seed=3) != graphs.layered(500, seed=4)
    cases = [(graphs.chain(50), 50), (graphs.fanout_fanin(50), 50), (graphs.layered(1050), 1050)]
    # the largest of the vendored WfCommons graphs (rnaseq-dirt02-001, 197 tasks)
    cases.append((graphs.wfcommons_largest(VENDORED_WORKFLOWS), 197))
    for g, n in cases:
        ids, parents = graphs.ids_parents(g)
        if n is not None:
            assert len(ids) == n
        assert len(set(ids)) == len(ids)
        if g["name"].startswith(("chain", "fanout", "layered")):
            seen: set[str] = set()
            for t, ps in zip(ids, parents, strict=True):
                assert all(p in seen for p in ps)
                seen.add(t)
    lay = graphs.layered(1000, width=100, parents=3)
    _, parents = graphs.ids_parents(lay)
    assert all(len(ps) == 0 for ps in parents[:100])
    assert all(len(ps) == 3 == len(set(ps)) for ps in parents[100:])
    fan = graphs.fanout_fanin(10)
    assert len(fan["tasks"][-1]["deps"]) == 8
    # the Montage-shaped graph: exactly n tasks, topological, ~6 edges per task, depth 8
    mon = graphs.montage(5_000)
    assert mon == graphs.montage(5_000) != graphs.montage(5_000, seed=1)
    ids, parents = graphs.ids_parents(mon)
    assert len(ids) == len(set(ids)) == 5_000
    depth: dict[str, int] = {}
    for t, ps in zip(ids, parents, strict=True):
        assert len(set(ps)) == len(ps) and all(p in depth for p in ps)
        depth[t] = 1 + max((depth[p] for p in ps), default=0)
    assert max(depth.values()) == 8
    assert 5.5 <= sum(map(len, parents)) / len(ids) <= 6.5


def test_bench_core_whole_prints_the_whole_run_from_a_dict_and_a_file(tmp_path: Path) -> None:
    """``--whole N``: one JSON line with the floor, the dict and the file runs (no timings
    asserted) and the three phases of a dict run."""
    p = subprocess.run(
        [sys.executable, str(BENCH), "--whole", "2000"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["n"] == 2000
    assert {"floor_s", "dict_s", "file_s", "dict_vs_floor", "file_vs_floor"} <= out.keys()
    assert set(out["phases_s"]) == {"build_validate", "load", "engine_run"}
