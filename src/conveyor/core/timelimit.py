"""Whether a task can finish before its worker's end (a SLURM job's time limit): the one rule
a worker with an end time claims by. Pure.

A worker told its end (``conveyor worker --until``) offers the seconds it has left
(``Offer.time_left``); a task that declares ``expected_s`` fits only when its expected run,
with slack, ends before then. A task that declares nothing is judged by the past runs of its
kind (its function, or its command's program) on every worker of the store: their mean
(``estimate``). A kind that never ran yet fits any worker: a worker does not guess.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MARGIN_S", "SLACK", "estimate", "fits_in", "merge_runtimes", "runtime_key", "time_left",
    "would_finish",
]  # fmt: skip

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


def runtime_key(fn: Any, cmd: str | Sequence[str] | None) -> str | None:
    """The kind of task whose past runs predict this one's: ``fn:module:name`` for a function
    (an import path or a callable), ``cmd:program`` for a command (its first word; for an
    interpreter, up to the script or module it runs: ``cmd:python -m sim``), ``None`` for a
    no-op. Tasks of one kind are assumed to take alike."""
    if cmd is not None:
        try:
            words = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        except ValueError:
            words = str(cmd).split()
        return "cmd:" + " ".join(_program(words)) if words else None
    if fn is None:
        return None
    if isinstance(fn, str):
        return "fn:" + fn
    fn = getattr(fn, "__wrapped_task__", fn)
    return f"fn:{getattr(fn, '__module__', None) or '__main__'}:{getattr(fn, '__qualname__', 'fn')}"


#: Programs whose kind is the script they run, not the program.
_INTERPRETERS = frozenset({"python", "python3", "bash", "sh", "Rscript", "julia", "node", "perl"})


def _program(words: Sequence[str]) -> Sequence[str]:
    if words[0].rsplit("/", 1)[-1] not in _INTERPRETERS:
        return words[:1]
    for i, w in enumerate(words[1:], 1):
        if not w.startswith("-"):
            return words[: i + 1]
    return words[:1]


def merge_runtimes(reports: Iterable[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Several workers' ``{kind: [runs, total seconds, longest]}`` as one."""
    out: dict[str, list[float]] = {}
    for rep in reports:
        for key, (n, total, longest) in rep.items():
            have = out.get(key)
            if have is None:
                out[key] = [float(n), float(total), float(longest)]
            else:
                have[0] += n
                have[1] += total
                have[2] = max(have[2], longest)
    return out


def estimate(stats: Sequence[float] | None) -> float | None:
    """How long the next task of a kind is expected to run, from ``[runs, total seconds,
    longest]``: the mean of its runs (``None``: it never ran). ``fits_in`` adds the slack."""
    if not stats or stats[0] <= 0:
        return None
    return float(stats[1]) / float(stats[0])
