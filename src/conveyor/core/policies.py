"""Alternative ordering policies, as pure key functions beside ``core/ordering.py``. Pure.

The engine orders ready work by the depth-first key (``ordering.priority_key``); that is its
one policy. ``conveyor simulate`` also replays a graph under the orders below, to show what the
depth-first rule buys against them. Each one is a key in the same form, ``(k0, k1, i)`` with the
task's index ``i`` last (unique, so the key is a total order and the heap's tie-breaker), so it
goes through the same admission queue and fair share as the engine's key does.

Bands first, under every policy: ``k0`` is the band's offset (``ordering.band_offset``), the
first field of the engine's key at depth 0, so ``ordering.band_from(k0)`` is the task's band
(admission compares bands across groups by it) and a higher band sorts before any task of a
lower one. The policy's own order is ``k1``; ties fall to ``i``, the submission order (in the
simulator a later graph's tasks follow an earlier one's, so that is also the root order).

- ``depth_first``: the engine's key ``(band offset - depth, root_seq, i)``: deeper work first,
  then the older root, then submission order.
- ``fifo``: the order in which tasks became ready (ties: submission order).
- ``breadth_first``: shallower work first: a level at a time.
- ``critical_path``: the longest remaining path first (the task's own expected duration plus its
  deepest chain of descendants: HEFT's upward rank).
- ``shortest_first``: the shortest expected duration first.
"""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.core.ordering import DEFAULT_BAND, Key, band_offset, rank_of

#: The policies ``conveyor simulate`` knows, the engine's first.
POLICIES = ("depth_first", "fifo", "breadth_first", "critical_path", "shortest_first")

#: Durations and ranks enter integer keys in microseconds.
_US = 1_000_000


def depth_first_key(depth: int, root_seq: int, i: int, band: int = DEFAULT_BAND) -> Key:
    """The engine's key (``ordering.priority_key`` as a plain tuple)."""
    return (rank_of(depth, band), root_seq, i)


def fifo_key(ready_seq: int, i: int, band: int = DEFAULT_BAND) -> Key:
    """``ready_seq`` counts tasks as they become ready: the first ready runs first."""
    return (band_offset(band), ready_seq, i)


def breadth_first_key(depth: int, i: int, band: int = DEFAULT_BAND) -> Key:
    return (band_offset(band), depth, i)


def critical_path_key(rank_s: float, i: int, band: int = DEFAULT_BAND) -> Key:
    """``rank_s`` from ``upward_ranks``: the longest chain of work from this task to a sink."""
    return (band_offset(band), -round(rank_s * _US), i)


def shortest_first_key(duration_s: float, i: int, band: int = DEFAULT_BAND) -> Key:
    return (band_offset(band), round(duration_s * _US), i)


def upward_ranks(
    children: Sequence[Sequence[int] | None], depth: Sequence[int], duration: Sequence[float]
) -> list[float]:
    """Each task's duration plus the largest rank among its children. O(V + E).

    Tasks are visited deepest first (a child is always deeper than its parent), by a counting
    sort on ``depth``: no recursion, no second copy of the graph.
    """
    n = len(depth)
    if n == 0:
        return []
    levels: list[list[int]] = [[] for _ in range(max(depth) - min(depth) + 1)]
    low = min(depth)
    for i, d in enumerate(depth):
        levels[d - low].append(i)
    rank = [0.0] * n
    for level in reversed(levels):
        for i in level:
            best = 0.0
            for k in children[i] or ():
                r = rank[k]
                if r > best:
                    best = r
            rank[i] = duration[i] + best
    return rank
