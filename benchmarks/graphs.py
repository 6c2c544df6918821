"""Deterministic benchmark graphs, shared by every benchmark in this directory.

Every generator returns a *graph dict* in the graph-file format (README.md, "Command line")::

    {"name": "layered-100000", "tasks": [{"id": "t0", "deps": []}, ...]}

Tasks have neither ``fn`` nor ``cmd``, so conveyor runs them as no-ops. Tasks are listed in a
topological order (every parent before its children). The same arguments always give the same
graph (seeded ``random.Random``; no global state).

API (kept small and stable; other benchmarks import it)::

    chain(n)                                  a -> b -> c ... (n tasks)
    fanout_fanin(n)                           one root, n - 2 middle tasks, one sink
    layered(n, width=100, parents=3, seed=0)  layers of `width`; each task after the first layer
                                              has `parents` distinct random parents in the
                                              previous layer
    wfcommons_largest(directory=WORKFLOWS)    the largest WfCommons graph ("parents" -> "deps")
    wfcommons(path)                           one WfCommons graph file, same normalisation
    ids_parents(graph)                        -> (ids, parents): two parallel lists
    write_graph(graph, directory=None)        -> Path of a JSON graph file (a temp dir by default)
    by_name("layered", 100_000)               the generators by name (for command lines)
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "WORKFLOWS",
    "by_name",
    "chain",
    "fanout_fanin",
    "ids_parents",
    "layered",
    "wfcommons",
    "wfcommons_largest",
    "write_graph",
]

Graph = dict[str, Any]

#: The WfCommons graphs: $CONVEYOR_WORKFLOWS, else the small set vendored with the tests.
WORKFLOWS = Path(
    os.environ.get(
        "CONVEYOR_WORKFLOWS",
        Path(__file__).resolve().parents[1] / "tests" / "data" / "workflows",
    )
)


def _graph(name: str, ids: list[str], parents: list[list[str]]) -> Graph:
    return {
        "name": name,
        "tasks": [{"id": t, "deps": p} for t, p in zip(ids, parents, strict=True)],
    }


def chain(n: int) -> Graph:
    """``t0 -> t1 -> ... -> t{n-1}``."""
    if n < 1:
        raise ValueError("n must be >= 1")
    ids = [f"t{i}" for i in range(n)]
    parents = [[]] + [[ids[i - 1]] for i in range(1, n)]
    return _graph(f"chain-{n}", ids, parents)


def fanout_fanin(n: int) -> Graph:
    """One root ``src``, ``n - 2`` middle tasks ``m{i}`` each depending on it, one sink ``sink``."""
    if n < 3:
        raise ValueError("n must be >= 3")
    mids = [f"m{i}" for i in range(n - 2)]
    ids = ["src", *mids, "sink"]
    parents: list[list[str]] = [[]] + [["src"]] * (n - 2) + [mids]
    # Give each middle task its own list (callers may mutate the dict).
    parents = [list(p) for p in parents]
    return _graph(f"fanout-fanin-{n}", ids, parents)


def layered(n: int, width: int = 100, parents: int = 3, seed: int = 0) -> Graph:
    """``n`` tasks in layers of ``width``; each task after the first layer has ``parents``
    distinct parents drawn uniformly (seeded) from the previous layer. The last layer may be
    partial."""
    if n < 1 or width < 1 or parents < 1:
        raise ValueError("n, width and parents must be >= 1")
    rnd = random.Random(seed).random
    ids = [f"t{i}" for i in range(n)]
    k = min(parents, width)
    par: list[list[str]] = [[] for _ in range(min(width, n))]
    for start in range(width, n, width):
        prev = ids[start - width : start]
        for _ in range(start, min(start + width, n)):
            # k distinct uniform draws by rejection (k << width): ~3x faster than sample().
            picked: list[str] = []
            while len(picked) < k:
                p = prev[int(rnd() * width)]
                if p not in picked:
                    picked.append(p)
            par.append(picked)
    return _graph(f"layered-{n}-w{width}-p{parents}-s{seed}", ids, par)


def wfcommons(path: str | os.PathLike[str]) -> Graph:
    """A WfCommons graph file with ``parents`` renamed ``deps`` (``runtime_s``/``cores`` kept)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    tasks = []
    for t in data["tasks"]:
        t = dict(t)
        t["deps"] = list(t.pop("parents", None) or t.pop("deps", None) or [])
        tasks.append(t)
    return {"name": data.get("name", Path(path).stem), "tasks": tasks}


def wfcommons_largest(directory: str | os.PathLike[str] = WORKFLOWS) -> Graph:
    """The WfCommons graph with the most tasks in ``directory`` (ties: by file name)."""
    best: tuple[int, str] | None = None
    for p in sorted(Path(directory).glob("*.json")):
        n = len(json.loads(p.read_text(encoding="utf-8")).get("tasks", []))
        if best is None or n > best[0]:
            best = (n, str(p))
    if best is None:
        raise FileNotFoundError(f"no WfCommons *.json graphs in {directory}")
    return wfcommons(best[1])


def ids_parents(graph: Graph) -> tuple[list[str], list[list[str]]]:
    """Two parallel lists: task ids, and each task's parent ids."""
    tasks = graph["tasks"]
    return [t["id"] for t in tasks], [list(t.get("deps", t.get("parents", []))) for t in tasks]


def write_graph(
    graph: Graph, directory: str | os.PathLike[str] | None = None, name: str | None = None
) -> Path:
    """Write ``graph`` as a JSON graph file and return its path. Without ``directory`` a fresh
    temporary directory is made (the caller removes it, or lets the OS do so)."""
    d = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="conveyor-"))
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name or graph.get('name', 'graph')}.json"
    with path.open("w", encoding="utf-8") as fh:
        json.dump(graph, fh, separators=(",", ":"))
    return path


_GENERATORS: dict[str, Callable[..., Graph]] = {
    "chain": chain,
    "fanout_fanin": fanout_fanin,
    "layered": layered,
}


def by_name(kind: str, n: int | None = None, **kw: Any) -> Graph:
    """``by_name("layered", 1000, seed=1)``; ``by_name("wfcommons")`` ignores ``n``."""
    if kind == "wfcommons":
        return wfcommons_largest()
    try:
        gen = _GENERATORS[kind]
    except KeyError:
        known = ", ".join([*_GENERATORS, "wfcommons"])
        raise ValueError(f"unknown graph kind {kind!r}: {known}") from None
    if n is None:
        raise ValueError(f"{kind} needs a task count")
    return gen(n, **kw)
