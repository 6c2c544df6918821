"""Graph facts computed once per submission: validation, depths, critical paths. Pure, O(V + E).

Size: the compact children table, the layout (a topological order with depths) and the facts
derived from it share one representation and run once per submission over every edge; split up,
the hot loops would pass the same arrays across modules for no reader's gain.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, chain
from typing import Any, overload

from conveyor.errors import CycleError, GraphError


class Children(Sequence[Sequence[int]]):
    """Each task's children, kept flat (compressed sparse rows): the children of ``i`` are
    ``flat[start[i]:start[i + 1]]``, an array of offsets and one entry per edge for the whole
    graph instead of a list and an int object per task (~100 bytes per task less at a million
    tasks). ``children[i]`` is that slice (empty, so falsy, for a leaf). Children added later
    to a task already stored (a run-time child job on an existing parent) go to ``extra``.

    ``flat`` is a 4-byte array, or, from the one-pass layout, the list of the index's own int
    objects that its sort left: 4 bytes more per edge, but an array is filled one parse of
    its format per item (~200 instructions; ~5% of a no-op run from a file) and hands out a
    new int object per child read, a list neither.
    """

    __slots__ = ("extra", "flat", "start")

    def __init__(
        self, start: array[int] | None = None, flat: array[int] | list[int] | None = None
    ) -> None:
        self.start: array[int] = array("i", [0]) if start is None else start  # len n + 1
        self.flat: array[int] | list[int] = array("i") if flat is None else flat
        self.extra: dict[int, list[int]] = {}

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int] | None]) -> Children:
        """The flat form of one list (or ``None``) of children per task."""
        sizes = [len(ch) if ch else 0 for ch in lists]
        start = array(_typecode(sum(sizes)), accumulate(sizes, initial=0))
        flat = array(start.typecode, chain.from_iterable(ch for ch in lists if ch))
        return cls(start, flat)

    def __len__(self) -> int:
        return len(self.start) - 1

    @overload
    def __getitem__(self, i: int) -> Sequence[int]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Sequence[int]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        start = self.start
        kids = self.flat[start[i] : start[i + 1]]
        if self.extra:
            more = self.extra.get(i)
            if more:
                return [*kids, *more]
        return kids

    def __iter__(self) -> Iterator[Sequence[int]]:
        for i in range(len(self)):
            yield self[i]

    def add(self, parent: int, child: int) -> None:
        """``child`` (a task stored after ``parent``) waits on ``parent`` too."""
        more = self.extra.get(parent)
        if more is None:
            self.extra[parent] = [child]
        else:
            more.append(child)

    def extend(self, other: Children, offset: int) -> None:
        """Append ``other``'s tasks, whose positions start at ``offset`` here."""
        base = len(self.flat)
        if _typecode(base + len(other.flat)) != self.start.typecode:
            self.start = array("q", self.start)
            if isinstance(self.flat, array):
                self.flat = array("q", self.flat)
        self.start.extend(map(base.__add__, other.start[1:]))
        self.flat.extend(map(offset.__add__, other.flat))
        for k, more in other.extra.items():
            self.extra[offset + k] = [offset + c for c in more]


def _typecode(entries: int) -> str:
    """4-byte positions while they fit, else 8-byte ones."""
    return "i" if entries < 2**31 else "q"


class Layout:
    """Result of :func:`layout` for a batch of new tasks (indices are batch positions).

    ``waiting[i]`` is the number of ``i``'s parents inside the batch counted with repeats, as
    ``children`` lists them (a parent named twice lists ``i`` twice among its children):
    completing each listed entry once counts ``waiting`` down to zero. ``local_parents`` (each
    task's distinct parents inside the batch, in declared order) is computed on first use.

    A ``Frontier`` given this layout as its first batch adopts its lists instead of copying
    them (``taken`` is then set, and another frontier computes its own): afterwards ``depth``
    still holds, the other lists are the frontier's state.
    """

    __slots__ = ("_local", "_parents", "children", "depth", "external_parents", "index",
                 "taken", "waiting")  # fmt: skip

    def __init__(
        self,
        depth: list[int],
        children: Children,
        waiting: list[int],
        external_parents: dict[int, list[str]],
        index: dict[str, int],
        parents: Sequence[Sequence[str]],
        local_parents: list[list[int]] | None = None,
    ) -> None:
        self.depth = depth
        self.children = children
        self.waiting = waiting
        self.external_parents = external_parents
        self.index = index  # id -> batch position
        self.taken = False
        self._parents = parents
        self._local = local_parents

    @property
    def parents(self) -> Sequence[Sequence[str]]:
        """Each task's parents as given to :func:`layout` (with ``share_ids``: as tuples of the
        batch's own id strings)."""
        return self._parents

    @property
    def local_parents(self) -> list[list[int]]:
        """Each task's distinct parents inside the batch (batch positions, declared order)."""
        if self._local is None:
            n = len(self.depth)
            index = self.index
            out: list[list[int]] = []
            parents = self._parents
            if isinstance(parents, ParentIds):  # positions already: no id looked up again
                flat, at = parents.flat, 0
                for k in parents.counts:
                    out.append(list(dict.fromkeys(flat[at : at + k])) if k else [])
                    at += k
            else:
                for ps in parents:
                    lp = [j for p in dict.fromkeys(ps) if (j := index.get(p, n)) < n] if ps else []
                    out.append(lp)
            self._local = out
        return self._local


def _refuse_control_characters(ids: Iterable[str]) -> None:
    """Raise ``GraphError`` for the first id holding a control character (a newline, an
    escape): ``why``, ``status`` and logs print ids as they are, so such an id could forge
    lines of their output. Other characters ``isprintable`` refuses (a zero-width joiner in
    an emoji) are allowed."""
    import unicodedata  # (only a graph with such an id pays for it)

    for tid in ids:
        if not tid.isprintable() and any(unicodedata.category(c) == "Cc" for c in tid):
            raise GraphError(f"task id {tid!r}: control characters are not allowed in ids")


class ParentTuples(Sequence[tuple[str, ...]]):
    """Each task's parents as a tuple of ids, made when it is read (``parents_of``), for
    graphs whose parents are not kept as tuples: a subclass says how many tasks there are and
    makes task ``i``'s parents."""

    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def parents_of(self, i: int) -> tuple[str, ...]:
        """Task ``i``'s parents (``0 <= i < len(self)``)."""
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> tuple[str, ...]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[tuple[str, ...]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        n = len(self)
        if isinstance(i, slice):
            return [self.parents_of(k) for k in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("task index out of range")
        return self.parents_of(i)

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return map(self.parents_of, range(len(self)))


class ParentIds(ParentTuples):
    """Each task's parents, kept as positions in the batch: ``parents[i]`` is the tuple of the
    ids at ``flat[start[i]:start[i + 1]]`` (``flat``: every edge's parent, task by task),
    made when it is read, of the batch's own id strings. A parser makes a new string for every
    mention of an id; ``flat`` costs 8 bytes per edge (it holds the index's own int objects)
    where the parser's strings cost ~190 bytes per task at three parents, and a tuple per task
    of the ids' own ~80. ``start`` is summed from the counts at the first read (a run of
    no-ops reads none)."""

    __slots__ = ("_start", "counts", "flat", "ids")

    def __init__(self, ids: Sequence[str], counts: list[int], flat: list[int]) -> None:
        self.ids = ids
        self.counts = counts  # each task's number of parents (repeats counted)
        self.flat = flat
        self._start: list[int] | None = None

    def __len__(self) -> int:
        return len(self.counts)

    def parents_of(self, i: int) -> tuple[str, ...]:
        start = self._start
        if start is None:
            start = self._start = list(accumulate(self.counts, initial=0))
        return tuple(map(self.ids.__getitem__, self.flat[start[i] : start[i + 1]]))


class _NotTopological(Exception):
    """The batch does not list every parent before its children: take the general path."""


def layout(
    ids: Sequence[str],
    parents: Sequence[Sequence[str]],
    *,
    external_depth: Callable[[str], int | None] | None = None,
    base_depth: int = 0,
    share_ids: bool = False,
) -> Layout:
    """Validate a batch of tasks and compute each one's depth. O(V + E).

    ``depth`` is ``base_depth`` for a task without parents, else 1 + the deepest parent (a parent
    outside the batch has ``external_depth(id)``, ``None`` meaning unknown). Raises ``GraphError``
    on a duplicate or unknown id and ``CycleError`` naming the tasks of one cycle.

    A batch that lists every parent before its children (as graph files and ``Graph`` objects
    do) takes one pass that checks the order, counts parents and computes depths together;
    any other batch takes Kahn's algorithm, which also names a cycle.

    ``share_ids``: ``Layout.parents`` names each parent in the batch by the batch's own id
    string (a tuple per task), not by the string it was given as: a parser makes a new string
    for every mention of an id, and these copies cost ~190 B per task at three parents. In
    the one-pass case they are kept as the positions the validation finds anyway
    (``ParentIds``): no id is hashed twice, and no tuple is made until a task's is read.
    """
    if not "".join(ids).isprintable():  # ~4 ms per 100k ids; the rare miss looks closer
        _refuse_control_characters(ids)
    if external_depth is not None:
        for tid in ids:
            if external_depth(tid) is not None:
                raise GraphError(f"duplicate task id {tid!r}: a task of that id already exists")
    try:
        return _topological(ids, parents, base_depth, share_ids)
    except (KeyError, _NotTopological):
        pass  # a parent unknown, outside the batch or listed after its child; a repeated id
    rng = list(range(len(ids)))  # one int object per position, shared by the lists below
    local = dict(zip(ids, rng, strict=True))
    if len(local) != len(ids):
        seen: set[str] = set()
        for tid in ids:
            if tid in seen:
                raise GraphError(f"duplicate task id {tid!r}")
            seen.add(tid)
    lay = _general(ids, parents, rng, local, external_depth, base_depth)
    if share_ids:  # (parents outside the batch keep their given strings)
        own = dict(zip(ids, ids, strict=True))
        lay._parents = [tuple([own.get(p, p) for p in ps]) if ps else () for ps in parents]
    return lay


def _topological(
    ids: Sequence[str], parents: Sequence[Sequence[str]], base: int, share_ids: bool = False
) -> Layout:
    """One pass when every parent comes before its child. Ids enter the index as they are
    passed, so a parent listed later (or a cycle, or an unknown id) is a ``KeyError``.

    The edges are noted as two lists (parent, child: the index's own int objects) while the
    pass runs and sorted by parent afterwards (in place, into ``Children``): no list or int
    object is made per task, so the peak stays near what the layout keeps. Both lists are
    kept: the children, sorted, as ``Children.flat``; with ``share_ids``, the parents as
    ``ParentIds``."""
    n = len(ids)
    depth = [base] * n
    out_degree = [0] * n
    src: list[int] = []  # the edges, as the index's own int objects: no new ones
    dst: list[int] = []
    src_append = src.append
    dst_append = dst.append
    local: dict[str, int] = {}
    # ``succ[d]`` is d + 1, one int object per level (past the small-int cache a sum would
    # make one per edge, and the depths one per task); ``top`` is the deepest level so far.
    succ = {base: base + 1}
    top = base
    for i, tid, ps in zip(range(n), ids, parents, strict=True):
        if ps:
            d = base
            for p in ps:
                j = local[p]
                dj = depth[j]
                if dj >= d:
                    d = succ[dj]
                out_degree[j] += 1
                src_append(j)
                dst_append(i)
            if d > top:
                top = d
                succ[d] = d + 1
            depth[i] = d
        local[tid] = i
    del succ
    if len(local) != n:
        raise _NotTopological  # a repeated id: the general path names it
    waiting = list(map(len, parents))
    if share_ids:  # each task's parents as positions in the batch (declared order)
        parents = ParentIds(ids, waiting[:], src)  # (a frontier counts ``waiting`` down)
    code = _typecode(len(src))
    start = array(code, accumulate(out_degree, initial=0))  # each task's first child
    del out_degree
    # The children sorted by parent, in place, by a stable sort (each parent's children stay
    # in order): each edge's key is its parent, ``next(parents_in_turn, edge)``. The C sort
    # took ~40% fewer instructions than the counting sort in Python it replaced.
    dst.sort(key=partial(next, iter(src)))
    return Layout(depth, Children(start, dst), waiting, {}, local, parents)


def _general(
    ids: Sequence[str],
    parents: Sequence[Sequence[str]],
    rng: list[int],
    local: dict[str, int],
    external_depth: Callable[[str], int | None] | None,
    base_depth: int,
) -> Layout:
    """Kahn's algorithm: any order, parents outside the batch, and cycles named."""
    n = len(ids)
    depth = [base_depth] * n
    children: list[list[int] | None] = [None] * n
    local_parents: list[list[int]] = [[]] * n  # shared empty list for roots, replaced below
    external: dict[int, list[str]] = {}
    for i, ps in zip(rng, parents, strict=True):
        if not ps:
            continue
        try:
            lp = [local[p] for p in ps]
        except KeyError:
            lp = _split_parents(i, ids, ps, local, external, external_depth, depth)
        if len(lp) > 1 and len(set(lp)) != len(lp):
            lp = list(dict.fromkeys(lp))
        local_parents[i] = lp
        for j in lp:
            if j == i:
                raise CycleError([ids[i]])
            ch = children[j]
            if ch is None:
                children[j] = [i]
            else:
                ch.append(i)
    indegree = [len(lp) for lp in local_parents]
    stack = [i for i in rng if indegree[i] == 0]
    done = 0
    while stack:
        i = stack.pop()
        done += 1
        ch = children[i]
        if ch is None:
            continue
        nxt = depth[i] + 1
        for c in ch:
            if depth[c] < nxt:
                depth[c] = nxt
            indegree[c] -= 1
            if indegree[c] == 0:
                stack.append(c)
    if done != n:
        raise CycleError([ids[i] for i in _one_cycle(indegree, local_parents)])
    waiting = [len(lp) for lp in local_parents]
    flat = Children.from_lists(children)
    return Layout(depth, flat, waiting, external, local, parents, local_parents)


def _split_parents(
    i: int,
    ids: Sequence[str],
    ps: Sequence[str],
    local: dict[str, int],
    external: dict[int, list[str]],
    external_depth: Callable[[str], int | None] | None,
    depth: list[int],
) -> list[int]:
    """Slow path of :func:`layout` for a task with parents outside the batch."""
    lp: list[int] = []
    for p in dict.fromkeys(ps):
        j = local.get(p)
        if j is not None:
            lp.append(j)
            continue
        d = external_depth(p) if external_depth is not None else None
        if d is None:
            raise GraphError(f"task {ids[i]!r} depends on unknown task {p!r}")
        external.setdefault(i, []).append(p)
        if d + 1 > depth[i]:
            depth[i] = d + 1
    return lp


def _one_cycle(indegree: list[int], local_parents: list[list[int]]) -> list[int]:
    """Every task left with indegree > 0 has a parent also left over: walk up until a repeat."""
    start = next(i for i, d in enumerate(indegree) if d > 0)
    order: dict[int, int] = {}
    i = start
    while i not in order:
        order[i] = len(order)
        i = next(p for p in local_parents[i] if indegree[p] > 0)
    path = list(order)
    cycle = path[order[i] :]
    cycle.reverse()  # parent -> child direction
    return cycle


@dataclass(frozen=True, slots=True)
class GraphFacts:
    tasks: int
    edges: int
    roots: int
    leaves: int
    depth: int  # number of levels (max depth + 1)
    width: int  # most tasks on one level
    critical_path: list[str]  # by task count
    critical_path_runtime: list[str] | None  # by runtime_s, when every task gives one
    critical_runtime_s: float | None
    total_runtime_s: float | None


def facts(
    ids: Sequence[str], parents: Sequence[Sequence[str]], runtimes: Sequence[float | None]
) -> GraphFacts:
    """Counts, depth, width and critical paths of a validated graph."""
    lay = layout(ids, parents)
    n = len(ids)
    has_child = [False] * n
    for ps in lay.local_parents:
        for p in ps:
            has_child[p] = True
    levels: dict[int, int] = {}
    for d in lay.depth:
        levels[d] = levels.get(d, 0) + 1
    order = sorted(range(n), key=lay.depth.__getitem__)  # a topological order
    count_path = _longest_path(order, lay.local_parents, [1.0] * n)
    have_runtimes = n > 0 and all(r is not None for r in runtimes)
    rt_path: list[int] | None = None
    crit_rt = total_rt = None
    if have_runtimes:
        weights = [float(r) for r in runtimes]  # type: ignore[arg-type]
        rt_path = _longest_path(order, lay.local_parents, weights)
        crit_rt = sum(weights[i] for i in rt_path)
        total_rt = sum(weights)
    return GraphFacts(
        tasks=n,
        edges=sum(len(p) for p in lay.local_parents),
        roots=sum(1 for p in lay.local_parents if not p),
        leaves=sum(1 for h in has_child if not h),
        depth=(max(lay.depth) + 1) if n else 0,
        width=max(levels.values()) if levels else 0,
        critical_path=[ids[i] for i in count_path],
        critical_path_runtime=[ids[i] for i in rt_path] if rt_path is not None else None,
        critical_runtime_s=crit_rt,
        total_runtime_s=total_rt,
    )


def _longest_path(order: list[int], parents: list[list[int]], weight: list[float]) -> list[int]:
    if not order:
        return []
    best = [0.0] * len(order)
    via = [-1] * len(order)
    for i in order:
        b, v = 0.0, -1
        for p in parents[i]:
            if v == -1 or best[p] > b:  # any parent beats none: the path reaches a root
                b, v = best[p], p  # even through zero-runtime tasks
        best[i] = b + weight[i]
        via[i] = v
    end = max(range(len(order)), key=best.__getitem__)
    path = []
    while end != -1:
        path.append(end)
        end = via[end]
    path.reverse()
    return path
