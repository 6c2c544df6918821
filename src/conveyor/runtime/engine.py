"""The loop that runs a graph: claim -> execute -> complete, one thread owning the store.

Readiness is event-driven (the store touches only a finished task's children) and the next task
is always the best depth-first key among the ready ones, so with one slot and no-op tasks the
start order is exactly the key order. No-op tasks and ``executor="inline"`` tasks finish where
they are claimed, with no hop to a thread (a hop costs ~8-80 us; PEERS.md).
"""

from __future__ import annotations

import heapq
import inspect
import math
import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.admission import Offer
from conveyor.core.explain import Reason
from conveyor.core.retry import DEFAULT_RETRY, RetryPolicy
from conveyor.errors import ConveyorError
from conveyor.events import EventSink
from conveyor.imports import resolve_callable
from conveyor.model import TaskResult, TaskSpec, TaskState, find_refs, substitute_refs
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.runtime.context import TaskContext, _current
from conveyor.runtime.executors import Executors, Running, describe
from conveyor.store.base import Claim, Store

_IDLE_POLL_MIN = 0.005  # s: first re-poll of a shared store that had nothing claimable
_IDLE_POLL_MAX = 0.5  # s: back-off cap; PostgreSQL wakes idle workers earlier via NOTIFY
_RESULT_BATCH = 256  # results handed to a run_iter consumer at a time, mid-fill


@dataclass(slots=True)
class _Box:
    """A reply from the engine thread to a task thread."""

    event: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None

    def wait(self, timeout: float | None = None) -> Any:
        if not self.event.wait(timeout):
            raise TimeoutError("timed out waiting for the engine")
        if self.error is not None:
            raise self.error
        return self.value


class _LazyParents(dict):  # type: ignore[type-arg]
    """``current().parent_results``, fetched from the store on first access only."""

    def __init__(self, store: Store, claim: Claim) -> None:
        super().__init__()
        self._store: Store | None = store
        self._claim = claim

    def _load(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            self.update(store.parent_values(self._claim))

    def __getitem__(self, key: str) -> Any:
        self._load()
        return super().__getitem__(key)

    def __iter__(self) -> Any:
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return super().get(key, default)

    def items(self) -> Any:
        self._load()
        return super().items()

    def keys(self) -> Any:
        self._load()
        return super().keys()

    def values(self) -> Any:
        self._load()
        return super().values()

    def __repr__(self) -> str:
        self._load()
        return super().__repr__()


@dataclass(slots=True)
class RunStats:
    started: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    refused: int = 0  # completions the store refused (lease taken over)
    interrupted: bool = False


class Engine:
    """Runs what a store hands out until nothing is left (or ``idle_exit`` passes)."""

    def __init__(
        self,
        store: Store,
        *,
        workers: int = 4,
        worker_id: str = "w0",
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
        tick_s: float = 0.2,
        resources: dict[str, float] | None = None,
        labels: dict[str, Any] | None = None,
        limiter: Any = None,
        endpoint_headroom: float = 0.5,
    ) -> None:
        if workers < 1:
            raise ConveyorError("workers must be >= 1")
        self.store = store
        self.slots = workers
        self.worker_id = worker_id
        self.clock = clock
        self.retry = retry
        self.rng = random.Random(seed)
        self.fail_fast = fail_fast
        self.lease_s = lease_s
        self.idle_exit = idle_exit
        self.max_tasks = max_tasks
        self.default_executor = executor
        self.functions = functions or {}
        self.emit = emit
        self.on_result = on_result
        self.on_tick = on_tick
        self.tick_s = tick_s
        self.resources = dict(resources or {})  # what this worker offers; {} = not accounted
        self.labels = dict(labels or {})
        self._used: dict[str, float] = {}
        self._limiter = limiter  # an EndpointLimiter; made on first use
        self.endpoint_headroom = endpoint_headroom
        self._endpoint_limits: dict[str, int] = {}
        self.stats = RunStats()
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._executors = Executors(workers, self._queue.put, self._thread_done)
        self._running: dict[int, Running] = {}
        self._deadlines: list[tuple[float, int, int]] = []  # (deadline, handle, id(run))
        self._watchers: dict[str, list[_Box]] = {}
        self._lent = 0  # slots lent by parents waiting on their children
        self._stopping = False
        self._lock = threading.Lock()  # guards the store and the bookkeeping below
        self._chain = not store.shared  # pool threads may record and claim themselves
        self._pending_starts = 0  # claims handed to the engine thread to start
        self._is_async: dict[Any, bool] = {}
        self._want = True
        self._yield = True
        self._stuck = False  # a timed-out thread/process task may still be running
        self._engine_thread: int | None = None

    @property
    def stuck(self) -> bool:
        """A timed-out thread or process task may still be running (it cannot be stopped)."""
        return self._stuck

    # -- public ----------------------------------------------------------------------------------
    def run(self) -> RunStats:
        for _ in self.run_iter(yield_results=False):
            pass
        return self.stats

    def stop(self) -> None:
        """Stop starting new tasks; those running finish. Safe from any thread."""
        self._queue.put(("stop",))

    def run_iter(self, *, yield_results: bool = True) -> Iterator[TaskResult]:
        """Run, yielding each task's result as soon as it finishes.

        The engine thread and, for sync functions on a private store, the pool threads share
        the store under ``_lock``: a pool thread that finishes a task records it and claims
        the next task itself (running it at once when it is a sync function too), so a chain
        of small tasks costs no hand-off between threads (PEERS.md: 8-80 us per hop).
        """
        self._engine_thread = threading.get_ident()
        self._want = yield_results or self.on_result is not None
        self._yield = yield_results
        # Pool threads chain into their next task only when nobody consumes results one by one:
        # a run_iter consumer gets each result before the next task starts.
        self._chain = not self.store.shared and not self._want
        store = self.store
        shared = store.shared
        clock = self.clock
        stats = self.stats
        running = self._running
        lock = self._lock
        on_result = self.on_result
        lease_s = self.lease_s
        idle_since: float | None = None
        poll = _IDLE_POLL_MIN
        next_tick = 0.0
        next_beat = 0.0
        out: list[TaskResult] = []
        if shared:
            store.register_worker(self.worker_id, clock.wall(), {"slots": self.slots})
        self._follow_endpoint_limits(clock.wall())
        try:
            while True:
                try:
                    with lock:
                        now = clock.wall()
                        claimed = self.stats.started
                        more = self._fill(now, out)
                        if stats.started != claimed:
                            idle_since = None
                            poll = _IDLE_POLL_MIN
                        if now >= next_tick:
                            next_tick = now + self.tick_s
                            self._follow_endpoint_limits(now)
                            if self.on_tick is not None:
                                self.on_tick(self)
                            if self._watchers and shared:
                                self._poll_watchers()
                        if shared and now >= next_beat:
                            next_beat = now + lease_s / 3
                            self._report_endpoints(now)
                            store.heartbeat(self.worker_id, now, lease_s)
                            store.reap_expired(now)
                        busy = bool(running) or self._pending_starts > 0
                    if out:
                        yield from self._deliver(out, on_result)
                    if more:
                        continue  # results were handed out mid-fill: fill on
                    # Decide how long to wait for the next message.
                    if busy:
                        idle_since = None
                        poll = _IDLE_POLL_MIN
                        timeout = min(self._next_deadline(now), max(0.0, next_tick - now))
                    else:
                        if self._stopping:
                            break
                        wake = store.next_wakeup()
                        if not shared:
                            if store.unfinished() == 0 or wake is None:
                                break
                            timeout = max(0.0, wake - now)
                        else:
                            if not store.has_unfinished():
                                break
                            if idle_since is None:
                                idle_since = now
                            elif self.idle_exit is not None and now - idle_since >= self.idle_exit:
                                break
                            timeout = poll
                            poll = min(poll * 2, _IDLE_POLL_MAX)
                            if wake is not None:
                                timeout = min(timeout, max(0.0, wake - now))
                            if store.wait_for_work(timeout):
                                timeout = 0.0
                    try:
                        msg = self._queue.get(timeout=timeout) if timeout > 0 else (
                            self._queue.get_nowait()
                        )  # fmt: skip
                    except queue.Empty:
                        msg = None
                    with lock:
                        now = clock.wall()
                        out.extend(self._expire_deadlines(now))
                        while msg is not None:
                            self._handle(msg, now, out)
                            try:
                                msg = self._queue.get_nowait()
                            except queue.Empty:
                                msg = None
                    if out:
                        yield from self._deliver(out, on_result)
                except KeyboardInterrupt:
                    if stats.interrupted:
                        raise  # a second Ctrl-C: stop waiting for running tasks
                    stats.interrupted = True
                    with lock:
                        self._stopping = True
                        # Cancel what can be cancelled (coroutines, commands, queued processes);
                        # threads cannot be stopped, so their tasks are drained and recorded.
                        for run in list(running.values()):
                            if run.kind != "thread":
                                self._executors.cancel(run)
                                self._release(run, clock.wall())
        finally:
            self._shutdown()
        if stats.interrupted:
            raise KeyboardInterrupt

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

    def _fill(self, now: float, out: list[TaskResult], *, from_thread: bool = False) -> Any:
        """Claim and start tasks while slots are free, best key first; O(log n) per claim.

        Called with ``_lock`` held. From the engine thread it returns whether it stopped early
        to hand out results; from a pool thread (``from_thread``) it returns the next sync task
        for that thread to run itself, or ``None``.
        """
        store = self.store
        stats = self.stats
        running = self._running
        worker = self.worker_id
        want = self._want
        batch_limit = _RESULT_BATCH if self._yield else 1 << 62
        claim_one = store.claim_one
        lease_s = self.lease_s
        complete = store.complete
        admission = store.admission
        mine = None
        while not self._stopping and (
            len(running) + self._pending_starts < self.slots + self._lent
        ):
            if self.max_tasks is not None and stats.started >= self.max_tasks:
                self._stopping = True
                break
            if admission:
                batch = store.claim(worker, 1, now, self.lease_s, offer=self._offer())
                if not batch:
                    break
            else:
                claim = claim_one(worker, now, lease_s)
                if claim is None:
                    break
                batch = (claim,)
            for claim in batch:
                stats.started += 1
                spec = claim.spec
                if spec.fn is None and spec.cmd is None:
                    # A no-op finishes where it is claimed: its children are ready before
                    # the next claim, which keeps the order depth-first.
                    if complete(claim, None, now):
                        stats.done += 1
                        if want:
                            out.append(
                                TaskResult(spec.id, TaskState.DONE, None, None, claim.attempt)
                            )
                    else:
                        stats.refused += 1
                    continue
                if from_thread:
                    kind = self._kind(spec)
                    if kind == "thread" and mine is None:
                        mine = self._prepare(claim, now, out)
                        continue
                    if kind == "inline":  # inline tasks run on the engine thread only
                        self._pending_starts += 1
                        self._queue.put(("start", claim))
                        continue
                res = self._start(claim, now)
                if res is not None and want:
                    out.append(res)
            if len(out) >= batch_limit and not from_thread:
                return True
        return mine if from_thread else False

    def _thread_done(self, run: Running, ok: bool, value: Any) -> Any:
        """A pool thread finished ``run``: record it and claim what comes next right here.

        Returns ``(run, fn, args, kwargs, ctx)`` of the next sync task for this thread to run,
        or ``None``. On a shared store the result goes to the engine thread instead (store
        connections stay on the thread that made them).
        """
        if not self._chain:
            self._queue.put((run, ok, value))
            return None
        out: list[TaskResult] = []
        with self._lock:
            if run.abandoned or self._running.get(run.claim.handle) is not run:
                return None
            now = self.clock.wall()
            if not ok and value == "cancelled" and self._stopping:
                self._release(run, now)
            else:
                res = self._finish(run, ok, value, now)
                if self._want:
                    out.append(res)
            mine = self._fill(now, out, from_thread=True)
            idle = not self._running and not self._pending_starts
        if out:
            self._queue.put(("results", out))
        elif idle or self._stopping:
            self._queue.put(("wake",))
        return mine

    @property
    def limiter(self) -> Any:
        """The ``EndpointLimiter`` tasks share (``conveyor.current().acquire()``)."""
        if self._limiter is None:
            from conveyor.limiter import EndpointLimiter

            self._limiter = EndpointLimiter(clock=self.clock)
        return self._limiter

    def _follow_endpoint_limits(self, now: float) -> None:
        """Cap the tasks started per endpoint at its adaptive limit plus headroom, so a
        rate-limited endpoint cannot hold slots that other endpoints' tasks could use; write
        ``endpoint_limit_changed`` when a limit moved. O(endpoints) per tick."""
        endpoints = self.store.endpoints()
        if not endpoints:
            return
        limiter = self.limiter
        for ep in endpoints:
            st = limiter.key_statistics(ep)
            cap = max(1, math.ceil(st.limit * (1.0 + self.endpoint_headroom)))
            self.store.set_endpoint_cap(ep, cap)
            old = self._endpoint_limits.get(ep)
            if old != st.limit:
                self._endpoint_limits[ep] = st.limit
                if self.emit is not None and old is not None:
                    self.emit({"ts": now, "event": "endpoint_limit_changed", "endpoint": ep,
                               "old": old, "new": st.limit, "task_cap": cap,
                               "in_flight": st.in_flight, "waiting": st.waiting,
                               "rate_limited": st.rate_limited,
                               "cooldown_left": st.cooldown_left})  # fmt: skip

    def _report_endpoints(self, now: float) -> None:
        """Shared stores: publish this worker's endpoint statistics for ``conveyor status``."""
        if self._limiter is None:
            return
        stats = {
            k: {"limit": st.limit, "in_flight": st.in_flight, "waiting": st.waiting,
                "rate_limited": st.rate_limited, "cooldown_left": st.cooldown_left}
            for k, st in self._limiter.statistics().items()
        }  # fmt: skip
        if stats:
            self.store.report_endpoints(self.worker_id, now, stats)

    def _offer(self) -> Offer:
        free = self.slots + self._lent - len(self._running)
        res = self.resources
        if res and self._used:
            res = {k: v - self._used.get(k, 0.0) for k, v in res.items()}
        return Offer(free, res, self.labels, self.slots, self.resources)

    def _account(self, spec: TaskSpec, sign: int) -> None:
        if self.resources and spec.resources:
            used = self._used
            for k, v in spec.resources.items():
                used[k] = used.get(k, 0.0) + sign * v

    def check_fit(self) -> None:
        """Refuse (``GraphError``) a task this engine could never run: its labels or resources
        exceed what the engine offers even when idle. For in-process runs, where the engine is
        the only worker; shared stores report ``never_fits`` instead (workers come and go)."""
        full = Offer(self.slots, dict(self.resources), self.labels, self.slots)
        message = self.store.unfit(full, self.clock.wall())
        if message is not None:
            from conveyor.errors import GraphError

            raise GraphError(message)

    def explain(self, task_id: str) -> Reason:
        """Why ``task_id`` is not running now: a ``Reason`` with a code and numbers."""
        return self.store.explain(task_id, self.clock.wall(), [self._offer()])

    # -- starting tasks -----------------------------------------------------------------------
    def _resolve(self, spec: TaskSpec) -> Callable[..., Any] | None:
        fn = spec.fn
        if fn is None:
            local = self.functions.get(spec.id)
            fn = local.fn if local is not None else None
        if isinstance(fn, str):
            local = self.functions.get(spec.id)
            if local is not None and callable(local.fn):
                return local.fn
            return resolve_callable(fn)
        return fn

    def _kind(self, spec: TaskSpec) -> str:
        """How a task runs: cmd, async, inline, process or thread (cached per function)."""
        if spec.cmd is not None:
            return "cmd"
        mode = spec.executor or self.default_executor
        fn = spec.fn
        key = fn if fn is not None else spec.id
        try:
            is_async = self._is_async[key]
        except (KeyError, TypeError):
            try:
                is_async = inspect.iscoroutinefunction(self._resolve(spec))
            except Exception:
                is_async = False
            try:
                self._is_async[key] = is_async
            except TypeError:
                pass
        if is_async:
            return "async"
        return mode if mode in ("inline", "process") else "thread"

    def _prepare(self, claim: Claim, now: float, out: list[TaskResult]) -> Any:
        """Resolve a task's function and arguments and register it as running.

        Returns ``(run, fn, args, kwargs, ctx)``, or ``None`` when it cannot start (then it has
        failed like a task that raised, and its result is in ``out``)."""
        spec = claim.spec
        store = self.store
        try:
            fn = None if spec.cmd is not None else self._resolve(spec)
            args, kwargs = spec.args, spec.kwargs
            parents: Any = None
            if claim.parents:
                if store.shared or find_refs(args, dict(kwargs)):
                    parents = store.parent_values(claim)
                    args = tuple(substitute_refs(a, parents) for a in args)
                    kwargs = {k: substitute_refs(v, parents) for k, v in kwargs.items()}
                else:  # built only if the task asks (current().parent_results)
                    parents = _LazyParents(store, claim)
        except Exception as exc:
            run = Running(claim, now)
            self._running[claim.handle] = run
            res = self._finish(run, False, describe(exc), now)
            if self._want:
                out.append(res)
            return None
        self._account(spec, +1)
        ctx = TaskContext(
            spec.id, claim.attempt, claim.depth, parents if parents is not None else {},
            self.worker_id, self._ctx_submit, self._ctx_wait, claim, endpoint=spec.endpoint,
            _limiter=(lambda: self.limiter) if spec.endpoint is not None else None,
        )  # fmt: skip
        run = Running(claim, now)
        self._running[claim.handle] = run
        if spec.timeout_s is not None and spec.cmd is None:
            run.deadline = now + spec.timeout_s
            heapq.heappush(self._deadlines, (run.deadline, claim.handle, id(run)))
        return run, fn, args, kwargs, ctx

    def _start(self, claim: Claim, now: float) -> TaskResult | None:
        spec = claim.spec
        kind = self._kind(spec)
        out: list[TaskResult] = []
        prepared = self._prepare(claim, now, out)
        if prepared is None:
            return out[0] if out else None
        run, fn, args, kwargs, ctx = prepared
        run.kind = kind
        ex = self._executors
        if kind == "cmd":
            ex.start_cmd(run, spec.cmd, spec.env, spec.cwd, spec.timeout_s)  # type: ignore[arg-type]
        elif kind == "async":
            self._drop_deadline(run)  # asyncio.wait_for enforces it
            ex.start_async(run, fn, args, kwargs, ctx, spec.timeout_s)
        elif kind == "inline":
            token = _current.set(ctx)
            try:
                value = fn(*args, **kwargs)
            except Exception as exc:
                return self._finish(run, False, describe(exc), now)
            finally:
                _current.reset(token)
            return self._finish(run, True, value, self.clock.wall())
        elif kind == "process":
            ex.start_process(run, fn, args, kwargs)
        else:
            ex.start_sync(run, fn, args, kwargs, ctx)
        return None

    def _drop_deadline(self, run: Running) -> None:
        run.deadline = None  # its heap entry no longer matches and is skipped when due

    # -- finishing tasks ------------------------------------------------------------------------
    def _handle(self, msg: tuple[Any, ...], now: float, out: list[TaskResult]) -> None:
        kind = msg[0]
        if isinstance(kind, Running):
            run, ok, value = msg
            if run.abandoned or self._running.get(run.claim.handle) is not run:
                return
            if not ok and value == "cancelled" and self._stopping:
                self._release(run, now)
                return
            res = self._finish(run, ok, value, now)
            if self._want:
                out.append(res)
        elif kind == "results":
            out.extend(msg[1])
        elif kind == "start":
            self._pending_starts -= 1
            res = self._start(msg[1], now)
            if res is not None and self._want:
                out.append(res)
        elif kind == "submit":
            _, ctx, specs, box = msg
            try:
                box.value = self.store.submit_children(ctx.claim, specs, now)
            except BaseException as exc:
                box.error = exc
            box.event.set()
        elif kind == "wait":
            _, task_id, box = msg
            res = self._finished_result(task_id)
            if res is not None:
                box.value = res
                box.event.set()
            else:
                self._lent += 1
                self._watchers.setdefault(task_id, []).append(box)
        elif kind == "stop":
            self._stopping = True

    def _finish(self, run: Running, ok: bool, value: Any, now: float) -> TaskResult:
        claim = run.claim
        spec = claim.spec
        stats = self.stats
        del self._running[claim.handle]
        self._account(spec, -1)
        if ok:
            accepted = self.store.complete(claim, value, now)
            state = TaskState.DONE
            error = None
            if accepted:
                stats.done += 1
        else:
            error = str(value)
            retry_at = None
            if claim.attempt <= spec.retries and not self._stopping:
                retry_at = now + self.retry.delay(claim.attempt, self.rng.random())
            accepted = self.store.fail(claim, error, now, retry_at)
            state = TaskState.RETRY_WAIT if retry_at is not None else TaskState.FAILED
            value = None
            if accepted:
                if retry_at is not None:
                    stats.retried += 1
                else:
                    stats.failed += 1
                    if self.fail_fast:
                        self._stopping = True
                if spec.gang is not None:
                    self._stop_gang(spec, retry_at is None, now)
        if not accepted:
            stats.refused += 1
        if self._watchers:
            self._notify(spec.id)
            if state is TaskState.FAILED:
                self._poll_watchers()
        return TaskResult(spec.id, state, value, error, claim.attempt)

    def _release(self, run: Running, now: float) -> None:
        if self._running.pop(run.claim.handle, None) is not None:
            self._account(run.claim.spec, -1)
            self.store.release(run.claim, now)

    def _stop_gang(self, failed: TaskSpec, fatal: bool, now: float) -> None:
        """A gang member failed: its running siblings stop. After a fatal failure they fail
        too; otherwise they go back unrun so the whole gang is retried together."""
        for run in [r for r in self._running.values() if r.claim.spec.gang == failed.gang]:
            self._executors.cancel(run)
            if fatal:
                del self._running[run.claim.handle]
                self._account(run.claim.spec, -1)
                msg = f"cancelled: gang member {failed.id!r} failed"
                if self.store.fail(run.claim, msg, now, None):
                    self.stats.failed += 1
            else:
                self._release(run, now)

    def _next_deadline(self, now: float) -> float:
        return max(0.0, self._deadlines[0][0] - now) if self._deadlines else self.tick_s

    def _expire_deadlines(self, now: float) -> list[TaskResult]:
        out = []
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, handle, rid = heapq.heappop(dl)
            run = self._running.get(handle)
            if run is None or id(run) != rid or run.deadline is None:
                continue
            self._executors.cancel(run)
            if run.kind in ("thread", "process"):
                self._stuck = True  # cannot be stopped: shutdown must not wait for it
            timeout = run.claim.spec.timeout_s
            out.append(self._finish(run, False, f"timeout: no result after {timeout:g} s", now))
        return out

    # -- children and waiting ---------------------------------------------------------------------
    def _ctx_submit(self, ctx: TaskContext, specs: list[TaskSpec]) -> list[str]:
        for s in specs:
            s.validate()
            if callable(s.fn):
                self.functions[s.id] = s
        if threading.get_ident() == self._engine_thread:
            return self.store.submit_children(ctx.claim, specs, self.clock.wall())
        box = _Box()
        self._queue.put(("submit", ctx, specs, box))
        return box.wait()  # type: ignore[no-any-return]

    def _ctx_wait(self, ctx: TaskContext, task_id: str, timeout: float | None) -> TaskResult:
        if threading.get_ident() == self._engine_thread:
            raise ConveyorError("an inline task cannot wait for its children; use threads")
        box = _Box()
        self._queue.put(("wait", task_id, box))
        return box.wait(timeout)  # type: ignore[no-any-return]

    def _finished_result(self, task_id: str) -> TaskResult | None:
        res = self.store.result(task_id)
        return res if res.state.finished else None

    def _notify(self, task_id: str) -> None:
        boxes = self._watchers.pop(task_id, None)
        if boxes:
            res = self.store.result(task_id)
            if not res.state.finished:  # retrying: keep waiting
                self._watchers[task_id] = boxes
                return
            for box in boxes:
                self._lent -= 1
                box.value = res
                box.event.set()

    def _poll_watchers(self) -> None:
        for task_id in list(self._watchers):
            self._notify(task_id)

    # -- shutdown ----------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        now = self.clock.wall()
        for run in list(self._running.values()):
            self._executors.cancel(run)
            self._release(run, now)
        for boxes in self._watchers.values():
            for box in boxes:
                box.error = ConveyorError("the run stopped before the child finished")
                box.event.set()
        self._watchers.clear()
        self._executors.shutdown(wait=not (self.stats.interrupted or self._stuck))
        if self.store.shared:
            self._report_endpoints(now)
            self.store.unregister_worker(self.worker_id, now)
