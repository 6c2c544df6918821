"""Where task code runs: a thread pool for sync callables, one asyncio loop for ``async def``,
subprocesses for shell commands, an optional process pool for CPU-bound work.

Every executor reports back by posting ``Finished(run, ok, value_or_error)`` from whatever thread
finished the work; the engine's loop is the only reader of those messages. A pool thread that
finishes a sync task asks ``thread_done`` instead, which may hand it the next task to run
(a ``Launch``) so that a chain of small tasks never changes threads; which thread a sync task
starts on (one already running quick tasks, or a new one) is ``runners.py``'s rule.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from conveyor.runtime.context import TaskContext, _current
from conveyor.runtime.mainguard import check_main_guard
from conveyor.runtime.messages import Finished
from conveyor.runtime.runners import Runner, Runners
from conveyor.store.base import Claim

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures  # (imported when a pool is first made: no-op runs need none)

    from conveyor.runtime.rayexec import RayExecutor

#: How a task runs: a shell command, a coroutine on the loop, on the engine thread, in a
#: process of the pool, or on a pool thread.
Kind = Literal["cmd", "async", "inline", "process", "thread", "ray"]


@dataclass(eq=False, slots=True)
class Running:
    """One task in flight in this process."""

    claim: Claim
    started: float
    kind: Kind = "thread"
    deadline: float | None = None
    future: concurrent.futures.Future[Any] | None = None
    task: asyncio.Task[None] | None = None  # an async task's, once started on the loop
    proc: subprocess.Popen[bytes] | None = None
    abandoned: bool = False  # timed out or cancelled: a late result is dropped
    ref: Any = None  # a task on Ray: its ObjectRef


@dataclass(eq=False, slots=True)
class Launch:
    """A function task ready to start: ``fn(*args, **kwargs)`` with ``ctx`` as ``current()``.
    (Not frozen: made once per task on the hot path, where a frozen dataclass costs ~1 us.)"""

    run: Running
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    ctx: TaskContext


Post = Callable[[Finished], None]
#: Called on a pool thread when its sync task ends; returns the next task for that thread.
ThreadDone = Callable[[Running, bool, Any], Launch | None]


#: Coroutine functions to await on an event loop before the engine stops it, by loop id.
_LOOP_CLOSERS: dict[int, list[Callable[[], Awaitable[Any]]]] = {}


def close_with_loop(closer: Callable[[], Awaitable[Any]]) -> None:
    """From a task on the engine's event loop: await ``closer()`` on that loop before the
    engine stops it (a client the task opened, whose connections belong to the loop)."""
    import asyncio

    _LOOP_CLOSERS.setdefault(id(asyncio.get_running_loop()), []).append(closer)


def describe(exc: BaseException) -> str:
    """One-line summary of an exception, plus the innermost frame that raised it."""
    text = f"{type(exc).__name__}: {exc}".strip()
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        last = tb[-1]
        text += f" ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return text


class Executors:
    def __init__(
        self, slots: int, post: Post, thread_done: ThreadDone | None = None,
        ray: RayExecutor | None = None, wake: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.slots = max(1, slots)
        #: Where tasks run when the run's executor is Ray (``rayexec.py``).
        self.ray = ray
        self._post = post
        self._thread_done = thread_done or self._post_done
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._async_pending: list[tuple[Launch, float | None]] = []
        self._kicked = False  # the loop was asked to start the pending coroutines
        #: Sync tasks on as few pool threads as keep them moving (``runners.py``); real time
        #: always (a fake clock that stood still would keep a stuck runner's company away).
        #: The engine's loop looks at them (``Runners.look``); ``wake`` asks it to.
        self.sync = Runners(self._pool, self._thread_main, time.monotonic, wake)

    # -- sync callables ---------------------------------------------------------------------
    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._threads is None:
            import concurrent.futures

            # Extra threads beyond the slots: a parent waiting on its children lends its slot,
            # so up to twice as many threads may be busy while some of them only wait.
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.slots * 2 + 4, thread_name_prefix="conveyor-task"
            )
        return self._threads

    def _post_done(self, run: Running, ok: bool, value: Any) -> None:
        self._post(Finished(run, ok, value))

    def start_sync(self, launch: Launch) -> None:
        self.sync.start(launch)

    def _thread_main(self, launch: Launch | None, runner: Runner) -> None:
        """Run a sync task, then whatever waits for this thread or the engine hands back to
        run next in it (``Runners.next_for``)."""
        done, next_for = self._thread_done, self.sync.next_for
        while launch is not None:
            token = _current.set(launch.ctx)
            try:
                value = launch.fn(*launch.args, **launch.kwargs)
                ok = True
            except BaseException as exc:
                value, ok = describe(exc), False
            finally:
                _current.reset(token)
            runner.since = None  # recording it, claiming the next: not stuck in a task
            run = launch.run
            try:
                launch = done(run, ok, value)
            except BaseException as exc:  # recording it went wrong: the engine records that
                self._post(Finished(run, False, describe(exc)))
                launch = None
            if launch is not None:
                launch.run.kind = "thread"
            launch = next_for(runner, launch)

    # -- async def ----------------------------------------------------------------------------
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio  # only runs with async tasks pay for importing asyncio

        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                self._loop_thread = threading.Thread(
                    target=serve, name="conveyor-asyncio", daemon=True
                )
                self._loop_thread.start()
                started.wait()
                self._loop = loop
            return self._loop

    def start_async(self, launch: Launch, timeout: float | None) -> None:
        """Start a coroutine task on the event loop thread, at the next ``kick``: the engine
        kicks once per fill, so the loop is woken (a write to its self-pipe, and the GIL handed
        over) once for all the coroutines one fill starts, not once each."""
        self._event_loop()
        with self._lock:
            self._async_pending.append((launch, timeout))

    def kick(self) -> None:
        """Hand the coroutines started since the last kick to the event loop."""
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            if not self._async_pending or self._kicked:
                return
            self._kicked = True
        loop.call_soon_threadsafe(self._start_pending, loop)

    def _start_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop thread: start every coroutine handed over since the last call."""
        with self._lock:
            batch, self._async_pending = self._async_pending, []
            self._kicked = False
        post = self._post
        for launch, timeout in batch:
            run = launch.run
            if run.abandoned:  # cancelled before it started
                post(Finished(run, False, "cancelled"))
                continue
            run.task = loop.create_task(self._call(launch, timeout))

    async def _call(self, launch: Launch, timeout: float | None) -> None:
        import asyncio

        post = self._post
        run, fn, args, kwargs = launch.run, launch.fn, launch.args, launch.kwargs
        _current.set(launch.ctx)  # this coroutine runs in its own task: a private context
        try:
            if timeout is None:
                value = await fn(*args, **kwargs)
            else:
                value = await asyncio.wait_for(fn(*args, **kwargs), timeout)
        except asyncio.CancelledError:
            post(Finished(run, False, "cancelled"))
        except TimeoutError:
            post(Finished(run, False, f"timeout: no result after {timeout:g} s"))
        except BaseException as exc:
            post(Finished(run, False, describe(exc)))
        else:
            post(Finished(run, True, value))

    # -- shell commands --------------------------------------------------------------------------
    def start_cmd(
        self, run: Running, cmd: str | list[str], env: dict[str, str] | None, cwd: str | None,
        timeout: float | None,
    ) -> None:  # fmt: skip
        post = self._post
        full_env = dict(os.environ)
        full_env["CONVEYOR_TASK_ID"] = run.claim.id
        full_env["CONVEYOR_ATTEMPT"] = str(run.claim.attempt)
        if env:
            full_env.update(env)  # raises on a malformed env: the caller fails the task

        def call() -> None:
            try:
                ok, value = _run_command(run, cmd, full_env, cwd, timeout)
            except BaseException as exc:  # bad arguments (an empty argv, an int cwd), OSError
                ok, value = False, describe(exc)
            post(Finished(run, ok, value))

        run.future = self._pool().submit(call)

    # -- processes -----------------------------------------------------------------------------
    def start_process(self, launch: Launch) -> None:
        if self._processes is None:
            import concurrent.futures
            import multiprocessing

            check_main_guard()  # spawn imports the script again: refuse if that reruns us
            self._processes = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.slots, mp_context=multiprocessing.get_context("spawn")
            )
        post = self._post
        run = launch.run
        fut = self._processes.submit(launch.fn, *launch.args, **launch.kwargs)

        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.cancelled():
                post(Finished(run, False, "cancelled"))
            elif (exc := f.exception()) is not None:
                post(Finished(run, False, describe(exc)))
            else:
                post(Finished(run, True, f.result()))

        fut.add_done_callback(done)
        run.future = fut

    # -- control -----------------------------------------------------------------------------------
    def cancel(self, run: Running) -> None:
        """Best effort: cancel a coroutine, kill a command, cancel a Ray task; a running thread
        cannot be stopped."""
        run.abandoned = True
        if run.kind == "ray" and self.ray is not None:
            self.ray.cancel(run)
            return
        if run.proc is not None and run.proc.poll() is None:
            _kill(run.proc)
        fut = run.future
        if fut is not None:
            fut.cancel()
        task, loop = run.task, self._loop
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)  # an asyncio task is cancelled on its loop

    def shutdown(self, wait: bool = True) -> None:
        if self.ray is not None:
            self.ray.shutdown()
        self.sync.close()
        if self._threads is not None:
            self._threads.shutdown(wait=wait, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=wait, cancel_futures=True)
        if self._loop is not None:
            loop, self._loop = self._loop, None
            closers = _LOOP_CLOSERS.pop(id(loop), [])
            if closers:
                import asyncio

                async def close_all() -> None:
                    for closer in closers:
                        with contextlib.suppress(Exception):
                            await closer()

                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            thread = self._loop_thread
            if thread is not None:
                # stop() takes effect at the loop's next turn; a coroutine blocking it bounds this
                thread.join(timeout=5 if wait else 1)
            if thread is None or not thread.is_alive():
                loop.close()  # else its selector and sockets leak (ResourceWarning at GC)
        # The engine's callback goes: a late thread's result has no one to go to, and the engine
        # (with the store state and graph only it holds) is freed when its last reference
        # goes, not at the collector's next full pass.
        self._thread_done = _dropped


def _dropped(run: Running, ok: bool, value: Any) -> None:
    """What a thread that finishes after ``shutdown`` reports to: nothing."""


def _run_command(
    run: Running, cmd: str | list[str], env: dict[str, str], cwd: str | None,
    timeout: float | None,
) -> tuple[bool, str]:  # fmt: skip
    """Run a shell command to its exit: ``(True, stdout)`` or ``(False, error)``.

    Its output goes to unnamed temporary files, not pipes: the outcome follows the command's
    own exit, and a background child it leaves behind (``sleep 30 &``) holding stdout open
    neither delays it nor turns it into a timeout. Such a child is left running; a command
    killed on timeout or cancellation is killed with its whole process group."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, shell=isinstance(cmd, str), env=env, cwd=cwd, stdout=out, stderr=err,
            start_new_session=True,
        )  # fmt: skip
        run.proc = proc
        if run.abandoned:  # cancelled while the process was starting
            _kill(proc)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait()
            return False, f"timeout: command still running after {timeout:g} s"
        if code == 0:
            out.seek(0)
            return True, out.read().decode(errors="replace").rstrip("\n")
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
    shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
    msg = f"command exited {code}: {shown}"
    if tail:
        msg += " | " + " | ".join(tail)
    return False, msg


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
