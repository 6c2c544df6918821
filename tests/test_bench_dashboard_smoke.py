"""Smoke test: ``benchmarks/bench_dashboard.py`` runs both sides end to end on a small graph
(real workers, a real dashboard and an open event stream) and prints its table. No timing
assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard needs conveyor[dashboard]")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dashboard.py"


@pytest.mark.timeout(240)
def test_bench_dashboard_small(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "1000", "--workers", "2", "--repeat", "1",
         "--every", "0.2", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=220,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with / without = " in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [r["watched"] for r in runs] == [False, True]
    assert runs[1]["frames"] >= 1  # the event stream was open and fed
