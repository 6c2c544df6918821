"""Tasks that submit children at run time, and parents that wait on them.

A task thread never touches the store: it posts ``SubmitChildren`` / ``AwaitChild`` to the engine
thread and blocks on the reply. A parent waiting on an unfinished child *lends its slot* to the
children (``lent``) until the child finishes, so ``workers=1`` cannot deadlock and a parent never
starves its own children.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from conveyor.clock import Clock
from conveyor.errors import ConveyorError
from conveyor.model import TaskResult, TaskSpec
from conveyor.runtime.context import TaskContext
from conveyor.runtime.messages import AwaitChild, Message, Reply, SubmitChildren
from conveyor.store.base import Store

__all__ = ["Children"]


class Children:
    """The engine's side of ``current().submit``, ``submit_job`` and ``ChildHandle.result``."""

    def __init__(
        self,
        store: Store,
        post: Callable[[Message], None],
        clock: Clock,
        functions: dict[str, TaskSpec],
    ) -> None:
        self._store = store
        self._post = post
        self._clock = clock
        self._functions = functions  # callables of children, for the engine to find by id
        #: Parents waiting, by the child they wait on (read, not changed, by the engine).
        self.watchers: dict[str, list[Reply[TaskResult]]] = {}
        #: Slots lent by parents waiting on their children.
        self.lent = 0
        #: The engine thread's id: an inline task runs there and calls the store directly.
        self.engine_thread: int | None = None
        #: Set by ``stop``: no child will start any more, so no parent may wait for one.
        self.stopped: str | None = None
        #: The claims (handles) of parents whose wait ``stop`` cut: their end is a cancellation
        #: (``InFlight.record``), not a failure of theirs. Added on the parent's own thread.
        self.interrupted: set[int] = set()

    # -- called by tasks (``TaskContext``), on their own threads ---------------------------------
    def submit(self, ctx: TaskContext, specs: list[TaskSpec]) -> list[str]:
        for spec in specs:
            spec.validate()
            if callable(spec.fn):
                self._functions[spec.id] = spec
        parent = ctx.claim
        if threading.get_ident() == self.engine_thread:
            return self._store.submit_children(parent, specs, self._clock.wall())
        reply: Reply[list[str]] = Reply()
        self._post(SubmitChildren(parent, specs, reply))
        return reply.wait()

    def wait(self, ctx: TaskContext, task_id: str, timeout: float | None) -> TaskResult:
        if threading.get_ident() == self.engine_thread:
            raise ConveyorError("an inline task cannot wait for its children; use threads")
        reply: Reply[TaskResult] = Reply()
        self._post(AwaitChild(task_id, reply))
        try:
            return reply.wait(timeout)
        except ConveyorError:
            if self.stopped is not None:
                self.interrupted.add(ctx.claim.handle)
            raise

    # -- on the engine thread --------------------------------------------------------------------
    def on_submit(self, msg: SubmitChildren, now: float) -> None:
        try:
            ids = self._store.submit_children(msg.parent, msg.specs, now)
        except BaseException as exc:
            msg.reply.fail(exc)
        else:
            msg.reply.set(ids)

    def on_wait(self, msg: AwaitChild) -> None:
        res = self._store.result(msg.task_id)
        if res.state.finished:
            msg.reply.set(res)
        elif self.stopped is not None:
            msg.reply.fail(ConveyorError(self.stopped))
        else:
            self.lent += 1
            self.watchers.setdefault(msg.task_id, []).append(msg.reply)

    def finished(self, task_id: str, failed: bool) -> None:
        """``task_id`` finished an attempt: answer its waiting parents if it is over. A failure
        may have skipped other watched children, so then every watched child is looked at."""
        self._notify(task_id)
        if failed:
            self.poll()

    def poll(self) -> None:
        """Answer the parents of every watched child that is over (a shared store's children
        may be finished by other workers)."""
        for task_id in list(self.watchers):
            self._notify(task_id)

    def _notify(self, task_id: str) -> None:
        replies = self.watchers.pop(task_id, None)
        if not replies:
            return
        res = self._store.result(task_id)
        if not res.state.finished:  # retrying: keep waiting
            self.watchers[task_id] = replies
            return
        for reply in replies:
            self.lent -= 1
            reply.set(res)

    def stop(self, why: str) -> None:
        """No child starts any more (Ctrl-C of an in-memory run): a parent waiting for one
        would wait forever, and the run, draining its threads, for the parent. Each waiting
        parent (and any that waits later) gets an error instead."""
        self.stopped = why
        for replies in self.watchers.values():
            for reply in replies:
                self.lent -= 1
                reply.fail(ConveyorError(why))
        self.watchers.clear()

    def close(self) -> None:
        """The run stopped: every waiting parent gets an error."""
        for replies in self.watchers.values():
            for reply in replies:
                reply.fail(ConveyorError("the run stopped before the child finished"))
        self.watchers.clear()
