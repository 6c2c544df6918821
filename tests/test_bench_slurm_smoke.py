"""Smoke test: ``benchmarks/bench_slurm.py`` runs end to end on the real cluster at a tiny size
(conveyor's pilots, a plain array, and submitit when it is installed) and prints its table. No
timing assertions. Skipped, with the reason, without an answering cluster."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_slurm import cluster_missing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_slurm.py"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_bench_slurm_tiny_run_prints_every_side(tmp_path: Path) -> None:
    why = cluster_missing()
    if why is not None:
        pytest.skip(why)
    sides = ["conveyor", "plain"]
    if importlib.util.find_spec("submitit") is not None:
        sides.append("submitit")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tasks", "12", "--workers", "3", "--timeout", "90",
         "--sides", ",".join(sides), "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| side | total s |" in proc.stdout and "conveyor vs plain array" in proc.stdout
    got = {s["name"]: s for s in json.loads(out.read_text())}
    assert got["conveyor"]["done"] == 12 and got["conveyor"]["sbatch_calls"] == 1
    assert got["conveyor"]["jobs"] == 3 and got["plain array"]["jobs"] == 12
    assert all(s["done"] == 12 and s["seconds"] is not None for s in got.values())
