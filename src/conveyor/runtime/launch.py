"""Starting a claimed task: its function, how it runs, its arguments, its executor.

``Launcher`` finds the callable (a function handed over in process, else an import path), picks
the executor (cached per function: ``inspect`` is not free), fills ``TaskRef`` arguments with
the parents' results, registers the run and hands it to an executor -- or runs it right here
(``executor="inline"``). ``current().parent_results`` is a ``LazyParents`` mapping that reads
the store only if the task looks at it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from conveyor.clock import Clock
from conveyor.errors import ConveyorError
from conveyor.imports import resolve_callable
from conveyor.model import EMPTY, TaskResult, TaskSpec, find_refs, substitute_refs
from conveyor.runtime.children import Children
from conveyor.runtime.context import TaskContext, _current
from conveyor.runtime.executors import Executors, Kind, Launch, describe
from conveyor.runtime.inflight import InFlight
from conveyor.store.base import Claim, Store

if TYPE_CHECKING:
    from conveyor.limiter import EndpointLimiter

__all__ = ["Arguments", "Launcher", "LazyParents"]

#: ``(args, kwargs, parent results)`` of a task about to start.
Arguments = tuple[tuple[Any, ...], Mapping[str, Any], Mapping[str, Any]]


class LazyParents(Mapping[str, Any]):
    """The parents' results of one task, fetched from the store on first access only."""

    __slots__ = ("_claim", "_store", "_values")

    def __init__(self, store: Store, claim: Claim) -> None:
        self._store = store
        self._claim = claim
        self._values: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        values = self._values
        if values is None:
            values = self._values = self._store.parent_values(self._claim)
        return values

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return repr(self._load())


class Launcher:
    """Starts one engine's claimed tasks. ``functions`` are the callables of tasks submitted
    in this process, by task id (a graph file names import paths instead). Called with the
    engine's lock held."""

    def __init__(
        self,
        functions: dict[str, TaskSpec],
        default_executor: str | None,
        *,
        store: Store,
        inflight: InFlight,
        executors: Executors,
        children: Children,
        limiter: Callable[[], EndpointLimiter],
        worker_id: str,
        clock: Clock,
    ) -> None:
        self.functions = functions
        self.default_executor = default_executor
        self._store = store
        self._inflight = inflight
        self._executors = executors
        self._children = children
        self._limiter = limiter
        self._worker_id = worker_id
        self._clock = clock
        self._is_async: dict[object, bool] = {}

    def start(self, claim: Claim, now: float) -> TaskResult | None:
        """Start a claimed command or function task; its result when it already finished here
        (an inline task, or one that could not start). Whatever goes wrong while starting a
        task fails that task with the error (never the engine): a spec the executor cannot
        start with must not crash every worker that claims it."""
        spec = claim.spec
        ex = self._executors
        inflight = self._inflight
        unreadable = claim.extra.get("unreadable")
        if unreadable is not None:  # the store could not decode its spec
            return inflight.finish(inflight.register(claim, "inline", now), False, unreadable, now)
        if ex.ray is not None and spec.executor is None:
            return self._start_on_ray(claim, now)
        if spec.cmd is not None:  # enforces its own timeout
            run = inflight.register(claim, "cmd", now)
            try:
                ex.start_cmd(run, spec.cmd, spec.env, spec.cwd, spec.timeout_s)
            except Exception as exc:  # a spec no command can start with (env, cwd ...)
                return inflight.finish(run, False, describe(exc), now)
            return None
        kind = self.kind(spec)
        launch = self.prepare(claim, kind, now)
        if not isinstance(launch, Launch):
            return launch
        if kind == "inline":
            return self._run_inline(launch)
        try:
            if kind == "async":
                inflight.deadlines.drop(launch.run)  # asyncio.wait_for enforces it
                ex.start_async(launch, spec.timeout_s)
            elif kind == "process":
                ex.start_process(launch)
            else:
                ex.start_sync(launch)
        except Exception as exc:  # the executor refused it: this task fails, not the worker
            return inflight.finish(launch.run, False, describe(exc), now)
        return None

    def _start_on_ray(self, claim: Claim, now: float) -> TaskResult | None:
        """Submit a claimed task to Ray (``rayexec.py``): a command as it is, a function by its
        import path when it has one (else the callable, pickled by Ray), with its arguments
        and its parents' results read here."""
        from conveyor.runtime.rayremote import TaskInfo

        ray = self._executors.ray
        assert ray is not None
        inflight, store, spec = self._inflight, self._store, claim.spec
        run = inflight.register(claim, "ray", now)
        shared = store.shared
        try:
            if spec.cmd is not None:  # the command enforces its own timeout
                info = TaskInfo(spec.id, claim.attempt, claim.depth, EMPTY, self._worker_id)
                ray.start_command(run, spec.cmd, spec.env, spec.cwd, spec.timeout_s, info)
                return None
            fn = spec.fn if isinstance(spec.fn, str) else self.resolve(spec)
            args, kwargs, parents = self.arguments(store, claim)
            info = TaskInfo(
                spec.id, claim.attempt, claim.depth, dict(parents), self._worker_id,
                store.url if shared else None, claim if shared else None,
            )  # fmt: skip
            if spec.timeout_s is not None:
                inflight.deadlines.add(run, now + spec.timeout_s)
            ray.start_function(run, fn, args, kwargs, info)
        except Exception as exc:  # the task cannot start (its arguments, Ray refused it)
            return inflight.finish(run, False, describe(exc), now)
        return None

    def prepare(self, claim: Claim, kind: Kind, now: float) -> Launch | TaskResult:
        """Register a function task as running and gather what it starts with; one that
        cannot start (its function does not import, its parents' results are gone) fails like
        a task that raised, and its result is returned instead."""
        inflight = self._inflight
        run = inflight.register(claim, kind, now)
        inflight.stats.functions += 1
        spec = claim.spec
        try:
            fn = self.resolve(spec)
            args, kwargs, parents = self.arguments(self._store, claim)
        except Exception as exc:
            return inflight.finish(run, False, describe(exc), now)
        if spec.timeout_s is not None:
            inflight.deadlines.add(run, now + spec.timeout_s)
        children = self._children
        ctx = TaskContext(
            spec.id, claim.attempt, claim.depth, parents, self._worker_id, claim,
            children.submit, children.wait, endpoint=spec.endpoint,
            _limiter=self._limiter if spec.endpoint is not None else None,
        )  # fmt: skip
        return Launch(run, fn, args, kwargs, ctx)

    def _run_inline(self, launch: Launch) -> TaskResult:
        token = _current.set(launch.ctx)
        try:
            value = launch.fn(*launch.args, **launch.kwargs)
        except KeyboardInterrupt:
            raise  # Ctrl-C stops the run (the engine gives the task back)
        except BaseException as exc:  # SystemExit too: the task fails, not the worker
            return self._inflight.finish(launch.run, False, describe(exc), self._clock.wall())
        finally:
            _current.reset(token)
        return self._inflight.finish(launch.run, True, value, self._clock.wall())

    def resolve(self, spec: TaskSpec) -> Callable[..., Any]:
        """The callable of a function task."""
        fn = spec.fn
        if fn is None or isinstance(fn, str):
            local = self.functions.get(spec.id)
            if local is not None and callable(local.fn):
                return local.fn
        if isinstance(fn, str):
            return resolve_callable(fn)
        if fn is None:
            raise ConveyorError(f"task {spec.id!r} has no function in this process")
        return fn

    def kind(self, spec: TaskSpec) -> Kind:
        """How a task runs: ray, cmd, async, inline, process or thread."""
        if self._executors.ray is not None and spec.executor is None:
            return "ray"
        if spec.cmd is not None:
            return "cmd"
        fn = spec.fn
        key: object = fn if fn is not None else spec.id
        try:
            is_async = self._is_async[key]
        except (KeyError, TypeError):
            try:
                is_async = inspect.iscoroutinefunction(self.resolve(spec))
            except Exception:
                is_async = False  # it fails when it starts, with the reason
            try:
                self._is_async[key] = is_async
            except TypeError:
                pass  # an unhashable callable: asked again next time
        if is_async:
            return "async"
        mode = spec.executor or self.default_executor
        if mode == "inline":
            return "inline"
        return "process" if mode == "process" else "thread"

    @staticmethod
    def arguments(store: Store, claim: Claim) -> Arguments:
        """The task's arguments with ``TaskRef``s replaced by results, and its parents' results.

        A shared store's results are read now (its connection belongs to the engine thread);
        a private store's only when the task asks."""
        spec = claim.spec
        args, kwargs = spec.args, spec.kwargs
        if not claim.parents:
            return args, kwargs, EMPTY
        if store.shared or find_refs(args, dict(kwargs)):
            parents = store.parent_values(claim)
            args = tuple(substitute_refs(a, parents) for a in args)
            kwargs = {k: substitute_refs(v, parents) for k, v in kwargs.items()}
            return args, kwargs, parents
        return args, kwargs, LazyParents(store, claim)
