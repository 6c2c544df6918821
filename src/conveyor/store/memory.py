"""The in-process store: the pure ``Frontier`` plus specs, attempts and results in lists.

Used by ``conveyor run`` without ``--db``. One thread (the engine's) calls it; nothing here
locks. Leases never expire: the engine that claims a task is the one that runs it. It reads no
clock: event times are the ``now`` each call is given.

Size: it implements the whole ``Store`` interface for one process; every rule it applies is a
pure function of ``core`` (frontier, admission, explain, preempt).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from conveyor.bulk import paused_gc
from conveyor.core.frontier import DONE, FAILED, READY, RUNNING, Frontier
from conveyor.core.offer import needs_admission
from conveyor.core.ordering import band_number
from conveyor.core.transitions import SKIPPABLE, upstream_failed
from conveyor.errors import GraphError, GraphMismatchError
from conveyor.model import GraphSpec, TaskResult, TaskSpec, TaskState
from conveyor.store.base import Claim, GraphFingerprints, OpenedGraph, Store, WorkerProfile

if TYPE_CHECKING:
    # Admission, borrowing, why-pending reasons and preemption are imported where first
    # needed: a plain graph of one group and one band (most runs) never needs them.
    from conveyor.core.admission import GroupInfo
    from conveyor.core.borrow import BorrowPolicy
    from conveyor.core.explain import Reason
    from conveyor.core.offer import Offer

_NO_VALUE = object()
_get_id = operator.attrgetter("id")
_get_deps = operator.attrgetter("deps")


class MemoryStore(Store):
    url = "memory://"

    def __init__(self, *, gang_wait_s: float = 30.0) -> None:
        self.gang_wait_s = gang_wait_s
        self.frontier = Frontier()
        #: Each task's spec; ``None`` for a bare no-op until its spec is made (``_spec``)
        #: from its parents in ``_bare``.
        self.specs: list[TaskSpec | None] = []
        #: The parents of bare no-ops: (first task, each task's parents from there) per batch
        #: of them (a graph file's ``ParentIds`` or a dict's own lists: no copy per task).
        self._bare: list[tuple[int, Sequence[Sequence[str]]]] = []
        self.attempts: list[int] = []
        self.values: list[Any] = []
        self.errors: dict[int, str] = {}
        self.graph_names: list[str] = []
        self.groups: dict[str, GroupInfo] = {}
        #: The graph's (core/borrow.py); ``None``: ``DEFAULT_POLICY``, as an admission queue's.
        self.borrow: BorrowPolicy | None = None
        self._blocked = False
        self._reserved_seen: set[str] = set()
        self._audit: dict[int, list[dict[str, Any]]] | None = None
        self._worker = ""  # the one engine's worker name, for the events after task_started
        self._profile = WorkerProfile()
        self._meta: dict[str, str] = {}
        #: Tasks preempted so far: ``index -> (times, last_at)`` (``preempt``).
        self._preempted: dict[int, tuple[int, float]] = {}
        #: Run-time children: ``child index -> its submitter's`` (a parent that runs again
        #: submits the same children again; they are the tasks it submitted before).
        self._submitted_by: dict[int, int] = {}
        #: Every task added so far came from a structure-only graph: all are no-ops.
        self._noop_only = True

    def configure(self, profile: WorkerProfile) -> None:
        self._profile = profile

    def keep_history(self) -> None:
        """Record an audit trail in memory too (off by default: it costs per transition)."""
        if self._audit is None:
            self._audit = {}

    # -- graphs ---------------------------------------------------------------------------------
    def open_graph(
        self,
        graph: GraphSpec,
        now: float,
        *,
        replace: bool = False,
        fingerprints: GraphFingerprints | None = None,
    ) -> OpenedGraph:
        # One process, one run: nothing to resume, so fingerprints have nothing to compare.
        if graph.name in self.graph_names:
            raise GraphMismatchError(f"graph {graph.name!r} was already submitted to this store")
        if graph.groups or graph.borrow is not None:
            from conveyor.core.admission import GroupInfo
            from conveyor.core.borrow import BorrowPolicy
        for name, g in graph.groups.items():
            info = self.groups.setdefault(name, GroupInfo())
            info.weight, info.cap = g.weight, g.cap
            info.borrow = None if g.borrow is None else BorrowPolicy.parse(g.borrow)
        if graph.borrow is not None:
            self.borrow = BorrowPolicy.parse(graph.borrow)
            if self.frontier.queue is not None:
                self.frontier.queue.borrow = self.borrow
        columns = graph.columns
        if columns is not None and self.frontier.queue is None and not self.groups:
            # Bare no-ops (ids and parents): each one's spec is made if it is claimed alone.
            self._add(None, *columns, None, now, graph.layout, True)
        else:
            tasks = graph.tasks
            ids, deps = list(map(_get_id, tasks)), list(map(_get_deps, tasks))
            self._add(tasks, ids, deps, None, now, graph.layout, graph.structure_only)
        self.graph_names.append(graph.name)
        return OpenedGraph(graph.name, len(graph), False, self.frontier.unfinished())

    def submit_children(self, parent: Claim, tasks: list[TaskSpec], now: float) -> list[str]:
        index, by = self.frontier.index, self._submitted_by
        fresh = [t for t in tasks if by.get(index.get(t.id, -1)) != parent.handle]
        if fresh:
            first = len(self.specs)
            ids, deps = list(map(_get_id, fresh)), list(map(_get_deps, fresh))
            self._add(fresh, ids, deps, parent.handle, now)
            by.update(dict.fromkeys(range(first, len(self.specs)), parent.handle))
        return [t.id for t in tasks]

    def _add(
        self,
        tasks: list[TaskSpec] | None,
        ids: list[str],
        deps: Sequence[Sequence[str]],
        submitter: int | None,
        now: float,
        known: Any = None,
        structure_only: bool = False,
    ) -> None:
        """Add tasks (``ids[k]`` waits on ``deps[k]``): their specs, or ``None`` for bare
        no-ops, whose parents stay in ``deps`` until a spec is made (``_spec``)."""
        shapes: list[int] | None = None
        gangs: dict[int, str] = {}
        if not (structure_only and self.frontier.queue is None and not self.groups):
            # (a structure-only graph needs no admission: no scan of every task for that)
            assert tasks is not None  # (bare no-ops come only while admission is off)
            shapes, gangs = self._admission_of(tasks)
        skipped_before = self.frontier.counts[TaskState.SKIPPED]
        with paused_gc():
            new, ready = self.frontier.add(
                ids, deps, submitter=submitter, shapes=shapes, gangs=gangs, known_layout=known,
                bands=None if structure_only or tasks is None else _bands(tasks),
            )  # fmt: skip
        if tasks is None:
            self._bare.append((len(self.specs), deps))
            self.specs.extend([None] * len(ids))
        else:
            self.specs.extend(tasks)
        self._noop_only = self._noop_only and structure_only
        n = len(ids)
        self.attempts.extend([0] * n)
        self.values.extend([_NO_VALUE] * n)
        emit = self.emit
        if emit is not None:
            for i in new:
                emit({"ts": now, "event": "task_submitted", "task": self.frontier.ids[i]})
            for i in ready:
                emit({"ts": now, "event": "task_ready", "task": self.frontier.ids[i]})
        if self.frontier.counts[TaskState.SKIPPED] != skipped_before:  # scan only then
            skipped = [i for i in new if self.frontier.state[i] == TaskState.SKIPPED]
            self._emit_skipped(skipped, now)

    def _admission_of(self, tasks: list[TaskSpec]) -> tuple[list[int] | None, dict[int, str]]:
        """Shapes and gangs of new tasks; switches admission on at the first task that needs it
        (a group other than default, resources, labels, a gang, or declared groups)."""
        f = self.frontier
        if f.queue is None and not needs_admission(tasks, self.groups):
            return None, {}
        from conveyor.core.admission import AdmissionQueue, GroupInfo, Shape, plan_admission

        if f.queue is None:
            queue = AdmissionQueue(self.groups, gang_wait_s=self.gang_wait_s)
            if self.borrow is not None:
                queue.borrow = self.borrow
            self.groups = queue.groups
            f.enable_admission(queue, queue.shape_id(Shape("default")))
        q = f.queue
        assert q is not None
        planned, gangs, sizes = plan_admission(tasks, lambda g: self.groups.get(g, GroupInfo()).cap)
        shapes = [q.shape_id(shape) for shape in planned]
        for gang, size in sizes.items():
            q.declare_gang(gang, size)
        return shapes, gangs

    def set_endpoint_cap(self, endpoint: str, cap: int) -> None:
        """Let at most ``cap`` tasks calling ``endpoint`` run at once (the engine follows the
        endpoint's adaptive limit)."""
        if self.frontier.queue is not None:
            self.frontier.queue.set_endpoint_cap(endpoint, cap)

    @property
    def admission(self) -> bool:
        return self.frontier.queue is not None

    def endpoints(self) -> list[str]:
        q = self.frontier.queue
        if q is None:
            return []
        return sorted({s.endpoint for s in q.shapes if s.endpoint is not None})

    def unfit(self, offer: Offer, now: float) -> str | None:
        f = self.frontier
        q = f.queue
        if q is None:
            return None
        bad = {sid for sid, shape in enumerate(q.shapes) if offer.fit_count(shape) <= 0}
        if not bad:
            # A gang needs all its members placed at once on this one worker.
            for i, gang in f.gang_of.items():
                size = q.gang_size.get(gang, 0)
                fit = offer.fit_count(q.shapes[f.shape[i]])
                if fit < size and not TaskState(f.state[i]).finished:
                    return (
                        f"gang {gang!r} can never run on this worker: it needs {size} matching "
                        f"slots at once and this worker offers at most {fit}"
                    )
            return None
        from conveyor.core.explain import explain

        for i, sid in enumerate(f.shape):
            if sid in bad and not TaskState(f.state[i]).finished:
                why = explain(f, i, now, [offer], parents=[])
                if why.code == "waiting_on_parents":
                    shape = q.shapes[sid]
                    why_text = f"it asks {shape.resources or ''} {shape.constraints or ''}"
                else:
                    why_text = why.message
                return f"task {f.ids[i]!r} can never run on this worker: {why_text}"
        return None

    # -- claim/complete -------------------------------------------------------------------------
    def claim(
        self, worker: str, limit: int, now: float, lease_s: float, offer: Offer | None = None
    ) -> list[Claim]:
        if offer is not None or self.frontier.queue is not None:
            return self._claim_admitted(worker, now, offer or self._profile.offer(limit))
        out = []
        for _ in range(limit):
            c = self.claim_one(worker, now, lease_s)
            if c is None:
                break
            out.append(c)
        return out

    def claim_one(self, worker: str, now: float, lease_s: float = 0.0) -> Claim | None:
        """The hot path of ``claim`` for one task: a heap pop and a small record."""
        f = self.frontier
        if f._delayed and f._delayed[0][0] <= now:
            self._release_due(now)
        i = f.pop()
        if i is None:
            return None
        self._worker = worker
        return self._started(i, worker, now)

    def _started(self, i: int, worker: str, now: float) -> Claim:
        """Task ``i``'s next attempt, started on ``worker``: its claim."""
        attempt = self.attempts[i] + 1
        self.attempts[i] = attempt
        spec = self._spec(i)
        if self.emit is not None:
            self._record(i, "task_started", now, worker=worker, attempt=attempt)
        c = Claim(spec, attempt, attempt, i, self.frontier.depth[i], spec.deps)
        if self.frontier.band is not None:
            self._note_band(c, i)
        return c

    def finish_noops(self, worker: str, now: float, limit: int) -> int:
        """The run of no-op tasks in one loop of the frontier's (``Frontier.finish_ready``);
        0 while events or the audit trail are recorded (they are per task: ``claim_one``)."""
        if self.emit is not None or self._audit is not None:
            return 0
        f = self.frontier
        if f._delayed and f._delayed[0][0] <= now:
            self._release_due(now)
        done = f.finish_ready(limit, None if self._noop_only else self._is_real)
        if done:
            self._worker = worker
            attempts, values = self.attempts, self.values
            for i in done:
                attempts[i] += 1
                values[i] = None
        return len(done)

    def _is_real(self, i: int) -> bool:
        """Whether task ``i`` runs something (a function or a command): not a no-op."""
        spec = self.specs[i]
        return isinstance(spec, TaskSpec) and (spec.fn is not None or spec.cmd is not None)

    def _spec(self, i: int) -> TaskSpec:
        """Task ``i``'s spec (a bare no-op's is made now, once)."""
        spec = self.specs[i]
        if spec is None:
            first, deps = next((f, d) for f, d in reversed(self._bare) if f <= i)
            spec = self.specs[i] = TaskSpec.bare(self.frontier.ids[i], tuple(deps[i - first]))
        return spec

    def _claim_admitted(self, worker: str, now: float, offer: Offer) -> list[Claim]:
        """One admission decision: a task, a whole gang, or nothing."""
        f = self.frontier
        if f._delayed and f._delayed[0][0] <= now:
            self._release_due(now)
        self._worker = worker
        picked = f.pick(offer, now)
        if self.emit is not None:
            self._admission_events(picked, offer, now)
        return [self._started(i, worker, now) for i in picked]

    def _note_band(self, c: Claim, i: int) -> None:
        """A claim's band, and its past preemptions (bands in use only: no cost otherwise)."""
        assert self.frontier.band is not None
        c.band = self.frontier.band[i]
        seen = self._preempted.get(i)
        if seen is not None:
            c.extra["preempted"] = seen

    def _admission_events(self, picked: list[int], offer: Offer, now: float) -> None:
        """``gang_started``, ``group_capped``, ``gang_reserved`` and ``admission_blocked``,
        each once per episode (not once per refused claim)."""
        f = self.frontier
        q = f.queue
        assert q is not None and self.emit is not None
        if picked:
            self._blocked = False
            i = picked[0]
            group = q.shapes[f.shape[i]].group
            if len(picked) > 1:
                tasks = [f.ids[k] for k in picked]
                self.emit({"ts": now, "event": "gang_started", "gang": f.gang_of.get(i),
                           "tasks": tasks, "reason": "gang_complete"})  # fmt: skip
            g = q.groups[group]
            if g.cap is not None and g.running >= g.cap:
                self.emit({"ts": now, "event": "group_capped", "group": group,
                           "running": g.running, "cap": g.cap, "reason": "group_cap"})  # fmt: skip
            return
        for gang, since in q.reservations.items():
            if gang not in self._reserved_seen:
                self._reserved_seen.add(gang)
                self.emit({"ts": now, "event": "gang_reserved", "gang": gang, "since": since,
                           "reason": "gang_incomplete"})  # fmt: skip
        if offer.slots > 0 and f.counts[READY] and not self._blocked:
            self._blocked = True
            reason = self._blocked_reason(now, offer)
            self.emit({"ts": now, "event": "admission_blocked", "ready": f.counts[READY],
                       "free_slots": offer.slots, "reason": reason})  # fmt: skip

    def _blocked_reason(self, now: float, offer: Offer) -> str:
        """The dominant reason of the best-keyed ready task (explain is O(shapes) here)."""
        f = self.frontier
        q = f.queue
        assert q is not None
        heads = [h[0] for h in q.heaps if h and f.state[h[0][2]] == READY]
        if not heads:
            return "gang_incomplete"
        i = min(heads)[2]
        from conveyor.core.explain import explain

        return explain(f, i, now, [offer], parents=[]).code

    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        i = claim.handle
        f = self.frontier
        if f.state[i] != RUNNING or self.attempts[i] != claim.token:
            return False
        self.values[i] = value
        ready = f.complete(i)
        if self.emit is not None or self._audit is not None:
            self._record(i, "task_finished", now, worker=self._worker, attempt=claim.attempt)
            for k in ready:
                self._record(k, "task_ready", now)
        return True

    def fail(self, claim: Claim, error: str, now: float, retry_at: float | None) -> bool:
        i = claim.handle
        f = self.frontier
        if f.state[i] != RUNNING or self.attempts[i] != claim.token:
            return False
        self.errors[i] = error
        if retry_at is not None:
            f.defer(i, retry_at)
            self._record(i, "task_retrying", now, worker=self._worker, attempt=claim.attempt,
                         error=error, retry_at=retry_at)  # fmt: skip
            return True
        skipped = f.fail(i)
        self._record(i, "task_failed", now, worker=self._worker, attempt=claim.attempt,
                     error=error)  # fmt: skip
        self._emit_skipped(skipped, now, cause=claim.spec.id)
        return True

    def release(self, claim: Claim, now: float) -> bool:
        i = claim.handle
        if self.frontier.state[i] != RUNNING:
            return False
        self.attempts[i] -= 1
        self.frontier.requeue(i)
        return True

    def hand_back(self, claims: Sequence[Claim], now: float, reason: str) -> list[bool]:
        return self._give_back(claims, now, "task_released", reason=reason)

    def preempt(self, claims: Sequence[Claim], now: float, waiting: str) -> list[bool]:
        flags = self._give_back(claims, now, "task_preempted", reason="higher_band", by=waiting)
        for c, ok in zip(claims, flags, strict=True):
            if ok:
                times, _ = self._preempted.get(c.handle, (0, now))
                self._preempted[c.handle] = (times + 1, now)
        return flags

    def _give_back(
        self, claims: Sequence[Claim], now: float, event: str, **fields: Any
    ) -> list[bool]:
        out = []
        for c in claims:
            i = c.handle
            ok = self.frontier.state[i] == RUNNING and self.attempts[i] == c.token
            if ok:
                self.release(c, now)
                self._record(i, event, now, worker=self._worker, attempt=c.attempt, **fields)
            out.append(ok)
        return out

    def borrowing(self, running: Mapping[str, int], total: int) -> frozenset[str]:
        q = self.frontier.queue
        if q is None:
            return frozenset()  # one group only
        from conveyor.core.borrow import borrowing

        weights = {name: g.weight for name, g in self.groups.items()}
        active = [name for name, n in q.unfinished.items() if n > 0]
        return borrowing(running, weights, active, total)

    def ready_heads(self, below_band: int, limit: int) -> list[tuple[str, int]]:
        f = self.frontier
        if f.band is None or limit <= 0:
            return []
        from conveyor.core.preempt import best_ready

        heaps = [h for h in f.queue.heaps if h] if f.queue is not None else [f.heap_keys()]
        return [(f.ids[i], band) for i, band in best_ready(heaps, f.state, below_band, limit)]

    def cancel_unfinished(self, now: float, reason: str = "interrupted") -> int:
        """Cancel every task not yet started (after ``--fail-fast`` or Ctrl-C), each with a
        ``task_cancelled`` event giving ``reason``."""
        f = self.frontier
        n = 0
        for i, s in enumerate(f.state):
            if s in SKIPPABLE:
                f.cancel(i)
                self._record(i, "task_cancelled", now, reason=reason)
                n += 1
        return n

    # -- queries --------------------------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        return self.frontier.next_due()

    def unfinished(self) -> int:
        return self.frontier.unfinished()

    def counts(self) -> dict[str, int]:
        return {s.label: n for s, n in zip(TaskState, self.frontier.counts, strict=True)}

    def parent_values(self, claim: Claim) -> dict[str, Any]:
        index = self.frontier.index
        values = self.values
        return {p: values[index[p]] for p in claim.parents}

    def value_of(self, task_id: str) -> Any:
        v = self.values[self.frontier.get(task_id)]
        if v is _NO_VALUE:
            raise GraphError(f"task {task_id!r} has no result yet")
        return v

    def result(self, task_id: str, *, value: bool = True) -> TaskResult:
        i = self.frontier.get(task_id)
        state = TaskState(self.frontier.state[i])
        v = self.values[i]
        return TaskResult(task_id, state, None if v is _NO_VALUE or not value else v,
                          self.errors.get(i), self.attempts[i])  # fmt: skip

    def history(self, task_id: str) -> list[dict[str, Any]]:
        if self._audit is None:
            return []
        return list(self._audit.get(self.frontier.get(task_id), []))

    def status(self, now: float) -> dict[str, Any]:
        st = super().status(now)
        groups: dict[str, dict[str, int]] = {}
        labels = [s.label for s in TaskState]
        for spec, state in zip(self.specs, self.frontier.state, strict=True):
            by_state = groups.setdefault(
                spec.group if isinstance(spec, TaskSpec) else "default", {}
            )
            label = labels[state]
            by_state[label] = by_state.get(label, 0) + 1
        st["groups"] = groups
        return st

    def task_info(self, task_id: str) -> dict[str, Any]:
        from conveyor.store.codec import encode_spec, stored_spec  # (with pickle: not per run)

        f = self.frontier
        i = f.get(task_id)
        spec = self._spec(i)
        ids = f.ids
        return {
            "id": task_id, "state": TaskState(f.state[i]).label, "group": spec.group,
            "attempt": self.attempts[i], "lost": 0, "worker": None, "error": self.errors.get(i),
            "updated": None, "not_before": None, "fingerprint": None,
            "parents": list(spec.deps), "children": [ids[c] for c in sorted(f.children[i] or ())],
            "submitted_by": None, "spec": stored_spec(encode_spec(spec)),
        }  # fmt: skip

    def task_ids(self, states: Sequence[str], limit: int) -> list[str]:
        want = {int(TaskState.from_label(s)) for s in states}
        f = self.frontier
        return list(islice((t for t, st in zip(f.ids, f.state, strict=True) if st in want), limit))

    def task_groups(self, ids: Sequence[str]) -> dict[str, str]:
        index = self.frontier.index
        return {t: self._spec(index[t]).group for t in ids if t in index}

    def meta_get(self, key: str) -> str | None:
        return self._meta.get(key)

    def meta_set(self, key: str, value: str) -> None:
        self._meta[key] = value

    def graph_name(self) -> str | None:
        return self.graph_names[-1] if self.graph_names else None

    def explain(self, task_id: str, now: float, offers: list[Offer] | None = None) -> Reason:
        """The dominant reason ``task_id`` is not running (see ``conveyor.core.explain``)."""
        f = self.frontier
        i = f.get(task_id)
        parents = [f.index[p] for p in self._spec(i).deps]
        from conveyor.core.explain import explain

        return explain(f, i, now, offers or [], parents=parents)

    def state_of(self, task_id: str) -> TaskState:
        return TaskState(self.frontier.state[self.frontier.get(task_id)])

    def is_done(self, i: int) -> bool:
        return self.frontier.state[i] == DONE

    def is_failed(self, i: int) -> bool:
        return self.frontier.state[i] == FAILED

    def age_ready(self, now: float) -> int:
        return len(self.frontier.age(now))

    # -- helpers --------------------------------------------------------------------------------
    def _release_due(self, now: float) -> None:
        for i in self.frontier.release_due(now):
            self._record(i, "task_ready", now)

    def _emit_skipped(self, skipped: list[int], now: float, cause: str | None = None) -> None:
        for k in skipped:
            self.errors[k] = upstream_failed(cause)
            self._record(k, "task_skipped", now, reason="upstream_failed", cause=cause)

    def _record(self, i: int, event: str, now: float, **fields: Any) -> None:
        if self.emit is None and self._audit is None:
            return
        ev = {"ts": now, "event": event, "task": self.frontier.ids[i], **fields}
        if self._audit is not None:
            self._audit.setdefault(i, []).append(ev)
        if self.emit is not None:
            self.emit(ev)


def _bands(tasks: list[TaskSpec]) -> list[int | None] | None:
    """The band numbers the tasks name (``None``: inherit), or ``None`` when none names one."""
    if all(t.band is None for t in tasks):
        return None
    return [None if t.band is None else band_number(t.band) for t in tasks]
