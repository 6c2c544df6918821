"""How a run ends, as an exit code: one rule for ``conveyor run``, ``conveyor worker`` and
``RunResult.exit_code``.

0: every task done. 1: a task failed, was skipped or cancelled, or (for a whole run) work is
left. 130: interrupted (Ctrl-C). A worker is one of many: work it leaves to the others is not a
failure, and failures decide its code only once the graph is finished.
"""

from __future__ import annotations

from collections.abc import Mapping

#: State labels of tasks that are still to finish.
UNFINISHED = ("pending", "ready", "running", "retry_wait", "invalidated")
#: State labels of tasks that finished without their result.
UNSUCCESSFUL = ("failed", "skipped", "cancelled")

INTERRUPTED = 130


def left(counts: Mapping[str, int]) -> int:
    """Tasks still to finish, from counts by state label."""
    return sum(counts.get(s, 0) for s in UNFINISHED)


def exit_code(counts: Mapping[str, int], *, interrupted: bool = False, worker: bool = False) -> int:
    """The exit code of a run (or, with ``worker``, of one worker of many) from its counts."""
    if interrupted:
        return INTERRUPTED
    bad = any(counts.get(s, 0) for s in UNSUCCESSFUL)
    if worker:
        return 1 if bad and left(counts) == 0 else 0
    return 1 if bad or left(counts) else 0
