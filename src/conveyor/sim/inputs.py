"""What the simulator runs: graphs loaded as the engine loads them, or a synthetic layered one.

A task's simulated duration is its ``expected_s`` when it declares one, else its traced
``runtime_s`` (WfCommons traces, WfFormat files), else 0 (a no-op).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from conveyor.core.dag import ParentTuples
from conveyor.core.ordering import band_numbers
from conveyor.errors import UsageError
from conveyor.model import GraphSpec
from conveyor.sim.loop import Batch


def duration_of(task: Any) -> float:
    expected = getattr(task, "expected_s", None)
    if expected is not None:
        return float(expected)
    runtime = getattr(task, "runtime_s", None)
    return 0.0 if runtime is None else float(runtime)


def batch_of(spec: GraphSpec, arrive: float = 0.0) -> Batch:
    """A loaded graph as one batch, submitted at ``arrive`` seconds. Structure-only graphs (no
    groups, resources, gangs, bands: the large traces) carry no task list: every task then has
    the default shape and band, as in the engine."""
    tasks = spec.tasks
    return Batch(
        name=spec.name,
        ids=[t.id for t in tasks],
        parents=[t.deps for t in tasks],
        durations=[duration_of(t) for t in tasks],
        tasks=None if spec.structure_only else tasks,
        layout=spec.layout,
        bands=None if spec.structure_only else band_numbers([t.band for t in tasks]),
        arrive=arrive,
    )


def distinct_names(specs: Sequence[GraphSpec]) -> None:
    """Several graphs of one name (the same file twice, or two files that name their graph
    alike) are told apart by a number: ``name``, ``name#2``, ``name#3`` ..."""
    seen: dict[str, int] = {}
    for spec in specs:
        n = seen[spec.name] = seen.get(spec.name, 0) + 1
        if n > 1:
            spec.name = f"{spec.name}#{n}"


def keep_apart(specs: Sequence[GraphSpec], files: Sequence[str]) -> None:
    """Several graphs simulated together whose task ids clash (two runs of one workflow
    family): every task id (and parent) becomes ``graph-name:id``, so each file stays its
    own graph. Ids that still clash raise ``UsageError`` naming both files."""
    owner: dict[str, int] = {}
    clash = False
    for k, spec in enumerate(specs):
        for t in spec.tasks:
            if owner.setdefault(t.id, k) != k:
                clash = True
                break
    if not clash:
        return
    owner.clear()
    for k, spec in enumerate(specs):
        prefix = f"{spec.name}:"
        for t in spec.tasks:
            t.id = prefix + t.id
            t.deps = tuple(prefix + d for d in t.deps)
            first = owner.setdefault(t.id, k)
            if first != k:
                raise UsageError(
                    f"{files[first]} and {files[k]}: both hold task {t.id!r} even with each "
                    'file\'s graph name before its ids: rename a graph ("name" in the file)'
                )
        spec.layout = None  # (its index is by the old ids)


def group_per_graph(specs: Sequence[GraphSpec]) -> None:
    """Several graphs simulated together: each task without a group joins its graph's own
    group (named after the graph), so fair share splits the workers between the graphs."""
    for spec in specs:
        for t in spec.tasks:
            if t.group == "default":
                t.group = spec.name
        spec.structure_only = False


class LayeredParents(ParentTuples):
    """The parents of ``layered``'s tasks, made when asked (the graph's edges are never all in
    memory at once): task ``i`` of a job at layer ``l > 0``, position ``p``, depends on
    positions ``p`` and ``p + 1`` (mod width) of layer ``l - 1``; layer 0 is the job's root."""

    def __init__(self, ids: Sequence[str], jobs: int, layers: int, width: int) -> None:
        self.ids = ids
        self.jobs, self.layers, self.width = jobs, layers, width
        self.per_job = 1 + (layers - 1) * width

    def __len__(self) -> int:
        return self.jobs * self.per_job

    def parents_of(self, i: int) -> tuple[str, ...]:
        base, k = divmod(i, self.per_job)
        base *= self.per_job
        if k == 0:
            return ()
        ids = self.ids
        if k <= self.width:
            return (ids[base],)
        w = self.width
        layer, p = divmod(k - 1, w)
        prev = base + 1 + (layer - 1) * w
        if w == 1:
            return (ids[prev],)
        return (ids[prev + p], ids[prev + (p + 1) % w])


def layered(tasks: int, *, layers: int = 25, width: int = 4) -> Batch:
    """A synthetic graph of about ``tasks`` tasks: independent jobs of one root and ``layers - 1``
    layers of ``width`` tasks, each on two tasks of the layer above. Durations 0.5-1.5 s, spread
    by a fixed hash of the index (the same graph every time)."""
    per_job = 1 + (layers - 1) * width
    jobs = max(1, tasks // per_job)
    n = jobs * per_job
    ids = list(map(str, range(n)))
    durations = array("d", [0.0]) * n
    for i in range(n):
        durations[i] = 0.5 + ((i * 2654435761) % 1000) / 1000.0
    return Batch("layered", ids, LayeredParents(ids, jobs, layers, width), durations)
