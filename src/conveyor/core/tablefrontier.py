"""Readiness of a table's cells, row group by row group. Pure.

The column DAG (``TablePlan``) is expanded lazily: only the row groups that are open have state,
and that state is a few bytes per (generator, row). A *cell* task is ``(group, node, row)`` for
a per-row generator, a *batch* task ``(group, node)`` for a ``full_column`` one.

- A cell is ready when the same row's upstream cells are done and its upstream batches are.
- A batch is ready when every kept row of its upstream cell generators is done and its upstream
  batches are (a counter of the (upstream, kept row) pairs still open: one cell's completion
  never counts a whole column complete), and so is every kept row of the cell generators it
  settles on (``TablePlan.settle``: the cells not downstream of it, whose drops must land
  before it sees the group's rows).
- A completion touches only its downstream: a cell its row's downstream counters, a batch every
  kept row of its downstream cell generators (that is its fan-out). Nothing scans rows.
- Dropping a row takes its unfinished cells out of every count at once; its cells still on the
  heap are skipped when popped, and a late result for it is refused (``False``).
- A row group is complete when every kept row has every cell and every batch is done.

Tasks are ints (the heap key itself), ordered older row group first, then deeper generator,
then row: the depth-first rule applied to row groups, so the first row group finishes first
and memory stays bounded by the row groups in flight.

Size: the counters above are one state that every completion, drop and pop updates together;
split, each hot call would cross modules and the invariants would have no single home.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from conveyor.core.tableplan import TablePlan

_ROW_BITS = 32
_NODE_BITS = 12
MAX_NODES = 1 << _NODE_BITS
MAX_GROUP_ROWS = 1 << _ROW_BITS
_heappush = heapq.heappush
_heappop = heapq.heappop


@dataclass(frozen=True, slots=True)
class GroupSpan:
    """Which global rows a row group covers."""

    group: int
    start: int
    rows: int


def group_span(group: int, records: int, size: int) -> GroupSpan:
    """Row group ``group`` of a build of ``records`` rows in groups of ``size``: the groups
    that cover ``records`` first (the last of them short), then, when rows were dropped, more
    full groups after them. A function of its arguments only, so a build and its resumption lay
    rows out alike whatever was dropped when."""
    planned = -(-records // size)
    if group < planned:
        start = group * size
        return GroupSpan(group, start, min(size, records - start))
    return GroupSpan(group, records + (group - planned) * size, size)


@dataclass(slots=True)
class GroupState:
    span: GroupSpan
    alive: bytearray  # 1: the row is kept (so far)
    kept: int
    #: per node: for cell nodes, unfinished upstreams per row (None for batch nodes)
    waiting: list[bytearray | None]
    #: per node: for cell nodes, 1 per row once done (None for batch nodes)
    done: list[bytearray | None]
    #: per node: for batch nodes, open (upstream, kept row) pairs + unfinished upstream batches
    pending: list[int]
    #: per node: batch nodes 0 waiting, 1 handed out (on the heap or running), 2 done
    batch: bytearray
    remaining: int  # unfinished (cell node, kept row) pairs + unfinished batches
    dropped: list[tuple[int, int]] = field(default_factory=list)  # (row, node that dropped it)


class TableFrontier:
    """Open row groups' readiness and the ready heaps, one heap per ``bucket`` (the builder
    gives each generator its own: a capped endpoint's cells never block another's, and a run of
    one generator's cells comes off one heap, ``pop_run``)."""

    def __init__(self, plan: TablePlan, buckets: Sequence[int] | None = None) -> None:
        n = len(plan.nodes)
        if n > MAX_NODES:
            raise ValueError(f"a table has at most {MAX_NODES} generators")
        self.plan = plan
        self.groups: dict[int, GroupState] = {}
        self.cell = [plan.is_cell(i) for i in range(n)]
        self.cell_nodes = [i for i in range(n) if self.cell[i]]
        self.batch_nodes = [i for i in range(n) if not self.cell[i]]
        self.bucket = list(buckets) if buckets is not None else [0] * n
        self.heaps: dict[int, list[int]] = {b: [] for b in set(self.bucket)}
        self._levels = max(plan.depth, default=0) + 1
        self._max_depth = self._levels - 1
        # per node: how many upstream cell nodes / upstream batch nodes it waits on
        self._up_cells = [sum(1 for u in plan.up[i] if self.cell[u]) for i in range(n)]
        self._up_batches = [len(plan.up[i]) - self._up_cells[i] for i in range(n)]
        # A full_column generator also waits for the cells it settles on (``plan.settle``):
        # they count like its upstream cells, and each such cell tells it when it is done.
        waits: list[list[int]] = [list(plan.down_batch[i]) for i in range(n)]
        for b, cells in enumerate(plan.settle):
            self._up_cells[b] += len(cells)
            for j in cells:
                waits[j].append(b)
        #: per cell node: the batches its completion (or a row's drop) counts down
        self._down_wait = [tuple(w) for w in waits]
        #: row groups completed since the caller last took them (``take_completed``)
        self.completed: list[GroupState] = []

    # -- keys ---------------------------------------------------------------------------------
    def key(self, group: int, node: int, row: int) -> int:
        level = group * self._levels + (self._max_depth - self.plan.depth[node])
        return (((level << _ROW_BITS) | row) << _NODE_BITS) | node

    def decode(self, key: int) -> tuple[int, int, int]:
        """``(group, node, row)`` of a task key (row 0 for a batch)."""
        node = key & (MAX_NODES - 1)
        rest = key >> _NODE_BITS
        row = rest & (MAX_GROUP_ROWS - 1)
        return (rest >> _ROW_BITS) // self._levels, node, row

    # -- groups -------------------------------------------------------------------------------
    def open(self, span: GroupSpan, *, done_nodes: Container[int] = (),
             alive: bytearray | None = None,
             done_rows: Mapping[int, bytearray] | None = None) -> None:  # fmt: skip
        """Open a row group. ``alive`` marks rows already left out (a group rebuilt by
        ``--update``); ``done_nodes`` are generators whose values the caller already has: they
        count as done at once, and what they feed becomes ready. ``done_rows``: per cell
        generator, a mask (1 per row) of the rows whose value the caller already has (the
        other rows of it are computed): done at once like ``done_nodes``, row by row. A
        generator's preset rows must be preset for its upstream generators too."""
        if span.group in self.groups:
            raise ValueError(f"row group {span.group} is open already")
        if span.rows >= MAX_GROUP_ROWS:
            raise ValueError(f"a row group has fewer than {MAX_GROUP_ROWS} rows")
        rows = span.rows
        done_rows = done_rows or {}
        for i, mask in done_rows.items():
            if not self.cell[i]:
                raise ValueError(f"done_rows: generator {i} is a batch (use done_nodes)")
            if len(mask) != rows:
                raise ValueError(f"done_rows: generator {i}'s mask has {len(mask)} rows,"
                                 f" not {rows}")  # fmt: skip
        live = bytearray(b"\x01" * rows) if alive is None else bytearray(alive)
        kept = sum(live)
        n = len(self.cell)
        waiting: list[bytearray | None] = [None] * n
        done: list[bytearray | None] = [None] * n
        pending = [0] * n
        for i in self.cell_nodes:
            waiting[i] = bytearray([self._up_cells[i] + self._up_batches[i]]) * rows
            done[i] = bytearray(rows)
        for i in self.batch_nodes:
            pending[i] = self._up_cells[i] * kept + self._up_batches[i]
        g = GroupState(span, live, kept, waiting, done, pending, bytearray(n),
                       len(self.cell_nodes) * kept + len(self.batch_nodes))  # fmt: skip
        self.groups[span.group] = g
        # Rows left out before the group opened are simply not counted (``kept`` above).
        for i in range(n):
            if i in done_nodes:
                self._preset(g, i)
            elif i in done_rows:
                self._preset_rows(g, i, done_rows[i])
                if self._up_cells[i] + self._up_batches[i] == 0:
                    self._push_rows(g, i)  # the rows not preset (pop skips the done ones)
            elif self.cell[i]:
                if self._up_cells[i] + self._up_batches[i] == 0:
                    self._push_rows(g, i)
            elif g.pending[i] == 0:  # a root, or its upstream cells have no kept row
                self._push_batch(g, i)
        self._check(g)

    def _preset(self, g: GroupState, i: int) -> None:
        if self.cell[i]:
            d = g.done[i]
            assert d is not None
            for r in range(g.span.rows):
                if g.alive[r] and not d[r]:
                    self._cell_finished(g, i, r)
        elif g.batch[i] != 2:
            g.batch[i] = 1
            self._batch_finished(g, i)

    def _preset_rows(self, g: GroupState, i: int, mask: bytearray) -> None:
        d = g.done[i]
        assert d is not None
        for r in range(g.span.rows):
            if mask[r] and g.alive[r] and not d[r]:
                self._cell_finished(g, i, r)

    def _push_rows(self, g: GroupState, i: int) -> None:
        heap = self.heaps[self.bucket[i]]
        base = self.key(g.span.group, i, 0)
        alive = g.alive
        d = g.done[i]
        assert d is not None
        step = 1 << _NODE_BITS
        for r in range(g.span.rows):
            if alive[r] and not d[r]:
                _heappush(heap, base + r * step)

    def _push_batch(self, g: GroupState, i: int) -> None:
        if g.batch[i]:
            return
        g.batch[i] = 1
        if g.kept == 0:  # nothing to compute it over: done without a call
            self._batch_finished(g, i)
            return
        _heappush(self.heaps[self.bucket[i]], self.key(g.span.group, i, 0))

    # -- the heap -----------------------------------------------------------------------------
    def pop(self, blocked: Container[int] = ()) -> int | None:
        """The best ready task of the buckets not ``blocked``; ``None`` when there is none."""
        got = self.pop_task(blocked)
        return None if got is None else got[0]

    def pop_task(self, blocked: Container[int] = ()) -> tuple[int, int, int, int] | None:
        """``(key, group, node, row)`` of the best ready task of the buckets not ``blocked``.
        Entries that no longer matter are discarded as they come to the top."""
        heaps = self.heaps
        groups = self.groups
        cell = self.cell
        levels = self._levels
        while True:
            best: int | None = None
            best_heap: list[int] | None = None
            for b, heap in heaps.items():
                if heap and b not in blocked and (best is None or heap[0] < best):
                    best, best_heap = heap[0], heap
            if best_heap is None:
                return None
            key = _heappop(best_heap)
            node = key & (MAX_NODES - 1)
            rest = key >> _NODE_BITS
            row = rest & (MAX_GROUP_ROWS - 1)
            group = (rest >> _ROW_BITS) // levels
            g = groups.get(group)
            if g is None:
                continue
            if cell[node]:
                d = g.done[node]
                if g.alive[row] and d is not None and not d[row]:
                    return key, group, node, row
            elif g.batch[node] == 1:
                return key, group, node, row

    def pop_run(self, group: int, node: int, limit: int) -> list[tuple[int, int]]:
        """More ready cells of ``node`` in ``group``, next in key order, as ``(key, row)``:
        at most ``limit``, and only while they head their bucket's heap (the caller just
        popped the best task of that bucket, so these come right after it in its order)."""
        heap = self.heaps[self.bucket[node]]
        g = self.groups.get(group)
        out: list[tuple[int, int]] = []
        if g is None or not self.cell[node]:
            return out
        d = g.done[node]
        alive = g.alive
        assert d is not None
        base = self.key(group, node, 0)
        top = base + (MAX_GROUP_ROWS << _NODE_BITS)  # past the group's last row of this depth
        mask = (1 << _NODE_BITS) - 1
        while heap and len(out) < limit:
            key = heap[0]
            if key >= top or key < base or key & mask != node:
                break
            _heappop(heap)
            row = (key >> _NODE_BITS) & (MAX_GROUP_ROWS - 1)
            if alive[row] and not d[row]:
                out.append((key, row))
        return out

    def push(self, key: int) -> None:
        """Put a task back (a retry whose wait is over, a task given back unrun)."""
        if self.live(key):
            _heappush(self.heaps[self.bucket[key & (MAX_NODES - 1)]], key)

    def ready(self) -> int:
        """Entries on the heaps (stale ones included until they are popped)."""
        return sum(len(h) for h in self.heaps.values())

    def live(self, key: int) -> bool:
        """Whether a task still matters: its group is open, its row kept, it is not done."""
        group, node, row = self.decode(key)
        g = self.groups.get(group)
        if g is None:
            return False
        if self.cell[node]:
            d = g.done[node]
            return bool(g.alive[row]) and d is not None and not d[row]
        return g.batch[node] == 1

    def rows_of(self, group: int) -> list[int]:
        """The kept rows of an open group (positions in the group), for a batch task."""
        alive = self.groups[group].alive
        return [r for r in range(len(alive)) if alive[r]]

    # -- events -------------------------------------------------------------------------------
    def cell_done(self, key: int) -> bool:
        """A cell finished. ``False`` (and nothing changes) when it no longer matters: its group
        is finished or unknown, its row was dropped, or it was done already."""
        node = key & (MAX_NODES - 1)
        rest = key >> _NODE_BITS
        return self.cell_done_at((rest >> _ROW_BITS) // self._levels, node,
                                 rest & (MAX_GROUP_ROWS - 1))  # fmt: skip

    def cell_done_at(self, group: int, node: int, row: int) -> bool:
        """``cell_done`` of the cell ``(group, node, row)``."""
        g = self.groups.get(group)
        if g is None or not self.cell[node] or not g.alive[row]:
            return False
        d = g.done[node]
        if d is None or d[row]:
            return False
        self._cell_finished(g, node, row)
        if g.remaining == 0:
            self._check(g)
        return True

    def batch_done(self, key: int, drop_rows: Iterable[int] = ()) -> bool:
        """A batch finished; ``drop_rows`` are rows (positions) it left out. ``False`` when it
        no longer matters (its group is finished or unknown, or it was done already)."""
        group, node, _ = self.decode(key)
        g = self.groups.get(group)
        if g is None or self.cell[node] or g.batch[node] != 1:
            return False
        for r in drop_rows:
            self._drop(g, r, node)
        if g.batch[node] == 1:  # not when it left out every row: then it finished just now
            self._batch_finished(g, node)
        self._check(g)
        return True

    def drop(self, group: int, row: int, node: int) -> bool:
        """Leave row ``row`` of ``group`` out (``node`` dropped it). ``False`` if it already
        was, or the group is not open."""
        g = self.groups.get(group)
        if g is None or not g.alive[row]:
            return False
        self._drop(g, row, node)
        self._check(g)
        return True

    def drop_group(self, group: int, node: int) -> int:
        """Leave every kept row of ``group`` out (a batch that failed). Returns how many."""
        g = self.groups.get(group)
        if g is None:
            return 0
        rows = [r for r in range(g.span.rows) if g.alive[r]]
        for r in rows:
            self._drop(g, r, node)
        if not self.cell[node] and g.batch[node] == 1:
            self._batch_finished(g, node)
        self._check(g)
        return len(rows)

    def take_completed(self) -> list[GroupState]:
        """The row groups completed since the last call (no longer open: their final state,
        which rows are kept and who dropped the others)."""
        done, self.completed = self.completed, []
        return done

    # -- the counting -------------------------------------------------------------------------
    def _cell_finished(self, g: GroupState, i: int, r: int) -> None:
        d = g.done[i]
        assert d is not None
        d[r] = 1
        g.remaining -= 1
        plan = self.plan
        for c in plan.down_cell[i]:
            w = g.waiting[c]
            assert w is not None
            left = w[r] - 1
            w[r] = left
            if left == 0:
                _heappush(self.heaps[self.bucket[c]], self.key(g.span.group, c, r))
        for b in self._down_wait[i]:
            g.pending[b] -= 1
            if g.pending[b] == 0:
                self._push_batch(g, b)

    def _batch_finished(self, g: GroupState, i: int) -> None:
        g.batch[i] = 2
        g.remaining -= 1
        plan = self.plan
        alive = g.alive
        for c in plan.down_cell[i]:
            w = g.waiting[c]
            assert w is not None
            heap = self.heaps[self.bucket[c]]
            for r in range(g.span.rows):
                if alive[r]:
                    w[r] -= 1
                    if w[r] == 0:
                        _heappush(heap, self.key(g.span.group, c, r))
        for b in plan.down_batch[i]:
            g.pending[b] -= 1
            if g.pending[b] == 0:
                self._push_batch(g, b)

    def _drop(self, g: GroupState, r: int, by: int) -> None:
        if not g.alive[r]:
            return
        g.alive[r] = 0
        g.kept -= 1
        g.dropped.append((r, by))
        for i in self.cell_nodes:
            d = g.done[i]
            assert d is not None
            if d[r]:
                continue
            g.remaining -= 1
            for b in self._down_wait[i]:
                g.pending[b] -= 1
                if g.pending[b] == 0:
                    self._push_batch(g, b)
        if g.kept == 0:  # batches waiting on nothing now finish without a call
            for b in self.batch_nodes:
                if g.batch[b] == 1 and g.pending[b] == 0:
                    self._batch_finished(g, b)

    def _check(self, g: GroupState) -> None:
        if g.remaining == 0 and g.span.group in self.groups:
            del self.groups[g.span.group]
            self.completed.append(g)
