"""State rules every store follows, as pure functions over plain data.

The memory store (a ``Frontier`` of bytearrays) and the SQL stores (``state`` columns) keep task
states differently; each supplies its own reads, and the rules live here once: which states are
unfinished, dead or still skippable, what a final failure skips downstream, and what the skip
says. The SQL text names the same sets (``{UNFINISHED}``, ``{SKIPPABLE}`` ... filled in from
here by ``store/sqlqueries.py``), so no store spells a state number by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from conveyor.model import TaskState

H = TypeVar("H", bound=Hashable)

#: Not finished: pending, ready, running, retry_wait, invalidated.
UNFINISHED = frozenset(s for s in TaskState if not s.finished)
#: Finished without a result: downstream of these cannot run.
DEAD = frozenset({TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED})
#: Not started yet: a dead parent skips them (a running task finishes its attempt).
SKIPPABLE = UNFINISHED - {TaskState.RUNNING}
#: What a manual retry may run again (a skipped task runs again when its parent does).
RETRYABLE = frozenset({TaskState.FAILED, TaskState.CANCELLED})


def upstream_failed(cause: str | None) -> str:
    """The error a skipped task records: ``upstream_failed: <the dead task that caused it>``."""
    return f"upstream_failed: {cause}" if cause else "upstream_failed"


def skip_closure(
    first: Iterable[tuple[H, int]],
    children_of: Callable[[list[H]], Iterable[tuple[H, int]]],
) -> list[tuple[H, int]]:
    """What a dead task skips: of ``first`` (the dead task's children, or new tasks submitted
    under a dead parent, as ``(handle, state)``) every task not started yet, and everything below
    those, level by level. Each task is listed once, with the state it had, in level order.
    ``children_of(level)`` gives the ``(handle, state)`` of the children of the handles of one
    level (a SQL store reads one level per query). O(descendants)."""
    out: list[tuple[H, int]] = []
    seen: set[H] = set()
    level = first
    while True:
        found: list[H] = []
        for h, state in level:
            if state in SKIPPABLE and h not in seen:
                seen.add(h)
                found.append(h)
                out.append((h, state))
        if not found:
            return out
        level = children_of(found)
