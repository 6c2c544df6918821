"""Whether a task can finish before its worker's end (a SLURM job's time limit): the one rule
a worker with an end time claims by. Pure.

A worker told its end (``conveyor worker --until``) offers the seconds it has left
(``Offer.time_left``); a task that declares ``expected_s`` fits only when its expected run,
with slack, ends before then. A task that declares nothing fits any worker: a worker does not
guess (past runtimes per function are not used yet).
"""

from __future__ import annotations

__all__ = ["MARGIN_S", "SLACK", "fits_in", "time_left", "would_finish"]

#: Expected run times are estimates: a task is given 10% more than it declares ...
SLACK = 1.1
#: ... and a few seconds on top for claiming, starting and recording it (one transaction each)
#: and for the hand-back at the end, should it run long after all.
MARGIN_S = 5.0


def time_left(now: float, end: float | None) -> float | None:
    """Seconds from ``now`` to ``end`` (``None``: the worker has no end)."""
    return None if end is None else end - now


def fits_in(expected_s: float | None, left_s: float | None) -> bool:
    """Whether a task expected to run ``expected_s`` seconds (``None``: not declared) can
    finish in ``left_s`` seconds (``None``: no end)."""
    if expected_s is None or left_s is None:
        return True
    return expected_s * SLACK + MARGIN_S <= left_s


def would_finish(now: float, end: float | None, expected_s: float | None) -> bool:
    """Whether a task expected to run ``expected_s`` seconds, started at ``now``, finishes
    before ``end``."""
    return fits_in(expected_s, time_left(now, end))
