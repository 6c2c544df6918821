"""Smoke test for the table builder benchmark: ``--quick`` runs every side in its own process,
every side writes the same data files, and the table and targets are printed. No timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_table.py"
SIDES = ("table", "table async", "table inline", "graph", "floor")


@pytest.mark.timeout(60)
def test_bench_table_quick_runs_every_side_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    text = p.stdout
    assert "| side | rows | cells | tasks | CPU µs/cell |" in text
    for side in SIDES:
        assert f"| {side} | 2k | 12,000 |" in text, side
    assert "Targets:" in text
    assert "[PASS]" in text or "[MISS]" in text
    assert "Every side wrote the same data files" in text

    data = json.loads(out.read_text())
    assert data["quick"] is True and data["sizes"] == [2000] and not data["problems"]
    runs = {r["side"]: r for r in data["results"]}
    assert set(runs) == set(SIDES)
    for r in runs.values():
        assert r["rows_written"] == 2000 and r["cells"] == 12_000
        assert r["cpu_s"] > 0 and r["peak_rss_mb"] > 0
    assert len({r["digest"] for r in runs.values()}) == 1
    # the table builder ran its 4 cell tasks per row and 2 tasks per row group
    assert runs["table"]["tasks"] == runs["graph"]["tasks"] == 4 * 2000 + 2 * 2
    assert {v["side"] for v in data["verdicts"]} == {"table", "table async", "table inline"}
