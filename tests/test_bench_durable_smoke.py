"""Smoke tests: ``benchmarks/bench_durable.py --quick --skip-postgres`` runs end to end against
laufband and conveyor's SQLite store and prints its tables; a tiny run of issue 16's rows (fn
tasks beside Celery and procrastinate, the Montage-shaped graph) does too. No timing assertions."""

from __future__ import annotations

import glob
import importlib.util
import json
import shutil
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
    # issue 16's sections (fn rows, peers, Montage) have a test of their own below
    sections = "grid,big,pg,scaling"
    # N = 40: laufband runs at ~10 tasks/s here; N only has to give every cell a few tasks
    cmd = [sys.executable, str(SCRIPT), "--quick", "--skip-postgres", "--sections", sections,
           "--sizes", "40"]  # fmt: skip
    proc = subprocess.run(
        [*cmd, "--json", str(out)],
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


@pytest.mark.timeout(600)
def test_bench_durable_fn_rows_and_peers_quick(tmp_path: Path) -> None:
    """A tiny run of issue 16's rows: independent fn tasks (2 workers, default slots and
    one slot) with Celery (Redis) and procrastinate beside them when installed, and the
    Montage-shaped graph. PostgreSQL when its server binaries are there."""
    out = tmp_path / "bench.json"
    has_pg = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    cmd = [sys.executable, str(SCRIPT), "--quick", "--sections", "fn,montage", "--fn-n", "30",
           "--fn-bodies", "fn", "--fn-workers", "2", "--montage-n", "300",
           "--json", str(out)]  # fmt: skip
    if not has_pg:
        cmd.append("--skip-postgres")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "## Independent tasks, N = 30" in text, text
    assert "## Montage-shaped graph" in text, text
    rows = [ln for ln in text.splitlines() if ln.startswith("| SQLite ")]
    assert any("fn (returns None)" in ln for ln in rows), text
    data = json.loads(out.read_text())
    runs = [r for r in data["runs"] if r["extra"].get("purpose") in ("independent", "montage")]
    systems = {r["system"] for r in data["runs"]}
    for r in runs:
        if r["system"].startswith("conveyor"):
            assert r["ok"], r
    assert {r["store"] for r in runs if r["system"].startswith("conveyor")} == (
        {"sqlite", "postgres"} if has_pg else {"sqlite"}
    )
    # the peers run when installed (and their servers are there); otherwise a reason is printed
    celery_ready = all(importlib.util.find_spec(m) for m in ("celery", "redis")) and bool(
        shutil.which("redis-server")
    )
    if celery_ready:
        assert "Celery (Redis)" in systems, text
        assert all(r["ok"] for r in data["runs"] if r["system"] == "Celery (Redis)"), text
    else:
        assert "Celery: not run" in text, text
    if importlib.util.find_spec("procrastinate") and has_pg:
        assert "procrastinate" in systems, text
        assert all(r["ok"] for r in data["runs"] if r["system"] == "procrastinate"), text
    else:
        assert "procrastinate: not run" in text, text
    if celery_ready or "procrastinate" in systems:
        assert "## fn tasks side by side with the peers" in text, text
