"""What the pure borrow rule (``core/borrow.py``) needs from a SQL store, for admission and
``explain``: the policies (store meta ``borrow``, written at submit), which groups are active
(running, ready, or with work waiting on parents or a retry) and the live workers' slots.

The groups' running counts come with every decision (``task_groups``); whether a group has
waiting work and how many slots the live workers have are not index seeks, so a worker reuses
them for ``TTL_S`` and asks only while a policy other than ``work_conserving`` is in force and
there are at least two groups.
"""

from __future__ import annotations

import json

from conveyor.core.admission import AdmissionQueue, GroupInfo
from conveyor.core.borrow import DEFAULT_POLICY, BorrowPolicy
from conveyor.store.sqltx import Reads

#: Seconds the waiting groups and the live slots are reused.
TTL_S = 2.0


class Borrowing:
    """One store handle's view of borrowing, refreshed at most every ``TTL_S``."""

    def __init__(self) -> None:
        self._seen: tuple[float, frozenset[str], int | None] | None = None

    def apply(self, reads: Reads, q: AdmissionQueue, now: float) -> bool:
        """Give ``q`` the policies, the active groups known without reading tasks (running
        ones, those with waiting work) and the total slots; ``False`` when no limit can apply
        (every policy is work_conserving, or fewer than two groups), so the caller may skip
        marking the groups with ready work active (``q.unfinished[group] = 1``)."""
        raw = reads.scalar("meta_get", key="borrow")
        d = json.loads(raw) if raw else {}
        q.borrow = BorrowPolicy.parse(d["run"]) if d.get("run") else DEFAULT_POLICY
        for name, text in (d.get("groups") or {}).items():
            q.groups.setdefault(name, GroupInfo()).borrow = BorrowPolicy.parse(text)
        modes = {q.borrow.mode} | {g.borrow.mode for g in q.groups.values() if g.borrow}
        if modes == {"work_conserving"} or len(q.groups) < 2:
            return False
        seen = self._seen
        if seen is None or not 0 <= now - seen[0] < TTL_S:
            waiting = frozenset(g for g in q.groups if reads.rows("adm_group_waiting", grp=g))
            slots = 0
            for _n, _h, _p, last_seen, lease_s, info in reads.rows("workers_alive"):
                if last_seen + lease_s >= now:
                    slots += int(json.loads(info or "{}").get("slots") or 1)
            seen = self._seen = (now, waiting, slots or None)
        q.total_slots = seen[2]
        for name in seen[1]:
            q.unfinished[name] = 1
        for name, info in q.groups.items():
            if info.running > 0:
                q.unfinished[name] = 1
        return True
