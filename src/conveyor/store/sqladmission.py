"""Admission in the SQL stores: group caps, weighted fair share, labels and resources, gangs,
for claims by any number of worker processes (docs/fairness.md, "Durable stores").

The decision itself is the pure ``AdmissionQueue.pick`` of ``conveyor.core.admission``, fed
per claim with what the database holds: the groups (weight, cap and running count, kept by
every transition into or out of running), the shapes (read once, cached), and the head of the
queue of each shape that fits the worker's offer (one index seek on ``tasks_shape_ready``).
A claim therefore costs O(groups + shapes + fitting shapes · log n) and never reads the pending
tasks. PostgreSQL serialises admission decisions with an advisory lock (a cap is read, then
raised); SQLite's single writer already does.

Graphs without groups, labels, resources or gangs never come here: their tasks have shape 0
and their claims stay on the plain depth-first path (``sqlclaim.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from conveyor.core.admission import (
    AdmissionQueue,
    GroupInfo,
    Offer,
    Pick,
    needs_admission,
    plan_admission,
)
from conveyor.core.ordering import PriorityKey
from conveyor.model import TaskSpec
from conveyor.store.base import Claim
from conveyor.store.sqlborrow import Borrowing
from conveyor.store.sqlexplain import best_head, ready_reason_of
from conveyor.store.sqlshapes import GangMark, ShapeRow, Shapes, head, read_groups, shape_sig
from conveyor.store.sqlsteps import NOOP_BATCH, Worker, due_retries, start
from conveyor.store.sqltx import Reads, Tx


class Admission:
    """Admission for one SQL store handle: the mode, shapes at submit, claim decisions."""

    #: How long free slots may be held for a gang at the head of the fair order (seconds).
    gang_wait_s = 30.0

    def __init__(self, reads: Reads, worker: Worker, shapes: Shapes) -> None:
        self.reads = reads
        self.worker = worker
        self.shapes = shapes
        self._on: bool | None = None
        self._blocked = False
        self.borrowing = Borrowing()

    # -- mode -----------------------------------------------------------------------------------
    @property
    def on(self) -> bool:
        """Whether this store's graph uses admission (read once; ``refresh`` again at register
        and heartbeat, so a worker notices a switch by a later submission)."""
        if self._on is None:
            self._on = bool(self.reads.rows("adm_any_shape"))
        return self._on

    def refresh(self) -> None:
        self._on = None

    def forget(self) -> None:
        """The store was wiped (a graph replaced): nothing is known any more."""
        self._on = None
        self.shapes.forget()
        self.borrowing = Borrowing()

    # -- submit -----------------------------------------------------------------------------------
    def declare_groups(self, tx: Tx, groups: Mapping[str, Any], borrow: str | None = None) -> None:
        """The graph's declared groups (weight, cap) and borrow policies (store meta
        ``borrow``: the run's and each group's); a resubmission may change them."""
        for name, g in groups.items():
            tx.run("adm_upsert_group", name=name, weight=float(g.weight), cap=g.cap)
        policies = {"run": borrow, "groups": {n: g.borrow for n, g in groups.items() if g.borrow}}
        tx.run("meta_set", key="borrow", value=json.dumps(policies, sort_keys=True))

    def shape_ids(self, tx: Tx, tasks: list[TaskSpec]) -> list[int]:
        """Validate the admission fields of new tasks (the same checks as the memory store, by
        ``plan_admission``) and give each its shape id; 0 for all when the store needs no
        admission. Switches the store to admission at the first task that needs it."""
        groups = {n: (w, cap) for n, w, cap, _r in tx.rows("adm_groups")}
        on = bool(tx.rows("adm_any_shape"))
        if not on and not needs_admission(tasks, groups):
            return [0] * len(tasks)
        _planned, gangs, sizes = plan_admission(
            tasks, lambda g: groups[g][1] if g in groups else None
        )
        if not on:  # tasks already in the store (plain ones) join the default shape
            plain = TaskSpec("default")
            default = self.shapes.intern(tx, plain, None, None, shape_sig(plain, None))
            tx.run("adm_adopt_plain", shape=default)
        ids: list[int] = []
        cache: dict[str, int] = {}
        for k, t in enumerate(tasks):
            gang = gangs.get(k)
            sig = shape_sig(t, gang)
            sid = cache.get(sig)
            if sid is None:
                size = sizes.get(gang) if gang else None
                sid = cache[sig] = self.shapes.intern(tx, t, gang, size, sig)
            ids.append(sid)
        self._on = True
        return ids

    # -- the decision -----------------------------------------------------------------------------
    def claim(
        self, tx: Tx, worker: str, limit: int, now: float, lease_s: float, offer: Offer | None
    ) -> list[Claim]:
        """Admission claims inside ``tx``: with the engine's ``offer``, one decision (a task,
        a whole gang, or nothing); without one (the API, the worker loop), decisions until
        ``limit`` tasks are claimed, on the offer of this handle's profile."""
        tx.lock("admission")
        due_retries(tx, now)
        one = offer is not None
        have = offer if offer is not None else self.worker.profile.offer(limit)
        out: list[Claim] = []
        noops = 0
        real = 0
        while have.slots > 0 and real < limit:
            got, shape = self._decide(tx, worker, now, lease_s, have)
            if not got:
                break
            out.extend(got)
            if got[0].extra.get("committed"):
                noops += 1
                if one or noops >= NOOP_BATCH:
                    break
                continue
            real += len(got)
            assert shape is not None
            have = have.take(shape[0], len(got))
            if one:
                break
        return out

    def _decide(
        self, tx: Tx, worker: str, now: float, lease_s: float, offer: Offer
    ) -> tuple[list[Claim], ShapeRow | None]:
        """One decision by ``AdmissionQueue.pick`` over the heads of the fitting shapes; the
        claims and the shape they are of."""
        groups = read_groups(tx)
        shapes, marks = self.shapes.read(tx)
        q = AdmissionQueue(groups, gang_wait_s=self.gang_wait_s)
        groups = q.groups
        for shape, _gang, _size in shapes.values():
            groups.setdefault(shape.group, GroupInfo())
        limits = self.borrowing.apply(tx, q, now)
        bucket: list[int] = []  # local bucket -> shape id
        for sid, (shape, gang, size) in shapes.items():
            g = groups[shape.group]
            if g.cap is not None and g.running >= g.cap:
                continue
            if not limits and offer.fit_count(shape) <= 0:
                continue
            rows = head(tx, sid, size or 1)
            if rows:
                q.unfinished[shape.group] = 1  # ready work: the group is active
            if limits and offer.fit_count(shape) <= 0:
                continue
            if not rows or (gang is not None and len(rows) < (size or 0)):
                continue
            local = q.add_bucket(shape)
            bucket.append(sid)
            if gang is not None:
                q.declare_gang(gang, size or 0)
                reserved, released = marks.get(sid, (None, False))
                if reserved is not None:
                    q.reservations[gang] = reserved
                if released:
                    q.released.add(gang)
            for seq, _tid, neg_depth, root_seq, _noop in rows:
                q.push(seq, PriorityKey(neg_depth, root_seq, seq), local, gang)
        pick = q.pick(offer, lambda _i: True, now)
        self._write_gang_marks(tx, q, bucket, shapes, marks, now)
        if pick is None:
            self._note_blocked(tx, offer, now)
            return [], None
        self._blocked = False
        sid = bucket[pick.shape]
        return self._take(tx, worker, now, lease_s, pick, sid, shapes[sid], groups), shapes[sid]

    def _write_gang_marks(
        self,
        tx: Tx,
        q: AdmissionQueue,
        bucket: list[int],
        shapes: dict[int, ShapeRow],
        marks: dict[int, GangMark],
        now: float,
    ) -> None:
        """Persist reservations the decision made, ran out or fulfilled; ``gang_reserved``."""
        for sid in bucket:
            gang = shapes[sid][1]
            if gang is None:
                continue
            before = marks.get(sid, (None, False))
            after = (q.reservations.get(gang), gang in q.released)
            if after != before:
                tx.run("adm_mark_gang", id=sid, reserved=after[0], released=int(after[1]))
                if after[0] is not None and before[0] is None:
                    tx.audit(now, "gang_reserved", None, None, None, self.worker.name, gang=gang,
                             since=after[0], reason="gang_incomplete")  # fmt: skip

    def _take(
        self,
        tx: Tx,
        worker: str,
        now: float,
        lease_s: float,
        pick: Pick,
        sid: int,
        row: ShapeRow,
        groups: dict[str, GroupInfo],
    ) -> list[Claim]:
        """Claim the picked task (or every member of the picked gang) inside ``tx``; a lone
        no-op is completed right here (it never counts as running)."""
        lone = len(pick.members) == 1 and self.worker.profile.complete_noops
        got = start(tx, list(pick.members), worker, now, lease_s, noops=int(lone))
        for c in got:
            c.extra["shape"] = sid
        out = [c for c in got if not c.extra.get("committed")]
        if not out:
            return got
        for c in out:
            c.extra["grp"] = pick.group
        tx.run("adm_running_add", grp=pick.group, n=len(out))
        g = groups[pick.group]
        g.running += len(out)
        if len(out) > 1:
            tx.audit(now, "gang_started", None, None, None, worker, gang=row[1],
                     tasks=[c.id for c in out], reason="gang_complete")  # fmt: skip
        if g.cap is not None and g.running >= g.cap:
            tx.audit(now, "group_capped", None, None, None, worker, group=pick.group,
                     running=g.running, cap=g.cap, reason="group_cap")  # fmt: skip
        return out

    def _note_blocked(self, tx: Tx, offer: Offer, now: float) -> None:
        """``admission_blocked`` with the dominant reason of the best ready task, once per
        episode of this worker (not once per refused claim)."""
        if self._blocked or offer.slots <= 0:
            return
        best = best_head(tx, self.shapes)
        if best is None:
            return
        self._blocked = True
        sid, tid, key = best
        why = ready_reason_of(tx, self.shapes, tid, key, sid, [offer], read_groups(tx), now)
        tx.audit(now, "admission_blocked", None, None, None, self.worker.name, first=tid,
                 free_slots=offer.slots, reason=why.code)  # fmt: skip
