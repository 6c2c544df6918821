"""Aging on the SQL stores (``ordering.AGE_AFTER_S``): ready tasks of a band below the default
that waited long enough move to the default band, so a stream of higher-band work never
starves them for ever.

A task's wait counts from its ``updated`` stamp, which a task gets when it becomes ready
(submitted ready, its last parent done, a retry due, given back). Each store handle looks at
most every ``AGE_EVERY_S``, at the first ``AGE_LOOK`` low-band tasks in key order (an index
seek; a read), and writes only when one is due: the oldest waiting work is at that head unless
deeper work of the same band keeps arriving, which is then not starved either.
"""

from __future__ import annotations

from collections.abc import Callable

from conveyor.core.ordering import AGE_AFTER_S, BAND_STRIDE
from conveyor.store.sqltx import Db, Tx

__all__ = ["AGE_EVERY_S", "AGE_LOOK", "Aging"]

#: Seconds between one store handle's looks.
AGE_EVERY_S = 5.0
#: Low-band ready tasks looked at per look, best key first.
AGE_LOOK = 256


class Aging:
    """One store handle's looks, rate-limited."""

    def __init__(self) -> None:
        self._next = 0.0

    def age(self, db: Db, atomic: Callable[[Callable[[Tx], int]], int], now: float) -> int:
        """Move the due tasks to the default band; how many moved."""
        if now < self._next:
            return 0
        self._next = now + AGE_EVERY_S
        cutoff = now - AGE_AFTER_S
        if not db.rows("age_due", cutoff=cutoff, n=AGE_LOOK):
            return 0
        return atomic(
            lambda tx: tx.count("age_ready", cutoff=cutoff, n=AGE_LOOK, stride=BAND_STRIDE)
        )
