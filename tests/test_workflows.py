"""Real WfCommons graphs as no-op tasks: every task runs exactly once, parents first, in
depth-first key order; ``conveyor graph`` facts match networkx.

The graphs are the small set vendored in ``tests/data/workflows``, or every ``*.json`` in the
directory ``$CONVEYOR_WORKFLOWS`` names (missing or empty there is a collection error)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import conveyor
from conveyor.core.dag import facts
from conveyor.graphfile import load_graph
from helpers import (
    VENDORED_WORKFLOWS,
    WORKFLOWS_ENV,
    EventLog,
    expected_start_order,
    workflow_files,
)

FILES = workflow_files()
# A few small-to-mid graphs of different families for the subprocess CLI checks (the first
# four files of a directory that has none of them).
CLI_STEMS = (
    "montage-chameleon-2mass-005d-001",
    "epigenomics-chameleon-hep-1seq-100k-001",
    "1000genome-chameleon-2ch-100k-001",
    "rnaseq-dirt02-001",
)
CLI_FILES = [f for f in FILES if f.stem in CLI_STEMS] or FILES[:4]


def _nx_graph(path: Path) -> tuple[nx.DiGraph, dict[str, float]]:
    data = json.loads(path.read_text())
    g = nx.DiGraph()
    runtime = {}
    for t in data["tasks"]:
        g.add_node(t["id"])
        runtime[t["id"]] = float(t.get("runtime_s") or 0.0)
        for p in t.get("parents", t.get("deps", [])):
            g.add_edge(p, t["id"])
    return g, runtime


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_noop_run_every_task_once_parents_first(path: Path) -> None:
    spec = load_graph(path)
    assert all(t.is_noop for t in spec.tasks)
    log = EventLog()
    result = conveyor.run(path, workers=4, emit=log)
    assert result.exit_code == 0
    ids = [t.id for t in spec.tasks]
    started = log.tasks("task_started")
    finished = log.tasks("task_finished")
    assert sorted(started) == sorted(ids) and len(set(started)) == len(ids)
    assert sorted(finished) == sorted(ids)
    # parents finished before the child started, by position in the event stream
    pos = {}
    for k, e in enumerate(log.events):
        if e["event"] in ("task_started", "task_finished"):
            pos[(e["event"], e["task"])] = k
    for t in spec.tasks:
        for p in t.deps:
            assert pos[("task_finished", p)] < pos[("task_started", t.id)], (p, t.id)
    assert result.counts["done"] == len(ids)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_one_worker_start_order_is_key_order(path: Path) -> None:
    spec = load_graph(path)
    log = EventLog()
    conveyor.run(spec, workers=1, emit=log)
    ids = [t.id for t in spec.tasks]
    assert log.tasks("task_started") == expected_start_order(ids, [t.deps for t in spec.tasks])


def _check_facts(path: Path, got: dict) -> None:
    g, runtime = _nx_graph(path)
    assert got["tasks"] == g.number_of_nodes()
    assert got["edges"] == g.number_of_edges()
    assert got["roots"] == sum(1 for v in g if g.in_degree(v) == 0)
    assert got["leaves"] == sum(1 for v in g if g.out_degree(v) == 0)
    longest = nx.dag_longest_path_length(g)  # in edges
    assert got["depth"] == longest + 1
    path_ids = got["critical_path"]
    assert len(path_ids) == longest + 1
    assert all(g.has_edge(u, v) for u, v in itertools.pairwise(path_ids))
    # by runtime: node weights as edge weights from a virtual source
    h = nx.DiGraph()
    h.add_weighted_edges_from((u, v, runtime[v]) for u, v in g.edges)
    h.add_weighted_edges_from(("<src>", v, runtime[v]) for v in g if g.in_degree(v) == 0)
    best = nx.dag_longest_path_length(h, weight="weight")
    assert got["critical_runtime_s"] == pytest.approx(best)
    rt_path = got["critical_path_runtime"]
    assert sum(runtime[v] for v in rt_path) == pytest.approx(best)
    assert g.in_degree(rt_path[0]) == 0
    assert all(g.has_edge(u, v) for u, v in itertools.pairwise(rt_path))
    assert got["total_runtime_s"] == pytest.approx(sum(runtime.values()))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_facts_match_networkx(path: Path) -> None:
    spec = load_graph(path)
    f = facts([t.id for t in spec.tasks], [t.deps for t in spec.tasks],
              [t.runtime_s for t in spec.tasks])  # fmt: skip
    import dataclasses

    _check_facts(path, dataclasses.asdict(f))


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: p.stem)
def test_cli_graph_json_facts_match_networkx(path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "graph", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["name"] == path.stem
    _check_facts(path, got)


def test_workflow_files_vendored_by_default_and_an_error_when_the_named_dir_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(WORKFLOWS_ENV, raising=False)
    vendored = workflow_files()
    assert len(vendored) >= 10 and all(p.parent == VENDORED_WORKFLOWS for p in vendored)
    for value, message in (
        (str(tmp_path / "missing"), "no such directory"),
        (str(tmp_path), "no workflow graphs"),
        ("", "set but empty"),
    ):
        monkeypatch.setenv(WORKFLOWS_ENV, value)
        with pytest.raises(RuntimeError, match=message):
            workflow_files()
    (tmp_path / "one.json").write_text((VENDORED_WORKFLOWS / f"{CLI_STEMS[0]}.json").read_text())
    monkeypatch.setenv(WORKFLOWS_ENV, str(tmp_path))
    assert workflow_files() == [tmp_path / "one.json"]
