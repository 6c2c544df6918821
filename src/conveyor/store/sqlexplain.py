"""``explain`` and the reasons in ``status`` for the SQL stores: the pure reasons of
``conveyor.core.explain`` (``not_ready_reason``, ``ready_reason``, ``behind_reason``), the same
the memory store uses, fed with what the database holds. Nothing here runs on the claim path
but ``ready_reason_of``, once per episode of a blocked worker (``admission_blocked``).
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.core.admission import AdmissionQueue, GroupInfo, Offer
from conveyor.core.borrow import BorrowCheck
from conveyor.core.explain import (
    GangView,
    Reason,
    band_reason,
    behind_reason,
    not_ready_reason,
    ready_reason,
    slot_reason,
    with_preemption,
)
from conveyor.core.ordering import PriorityKey, band_floor
from conveyor.errors import GraphError
from conveyor.model import TaskState
from conveyor.store.sqlborrow import Borrowing
from conveyor.store.sqlshapes import Shapes, head, read_groups
from conveyor.store.sqltx import Reads


def ready_reason_of(
    reads: Reads,
    shapes: Shapes,
    tid: str,
    key: PriorityKey,
    sid: int,
    offers: list[Offer],
    groups: dict[str, GroupInfo],
    now: float,
    workers_known: bool = False,
) -> Reason:
    """``ready_reason`` for the ready task ``tid`` (key ``key``) of shape ``sid``;
    ``workers_known``: ``offers`` are the store's live workers (none: ``no_worker``)."""
    rows, marks = shapes.read(reads)
    shape, gang, size = rows[sid]
    groups.setdefault(shape.group, GroupInfo())
    view = None
    if gang is not None:
        reserved, released = marks.get(sid, (None, False))
        view = GangView(gang, size or 0, len(head(reads, sid, size or 1)), reserved is not None,
                        released)  # fmt: skip
    seen: dict[str, bool] = {}

    def has_ready(group: str) -> bool:
        if group not in seen:
            seen[group] = any(head(reads, s) for s, row in rows.items() if row[0].group == group)
        return seen[group]

    def behind() -> Reason:
        ahead = int(reads.scalar("adm_ahead_in_shape", shape=sid, neg_depth=key.rank,
                                 root_seq=key.root_seq, seq=key.submit_seq))  # fmt: skip
        first = head(reads, sid) if ahead else []
        return behind_reason(tid, key, ahead, first[0][1] if first else None)

    return ready_reason(
        tid, shape, groups, offers, gang=view, has_ready=has_ready, behind=behind,
        higher_band=lambda: higher_band(reads, tid, key),
        borrow=lambda: borrow_refusal(reads, rows, shape.group, groups, offers, now, has_ready),
        workers_known=workers_known,
    )  # fmt: skip


def borrow_refusal(
    reads: Reads,
    rows: dict[int, Any],
    group: str,
    groups: dict[str, GroupInfo],
    offers: list[Offer],
    now: float,
    has_ready: Any,
) -> BorrowCheck | None:
    """``AdmissionQueue.borrow_refusal`` on what the store holds (``sqlborrow.Borrowing``)."""
    q = AdmissionQueue({n: GroupInfo(g.weight, g.cap, g.running) for n, g in groups.items()})
    for shape, _gang, _size in rows.values():
        q.groups.setdefault(shape.group, GroupInfo())
    if not Borrowing().apply(reads, q, now):
        return None
    for name in q.groups:
        if has_ready(name):
            q.unfinished[name] = 1
    capacity = sum(o.capacity if o.capacity is not None else o.slots for o in offers)
    return q.borrow_refusal(group, capacity)


def higher_band(reads: Reads, tid: str, key: PriorityKey) -> Reason | None:
    """``core.explain.band_reason`` from the ready rows of higher bands (a range of the ready
    index below the task's band)."""
    rows = reads.rows("adm_higher_band", floor=band_floor(key.band))
    ahead, best = (int(rows[0][0]), rows[0][1]) if rows else (0, None)
    if not ahead or best is None:
        return None
    first = reads.scalar("adm_first_plain")
    return band_reason(tid, key.rank, ahead, int(best), first)


def best_head(reads: Reads, shapes: Shapes) -> tuple[int, str, PriorityKey] | None:
    """``(shape, id, key)`` of the best-keyed ready task over all shapes. O(shapes · log n)."""
    best = None
    for sid in shapes.read(reads)[0]:
        rows = head(reads, sid)
        if rows:
            seq, tid, neg_depth, root_seq, _noop = rows[0]
            key = PriorityKey(neg_depth, root_seq, seq)
            if best is None or key < best[2]:
                best = (sid, tid, key)
    return best


class Explainer:
    """``explain``, the live workers' offers and the reasons summary of ``status``."""

    def __init__(self, shapes: Shapes) -> None:
        self.shapes = shapes

    def explain(
        self, reads: Reads, task_id: str, now: float, offers: list[Offer] | None, admission: bool
    ) -> Reason:
        """The one dominant reason ``task_id`` is not running, with numbers. ``offers``: the
        workers' offers; by default those of the live workers in this store. Raises
        ``GraphError`` for an unknown task."""
        rows = reads.rows("adm_task", id=task_id)
        if not rows:
            raise GraphError(f"unknown task {task_id!r}")
        seq, state, neg_depth, root_seq, sid, not_before = rows[0]

        def unfinished_parents() -> list[str]:
            deps: list[str] = json.loads(reads.scalar("spec_of", seq=seq)).get("deps", [])
            found = reads.rows("adm_deps_states", ids=reads.as_list(deps)) if deps else []
            states = dict(found)
            return [d for d in deps if states.get(d) != TaskState.DONE]

        early = not_ready_reason(
            task_id, TaskState(state), now, unfinished_parents=unfinished_parents,
            not_before=lambda: None if not_before is None else float(not_before),
        )  # fmt: skip
        if early is not None:
            return early
        key = PriorityKey(int(neg_depth), int(root_seq), int(seq))
        reason = self._ready(reads, task_id, key, int(sid), now, offers, admission)
        victims = [str(r[0]) for r in reads.rows("preempting_for", id=task_id)]
        return with_preemption(reason, victims)

    def _ready(
        self, reads: Reads, task_id: str, key: PriorityKey, sid: int, now: float,
        offers: list[Offer] | None, admission: bool,
    ) -> Reason:  # fmt: skip
        """The reason of a ready task (``explain`` past its early reasons)."""
        known = offers is None  # the live workers' offers, read here: none means no worker
        if sid == 0:  # a plain graph: one depth-first queue
            above = higher_band(reads, task_id, key)
            if above is not None:
                return above
            ahead = int(reads.scalar("adm_ahead_plain", neg_depth=key.rank,
                                     root_seq=key.root_seq, seq=key.submit_seq))  # fmt: skip
            first = reads.scalar("adm_first_plain") if ahead else None
            behind = behind_reason(task_id, key, ahead, first)
            if ahead:
                return behind
            if offers is None:
                offers = self.offers(reads, now, admission)
            return slot_reason(task_id, offers, behind, workers_known=known)
        if offers is None:
            offers = self.offers(reads, now, admission)
        groups = read_groups(reads)
        return ready_reason_of(reads, self.shapes, task_id, key, sid, offers, groups, now, known)

    def offers(self, reads: Reads, now: float, admission: bool) -> list[Offer]:
        """What each live worker offers now: its slots, labels, resources and time left (from
        ``workers.info``, written at register) less what its running tasks hold."""
        shapes = self.shapes.read(reads)[0] if admission else {}
        busy: dict[str, list[tuple[int, int]]] = {}
        for w, sid, n in reads.rows("adm_running_by_worker"):
            busy.setdefault(w, []).append((sid, int(n)))
        offers = []
        for name, _host, _pid, last_seen, lease_s, info in reads.rows("workers_alive"):
            if last_seen + lease_s < now:
                continue
            d = json.loads(info or "{}")
            slots = int(d.get("slots") or 1)
            total = {k: float(v) for k, v in (d.get("resources") or {}).items()}
            used: dict[str, float] = {}
            running = 0
            for sid, n in busy.get(name, []):
                running += n
                for k, v in shapes[sid][0].resources if sid in shapes else ():
                    used[k] = used.get(k, 0.0) + v * n
            free = {k: v - used.get(k, 0.0) for k, v in total.items()}
            until = d.get("until")  # the worker's end (``conveyor worker --until``)
            left = None if until is None else float(until) - now
            offers.append(Offer(max(0, slots - running), free, dict(d.get("labels") or {}),
                                slots, total or None, left))  # fmt: skip
        return offers

    def summary(self, reads: Reads, now: float, admission: bool) -> dict[str, Any]:
        """Reasons of all pending, ready and retrying tasks by count, and each group's running,
        cap and weight. Cheap on a large graph: one grouped count by (shape, state) (a pass
        over the unfinished rows that ``status`` makes anyway), then one ``explain`` per shape
        (its head's reason stands for every ready task of the shape: they all fit or not, are
        capped or not, together) — never one per task."""
        reasons: dict[str, int] = {}

        def add(code: str, n: int) -> None:
            reasons[code] = reasons.get(code, 0) + n

        ready: dict[int, int] = {}
        for sid, state, n in reads.rows("adm_waiting_by_shape"):
            if state == TaskState.READY:
                ready[int(sid)] = ready.get(int(sid), 0) + int(n)
            else:  # pending or retry_wait: the reason's code depends on the state alone
                why = not_ready_reason("", TaskState(state), now, unfinished_parents=list,
                                       not_before=lambda: None)  # fmt: skip
                assert why is not None
                add(why.code, int(n))
        offers = self.offers(reads, now, admission)
        groups = read_groups(reads)
        for sid, n in sorted(ready.items()):
            if sid == 0:  # the head's reason stands for the queue (as a shape's below)
                add(slot_reason("", offers, behind_reason("", (), 0, None),
                                workers_known=True).code, n)  # fmt: skip
                continue
            rows = head(reads, sid)
            if not rows:
                continue
            seq, tid, neg_depth, root_seq, _noop = rows[0]
            key = PriorityKey(neg_depth, root_seq, seq)
            why = ready_reason_of(reads, self.shapes, tid, key, sid, offers, dict(groups), now,
                                  workers_known=True)  # fmt: skip
            add(why.code, n)
        shares = {
            name: {"running": g.running, "cap": g.cap, "weight": g.weight}
            for name, g in groups.items()
        }
        return {"reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                "group_shares": shares}  # fmt: skip
