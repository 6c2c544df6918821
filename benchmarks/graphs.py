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
    montage(n, seed=0)                        Montage-shaped (WfCommons' generator at 50k): ~6
                                              edges per task, fan-ins of ~900
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
    "montage",
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


#: Shares of each Montage stage in ``WorkflowGenerator(MontageRecipe.from_num_tasks(50000))``
#: (wfcommons 1.6, ``random`` and ``numpy.random`` seeded 0): 49,976 tasks in 130 mosaics.
_MONTAGE_PER_TASK = {"mProject": 3403 / 49976, "mosaic": 130 / 49976}


def montage(n: int, seed: int = 0) -> Graph:
    """A Montage-shaped graph of exactly ``n`` tasks, modelled on what the ``wfcommons`` package
    (1.6) generates for a 50,000-task Montage (which takes minutes and needs numpy): about 6.1
    edges per task, depth 8, big fan-ins where children's counters are contended.

    Per mosaic ``b`` (n / 384 of them, each with ~26 images): ``mProject`` (roots, one per
    image); ``mDiffFit`` (85% of the tasks), each with 4 (12%: 3) distinct parents among the
    images of its mosaic and the next; ``mConcatFit_b`` over the mDiffFits of mosaic ``b`` and,
    each with probability 0.85, of the mosaics beside it (~900 parents); ``mBgModel_b`` after
    it; one ``mBackground`` per image after its mProject, its mosaic's mBgModel and (p = 0.93)
    the next mosaic's; ``mImgtbl_b`` and ``mAdd_b`` over the mBackgrounds of mosaics ``b`` and
    ``b + 1``; ``mViewer_b`` after ``mAdd_b`` and ``mAdd_{b+1}``. The same ``n`` and ``seed``
    always give the same graph."""
    if n < 20:
        raise ValueError("n must be >= 20")
    rnd = random.Random(seed)
    bands = max(2, round(n * _MONTAGE_PER_TASK["mosaic"]))
    images = max(2 * bands, round(n * _MONTAGE_PER_TASK["mProject"]))
    diffs = n - 2 * images - 5 * bands
    if diffs < bands:
        raise ValueError(f"n = {n} is too small for a Montage shape")
    band_of_image = [i * bands // images for i in range(images)]
    imgs_in: list[list[int]] = [[] for _ in range(bands)]
    for i, b in enumerate(band_of_image):
        imgs_in[b].append(i)

    def name(kind: str, i: int) -> str:
        return f"{kind}_{i + 1:08d}"

    ids: list[str] = []
    par: list[list[str]] = []
    for i in range(images):
        ids.append(name("mProject", i))
        par.append([])
    diffs_in: list[list[str]] = [[] for _ in range(bands)]
    for k in range(diffs):
        b = k * bands // diffs
        pool = imgs_in[b] + imgs_in[(b + 1) % bands]
        want = 3 if rnd.random() < 0.12 else 4
        picked = rnd.sample(pool, min(want, len(pool)))
        ids.append(name("mDiffFit", k))
        par.append([name("mProject", i) for i in picked])
        diffs_in[b].append(ids[-1])
    for b in range(bands):
        ps = list(diffs_in[b])
        for nb in (b - 1, b + 1):
            if 0 <= nb < bands:
                ps += [d for d in diffs_in[nb] if rnd.random() < 0.85]
        ids.append(name("mConcatFit", b))
        par.append(ps)
    for b in range(bands):
        ids.append(name("mBgModel", b))
        par.append([name("mConcatFit", b)])
    for i in range(images):
        b = band_of_image[i]
        ps = [name("mProject", i), name("mBgModel", b)]
        if b + 1 < bands and rnd.random() < 0.93:
            ps.append(name("mBgModel", b + 1))
        ids.append(name("mBackground", i))
        par.append(ps)
    for kind in ("mImgtbl", "mAdd"):
        for b in range(bands):
            nb = b + 1 if b + 1 < bands else b - 1
            ps = [name("mBackground", i) for i in imgs_in[b] + imgs_in[nb]]
            if kind == "mAdd":
                ps.append(name("mImgtbl", b))
            ids.append(name(kind, b))
            par.append(ps)
    for b in range(bands):
        ps = [name("mAdd", b)] + ([name("mAdd", b + 1)] if b + 1 < bands else [])
        ids.append(name("mViewer", b))
        par.append(ps)
    assert len(ids) == n, (len(ids), n)
    return _graph(f"montage-{n}-s{seed}", ids, par)


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
    "montage": montage,
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
