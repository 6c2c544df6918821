"""Smoke test for the LLM benchmark: conveyor's side only (no Data Designer venv), tiny numbers.

Runs ``benchmarks/bench_llm.py --only conveyor`` against real fake servers (one process per
endpoint) and checks what the report is made of, not how fast anything was: every record
written, exactly two calls served per record, each endpoint given its own column's calls, the
ideal bound computed from the capacities, the first row group seen, the table and targets
printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_llm.py"
RECORDS = 40
LATENCY_MS = 50


@pytest.mark.timeout(120)
def test_bench_llm_conveyor_side_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "conveyor", "--records", str(RECORDS),
         "--latency-ms", str(LATENCY_MS), "--scenario", "defaults,two", "--json", str(out)],
        capture_output=True, text=True, timeout=110, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    text = p.stdout
    assert "| scenario | tool | capacity told | wall s | calls | % of ideal | 429s |" in text
    assert "| capacity 16, defaults | conveyor | not told |" in text
    assert "| two endpoints, capacities 16 and 4 | conveyor | not told |" in text
    assert "Data Designer" not in text.split("Targets:")[0]
    assert "Targets:" in text and ("[PASS]" in text or "[MISS]" in text)

    data = json.loads(out.read_text())
    assert data["tools"] == ["conveyor"] and data["data_designer"] is None
    runs = {r["scenario"]: r for r in data["runs"]}
    assert set(runs) == {"defaults", "two"}
    latency = LATENCY_MS / 1000
    # the bound: max over endpoints of calls x latency / capacity
    assert runs["defaults"]["ideal_s"] == pytest.approx(2 * RECORDS * latency / 16)
    assert runs["two"]["ideal_s"] == pytest.approx(max(RECORDS * latency / 16,
                                                       RECORDS * latency / 4))  # fmt: skip
    for r in runs.values():
        assert r["tool"] == "conveyor" and r["variant"] == "not told"
        assert r["rows"] == RECORDS
        assert r["served"] == 2 * RECORDS  # the chain: two calls per record, nothing more
        assert r["requests"] == r["served"] + r["rate_limited"]
        assert r["detail"]["complete"] is True
        assert r["detail"]["row_group_size"] == 1000
        assert r["first_group_s"] is not None and r["first_group_s"] > 0  # the file was seen
        assert r["of_ideal"] == pytest.approx(r["ideal_s"] / r["wall_s"])
    # two endpoints, two servers: each column called its own (title the first, review the
    # second), as conveyor's own counts say too
    eps = runs["two"]["detail"]["endpoints"]
    assert sorted(eps) == ["openai/fake-model-0/chat", "openai/fake-model-1/chat"]
    assert [eps[k]["calls"] - eps[k]["rate_limited"] for k in sorted(eps)] == [RECORDS, RECORDS]
    assert len(runs["two"]["max_in_flight"]) == 2
    assert all(0 < m <= c for m, c in zip(runs["two"]["max_in_flight"], (16, 4), strict=True))
    assert {v["scenario"] for v in data["verdicts"]} == {"defaults", "two"}


def test_bench_llm_refuses_an_unknown_scenario(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "conveyor", "--scenario", "nope"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 2 and "unknown scenario" in p.stderr
