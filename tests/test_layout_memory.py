"""The core's graph layout stays compact: bytes per task held (and at peak) while laying out a
200,000-task layered graph, measured with tracemalloc (allocation counts, not timing)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from conveyor.core.dag import Children, layout
from conveyor.core.frontier import Frontier
from conveyor.sim.inputs import layered

N = 200_000
#: What the layout keeps per task (the id index, depths, parent counts, children): ~100 B
#: with the children flat; a list of children per task made it ~190 B, and an int object per
#: depth past 256 (a deep graph) another 32 B.
MAX_KEPT_B = 115
#: The layout's peak, its temporary edge lists included (a list per task peaked near 200 B).
MAX_PEAK_B = 150


@pytest.mark.parametrize(("layers", "width"), [(25, 4), (2_000, 100)], ids=["shallow", "deep"])
def test_layout_bytes_per_task_stay_bounded(layers: int, width: int) -> None:
    batch = layered(N, layers=layers, width=width)  # ids made here; parents made when read
    n = len(batch.ids)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        lay = layout(batch.ids, batch.parents)
        gc.collect()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(lay.depth) == n and lay.depth[-1] == layers - 1
    kept_b, peak_b = (kept - before) / n, (peak - before) / n
    print(f"layout: {kept_b:.0f} B per task kept, {peak_b:.0f} at peak")
    assert kept_b <= MAX_KEPT_B, f"the layout keeps {kept_b:.0f} B per task"
    assert peak_b <= MAX_PEAK_B, f"laying out peaks at {peak_b:.0f} B per task"


def test_children_flat_match_the_parents() -> None:
    ids = ["a", "b", "c", "d", "e"]
    parents = [(), ("a",), ("a", "b"), ("c", "a", "c"), ()]
    lay = layout(ids, parents)
    assert [list(ch) for ch in lay.children] == [[1, 2, 3], [2], [3, 3], [], []]
    assert lay.waiting == [0, 1, 2, 3, 0]
    # Kahn's path (here every parent comes after its child) finds the same edges, once each.
    kahn = layout(ids[::-1], parents[::-1])
    assert [list(ch) for ch in kahn.children] == [[], [], [1], [2], [1, 2, 3]]


def test_children_extend_and_add() -> None:
    ch = Children.from_lists([[1], None, []])
    more = Children.from_lists([[1, 1], None])
    ch.extend(more, 3)
    ch.add(1, 4)
    ch.add(1, 3)
    assert [list(k) for k in ch] == [[1], [4, 3], [], [4, 4], []]
    assert len(ch) == 5 and not ch[2]


def test_frontier_runs_a_second_batch_on_flat_children() -> None:
    f = Frontier()
    f.add(["a", "b"], [(), ("a",)])
    f.add(["c", "d"], [("b", "a"), ("c",)])
    order = []
    while (i := f.pop()) is not None:
        order.append(f.ids[i])
        f.complete(i)
    assert order == ["a", "b", "c", "d"]
