"""Smoke test: ``benchmarks/bench_ray.py`` runs end to end at a tiny size on the Ray head it
starts itself (both sides; the layered workload, whose plain side passes ``ObjectRef``s and
whose conveyor side ``TaskRef``s: the no-op one is the same code without them) and prints its
table. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayhelp import ray_missing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_ray.py"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ray_missing() is not None,
                                                   reason=str(ray_missing()))]  # fmt: skip


def test_bench_ray_tiny_run_prints_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--noop-tasks", "40", "--layers", "3", "--width", "4",
         "--sleep-ms", "1", "--reps", "1", "--workloads", "layered", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| workload | tasks | plain Ray s | conveyor s | conveyor/plain |" in proc.stdout
    rows = {r["workload"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["layered"] and rows["layered"]["tasks"] == 12
    for row in rows.values():
        assert len(row["runs"]["plain"]) == len(row["runs"]["conveyor"]) == 1
        assert row["ratio"] == pytest.approx(row["conveyor_s"] / row["plain_s"])
