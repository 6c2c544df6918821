"""The event feed of the SQL stores (``conveyor events [--follow]``): every committed audit row
once, also when rows commit out of id order.

Audit ids are drawn when a row is written, not when its transaction commits. SQLite has one
writer at a time, so its rows commit in id order and a feed only moves on past the last id it
read. On PostgreSQL a transaction that drew id 100 may commit after one that drew 101, and a
feed that had moved on past 101 would never print 100. So the feed remembers the ids it
skipped (gaps) with a bound: the ``xmax`` of a snapshot taken after the read. The writer of a
skipped id drew it before the row above it was committed and read, and had its transaction id
by then (every transaction writes its transition before its audit rows), so that id is below
the bound. Once the ``xmin`` of a later snapshot reaches the bound, every such writer has ended:
one last read of the gap finds what they committed, and the rest of it (rolled back, or
pruned) is forgotten.

Costs: a poll reads the new rows (an index range) and, while gaps are open, one index range per
gap; gaps close within a transaction's lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.store.base import EventFeed
from conveyor.store.sqltx import Db


@dataclass(frozen=True, slots=True)
class Gap:
    """Ids ``lo < id < hi`` a feed has not seen; writers that may still commit one of them
    have transaction ids below ``bound``."""

    lo: int
    hi: int
    bound: int


class SqlEventFeed(EventFeed):
    """Polls one SQL store's audit table; each ``poll`` returns events not returned before."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.after = 0  # every id up to here was read, or is in a gap
        self.gaps: list[Gap] = []  # in id order, all below ``after``

    def poll(self, limit: int = 1000) -> list[dict[str, Any]]:
        out = self._fill_gaps() if self.gaps else []
        got = list(self.db.events("audit_after", after=self.after, limit=limit))
        if got:
            _xmin, xmax = self.db.rows("snapshot_bounds")[0]  # after the read: see above
            if xmax is not None:  # None: rows commit in id order (SQLite)
                prev = self.after
                for i, _ev in got:
                    if i > prev + 1:
                        self.gaps.append(Gap(prev, i, int(xmax)))
                    prev = i
            self.after = got[-1][0]
            out.extend(ev for _i, ev in got)
        return out

    def _fill_gaps(self) -> list[dict[str, Any]]:
        """Events committed into the gaps since they were seen, in id order; gaps whose writers
        have all ended are closed, the others narrowed to what is still missing."""
        xmin = int(self.db.rows("snapshot_bounds")[0][0])  # before the read: see above
        gaps = self.gaps
        rows = self.db.events("audit_in_gaps", los=[g.lo for g in gaps], his=[g.hi for g in gaps])
        found: dict[int, list[int]] = {}  # gap index -> ids found in it
        out = []
        k = 0
        for i, ev in rows:
            while gaps[k].hi <= i:  # rows come in id order, and each lies in some gap
                k += 1
            found.setdefault(k, []).append(i)
            out.append(ev)
        kept = []
        for k, g in enumerate(gaps):
            if g.bound <= xmin:
                continue  # its writers have ended: what they committed was just read
            lo = g.lo
            for i in [*found.get(k, ()), g.hi]:
                if i > lo + 1:
                    kept.append(Gap(lo, i, g.bound))
                lo = i
        self.gaps = kept
        return out
