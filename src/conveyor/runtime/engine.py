"""The loop that runs a graph: claim -> execute -> complete, until nothing is left.

Readiness is event-driven (the store touches only a finished task's children) and the next task
is always the best depth-first key among the ready ones, so with one slot and no-op tasks the
start order is exactly the key order. No-op tasks and ``executor="inline"`` tasks finish where
they are claimed, with no hop to a thread (a hop costs ~8-80 us).

This module is the loop: claiming, starting, waiting for messages. Each other job has its own
module: ``messages`` (what the queue carries), ``executors`` (where task code runs), ``launch``
(the function, executor and arguments of a claimed task), ``inflight`` (what runs, and recording
how it ended), ``children`` (children submitted at run time and parents waiting on them),
``endpoints`` (following adaptive endpoint limits), ``capacity`` (the worker's offer and fit),
``deadlines`` (timeouts) and ``idle`` (back-off on shared stores).

Size: the loop's hot path (claiming, starting, group commit, a pool thread claiming its own next
task) shares the engine's state under one lock and runs per task, so it stays in one class; the
jobs that could leave did (``launch``, ``inflight``, ``children``, ``deadlines``,
``preemption``, ``idle``, ``endpoints``, ``messages``).
"""

from __future__ import annotations

import os
import queue
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.core.retry import DEFAULT_RETRY, RetryPolicy
from conveyor.core.timelimit import would_finish
from conveyor.errors import ConveyorError
from conveyor.events import EventSink
from conveyor.model import TaskResult, TaskSpec, TaskState
from conveyor.runtime.capacity import Capacity
from conveyor.runtime.children import Children
from conveyor.runtime.endpoints import EndpointFollower
from conveyor.runtime.executors import Executors, Launch, Running
from conveyor.runtime.heartbeat import Heartbeat
from conveyor.runtime.idle import IdleBackoff
from conveyor.runtime.inflight import InFlight, RunStats
from conveyor.runtime.launch import Launcher
from conveyor.runtime.messages import (
    AwaitChild,
    Finished,
    HandBack,
    Interrupt,
    Message,
    Parked,
    Recorded,
    StartInline,
    Stop,
    SubmitChildren,
    Wake,
)
from conveyor.runtime.preemption import Preemption
from conveyor.runtime.runtimes import Runtimes
from conveyor.store.base import Claim, Store
from conveyor.workerid import default_worker_id, slurm_info

if TYPE_CHECKING:
    from conveyor.core.explain import Reason
    from conveyor.core.offer import Offer
    from conveyor.core.preempt import PreemptPolicy
    from conveyor.limiter import EndpointLimiter, EndpointStatistics
    from conveyor.runtime.rayexec import RayExecutor

__all__ = ["Engine", "RunStats"]

_RESULT_BATCH = 256  # results handed to a run_iter consumer at a time, mid-fill
_NO_BATCH = 1 << 62
#: Group commit on a shared store: successes wait (their slots already free) until this many
#: are parked, the oldest has waited ``_GROUP_WAIT_S``, or the tasks claimed ahead run out;
#: then one transaction records them all and claims what comes next.
_GROUP_MAX = 64
_GROUP_WAIT_S = 0.002


class Engine:
    """Runs what a store hands out until nothing is left (or ``idle_exit`` passes).

    Time comes from ``clock`` (``clock.wall()``: the unix seconds the store records). The
    engine thread and, for sync functions on a private store, the pool threads share the store
    under one lock: a pool thread that finishes a task records it and claims the next task
    itself (running it at once when it is a sync function too), so a chain of small tasks
    costs no hand-off between threads.
    """

    def __init__(
        self,
        store: Store,
        *,
        workers: int = 4,
        worker_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        retry: RetryPolicy = DEFAULT_RETRY,
        seed: int | None = None,
        fail_fast: bool = False,
        lease_s: float = 30.0,
        idle_exit: float | None = None,
        max_tasks: int | None = None,
        executor: str | None = None,
        functions: dict[str, TaskSpec] | None = None,
        emit: EventSink | None = None,
        on_result: Callable[[TaskResult], None] | None = None,
        on_tick: Callable[[Engine], None] | None = None,
        on_claim: Callable[[Claim], None] | None = None,
        tick_s: float = 0.2,
        resources: dict[str, float] | None = None,
        labels: dict[str, Any] | None = None,
        limiter: EndpointLimiter | None = None,
        endpoint_headroom: float = 0.5,
        until: float | None = None,
        ray: RayExecutor | None = None,
        preempt: bool | PreemptPolicy = True,
    ) -> None:
        if workers < 1:
            raise ConveyorError("workers must be >= 1")
        self.store = store
        self.slots = workers
        self.worker_id = worker_id or default_worker_id()
        self.clock = clock
        self.lease_s = lease_s
        self.idle_exit = idle_exit
        self.max_tasks = max_tasks
        self.on_result = on_result
        self.on_tick = on_tick
        #: Called with each claim this engine takes, before it starts (``conveyor.observe``
        #: learns a task's group and function there); on the thread that claimed it.
        self.on_claim = on_claim
        self.tick_s = tick_s
        #: Unix seconds by which this worker must be done (a SLURM job's end): it claims only
        #: tasks whose ``expected_s`` fits before then, and at ``until`` hands back what runs.
        self.until = until
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        post = self._queue.put
        functions = functions if functions is not None else {}
        self._children = Children(store, post, clock, functions)
        self._endpoints = EndpointFollower(store, clock, emit, endpoint_headroom, limiter)
        self._capacity = Capacity(workers, resources, labels)
        self._executors = Executors(workers, post, self._thread_done, ray,
                                    wake=lambda: post(Wake()))  # fmt: skip
        if ray is not None:  # a lost cluster: what ran there goes back to the store
            ray.attach(post, self.hand_back)
        self._inflight = InFlight(
            store, self._executors, self._capacity, self._children, retry, random.Random(seed),
            fail_fast,
        )  # fmt: skip
        self._launcher = Launcher(
            functions, executor, store=store, inflight=self._inflight, executors=self._executors,
            children=self._children, limiter=partial(getattr, self._endpoints, "limiter"),
            worker_id=self.worker_id, clock=clock,
        )  # fmt: skip
        #: Past runs per task kind: shared with the store's other workers, and what a worker
        #: with an end judges tasks without ``expected_s`` by (``runtime/runtimes.py``).
        self._runtimes = Runtimes(store, self.worker_id) if store.shared else None
        self._inflight.runtimes = self._runtimes
        self._out_of_time = False  # a task would not finish before ``until``: claim no more
        #: Takes running tasks back for waiting tasks of a higher band (``preempt=False``: off;
        #: it only ever acts when the run has more than one band).
        self._preemption = None
        if preempt is not False:
            policy = None if preempt is True else preempt  # (None: the default, made when needed)
            self._preemption = Preemption(store, self._inflight, self.worker_id, policy, workers)
        self.stats: RunStats = self._inflight.stats
        self._running = self._inflight.running
        self._lock = threading.Lock()  # guards the store and the bookkeeping below
        self._chain = not store.shared  # pool threads may record and claim themselves
        self._pending_starts = 0  # claims handed to the engine thread to start
        self._heart: Heartbeat | None = None  # shared stores: renews leases from its own thread
        self._want = True  # results are collected (for run_iter or on_result)
        self._yield = True  # results are yielded (run_iter)
        self._sigint = False  # a first Ctrl-C was posted: act on it between steps
        self._hand_back: str | None = None  # why to hand back what runs (set once)
        self._handed_back = False

    @property
    def stuck(self) -> bool:
        """A timed-out thread or process task may still be running (it cannot be stopped)."""
        return self._inflight.stuck

    @property
    def lost(self) -> str | None:
        """Why the run's Ray cluster was given up on (``None``: no Ray, or it answers)."""
        ray = self._executors.ray
        return None if ray is None else ray.lost

    @property
    def functions(self) -> dict[str, TaskSpec]:
        """Specs of tasks whose callables live in this process, by task id."""
        return self._launcher.functions

    @property
    def limiter(self) -> EndpointLimiter:
        """The ``EndpointLimiter`` tasks share (``conveyor.current().acquire()``)."""
        return self._endpoints.limiter

    # -- public ----------------------------------------------------------------------------------
    def run(self) -> RunStats:
        for _ in self.run_iter(yield_results=False):
            pass
        return self.stats

    def stop(self) -> None:
        """Stop starting new tasks; those running finish. Safe from any thread."""
        self._queue.put(Stop())

    def hand_back(self, reason: str) -> None:
        """Stop claiming, hand the running tasks back to the store at once (``task_released``
        with ``reason``, not a failure) and end the run. Safe from any thread and from a signal
        handler (it only posts a message; the loop acts on it between steps)."""
        self._queue.put(HandBack(reason))

    def endpoint_statistics(self) -> dict[str, EndpointStatistics]:
        """The endpoint limiter's statistics per endpoint; ``{}`` while no task used one (no
        limiter is made for asking). Thread-safe."""
        return self._endpoints.statistics()

    def check_fit(self) -> None:
        """Refuse (``GraphError``) a task this engine could never run: its labels or resources
        exceed what the engine offers even when idle. For in-process runs, where the engine is
        the only worker; shared stores report ``never_fits`` instead (workers come and go)."""
        self._capacity.check_fit(self.store, self.clock.wall())

    def explain(self, task_id: str) -> Reason:
        """Why ``task_id`` is not running now: a ``Reason`` with a code and numbers."""
        return self.store.explain(task_id, self.clock.wall(), [self._offer()])

    def run_iter(self, *, yield_results: bool = True) -> Iterator[TaskResult]:
        """Run, yielding each task's result as soon as it finishes."""
        self._children.engine_thread = threading.get_ident()
        sync = self._executors.sync
        sync.looker = threading.get_ident()
        self._want = yield_results or self.on_result is not None
        self._yield = yield_results
        # Pool threads chain into their next task only when nobody consumes results one by one:
        # a run_iter consumer gets each result before the next task starts.
        self._chain = not self.store.shared and not self._want
        store, clock, stats, lock = self.store, self.clock, self.stats, self._lock
        on_result, get_nowait = self.on_result, self._queue.get_nowait
        batch = _RESULT_BATCH if yield_results else _NO_BATCH
        idle = IdleBackoff(self.idle_exit)
        next_tick = 0.0
        out: list[TaskResult] = []
        if store.shared:
            info: dict[str, Any] = {"slots": self.slots, **slurm_info(os.environ)}
            if self.until is not None:
                info["until"] = self.until  # for `why`: would_not_finish
            store.register_worker(self.worker_id, clock.wall(), info)
            reopen = store.open_url or store.url  # the shown url has no password
            self._heart = Heartbeat(reopen, self.worker_id, self.lease_s, clock,
                                    emit=store.emit).start()  # fmt: skip
        heart = self._heart
        self._endpoints.follow(clock.wall())
        restore_sigint = self._catch_sigint()
        try:
            while True:
                try:
                    with lock:
                        now = clock.wall()
                        if self.until is not None and now >= self.until:
                            self._hand_back = self._hand_back or "time limit"
                        if self._hand_back is not None and not self._handed_back:
                            self._release_running(now, out)
                        claimed = stats.started
                        self._fill(now, out)
                        if self._preemption is not None and self._preempt(now):
                            self._fill(now, out)  # the freed slots, to the waiting tasks
                        if stats.started != claimed:
                            idle.busy()
                        if self._inflight.parked and not (self._running or self._pending_starts):
                            self._flush(now, out)  # nothing else runs: record what finished
                            now = clock.wall()  # the flush may have waited for the store
                            self._fill(now, out)
                        if now >= next_tick:
                            next_tick = now + self.tick_s
                            self._tick(now, out)
                        if store.shared and self._endpoints.exchange_due(now, self.lease_s):
                            self._endpoints.exchange(self.worker_id, now)
                            if self._runtimes is not None:
                                self._runtimes.publish()
                        busy = bool(self._running) or self._pending_starts > 0
                    beat = False
                    if heart is not None and heart.pending:
                        heart.wait()  # _fill stopped claiming: let the beat have the store
                        beat = True  # ... then fill on
                    if out:
                        more = beat or len(out) >= batch  # handed out mid-fill: fill on
                        yield from self._deliver(out, on_result)
                        if more:
                            continue
                    elif beat:
                        continue
                    timeout = self._wait_time(now, busy, idle, next_tick)
                    if timeout is None:
                        break
                    look = sync.look(sync.clock())  # sync tasks waiting for a stuck thread
                    looking = False
                    if look is not None and look < timeout:
                        timeout, looking = look, True
                    msg = self._next_message(timeout)
                    with lock:
                        now = clock.wall()
                        out.extend(self._inflight.expire(now))
                        finished: list[tuple[Running, bool, Any]] = []
                        # a pool thread parked a success itself; or the wait ended early only
                        # to look at the runners: no reason to record the group before it is due
                        news = looking and msg is None
                        while msg is not None:
                            if isinstance(msg, Finished):
                                finished.append((msg.run, msg.ok, msg.value))
                            elif isinstance(msg, Parked):
                                news = True
                            else:
                                self._handle(msg, now, out)
                            try:
                                msg = get_nowait()
                            except queue.Empty:
                                break
                        self._record(finished, now, out, news=news)
                        if self._hand_back is not None and not self._handed_back:
                            self._release_running(now, out)
                    if out:
                        yield from self._deliver(out, on_result)
                    if self._sigint:
                        self._sigint = False
                        raise KeyboardInterrupt  # here, between steps: nothing half done
                except KeyboardInterrupt:
                    if stats.interrupted:
                        raise  # a second Ctrl-C: stop waiting for running tasks
                    stats.interrupted = True
                    self._interrupt()
        finally:
            restore_sigint()
            self._shutdown()
        if stats.interrupted:
            raise KeyboardInterrupt

    def _catch_sigint(self) -> Callable[[], None]:
        """While the engine runs on the main thread (with Python's own SIGINT handler), the
        first Ctrl-C is posted to the loop, which stops between two steps: raised where the
        signal lands, it could interrupt a step half done (a claim taken off the queue and never
        started, a count never given back) and leave the loop waiting forever. A second Ctrl-C
        raises at once. Returns what puts the old handler back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return lambda: None  # the program handles Ctrl-C itself

        def on_sigint(signum: int, frame: Any) -> None:
            if self.stats.interrupted or self._sigint:
                raise KeyboardInterrupt
            self._sigint = True
            self._queue.put(Interrupt())

        signal.signal(signal.SIGINT, on_sigint)

        def restore() -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)

        return restore

    # -- the loop's steps ------------------------------------------------------------------------
    def _deliver(
        self, out: list[TaskResult], on_result: Callable[[TaskResult], None] | None
    ) -> Iterator[TaskResult]:
        batch = out[:]
        out.clear()
        for res in batch:
            if on_result is not None:
                on_result(res)
            if self._yield:
                yield res

    def _tick(self, now: float, out: list[TaskResult]) -> None:
        self._endpoints.follow(now)
        self.store.age_ready(now)
        preemption = self._preemption
        if (
            preemption is not None
            and self.store.shared
            and not self._inflight.stopping
            and preemption.tick_shared(now)
        ):
            self._fill(now, out)  # the freed slots, to the waiting higher-band tasks
        if self.on_tick is not None:
            self.on_tick(self)
        if self._children.watchers and self.store.shared:
            self._children.poll()  # other workers may have finished the children

    def _wait_time(
        self, now: float, busy: bool, idle: IdleBackoff, next_tick: float
    ) -> float | None:
        """How long to wait for the next message; ``None`` when the run is over."""
        if self.until is not None and not self._handed_back:
            next_tick = min(next_tick, self.until)  # wake at the end to hand back
        if busy:  # (the idle spell was reset when these tasks were claimed)
            wait = self._inflight.deadlines.wait(now, max(0.0, next_tick - now))
            if self._inflight.parked:
                wait = min(wait, max(0.0, self._inflight.parked_since + _GROUP_WAIT_S - now))
            return wait
        if self._inflight.stopping or self._out_of_time:
            return None
        timeout = self._idle_wait(now, idle)
        if timeout is not None and self.until is not None:
            timeout = min(timeout, max(0.0, self.until - now))  # wake at the end
        return timeout

    def _idle_wait(self, now: float, idle: IdleBackoff) -> float | None:
        """How long to wait with nothing running; ``None`` when the run is over."""
        store = self.store
        wake = store.next_wakeup()
        if not store.shared:
            if store.unfinished() == 0 or wake is None:
                return None
            return max(0.0, wake - now)  # only retries are left: sleep until the first
        if not store.has_unfinished():
            return None
        timeout = idle.next_wait(now, wake, running=store.has_running())
        if timeout is not None and store.wait_for_work(timeout):
            return 0.0
        return timeout

    def _next_message(self, timeout: float) -> Message | None:
        try:
            if timeout > 0:
                return self._queue.get(timeout=timeout)
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def _interrupt(self) -> None:
        """Ctrl-C: start nothing more; cancel what can be cancelled (coroutines, commands,
        queued processes). Threads cannot be stopped: their tasks are drained and recorded."""
        with self._lock:
            self._inflight.stopping = True
            self._inflight.cancel_all(self.clock.wall(), threads=False)
            if not self.store.shared:  # a durable run gives its tasks back instead
                self._children.stop("the run was interrupted before the child finished")

    def _fill(
        self, now: float, out: list[TaskResult], *, from_thread: bool = False
    ) -> Launch | None:
        """Claim and start tasks while slots are free, best key first; O(log n) per claim.

        Called with ``_lock`` held. From the engine thread it stops early once ``out`` holds a
        batch of results to hand out; from a pool thread (``from_thread``) it returns the next
        sync task for that thread to run itself, if any.
        """
        store, stats, running, children = self.store, self.stats, self._running, self._children
        worker, want, lease_s, slots = self.worker_id, self._want, self.lease_s, self.slots
        inflight, heart, on_claim = self._inflight, self._heart, self.on_claim
        batch_limit = _RESULT_BATCH if self._yield and not from_thread else _NO_BATCH
        claim_one, admission = store.claim_one, store.admission
        mine: Launch | None = None
        batch: Sequence[Claim]
        until, runtimes, preemption = self.until, self._runtimes, self._preemption
        if until is not None and runtimes is not None:
            runtimes.learn(now)
        # No-ops nobody looks at one by one finish inside the store, many per call (what a
        # claim and a completion each would do, without the Claim and the calls).
        drain = (
            not want and on_claim is None and self.max_tasks is None and until is None
            and (preemption is None or not preemption.asked)
        )  # fmt: skip
        finish_noops = store.finish_noops
        while (
            not inflight.stopping
            and not self._out_of_time
            and len(running) + self._pending_starts < slots + children.lent
        ):
            if self.max_tasks is not None and stats.started >= self.max_tasks:
                inflight.stopping = True
                break
            if heart is not None and heart.pending:
                break  # a heartbeat waits for the store (SQLite: its one writer lock)
            if admission:
                batch = store.claim(worker, 1, now, lease_s, offer=self._offer())
                if not batch:
                    break
            else:
                if inflight.parked and not store.claims_ahead():
                    self._flush(now, out)  # one transaction: these completions, the next claims
                    now = self.clock.wall()  # (which may have waited for the store's lock)
                if drain:
                    finished = finish_noops(worker, now, _NO_BATCH)
                    stats.started += finished
                    stats.done += finished
                claim = claim_one(worker, now, lease_s)
                if claim is None:
                    break
                batch = (claim,)
            for claim in batch:
                spec = claim.spec
                if until is not None and runtimes is not None and not self._fits_time(claim, now):
                    continue
                stats.started += 1
                if on_claim is not None:
                    on_claim(claim)
                if preemption is not None and preemption.asked:
                    preemption.started(spec.id)  # a thread asked for this slot: not any more
                if not from_thread or "unreadable" in claim.extra or _noop(spec):
                    self._start_claimed(claim, now, out)
                    continue
                res: TaskResult | None  # a pool thread claiming its own next task:
                kind = self._launcher.kind(spec)
                if kind == "thread" and mine is None:
                    prepared = self._launcher.prepare(claim, kind, now)
                    if isinstance(prepared, Launch):
                        mine = prepared
                        continue
                    res = prepared
                elif kind == "inline":  # inline tasks run on the engine thread only
                    self._pending_starts += 1
                    self._queue.put(StartInline(claim))
                    continue
                else:
                    res = self._launcher.start(claim, now)
                if res is not None and want:
                    out.append(res)
            if len(out) >= batch_limit:
                break
        self._executors.kick()  # the coroutines this fill started, to the loop at once
        return mine

    def _start_claimed(self, claim: Claim, now: float, out: list[TaskResult]) -> None:
        """Start a claimed task on the engine thread. A damaged spec row fails (nothing
        runs); a no-op finishes where it is claimed: its children are ready before the next
        claim, which keeps the order depth-first."""
        spec = claim.spec
        if "unreadable" not in claim.extra and _noop(spec):
            if self.store.complete(claim, None, now):
                self.stats.done += 1
                if self._want:
                    out.append(TaskResult(spec.id, TaskState.DONE, None, None, claim.attempt))
            else:
                self.stats.refused += 1
            return
        res = self._launcher.start(claim, now)
        if res is not None and self._want:
            out.append(res)

    def _thread_done(self, run: Running, ok: bool, value: Any) -> Launch | None:
        """A pool thread finished ``run``: record it and claim what comes next right here.

        Returns the next sync task for this thread to run, if any. On a shared store, or with a
        consumer of results, the result goes to the engine thread instead (store connections
        stay on the thread that made them; a consumer gets each result before the next start).
        """
        if not self._chain:
            if ok and self.store.shared:
                return self._run_ahead(run, value)
            self._queue.put(Finished(run, ok, value))
            return None
        out: list[TaskResult] = []
        inflight = self._inflight
        with self._lock:
            if not inflight.is_current(run):
                return None
            now = self.clock.wall()
            res = inflight.record(run, ok, value, now)
            if res is not None and self._want:
                out.append(res)
            mine = self._fill(now, out, from_thread=True)
            idle = not self._running and not self._pending_starts
        if out:
            self._queue.put(Recorded(out))
        elif idle or inflight.stopping:
            self._queue.put(Wake())
        return mine

    def _run_ahead(self, run: Running, value: Any) -> Launch | None:
        """A pool thread's success on a shared store: park it for the group commit and return
        the next task this worker claimed ahead, for this thread to run at once -- no hop to
        the engine thread and no transaction (``Store.claims_ahead``). The engine thread
        still records the group, when ``_record`` says so (``Parked`` makes it look), and
        claims the next batch with it."""
        inflight = self._inflight
        ended = self.clock.wall()  # before the lock: the engine thread may hold it for a while
        with self._lock:
            if not inflight.is_current(run):
                return None  # timed out or cancelled meanwhile: the report no longer counts
            now = self.clock.wall()
            first = not inflight.parked
            inflight.park([(run, True, value)], ended)
            mine = self._take_ahead(now)
            due = (
                mine is None
                or len(inflight.parked) >= _GROUP_MAX
                or now - inflight.parked_since >= _GROUP_WAIT_S
            )
        if first or due:
            self._queue.put(Parked())
        return mine

    def _take_ahead(self, now: float) -> Launch | None:
        """On a pool thread, with ``_lock`` held: the next task claimed ahead, prepared to run
        here, when it is a sync function's with no deadline for the engine to watch (its
        parents' results are read here, under the lock that serialises this engine's use of
        the store); anything else taken is handed to the engine thread to start. ``None``
        when nothing is claimed ahead or the engine's own rules for claiming (stopping,
        limits, a time limit, admission, an observer) are in play: the engine thread claims
        then."""
        store, inflight = self.store, self._inflight
        if (
            not store.claims_ahead()
            or inflight.stopping
            or self._out_of_time
            or self._hand_back is not None
            or self.until is not None
            or self.on_claim is not None
            or self.max_tasks is not None
            or store.admission
            or (self._preemption is not None and self._preemption.asked)
            or len(self._running) + self._pending_starts >= self.slots + self._children.lent
        ):
            return None
        claim = store.claim_one(self.worker_id, now, self.lease_s)  # from the batch
        if claim is None:
            return None
        self.stats.started += 1
        spec = claim.spec
        if (
            "unreadable" in claim.extra
            or _noop(spec)
            or spec.timeout_s is not None
            or self._launcher.kind(spec) != "thread"
        ):
            self._pending_starts += 1
            self._queue.put(StartInline(claim))
            return None
        prepared = self._launcher.prepare(claim, "thread", now)
        if isinstance(prepared, Launch):
            self.stats.ran_ahead += 1
            return prepared
        if self._want:  # it could not start: recorded as failed
            self._queue.put(Recorded([prepared]))
        return None

    def _record(
        self,
        finished: list[tuple[Running, bool, Any]],
        now: float,
        out: list[TaskResult],
        *,
        news: bool = False,
    ) -> None:
        """Take the tasks that finished since the loop last looked. Successes are recorded
        together (group commit): at once on a private store; on a shared one when enough are
        parked, the oldest has waited long enough, or a claim needs a transaction anyway (no
        tasks claimed ahead are left) — then the successes and the claims for the slots they
        free are one transaction. ``news``: pool threads parked successes themselves
        (``_run_ahead``)."""
        inflight = self._inflight
        results = inflight.park(finished, now) if finished else []
        if self._want:
            out.extend(results)
        parked = inflight.parked
        if parked and (
            not (finished or news)  # a wait ended with no news: waiting longer gains nothing
            or not self.store.shared
            or inflight.stopping
            or len(parked) >= _GROUP_MAX
            or now - inflight.parked_since >= _GROUP_WAIT_S
            or not self.store.claims_ahead()
        ):
            if self.store.claims_ahead():
                self._fill(now, out)  # start what is claimed ahead first: it runs meanwhile
            if inflight.parked:
                self._flush(now, out)

    def _flush(self, now: float, out: list[TaskResult]) -> None:
        """Record the parked successes; the store may claim the free slots' next tasks in the
        same transaction."""
        free = self.slots + self._children.lent - len(self._running) - self._pending_starts
        if self.max_tasks is not None:
            free = min(free, self.max_tasks - self.stats.started)
        if self._out_of_time:
            free = 0
        results = self._inflight.flush(now, max(0, free))
        if self._want:
            out.extend(results)

    def _handle(self, msg: Message, now: float, out: list[TaskResult]) -> None:
        match msg:
            case Finished(run, ok, value):
                self._record([(run, ok, value)], now, out)
            case Recorded(results):
                out.extend(results)
            case StartInline(claim):
                self._pending_starts -= 1
                if self._handed_back:  # claimed by a pool thread just before the hand-back
                    self.store.hand_back([claim], now, self._hand_back or "stopped")
                    return
                self._start_claimed(claim, now, out)
            case SubmitChildren():
                self._children.on_submit(msg, now)
            case AwaitChild():
                self._children.on_wait(msg)
            case Stop():
                self._inflight.stopping = True
            case HandBack(reason):
                self._hand_back = self._hand_back or reason
            case Wake() | Parked() | Interrupt():
                pass  # a wake-up (Ctrl-C's own flag was set by the handler: see _catch_sigint)

    def _preempt(self, now: float) -> int:
        """With no slot free, take running tasks of a lower band back for waiting tasks of a
        higher one (``runtime/preemption.py``); how many slots that freed now."""
        assert self._preemption is not None
        inflight = self._inflight
        if inflight.stopping or self._out_of_time or self._pending_starts:
            return 0
        free = self.slots + self._children.lent - len(self._running)
        if free > 0 or not self._running or self.store.shared:
            return 0  # (shared stores: one decision for all workers, on the tick)
        return self._preemption.check(now, free)

    def _fits_time(self, claim: Claim, now: float) -> bool:
        """Whether ``claim`` can finish before ``until`` by what it declares or its kind's
        past runs say; if not, it goes back to the store (``task_released``, reason
        ``would_not_finish``) and this worker claims no more: what it has left only shrinks."""
        assert self._runtimes is not None
        if would_finish(now, self.until, self._runtimes.expected(claim.spec)):
            return True
        self._out_of_time = True
        self.stats.released += sum(self.store.hand_back([claim], now, "would_not_finish"))
        return False

    def _offer(self) -> Offer:
        left = None if self.until is None else self.until - self.clock.wall()
        return self._capacity.offer(len(self._running), self._children.lent, left)

    def _release_running(self, now: float, out: list[TaskResult]) -> None:
        """Act on ``hand_back`` (or the end, ``until``): record what already finished, then
        hand every running task back to the store and start nothing more."""
        self._handed_back = True
        self._inflight.stopping = True
        self._flush(now, out)
        self._inflight.hand_back(now, self._hand_back or "stopped")

    # -- ending ----------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self._heart is not None:
            self._heart.stop()  # before unregistering: a last beat would mark it alive again
            self._heart = None
        now = self.clock.wall()
        inflight, stats = self._inflight, self.stats
        with self._lock:
            inflight.flush(now, 0)  # what finished is recorded, even on the way out
        inflight.cancel_all(now, threads=True)
        if not self.store.shared and (stats.interrupted or inflight.failed_fast):
            # What a private store's run leaves is cancelled (a durable store keeps it for
            # the next run): task_cancelled, with why.
            reason = "interrupted" if stats.interrupted else "fail_fast"
            self.store.cancel_unfinished(self.clock.wall(), reason)
        self._children.close()
        self._executors.shutdown(wait=not (stats.interrupted or inflight.stuck))
        if self.store.shared:
            self._endpoints.exchange(self.worker_id, now, learn=False)
            if self._runtimes is not None:
                self._runtimes.publish()
            self.store.unregister_worker(self.worker_id, now)


def _noop(spec: TaskSpec) -> bool:
    """A task with nothing to run (neither ``fn`` nor ``cmd``): it finishes where it is
    claimed."""
    return spec.fn is None and spec.cmd is None
