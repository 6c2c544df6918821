"""The claim/complete cycle of one SQL store handle: claims (the plain depth-first path here,
admission's in ``sqladmission.py``), completions, failures, releases, and the batch a worker
with fast tasks claims ahead.

Costs on the hot path: a claim is one transaction with an index seek on ``tasks_ready``
(O(log n) per task); a completion updates the task and its own children (O(fan-out log n)).

Size: claims, completions, failures and releases share one handle's buffered claims and the
batch sizing (``_batch``), which decide together how much a transaction takes and gives back.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from conveyor.core.admission import Offer, Shape
from conveyor.errors import ResultError
from conveyor.model import TaskState
from conveyor.store.base import Claim
from conveyor.store.codec import ResultCodec
from conveyor.store.sqladmission import Admission
from conveyor.store.sqlsteps import (
    MAX_BATCH,
    NOOP_BATCH,
    Worker,
    due_retries,
    left_running,
    release_children,
    skip_downstream,
    start,
)
from conveyor.store.sqltx import Tx

T = TypeVar("T")
RUNNING, DONE, READY = TaskState.RUNNING, TaskState.DONE, TaskState.READY
FAILED, RETRY_WAIT = TaskState.FAILED, TaskState.RETRY_WAIT

#: Tasks that finish faster than this (claim to completion, EWMA) are claimed in batches: the
#: per-transaction cost then dominates, and a batch amortises it. Slower tasks: one at a time.
FAST_TASK_S = 0.005
#: A batch of tasks so fast that ``MAX_BATCH`` of them take less than this (seconds, claim to
#: completion, one after another) grows to about this much, up to the store's
#: ``max_batch`` (SQLite: ``FAST_BATCH``). Every claim transaction costs a fixed part (with
#: several worker processes: the hand-off of the write lock and SQLite re-reading the pages
#: another process changed, ~0.5-2 ms) that trivial tasks otherwise pay 32 at a time. What one
#: worker holds that others could run stays below what 32 tasks of ``FAST_TASK_S`` make (on
#: several slots a task's time counts its turns with the others, so a batch lasts less).
BATCH_WORK_S = 0.1
#: Completions seen before tasks may count as fast: a few, so that one quick task does not make
#: a worker take a batch of slow ones (the smoothing starts from the first, not from a guess).
FAST_AFTER = 4
#: Ready tasks a worker with labels/resources looks at per page when some do not fit it.
_FIT_WINDOW = 64
_FIT_PAGES = 16


class Atomic(Protocol):
    """Runs ``op`` in one write transaction (``SqlStore._atomic``)."""

    def __call__(self, op: Callable[[Tx], T], /) -> T: ...


class Claims:
    """Claims, completions and releases through one store handle."""

    def __init__(
        self,
        atomic: Atomic,
        worker: Worker,
        admission: Admission,
        codec: ResultCodec,
        *,
        rounds: int,
        lean: bool = False,
        wall: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.atomic = atomic
        #: Reads the store's clock (only differences of it are used: how long a claim took).
        self.wall = wall
        self.worker = worker
        self.admission = admission
        self.codec = codec
        #: Rounds of claim-and-complete-no-ops in one transaction (``SqlIo.claim_rounds``).
        self.rounds = rounds
        #: Read no room for no-ops into the window while the last claim met none
        #: (``SqlIo.locks_window``); ``_noops_seen``: whether it met one.
        self.lean = lean
        self._noops_seen = False
        #: The no-ops among the seqs the last ``_choose_from`` chose, in key order.
        self._chosen_noops: list[int] = []
        self.noop_batch = NOOP_BATCH
        self._buffer: deque[Claim] = deque()  # claimed in a batch, not yet handed out
        self._claimed_at: dict[int, float] = {}
        #: Seconds from claim to completion, smoothed from the first completion on; tasks
        #: count as fast after ``FAST_AFTER`` completions (until then: one claim at a time).
        self._ewma = 0.0
        self._timed_n = 0
        self._quick = 0.0  # a task's usual time, for the size of a batch (``_batch``)

    @property
    def ahead(self) -> int:
        """Claims taken in a batch and not handed out yet."""
        return len(self._buffer)

    # -- claiming -------------------------------------------------------------------------------
    def claim(
        self, worker: str, limit: int, now: float, lease_s: float, offer: Offer | None
    ) -> list[Claim]:
        self.worker.name = worker
        if self.admission.on:
            adm = self.admission
            out = self.atomic(lambda tx: adm.claim(tx, worker, limit, now, lease_s, offer))
        else:
            if offer is not None:  # a plain graph: any task fits a free slot
                limit = min(limit, offer.slots)
            out = []
            while self._buffer and len(out) < limit:
                out.append(self._buffer.popleft())
            if len(out) < limit:
                more = limit - len(out)
                out.extend(self.atomic(lambda tx: self._claim_in(tx, worker, more, now, lease_s)))
        for c in out:
            self._claimed_at[c.handle] = now
        return out

    def claim_one(self, worker: str, now: float, lease_s: float) -> Claim | None:
        """The engine's hot path: from this worker's batch, else one transaction that claims a
        batch when tasks are fast (see ``FAST_TASK_S``) or a single task otherwise."""
        if not self._buffer:
            if self.admission.on:
                got = self.claim(worker, 1, now, lease_s, None)
                return got[0] if got else None
            self.worker.name = worker
            limit = self._batch() if self._fast() else 1
            began = self.wall()
            got = self.atomic(lambda tx: self._claim_in(tx, worker, limit, now, lease_s))
            if not got:
                return None
            self._buffer.extend(got)
            # Timed from when it was handed out: ``now`` plus the wait for the transaction (with
            # several workers, for the lock), which is no part of how long the task takes.
            now += max(0.0, self.wall() - began)
        c = self._buffer.popleft()
        self._claimed_at[c.handle] = now
        return c

    def _claim_in(self, tx: Tx, worker: str, limit: int, now: float, lease_s: float) -> list[Claim]:
        """Claim up to ``limit`` tasks inside ``tx``: due retries first become ready, then the
        best keys that fit this worker. O(limit · log n) while tasks fit.

        With ``complete_noops``, no-op tasks met on the way are also completed in this
        transaction (up to ``noop_batch`` of them, beyond ``limit``); the children they ready
        are claimed in the next round of the same transaction, best key first.
        """
        due_retries(tx, now)
        out: list[Claim] = []
        real = 0
        noops = self.noop_batch if self.worker.profile.complete_noops else 0
        for round_ in range(self.rounds):
            if real >= limit:
                break
            chosen = self._choose(tx, limit - real, noops)
            if not chosen:
                break
            got = start(tx, chosen, worker, now, lease_s, noops, last=round_ == self.rounds - 1,
                        noop_seqs=self._chosen_noops)  # fmt: skip
            out.extend(got)
            inlined = sum(1 for c in got if c.extra.get("committed"))
            noops -= inlined
            real += len(got) - inlined
            if not inlined:
                break
        return out

    def _choose(self, tx: Tx, limit: int, noops: int) -> list[int]:
        """The seqs of the best ready tasks that fit this worker, in key order: up to ``limit``
        tasks that need running and up to ``noops`` no-op ones to complete on the spot when this
        worker completes no-ops (keyset pages over the ``tasks_ready`` index when some do not
        fit). Stops at the first task it may not take, so that claims follow the key.

        ``lean``: while the last claim met no no-op, the window holds ``limit`` rows, not
        ``limit + noops``, and a no-op met ends it (the next claim makes room for no-ops)."""
        lean = self.lean and not self._noops_seen and noops > 0
        budget = noops
        if lean:
            noops = 0
        self._noops_seen = False
        chosen = self._choose_from(tx, limit, noops)
        if lean and not chosen and self._noops_seen:
            return self._choose_from(tx, limit, budget)  # a no-op heads the queue
        return chosen

    def _choose_from(self, tx: Tx, limit: int, noops: int) -> list[int]:
        window = limit + noops
        self._chosen_noops = noop_seqs = list[int]()
        if self.worker.constrained:
            window = max(window, _FIT_WINDOW)
        chosen: list[int] = []
        inline = self.worker.profile.complete_noops
        # The window is read lazily: it allows for ``noops`` no-ops ahead, but a graph of real
        # tasks uses its first ``limit`` rows only (SQLite then reads just those; a fetch of
        # all of them cost most of a claim).
        name, after = "ready_window", dict[str, Any]()
        for _ in range(_FIT_PAGES):
            seen = 0
            last = None
            rows = tx.each(name, limit=window, **after)
            try:
                for row in rows:
                    seen += 1
                    last = row
                    seq, _nd, _rs, noop, labels, resources = row
                    if noop and inline:
                        self._noops_seen = True
                        if noops == 0:
                            # Not handed out as a task to run: each would cost the engine a
                            # transaction of its own to complete. The next claim completes it.
                            return chosen
                        noops -= 1
                        noop_seqs.append(seq)
                    elif limit > 0:
                        needs = labels is not None or resources is not None
                        if needs and not self._fits(labels, resources):
                            continue
                        limit -= 1
                    else:
                        return chosen  # the next best key is not ours to take this time
                    chosen.append(seq)
                    if limit == 0 and noops == 0:
                        return chosen
            finally:
                rows.close()
            if seen < window or last is None:
                break
            window = max(window, _FIT_WINDOW)
            name = "ready_window_after"
            after = {"neg_depth": last[1], "root_seq": last[2], "seq": last[0]}
        return chosen

    def _fits(self, labels: str | None, resources: str | None) -> bool:
        """Whether a task asking ``labels``/``resources`` (JSON) fits this worker: the
        admission rule (``Offer.fit_count``) on this worker's profile. Plain-path tasks ask
        nothing unless a submission switched the store to admission after this handle looked."""
        asked = Shape.of("", json.loads(resources or "{}"), json.loads(labels or "{}"))
        return self.worker.profile.offer(1).fit_count(asked) > 0

    # -- finishing ------------------------------------------------------------------------------
    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        if claim.extra.get("committed"):
            self._timed(claim, now)
            return True  # a no-op completed in the transaction that claimed it
        return self.complete_many([(claim, value)], now, 0)[0]

    def _timed(self, claim: Claim, now: float) -> None:
        """Fold the claim-to-completion time of ``claim`` into the EWMA (``FAST_TASK_S``): to
        when it finished (``extra["finished"]``, set by a caller that records it later, as
        group commit does), else to ``now``. A claim this handle no longer times (handed
        back, released, a late report) is no measurement."""
        started = self._claimed_at.pop(claim.handle, None)
        if started is None:
            return
        ended = claim.extra.get("finished", now)
        took = max(0.0, ended - started)
        first = self._timed_n == 0
        self._ewma = took if first else 0.8 * self._ewma + 0.2 * took
        # The batch's size follows the usual time: down at once, up slowly. One task that
        # waited for the engine (its slot's turn, a transaction) must not shrink the batch
        # that hides such waits; whether to batch at all is ``_ewma``'s to say, quickly.
        quick = self._quick
        self._quick = took if first or took < quick else 0.95 * quick + 0.05 * took
        self._timed_n += 1

    def _fast(self) -> bool:
        """Whether tasks here finish faster than ``FAST_TASK_S`` (claim them in batches)."""
        return self._timed_n >= FAST_AFTER and self._ewma < FAST_TASK_S

    def _batch(self) -> int:
        """How many fast tasks to claim at once: ``MAX_BATCH``, or about ``BATCH_WORK_S`` of
        tasks of their usual time when that is more; never more than the store's
        ``max_batch`` (``?batch=N``)."""
        quick = self._quick
        grown = int(BATCH_WORK_S / quick) if quick > 0 else self.worker.max_batch
        return min(self.worker.max_batch, max(MAX_BATCH, grown))

    def complete_many(
        self, done: Sequence[tuple[Claim, Any]], now: float, refill: int
    ) -> list[bool]:
        """Record the successes ``done`` in one transaction, then claim up to ``refill`` tasks
        in it for this worker's next ``claim_one`` calls (plain path; admission claims carry
        the engine's offer). One commit and one lock hand-off for the lot: what lets trivial
        tasks on many slots go as fast as the store can commit."""
        flags: list[bool | None] = []
        encoded: list[tuple[int, Claim, str | None, bytes | None]] = []
        for claim, value in done:
            self._timed(claim, now)
            if claim.extra.get("committed"):
                flags.append(True)  # a no-op completed in the transaction that claimed it
                continue
            try:
                kind, data = self.codec.encode(value, f"{claim.handle}-{claim.token}")
            except ResultError as exc:
                flags.append(self.fail(claim, str(exc), now, None))
                continue
            encoded.append((len(flags), claim, kind, data))
            flags.append(None)
        name = self.worker.name
        asked = refill > 0
        if self._fast():  # fast tasks: claim a batch ahead
            refill = max(refill, self._batch())
        refill = 0 if self.admission.on else max(0, refill - len(self._buffer))
        lease_s = self.worker.lease_s

        def op(tx: Tx) -> tuple[list[bool], list[Claim]]:
            done = [(c, kind, data) for _i, c, kind, data in encoded]
            ok = self._complete_all_in(tx, done, now, last=not (refill and name is not None))
            if refill and name is not None:
                return ok, self._claim_in(tx, name, refill, now, lease_s)
            return ok, []

        if encoded or (asked and refill):
            ok, got = self.atomic(op)
            self._buffer.extend(got)
        else:
            ok = []
        for (i, _c, kind, data), accepted in zip(encoded, ok, strict=True):
            flags[i] = accepted
            if not accepted:
                self.codec.discard(kind, data)
        return [bool(f) for f in flags]

    def _complete_all_in(
        self,
        tx: Tx,
        done: list[tuple[Claim, str | None, bytes | None]],
        now: float,
        *,
        last: bool = False,
    ) -> list[bool]:
        """Record the successes ``done`` inside ``tx``: the tasks (each fenced by its lease
        generation), their results, their children. One statement for the tasks and one for
        all their children (a lone claim takes the single-row statements): O(sum of fan-outs).
        """
        if not done:
            return []
        if len(done) == 1:
            c = done[0][0]
            hit = tx.count("complete_task", now=now, seq=c.handle, token=c.token) == 1
            finished = {c.handle} if hit else set()
        else:
            seqs = tx.as_list([c.handle for c, _k, _d in done])
            tokens = tx.as_list([c.token for c, _k, _d in done])
            finished = {r[0] for r in tx.rows("complete_claims", seqs=seqs, tokens=tokens, now=now)}
        worker = self.worker.name
        flags = []
        for claim, kind, data in done:
            ok = claim.handle in finished
            flags.append(ok)
            if not ok:
                continue
            if kind is not None:
                tx.run("store_result", seq=claim.handle, kind=kind, data=data)
            left_running(tx, claim.extra.get("grp"))
            tx.audit(now, "task_finished", claim.id, RUNNING, DONE, worker, claim.attempt)
        if len(finished) == 1:
            release_children(tx, now, last=last, seq=next(iter(finished)))
        elif finished:
            release_children(tx, now, last=last, seqs=tx.as_list(sorted(finished)))
        return flags

    def fail(self, claim: Claim, error: str, now: float, retry_at: float | None) -> bool:
        self._claimed_at.pop(claim.handle, None)
        worker = self.worker.name
        tid = claim.id

        def op(tx: Tx) -> bool:
            params = {"seq": claim.handle, "token": claim.token, "error": error, "now": now}
            if retry_at is not None:
                if tx.count("fail_retry", retry_at=retry_at, **params) != 1:
                    return False
                left_running(tx, claim.extra.get("grp"))
                tx.audit(now, "task_retrying", tid, RUNNING, RETRY_WAIT, worker, claim.attempt,
                         error, retry_at=retry_at)  # fmt: skip
                return True
            if tx.count("fail_final", **params) != 1:
                return False
            left_running(tx, claim.extra.get("grp"))
            tx.audit(now, "task_failed", tid, RUNNING, FAILED, worker, claim.attempt, error)
            skip_downstream(tx, [claim.handle], now, tid)
            return True

        return self.atomic(op)

    def release(self, claim: Claim, now: float) -> bool:
        self._forget([claim])
        return sum(self._release_many([claim], now, "task_ready", "released")) == 1

    def hand_back(self, claims: Sequence[Claim], now: float, reason: str) -> list[bool]:
        """Running tasks back to ready at once, each with a ``task_released`` row giving
        ``reason``; not a failed or lost attempt (``release_task`` takes the attempt back)."""
        self._forget(claims)
        return self._release_many(list(claims), now, "task_released", reason)

    def preempt(self, claims: Sequence[Claim], now: float, waiting: str) -> list[bool]:
        """Running tasks back to ready for the higher-band task ``waiting``: as ``hand_back``,
        with a ``task_preempted`` row; each task's preemptions are counted (anti-thrash and
        aging) and its request (``preempt_requests``) is done."""
        self._forget(claims)
        return self._release_many(list(claims), now, "task_preempted", "higher_band", by=waiting)

    def release_buffered(self, now: float) -> int:
        """Give back tasks claimed in a batch but not handed out (on shutdown)."""
        claims = list(self._buffer)
        self._buffer.clear()
        for c in claims:
            self._claimed_at.pop(c.handle, None)
        return sum(self._release_many(claims, now, "task_ready", "released"))

    def _forget(self, claims: Sequence[Claim]) -> None:
        for c in claims:
            self._claimed_at.pop(c.handle, None)
            try:
                self._buffer.remove(c)
            except ValueError:
                pass

    def _release_many(
        self, claims: list[Claim], now: float, event: str, reason: str, **fields: Any
    ) -> list[bool]:
        worker = self.worker.name
        preempted = event == "task_preempted"

        def op(tx: Tx) -> list[bool]:
            flags = []
            for c in claims:
                ok = tx.count("release_task", seq=c.handle, token=c.token, now=now) == 1
                if ok:
                    left_running(tx, c.extra.get("grp"))
                    tx.audit(now, event, c.id, RUNNING, READY, worker, c.attempt,
                             reason=reason, **fields)  # fmt: skip
                    if preempted:
                        tx.run("preempt_count", seq=c.handle, now=now)
                if preempted:
                    tx.run("preempt_taken", seq=c.handle)
                flags.append(ok)
            tx.notify = any(flags)
            return flags

        return self.atomic(op) if claims else []
