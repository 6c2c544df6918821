"""Planning SLURM job arrays of pilot workers. Pure: no subprocesses, clocks or files.

A site's ``MaxArraySize`` caps the highest array *index*, not only the count: indices run from
0 to ``MaxArraySize - 1`` (with the default 1001, ``--array=1001-2000`` is refused too). So
``N`` workers are split into arrays of at most ``MaxArraySize`` elements, each indexed from 0,
and each array carries an ``offset``: element ``i`` of it is the store's worker number
``offset + i`` (its job script exports that as ``CONVEYOR_SLURM_INDEX``). Scaling up submits
more arrays whose offsets continue after the highest one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ACTIVE_STATES",
    "ArrayPart",
    "Element",
    "next_offset",
    "parse_time_limit",
    "plan_arrays",
    "surplus",
]

#: squeue states of an element that holds, or waits for, a slot: the ones ``scale`` counts
#: (and may cancel). Elements that are completing or gone do not count.
ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"}
)


@dataclass(frozen=True, slots=True)
class ArrayPart:
    """One job array of a plan: ``count`` elements indexed ``0..count-1``, the first being
    worker ``offset``; ``throttle``: at most that many run at once (``%N``), or no limit."""

    offset: int
    count: int
    throttle: int | None = None

    @property
    def spec(self) -> str:
        """The value of ``sbatch --array``."""
        spec = f"0-{self.count - 1}"
        return spec if self.throttle is None else f"{spec}%{self.throttle}"


def plan_arrays(
    workers: int, max_array_size: int, *, first: int = 0, max_parallel: int | None = None
) -> tuple[ArrayPart, ...]:
    """The fewest arrays holding ``workers`` elements under ``max_array_size`` (each array's
    highest index is below it), numbered from worker ``first``.

    ``max_parallel`` is shared out over the arrays as evenly as possible (SLURM throttles each
    array on its own), at least 1 each: the arrays of one plan never run more than
    ``max(max_parallel, number of arrays)`` elements at once. A throttle no smaller than its
    array's size is left out."""
    if workers < 1 or max_array_size < 1 or first < 0:
        raise ValueError(f"workers, max_array_size >= 1 and first >= 0; got {workers}, "
                         f"{max_array_size}, {first}")  # fmt: skip
    if max_parallel is not None and max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
    n_parts = -(-workers // max_array_size)
    parts = []
    offset = first
    for i in range(n_parts):
        count = min(max_array_size, first + workers - offset)
        throttle = None
        if max_parallel is not None:
            share = max(1, max_parallel // n_parts + (1 if i < max_parallel % n_parts else 0))
            throttle = share if share < count else None
        parts.append(ArrayPart(offset, count, throttle))
        offset += count
    return tuple(parts)


def next_offset(parts: Iterable[ArrayPart]) -> int:
    """The worker number a new array starts at: after every one submitted so far."""
    return max((p.offset + p.count for p in parts), default=0)


@dataclass(frozen=True, slots=True)
class Element:
    """One array element as squeue shows it, tied to the store's view of its worker."""

    array_job: str  # the array's job id (SLURM_ARRAY_JOB_ID)
    task: int  # its index in the array (SLURM_ARRAY_TASK_ID)
    index: int  # the store's worker number: the array's offset + task
    state: str  # squeue's state: PENDING, RUNNING, ...
    busy: bool = False  # its worker runs a task now

    @property
    def job_id(self) -> str:
        """How scancel names this one element: ``<array job>_<task>``."""
        return f"{self.array_job}_{self.task}"


def surplus(elements: Sequence[Element], target: int) -> list[Element]:
    """The elements to cancel to keep ``target`` active ones: those not yet running first,
    then running ones whose worker is idle, then busy ones; the highest worker number first
    within each (the newest go first, and the low numbers stay dense)."""
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    active = [e for e in elements if e.state in ACTIVE_STATES]
    excess = len(active) - target
    if excess <= 0:
        return []

    def rank(e: Element) -> tuple[int, int]:
        started = e.state != "PENDING"
        return (int(started) + int(e.busy), -e.index)

    return sorted(active, key=rank)[:excess]


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_limit(text: str) -> float | None:
    """Seconds of a SLURM ``--time`` value (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``); ``None`` for what is not one of these (SLURM judges it) or is unlimited."""
    m = _TIME.match(text.strip())
    if m is None:
        return None
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return float(((int(days) * 24 + h) * 60 + mi) * 60 + s)
    if c is not None:  # H:M:S
        return float((int(a) * 60 + int(b)) * 60 + int(c))
    if b is not None:  # M:S
        return float(int(a) * 60 + int(b))
    return float(int(a) * 60)  # M
