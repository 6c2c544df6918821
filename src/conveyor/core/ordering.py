"""Depth-first progress ordering (Iris): deeper work first, then the older root tree, then FIFO.

The key of a task is ``(-depth, root_submitted_seq, submit_seq)``. ``submit_seq`` is unique per
task (a global submission counter whose order inside one graph is the graph-file order), so the
key is a total order and doubles as the heap tie-breaker: heap entries are
``(-depth, root_seq, submit_seq)`` and the task index *is* its ``submit_seq``.
"""

from __future__ import annotations

from typing import NamedTuple


class PriorityKey(NamedTuple):
    neg_depth: int
    root_seq: int
    submit_seq: int

    @classmethod
    def of(cls, depth: int, root_seq: int, submit_seq: int) -> PriorityKey:
        return cls(-depth, root_seq, submit_seq)


def priority_key(depth: int, root_seq: int, submit_seq: int) -> tuple[int, int, int]:
    """The sort key of a ready task; smaller runs first."""
    return (-depth, root_seq, submit_seq)
