"""Smoke test: ``benchmarks/bench_durable.py --quick --skip-postgres`` runs end to end against
laufband and conveyor's SQLite store and prints its tables. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_durable.py"

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_bench_durable_quick(tmp_path: Path) -> None:
    if importlib.util.find_spec("laufband") is None:
        pytest.skip("laufband is not installed (pip install -e '.[dev]' brings laufband==0.2.1)")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--skip-postgres", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "## Side by side" in text, text
    # a Markdown table: header, separator and one row per graph kind and worker count
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert any(ln.startswith("| graph") for ln in lines), text
    for kind in ("chain", "fanout_fanin", "layered"):
        assert any(ln.startswith(f"| {kind} ") for ln in lines), text
    assert "## Targets" in text

    data = json.loads(out.read_text())
    runs = data["runs"]
    systems = {r["system"] for r in runs}
    assert {"laufband", "conveyor CLI"} <= systems
    # every conveyor run finished the whole graph, and laufband runs report what they did
    for r in runs:
        if r["system"].startswith("conveyor"):
            assert r["ok"], r
        else:
            assert r["done"] > 0 or r["timed_out"], r
