"""Admission in the SQL stores: group caps, weighted fair share, labels and resources, gangs and
``explain``, for claims by any number of worker processes (docs/fairness.md, "Durable stores").
A mixin of ``SqlStore``.

The decision itself is the pure ``AdmissionQueue.pick`` of ``conveyor.core.admission``, fed
per claim with what the database holds: the groups (weight, cap and running count, kept by
every transition into or out of running), the shapes (read once, cached), and the head of the
queue of each shape that fits the worker's offer (one index seek on ``tasks_shape_ready``).
A claim therefore costs O(groups + shapes + fitting shapes · log n) and never reads the pending
tasks. PostgreSQL serialises admission decisions with an advisory lock (a cap is read, then
raised); SQLite's single writer already does.

Graphs without groups, labels, resources or gangs never come here: their tasks have shape 0
and their claims stay on the plain depth-first path (``SqlStore._claim_in``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conveyor.core.admission import (
    AdmissionQueue,
    GroupInfo,
    Offer,
    Pick,
    Shape,
    needs_admission,
    plan_admission,
)
from conveyor.core.explain import GangView, Reason, behind_reason, ready_reason
from conveyor.errors import GraphError
from conveyor.model import TaskSpec, TaskState

if TYPE_CHECKING:
    from conveyor.store.base import Claim
    from conveyor.store.sqlbase import Tx

_PENDING, _READY, _RUNNING, _DONE = 0, 1, 2, 3
_RETRY_WAIT = 6
_LABELS = [s.label for s in TaskState]
_ADMISSION_LOCK = 0x636F6E77  # PostgreSQL advisory lock of admission decisions ("conw")

#: One shape as cached: (Shape, gang or None, gang size or None).
ShapeRow = tuple[Shape, str | None, int | None]


def _sig(t: TaskSpec, gang: str | None) -> str:
    return json.dumps(
        {"group": t.group, "resources": dict(t.resources), "labels": dict(t.labels),
         "gang": gang},
        sort_keys=True, default=str,
    )  # fmt: skip


def _shape_of_sig(sig: str) -> Shape:
    d = json.loads(sig)
    return Shape.of(d["group"], d["resources"], d["labels"])


class SqlAdmission:
    """Admission for ``SqlStore``: submit (shapes, groups), claim, explain, status."""

    if TYPE_CHECKING:
        dialect: str
        labels: dict[str, Any]
        resources: dict[str, float] | None
        inline_noops: bool
        _worker: str | None

        def _read(self, name: str, /, **params: Any) -> list[Any]: ...
        def _atomic(self, op: Any) -> Any: ...
        def _list(self, values: list[Any]) -> Any: ...

    #: How long free slots may be held for a gang at the head of the fair order (seconds).
    gang_wait_s = 30.0
    _adm: bool | None = None
    _adm_shapes: dict[int, ShapeRow] | None = None
    _adm_blocked = False

    # -- mode -----------------------------------------------------------------------------------
    @property
    def admission(self) -> bool:
        """Whether this store's graph uses admission (read once; ``_refresh_admission`` again
        at register and heartbeat, so a worker notices a switch by a later submission)."""
        if self._adm is None:
            self._adm = bool(self._read("adm_any_shape"))
        return self._adm

    def _refresh_admission(self) -> None:
        self._adm = None

    # -- submit -----------------------------------------------------------------------------------
    def _declare_groups(self, tx: Tx, groups: Mapping[str, Any]) -> None:
        """The graph's declared groups (weight, cap); a resubmission may change them."""
        for name, g in groups.items():
            tx.run("adm_upsert_group", name=name, weight=float(g.weight), cap=g.cap)

    def _shape_ids(self, tx: Tx, tasks: list[TaskSpec]) -> list[int]:
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
            default = self._adm_intern_shape(tx, TaskSpec("default"), None, None)
            tx.run("adm_adopt_plain", shape=default)
        ids: list[int] = []
        cache: dict[str, int] = {}
        for k, t in enumerate(tasks):
            gang = gangs.get(k)
            sig = _sig(t, gang)
            sid = cache.get(sig)
            if sid is None:
                sid = self._adm_intern_shape(tx, t, gang, sizes.get(gang) if gang else None, sig)
                cache[sig] = sid
            ids.append(sid)
        self._adm = True
        return ids

    def _adm_intern_shape(
        self, tx: Tx, t: TaskSpec, gang: str | None, size: int | None, sig: str | None = None
    ) -> int:
        sig = sig or _sig(t, gang)
        sid = tx.scalar("adm_shape_id", sig=sig)
        if sid is None:
            tx.run("adm_ensure_group", name=t.group)
            sid = tx.scalar("adm_insert_shape", grp=t.group, sig=sig, gang=gang, size=size)
        return int(sid)

    def _left_running(self, tx: Tx, claim: Claim) -> None:
        """A task claimed by admission left running (done, failed, released): its group runs
        one fewer. Plain claims carry no group and cost nothing here."""
        grp = claim.extra.get("grp")
        if grp is not None:
            tx.run("adm_running_add", grp=grp, n=-1)

    # -- the decision -----------------------------------------------------------------------------
    def _adm_shape_rows(self, read: Any) -> dict[int, ShapeRow]:
        """Every shape by id, parsed once per process (shapes are only ever added); the gangs'
        reservation marks, read each time, go to ``_adm_gang_marks``. ``read``: ``tx.rows``
        inside a transaction, else ``self._read``."""
        cache = self._adm_shapes
        if cache is None:
            cache = self._adm_shapes = {}
        rows = read("adm_shapes")
        out: dict[int, ShapeRow] = {}
        self._adm_gang_marks: dict[int, tuple[float | None, bool]] = {}
        for sid, _grp, sig, gang, size, reserved, released in rows:
            row = cache.get(sid)
            if row is None:
                row = cache[sid] = (_shape_of_sig(sig), gang, size)
            out[sid] = row
            if gang is not None:
                self._adm_gang_marks[sid] = (reserved, bool(released))
        return out

    def _adm_offer_for(self, limit: int, offer: Offer | None) -> Offer:
        if offer is not None:
            return offer
        res = dict(self.resources or {})
        return Offer(limit, res, dict(self.labels), limit, res)

    def _claim_admitted(
        self, tx: Tx, worker: str, limit: int, now: float, lease_s: float, offer: Offer | None
    ) -> list[Claim]:
        """Admission claims inside ``tx``: with the engine's ``offer``, one decision (a task,
        a whole gang, or nothing); without one (the API, the worker loop), decisions until
        ``limit`` tasks are claimed, on an offer of this store's labels and resources."""
        from conveyor.store.sqlbase import RETRY_WAIT

        if self.dialect == "postgres":
            tx.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADMISSION_LOCK,))
        for tid, attempt in tx.rows("due_retries", now=now):
            tx.audit(now, "task_ready", tid, RETRY_WAIT, _READY, attempt=attempt)
        one = offer is not None
        have = self._adm_offer_for(limit, offer)
        out: list[Claim] = []
        noops = 0
        real = 0
        while have.slots > 0 and real < limit:
            got = self._adm_decide(tx, worker, now, lease_s, have)
            if not got:
                break
            out.extend(got)
            if got[0].extra.get("committed"):
                noops += 1
                if one or noops >= 256:
                    break
                continue
            real += len(got)
            shape = self._adm_now[got[0].extra["shape"]][0]
            have = have.take(shape, len(got))
            if one:
                break
        return out

    def _adm_decide(
        self, tx: Tx, worker: str, now: float, lease_s: float, offer: Offer
    ) -> list[Claim]:
        """One decision by ``AdmissionQueue.pick`` over the heads of the fitting shapes."""
        groups = {n: GroupInfo(float(w), cap, int(r)) for n, w, cap, r in tx.rows("adm_groups")}
        shapes = self._adm_now = self._adm_shape_rows(tx.rows)
        marks = self._adm_gang_marks
        q = AdmissionQueue(groups, gang_wait_s=self.gang_wait_s)
        groups = q.groups
        bucket: list[int] = []  # local bucket -> shape id
        for sid, (shape, gang, size) in shapes.items():
            g = groups.setdefault(shape.group, GroupInfo())
            if g.cap is not None and g.running >= g.cap:
                continue
            if offer.fit_count(shape) <= 0:
                continue
            rows = tx.rows("adm_head", shape=sid, limit=size or 1)
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
            for seq, _tid, nd, rs, _noop in rows:
                q.push(seq, (nd, rs, seq), local, gang)
        pick = q.pick(offer, lambda _i: True, now)
        self._adm_write_gang_marks(tx, q, bucket, shapes, marks, now)
        if pick is None:
            self._adm_note_blocked(tx, offer, now)
            return []
        self._adm_blocked = False
        return self._adm_take(tx, worker, now, lease_s, pick, bucket[pick.shape], groups)

    def _adm_write_gang_marks(
        self,
        tx: Tx,
        q: AdmissionQueue,
        bucket: list[int],
        shapes: dict[int, ShapeRow],
        marks: dict[int, tuple[float | None, bool]],
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
                    tx.audit(now, "gang_reserved", None, None, None, self._worker, gang=gang,
                             since=after[0], reason="gang_incomplete")  # fmt: skip

    def _adm_take(
        self,
        tx: Tx,
        worker: str,
        now: float,
        lease_s: float,
        pick: Pick,
        sid: int,
        groups: dict[str, GroupInfo],
    ) -> list[Claim]:
        """Claim the picked task (or every member of the picked gang) inside ``tx``; a lone
        no-op is completed right here (it never counts as running)."""
        from conveyor.store.base import Claim
        from conveyor.store.codec import decode_spec

        got = tx.rows("claim_seqs", seqs=self._list(list(pick.members)), worker=worker,
                      lease_until=now + lease_s, now=now)  # fmt: skip
        got.sort(key=lambda r: (r[4], r[5], r[0]))
        if len(got) == 1 and got[0][6] and self.inline_noops and len(pick.members) == 1:
            seq, tid, attempt, token, nd, _rs, _noop = got[0]
            tx.audit(now, "task_started", tid, _READY, _RUNNING, worker, attempt)
            claim = Claim(TaskSpec(tid), attempt, token, seq, -nd)
            claim.extra.update(committed=True, shape=sid)
            tx.audit(now, "task_finished", tid, _RUNNING, _DONE, worker, attempt)
            seqs = self._list([seq])
            tx.run("complete_seqs", seqs=seqs, now=now)
            for kid, state, waiting in tx.rows("release_children_of", seqs=seqs):
                if state == _READY and waiting == 0:
                    tx.audit(now, "task_ready", kid, _PENDING, _READY)
                    tx.notify = True
            return [claim]
        specs = dict(tx.rows("specs_of", seqs=self._list([r[0] for r in got])))
        out = []
        for seq, tid, attempt, token, nd, _rs, _noop in got:
            tx.audit(now, "task_started", tid, _READY, _RUNNING, worker, attempt)
            spec = decode_spec(tid, specs[seq])
            claim = Claim(spec, attempt, token, seq, -nd, spec.deps)
            claim.extra.update(grp=pick.group, shape=sid)
            out.append(claim)
        if not out:
            return out
        tx.run("adm_running_add", grp=pick.group, n=len(out))
        g = groups[pick.group]
        g.running += len(out)
        if len(out) > 1:
            tx.audit(now, "gang_started", None, None, None, worker, gang=self._adm_now[sid][1],
                     tasks=[c.id for c in out], reason="gang_complete")  # fmt: skip
        if g.cap is not None and g.running >= g.cap:
            tx.audit(now, "group_capped", None, None, None, worker, group=pick.group,
                     running=g.running, cap=g.cap, reason="group_cap")  # fmt: skip
        return out

    def _adm_note_blocked(self, tx: Tx, offer: Offer, now: float) -> None:
        """``admission_blocked`` with the dominant reason of the best ready task, once per
        episode of this worker (not once per refused claim)."""
        if self._adm_blocked or offer.slots <= 0:
            return
        best = self._adm_best_head(tx.rows)
        if best is None:
            return
        self._adm_blocked = True
        sid, seq, tid, key = best
        groups = {n: GroupInfo(float(w), cap, int(r)) for n, w, cap, r in tx.rows("adm_groups")}
        why = self._adm_ready_reason(tx.rows, tid, seq, key, sid, [offer], groups)
        tx.audit(now, "admission_blocked", None, None, None, self._worker, first=tid,
                 free_slots=offer.slots, reason=why.code)  # fmt: skip

    def _adm_best_head(self, read: Any) -> tuple[int, int, str, tuple[int, int, int]] | None:
        """The best-keyed ready task over all shapes. O(shapes · log n)."""
        best = None
        for sid in self._adm_shape_rows(read):
            rows = read("adm_head", shape=sid, limit=1)
            if rows:
                seq, tid, nd, rs, _noop = rows[0]
                cand = (nd, rs, seq)
                if best is None or cand < best[3]:
                    best = (sid, seq, tid, cand)
        return best

    # -- explain ----------------------------------------------------------------------------------
    def _adm_ready_reason(
        self,
        read: Any,
        tid: str,
        seq: int,
        key: tuple[int, int, int],
        sid: int,
        offers: list[Offer],
        groups: dict[str, GroupInfo],
    ) -> Reason:
        """``ready_reason`` (shared with the memory store) fed from the database."""
        shapes = self._adm_shape_rows(read)
        marks = self._adm_gang_marks
        shape, gang, size = shapes[sid]
        groups.setdefault(shape.group, GroupInfo())
        view = None
        if gang is not None:
            ready = len(read("adm_head", shape=sid, limit=size or 1))
            reserved, released = marks.get(sid, (None, False))
            view = GangView(gang, size or 0, ready, reserved is not None, released)
        seen: dict[str, bool] = {}

        def has_ready(group: str) -> bool:
            if group not in seen:
                seen[group] = any(
                    read("adm_head", shape=s, limit=1)
                    for s, row in shapes.items()
                    if row[0].group == group
                )
            return seen[group]

        def behind() -> Reason:
            ahead = int(read("adm_ahead_in_shape", shape=sid, neg_depth=key[0], root_seq=key[1],
                             seq=key[2])[0][0])  # fmt: skip
            first = read("adm_head", shape=sid, limit=1) if ahead else []
            return behind_reason(tid, key, ahead, first[0][1] if first else None)

        return ready_reason(tid, shape, groups, offers, gang=view, has_ready=has_ready,
                            behind=behind)  # fmt: skip

    def worker_offers(self, now: float) -> list[Offer]:
        """What each live worker offers now: its slots, labels and resources (from
        ``workers.info``, written at register) less what its running tasks hold."""
        shapes = self._adm_shape_rows(self._read) if self.admission else {}
        busy: dict[str, list[tuple[int, int]]] = {}
        for w, sid, n in self._read("adm_running_by_worker"):
            busy.setdefault(w, []).append((sid, int(n)))
        offers = []
        for name, _host, _pid, last_seen, lease_s, info in self._read("workers_alive"):
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
            offers.append(Offer(max(0, slots - running), free, dict(d.get("labels") or {}),
                                slots, total or None))  # fmt: skip
        return offers

    def explain(self, task_id: str, now: float | None = None, offers: Any = None) -> Reason:
        """The one dominant reason ``task_id`` is not running, with numbers (the codes of
        ``conveyor.core.explain``). ``offers``: the workers' offers; by default those of the
        live workers in this store. Raises ``GraphError`` for an unknown task."""
        now = time.time() if now is None else now
        rows = self._read("adm_task", id=task_id)
        if not rows:
            raise GraphError(f"unknown task {task_id!r}")
        seq, state, nd, rs, sid, not_before = rows[0]
        if state == _PENDING:
            deps = json.loads(self._read("spec_of", seq=seq)[0][0]).get("deps", [])
            states = dict(self._read("adm_deps_states", ids=self._list(deps))) if deps else {}
            names = [d for d in deps if states.get(d) != _DONE]
            return Reason(
                "waiting_on_parents",
                f"{task_id} waits on {len(names)} unfinished parent(s): {', '.join(names[:5])}",
                {"parents": names, "waiting": len(names)},
            )
        if state == _RETRY_WAIT:
            until = None if not_before is None else float(not_before)
            return Reason(
                "retry_backoff",
                f"{task_id} waits for its retry backoff",
                {"until": until, "in_s": None if until is None else max(0.0, until - now)},
            )
        if state != _READY:
            label = _LABELS[state]
            return Reason(label, f"{task_id} is {label}", {})
        key = (int(nd), int(rs), int(seq))
        if sid == 0:  # a plain graph: one depth-first queue
            ahead = int(self._read("adm_ahead_plain", neg_depth=nd, root_seq=rs, seq=seq)[0][0])
            first = self._read("adm_first_plain") if ahead else []
            return behind_reason(task_id, key, ahead, first[0][0] if first else None)
        if offers is None:
            offers = self.worker_offers(now)
        groups = {n: GroupInfo(float(w), cap, int(r)) for n, w, cap, r in self._read("adm_groups")}
        return self._adm_ready_reason(self._read, task_id, seq, key, sid, list(offers), groups)

    # -- status -----------------------------------------------------------------------------------
    def admission_summary(self, now: float) -> dict[str, Any]:
        """Reasons of all pending, ready and retrying tasks by count, and each group's running,
        cap and weight. Cheap on a large graph: one grouped count by (shape, state) (a pass
        over the unfinished rows that ``status`` makes anyway), then one ``explain`` per shape
        (its head's reason stands for every ready task of the shape: they all fit or not, are
        capped or not, together) — never one per task."""
        reasons: dict[str, int] = {}

        def add(code: str, n: int) -> None:
            reasons[code] = reasons.get(code, 0) + n

        ready: dict[int, int] = {}
        for sid, state, n in self._read("adm_waiting_by_shape"):
            if state == _PENDING:
                add("waiting_on_parents", int(n))
            elif state == _RETRY_WAIT:
                add("retry_backoff", int(n))
            else:
                ready[int(sid)] = ready.get(int(sid), 0) + int(n)
        offers = self.worker_offers(now)
        groups = {n: GroupInfo(float(w), cap, int(r)) for n, w, cap, r in self._read("adm_groups")}
        for sid, n in sorted(ready.items()):
            if sid == 0:
                add("behind_higher_priority", n)
                continue
            head = self._read("adm_head", shape=sid, limit=1)
            if not head:
                continue
            seq, tid, nd, rs, _noop = head[0]
            why = self._adm_ready_reason(self._read, tid, seq, (nd, rs, seq), sid, offers,
                                     dict(groups))  # fmt: skip
            add(why.code, n)
        shares = {
            name: {"running": g.running, "cap": g.cap, "weight": g.weight}
            for name, g in groups.items()
        }
        return {"reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                "group_shares": shares}  # fmt: skip

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        st: dict[str, Any] = super().status(now)  # type: ignore[misc]
        st.update(self.admission_summary(now))
        return st
