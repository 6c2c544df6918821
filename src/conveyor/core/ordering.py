"""Depth-first progress ordering (Iris): deeper work first, then the older root tree, then FIFO.

The key of a task is ``(-depth, root_seq, submit_seq)``. ``submit_seq`` is unique per task (a
global submission counter whose order inside one graph is the graph-file order), so the key is
a total order and doubles as the heap tie-breaker: heap entries are keys, and in the memory
store the task index *is* its ``submit_seq``.

This module is the one home of the key. The SQL stores keep it as three indexed columns
(``KEY_COLUMNS``; their queries say ``ORDER BY {KEY}``, filled in from here when loaded), build
keys of their rows with ``PriorityKey``, and ``explain`` compares keys made here. Only the
``Frontier``'s hot loop writes the same tuple inline (a call per push would cost ~10%).
"""

from __future__ import annotations

from typing import NamedTuple

#: A key as a plain tuple (heap entries of ``AdmissionQueue`` may carry a fourth field).
Key = tuple[int, int, int]

#: The key as the SQL stores keep it: these columns of ``tasks``, in this order.
KEY_COLUMNS = ("neg_depth", "root_seq", "seq")


class PriorityKey(NamedTuple):
    """The sort key of a ready task; smaller runs first. A plain tuple for comparisons."""

    neg_depth: int
    root_seq: int
    submit_seq: int

    @classmethod
    def of(cls, depth: int, root_seq: int, submit_seq: int) -> PriorityKey:
        return cls(-depth, root_seq, submit_seq)

    @property
    def depth(self) -> int:
        return depth_from(self.neg_depth)


def depth_from(neg_depth: int) -> int:
    """A task's depth from the key's first field (the ``neg_depth`` column of a SQL store)."""
    return -neg_depth


def priority_key(depth: int, root_seq: int, submit_seq: int) -> PriorityKey:
    """The sort key of a ready task at ``depth`` of root ``root_seq``; smaller runs first."""
    return PriorityKey(-depth, root_seq, submit_seq)
