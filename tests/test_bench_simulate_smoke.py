"""Smoke tests for the simulator's benchmarks: each runs to the end at a small size and prints
its figures; nothing timed is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import VENDORED_WORKFLOWS

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def bench(*args: str) -> str:
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.timeout(150)
def test_bench_policies_writes_its_table_into_a_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- bench_policies:start -->\nstale\n<!-- bench_policies:end -->\n")
    out = bench(str(BENCH / "bench_policies.py"), str(VENDORED_WORKFLOWS), "--workers", "4",
                "--min-tasks", "100", "--synthetic", "340", "--readme", str(readme))  # fmt: skip
    text = readme.read_text()
    assert "stale" not in text and text.startswith("before\n")
    assert "| montage-chameleon-2mass-005d-001" not in out  # 58 tasks: below --min-tasks
    assert "synthetic: 20 independent jobs (340) | 4 |" in text
    assert "Shortest makespan" in out


@pytest.mark.timeout(150)
def test_bench_simulate_and_sim_vs_real_run_small() -> None:
    out = bench(str(BENCH / "bench_simulate.py"), "--sizes", "2000,4000")
    assert "per-task cost" in out and "bytes per task" in out
    out = bench(str(BENCH / "bench_sim_vs_real.py"), "--tasks", "60", "--repeat", "1")
    assert "real / simulated" in out
    assert "60 of 60 starts in the same place (identical order)" in out
