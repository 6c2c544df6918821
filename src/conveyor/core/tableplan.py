"""A table's column DAG, checked and laid out. Pure.

A table is a set of *generators* (nodes). Each fills one or more output fields: its own column
and the side-effect columns it declares (``answer`` and ``answer__trace``), or, for a seed file,
the file's columns. A generator depends on fields; the DAG's edges go from the generator that
fills a field to every generator that reads it. Nodes are laid out in a topological order that
keeps the declaration order where the edges allow (Kahn's algorithm with a min-heap on the
declaration index), with their depth (the longest path from a root), which is the depth-first
key's depth for the table's cells.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.errors import CycleError, GraphError

CELL = "cell"
FULL_COLUMN = "full_column"
STRATEGIES = (CELL, FULL_COLUMN)


@dataclass(frozen=True, slots=True)
class NodeDecl:
    """One generator as declared: its name, the fields it fills, the fields it reads."""

    name: str
    fields: tuple[str, ...]
    deps: tuple[str, ...]
    strategy: str = CELL
    endpoint: str | None = None


class TableCycleError(CycleError):
    def __init__(self, cycle: list[str]) -> None:
        super().__init__(cycle)
        shown = " -> ".join([*cycle, cycle[0]])
        self.args = (f"the table's columns form a cycle: {shown}",)


@dataclass(slots=True)
class TablePlan:
    """The checked DAG: ``nodes`` in topological order; every list is indexed by that order."""

    nodes: list[NodeDecl]
    #: field name -> the index of the node that fills it
    producer: dict[str, int]
    #: upstream node indices of each node (deduplicated, ascending)
    up: list[tuple[int, ...]]
    #: downstream nodes of each node that run per row / once per row group
    down_cell: list[tuple[int, ...]]
    down_batch: list[tuple[int, ...]]
    depth: list[int]
    #: per node: the cell generators a ``full_column`` generator also waits for, beyond its
    #: inputs, so that the rows it sees do not depend on timing (``settle_sets``)
    settle: list[tuple[int, ...]] = field(default_factory=list)
    #: output fields in order: nodes in topological order, each node's fields in its order
    fields: list[str] = field(default_factory=list)

    @property
    def index(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    def is_cell(self, i: int) -> bool:
        return self.nodes[i].strategy == CELL

    def critical_path(self) -> list[str]:
        """The longest chain of generators (names, root first): the least number of steps
        between a row's first cell and its last, whatever the concurrency."""
        if not self.nodes:
            return []
        last = max(range(len(self.nodes)), key=lambda i: (self.depth[i], -i))
        path = [last]
        while self.up[path[-1]]:
            here = path[-1]
            path.append(max(self.up[here], key=lambda u: (self.depth[u], -u)))
        return [self.nodes[i].name for i in reversed(path)]

    def tasks_per_group(self, rows: int) -> list[int]:
        """Tasks each generator makes in a row group of ``rows`` rows (before drops)."""
        return [rows if n.strategy == CELL else 1 for n in self.nodes]

    def mermaid(self) -> str:
        """The DAG as a Mermaid flowchart (full-column generators drawn as rounded boxes)."""
        lines = ["flowchart LR"]
        for i, n in enumerate(self.nodes):
            label = n.name if n.fields == (n.name,) else f"{n.name}: {', '.join(n.fields)}"
            box = f'n{i}["{label}"]' if n.strategy == CELL else f'n{i}("{label}")'
            lines.append(f"  {box}")
        for i, ups in enumerate(self.up):
            lines.extend(f"  n{u} --> n{i}" for u in ups)
        return "\n".join(lines)


def plan_table(decls: Sequence[NodeDecl]) -> TablePlan:
    """Check the declarations and lay them out. One-line ``GraphError``s: a name or field
    declared twice, a strategy that does not exist, a dependency nothing fills, a cycle."""
    if not decls:
        raise GraphError("the table has no columns")
    producer: dict[str, int] = {}
    names: set[str] = set()
    for k, d in enumerate(decls):
        if d.strategy not in STRATEGIES:
            raise GraphError(
                f"column {d.name!r}: strategy {d.strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        if d.name in names:
            raise GraphError(f"column {d.name!r} is declared twice")
        names.add(d.name)
        for f in d.fields:
            if f in producer:
                other = decls[producer[f]].name
                raise GraphError(f"columns {other!r} and {d.name!r} both fill column {f!r}")
            producer[f] = k
    ups: list[set[int]] = []
    for d in decls:
        us: set[int] = set()
        for dep in d.deps:
            if dep not in producer:
                raise GraphError(
                    f"column {d.name!r} depends on {dep!r}, which no column fills"
                    f" (columns: {', '.join(sorted(producer))})"
                )
            u = producer[dep]
            if decls[u].name == d.name:
                raise TableCycleError([d.name])
            us.add(u)
        ups.append(us)
    order = _topological(decls, ups)
    pos = {old: new for new, old in enumerate(order)}
    nodes = [decls[k] for k in order]
    up = [tuple(sorted(pos[u] for u in ups[k])) for k in order]
    depth = [0] * len(nodes)
    for i, us2 in enumerate(up):
        depth[i] = 1 + max((depth[u] for u in us2), default=-1)
    down_cell: list[list[int]] = [[] for _ in nodes]
    down_batch: list[list[int]] = [[] for _ in nodes]
    for i, us2 in enumerate(up):
        for u in us2:
            (down_cell if nodes[i].strategy == CELL else down_batch)[u].append(i)
    new_producer = {f: pos[k] for f, k in producer.items()}
    return TablePlan(
        nodes=nodes,
        producer=new_producer,
        up=up,
        down_cell=[tuple(x) for x in down_cell],
        down_batch=[tuple(x) for x in down_batch],
        depth=depth,
        fields=[f for n in nodes for f in n.fields],
        settle=settle_sets(nodes, up),
    )


def settle_sets(nodes: Sequence[NodeDecl], up: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """For each ``full_column`` generator that reads columns, the cell generators it waits
    for besides its inputs: every cell generator that is not downstream of it and whose
    ``full_column`` ancestors are all its own ancestors.

    Why: any cell generator may drop rows (a filter, an error), and a ``full_column``
    generator is given the rows kept when it starts. Waiting for the cells that are not
    downstream of it makes that row set the same whatever the timing (a sibling filter has
    dropped its rows by then), so a build, a resume and a rebuild agree. The second condition
    keeps the waits acyclic (two unrelated ``full_column`` generators with cells below them
    would otherwise wait for each other's cells); drops by cells below an unrelated
    ``full_column`` generator can still land after it started. Nodes in topological order."""
    n = len(nodes)
    anc: list[set[int]] = []
    for i in range(n):
        a: set[int] = set()
        for u in up[i]:
            a.add(u)
            a |= anc[u]
        anc.append(a)
    batch = [d.strategy != CELL for d in nodes]
    batch_anc = [{a for a in anc[i] if batch[a]} for i in range(n)]
    out: list[tuple[int, ...]] = []
    for b in range(n):
        if not batch[b] or not up[b]:
            out.append(())
            continue
        out.append(tuple(
            j for j in range(n)
            if not batch[j] and j not in anc[b] and b not in anc[j]
            and batch_anc[j] <= anc[b]
        ))  # fmt: skip
    return out


def _topological(decls: Sequence[NodeDecl], ups: list[set[int]]) -> list[int]:
    waiting = [len(u) for u in ups]
    downs: list[list[int]] = [[] for _ in decls]
    for k, us in enumerate(ups):
        for u in us:
            downs[u].append(k)
    heap = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        k = heapq.heappop(heap)
        order.append(k)
        for d in downs[k]:
            waiting[d] -= 1
            if waiting[d] == 0:
                heapq.heappush(heap, d)
    if len(order) < len(decls):
        raise TableCycleError(_find_cycle(decls, ups, set(order)))
    return order


def _find_cycle(decls: Sequence[NodeDecl], ups: list[set[int]], done: set[int]) -> list[str]:
    """A cycle among the nodes Kahn's algorithm could not order, named root first."""
    start = min(k for k in range(len(decls)) if k not in done)
    seen: dict[int, int] = {}
    path: list[int] = []
    k = start
    while k not in seen:
        seen[k] = len(path)
        path.append(k)
        k = min(u for u in ups[k] if u not in done)  # every unordered node has such a parent
    cycle = path[seen[k] :]
    cycle.reverse()  # walked child -> parent: name it in the direction data flows
    return [decls[c].name for c in cycle]
