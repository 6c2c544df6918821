"""Acting on preemption in one engine: when a ready task of a higher band waits and every slot
is taken, the running tasks ``core/preempt.choose_preemptions`` names are taken back.

The engine calls ``Preemption.check`` with its lock held, after a fill left no slot free. It is
cheap when there is nothing to do: it asks the store for ready tasks of a band higher than the
lowest band running (``Store.ready_heads``: one look at the heap head when there is none).
A thread task asked to give its slot up (``conveyor.current().preempted``) still holds it until
it returns: its slot counts as free for the next check, so no second task is preempted for the
same waiting task meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.core.ordering import MAX_BAND
from conveyor.errors import GraphError
from conveyor.model import TaskState
from conveyor.runtime.context import PREEMPT_REQUEST, PREEMPT_WITHDRAWN
from conveyor.runtime.executors import Running
from conveyor.runtime.inflight import InFlight
from conveyor.store.base import Store

if TYPE_CHECKING:  # (``core/preempt.py`` is imported when a decision is first needed)
    from conveyor.core.preempt import PreemptPolicy, RunningTask

__all__ = ["Preemption"]


class Preemption:
    def __init__(
        self,
        store: Store,
        inflight: InFlight,
        worker: str,
        policy: PreemptPolicy | None,
        slots: int,
    ) -> None:
        self.store = store
        self.slots = slots  # the engine's: what the fair shares divide
        self._borrowed: frozenset[str] = frozenset()
        self.inflight = inflight
        self.worker = worker
        self._policy = policy  # None: the default (``policy``)
        self._asked: list[Running] = []  # thread tasks asked for their slot (``_withdraw``)

    @property
    def policy(self) -> PreemptPolicy:
        """The policy given, or the default one (for ``None`` or anything else), made at first
        use: a run of one band never decides anything and need not import
        ``core/preempt.py``."""
        from conveyor.core.preempt import PreemptPolicy

        if not isinstance(self._policy, PreemptPolicy):
            self._policy = PreemptPolicy()
        return self._policy

    def check(self, now: float, free: int) -> int:
        """Preempt what the pure choice names so that waiting higher-band tasks can start;
        ``free`` slots are free now. Returns how many tasks went back to the store now (their
        slots are free for the next fill)."""
        store = self.store
        if self._asked:
            self._withdraw()
        best = store.ready_heads(MAX_BAND + 1, 1)  # the best ready task (none: one band only)
        if not best:
            return 0
        runs = list(self.inflight.running.values())
        asked = sum(1 for r in runs if PREEMPT_REQUEST in r.claim.extra)
        candidates = [r for r in runs if PREEMPT_REQUEST not in r.claim.extra]
        if not candidates:
            return 0
        lowest = max(r.claim.band for r in candidates)
        if best[0][1] >= lowest:
            return 0
        heads = store.ready_heads(lowest, len(candidates) + asked + max(0, free))
        if not heads:
            return 0
        from conveyor.core.preempt import WaitingTask, choose_preemptions

        per_group: dict[str, int] = {}
        for r in runs:
            per_group[r.claim.spec.group] = per_group.get(r.claim.spec.group, 0) + 1
        self._borrowed = store.borrowing(per_group, self.slots)
        me = frozenset({self.worker})
        waiting = [WaitingTask(task, band, float(k), me) for k, (task, band) in enumerate(heads)]
        by_id = {r.claim.id: r for r in candidates}
        plan = choose_preemptions(
            waiting, [self._running_task(r) for r in candidates],
            {self.worker: max(0, free) + asked}, now, self.policy,
        )  # fmt: skip
        back = 0
        for p in plan.preemptions:
            victims: list[Running] = [by_id[v] for v in p.victims]
            back += self.inflight.preempt(victims, p.waiting, now)
            self._asked.extend(v for v in victims if v.kind == "thread")
        return back

    @property
    def asked(self) -> bool:
        """Whether a thread task was asked for its slot and may not have given it up yet."""
        return bool(self._asked)

    def started(self, task: str) -> None:
        """``task`` starts now (on any slot): asks made for it are withdrawn."""
        for r in self._asked:
            extra = r.claim.extra
            if extra.get(PREEMPT_REQUEST) == task:
                extra[PREEMPT_WITHDRAWN] = extra.pop(PREEMPT_REQUEST)

    def _withdraw(self) -> None:
        """Thread tasks asked for a slot keep it until they look; once the task they were
        asked for started elsewhere (or ended), the ask is withdrawn (``PREEMPT_WITHDRAWN``:
        ``preempted`` reads False again), so no task is taken back for one that already ran."""
        running = self.inflight.running
        keep = []
        for r in self._asked:
            extra = r.claim.extra
            if running.get(r.claim.handle) is not r or PREEMPT_REQUEST not in extra:
                continue  # gave up or ended meanwhile
            if self._still_waits(r):
                keep.append(r)
            else:
                extra[PREEMPT_WITHDRAWN] = extra.pop(PREEMPT_REQUEST)
        self._asked = keep

    def tick_shared(self, now: float) -> int:
        """A shared store (durable workers): act on the requests other workers' decisions
        (or this one's) recorded for this worker's tasks, then take part in the global
        decision (``Store.plan_preemptions``: one transaction, so two workers never both
        preempt for one task). Returns how many tasks went back to the store now."""
        store, inflight = self.store, self.inflight
        back = 0
        requests = store.preempt_requests(self.worker)
        if requests:
            by_handle = {r.claim.handle: r for r in inflight.running.values()}
            for handle, (token, waiting) in requests.items():
                run = by_handle.get(handle)
                if run is None or run.claim.token != token or PREEMPT_REQUEST in run.claim.extra:
                    continue  # ended meanwhile (the next decision drops the request), or asked
                if not self._ready(waiting):
                    continue  # the waiting task started meanwhile (or ended): nothing to free
                back += inflight.preempt([run], waiting, now)
        store.plan_preemptions(now, self.policy)
        return back

    def _ready(self, task: str) -> bool:
        try:
            return self.store.result(task).state is TaskState.READY
        except GraphError:
            return False

    def _still_waits(self, run: Running) -> bool:
        """Whether the task ``run`` was asked to make room for is still ready (a thread task
        that has not given its slot up yet is left alone once that task started)."""
        return self._ready(str(run.claim.extra[PREEMPT_REQUEST]))

    def _running_task(self, run: Running) -> RunningTask:
        from conveyor.core.preempt import RunningTask

        claim = run.claim
        times, last = claim.extra.get("preempted", (0, None))
        return RunningTask(
            claim.id, self.worker, claim.band, run.started, claim.spec.group, claim.spec.gang,
            claim.spec.group in self._borrowed, last, times, run.kind not in ("thread", "process"),
        )  # fmt: skip
