"""What the engine's queue carries: one frozen message type per thing that can happen.

Executors, pool threads and task threads post messages; only the engine thread reads them
(``Engine._handle`` matches on the type). A task thread that needs an answer (its children's
ids, a child's result) waits on the ``Reply`` its message carries.

Messages are frozen, slotted and compare by identity (nothing compares them). They are
written out rather than made by ``@dataclass``: a frozen slotted dataclass costs ~0.5-1 ms to
create at import (it compiles its methods), ten of them ~7 ms of every ``conveyor run`` and
``conveyor worker`` start; written out, their code comes from the bytecode cache.
"""

from __future__ import annotations

import threading
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from conveyor.model import TaskResult, TaskSpec
    from conveyor.runtime.executors import Running
    from conveyor.store.base import Claim

__all__ = [
    "AwaitChild",
    "Finished",
    "HandBack",
    "Message",
    "Parked",
    "Recorded",
    "Reply",
    "StartInline",
    "Stop",
    "SubmitChildren",
    "Wake",
]

T = TypeVar("T")


class Reply(Generic[T]):
    """One answer from the engine thread to a task thread blocked in ``wait``."""

    __slots__ = ("_error", "_event", "_value")
    _value: T

    def __init__(self) -> None:
        self._event = threading.Event()
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def wait(self, timeout: float | None = None) -> T:
        if not self._event.wait(timeout):
            raise TimeoutError("timed out waiting for the engine")
        if self._error is not None:
            raise self._error
        return self._value


class _Message:
    """A message's shared behaviour: frozen (assigning or deleting a field raises
    ``dataclasses.FrozenInstanceError``, as for a frozen dataclass) and a ``repr`` that names
    its fields. Subclasses list their fields in ``__slots__`` and, in order, in
    ``__match_args__`` (for ``Engine._handle``'s ``match`` and the ``repr``), and set them in
    ``__init__`` with ``_set``."""

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__qualname__}({fields})"


_set = object.__setattr__


class Finished(_Message):
    """An executor finished ``run``: ``ok`` with its value, or not with an error text."""

    __slots__ = ("ok", "run", "value")
    __match_args__ = ("run", "ok", "value")
    run: Running
    ok: bool
    value: Any

    def __init__(self, run: Running, ok: bool, value: Any) -> None:
        _set(self, "run", run)
        _set(self, "ok", ok)
        _set(self, "value", value)


class Recorded(_Message):
    """Results a pool thread recorded itself (it then ran its next task), to be handed out."""

    __slots__ = ("results",)
    __match_args__ = ("results",)
    results: list[TaskResult]

    def __init__(self, results: list[TaskResult]) -> None:
        _set(self, "results", results)


class StartInline(_Message):
    """A task a pool thread claimed that it does not run itself: the engine thread starts it
    (``executor="inline"``; on a shared store, any task but a sync function's that needs
    nothing from the store to start)."""

    __slots__ = ("claim",)
    __match_args__ = ("claim",)
    claim: Claim

    def __init__(self, claim: Claim) -> None:
        _set(self, "claim", claim)


class Parked(_Message):
    """A pool thread parked a success itself (shared store, group commit): the engine looks
    again at when to record the group."""

    __slots__ = ()
    __match_args__ = ()


class SubmitChildren(_Message):
    """A running task submits children; the reply is their ids."""

    __slots__ = ("parent", "reply", "specs")
    __match_args__ = ("parent", "specs", "reply")
    parent: Claim
    specs: list[TaskSpec]
    reply: Reply[list[str]]

    def __init__(self, parent: Claim, specs: list[TaskSpec], reply: Reply[list[str]]) -> None:
        _set(self, "parent", parent)
        _set(self, "specs", specs)
        _set(self, "reply", reply)


class AwaitChild(_Message):
    """A running task waits for a child; the reply is the child's final result."""

    __slots__ = ("reply", "task_id")
    __match_args__ = ("task_id", "reply")
    task_id: str
    reply: Reply[TaskResult]

    def __init__(self, task_id: str, reply: Reply[TaskResult]) -> None:
        _set(self, "task_id", task_id)
        _set(self, "reply", reply)


class Stop(_Message):
    """Start no new tasks; those running finish (``Engine.stop``)."""

    __slots__ = ()
    __match_args__ = ()


class Wake(_Message):
    """Look again: a pool thread left the engine with nothing running, or stopping."""

    __slots__ = ()
    __match_args__ = ()


class Interrupt(_Message):
    """Ctrl-C arrived: the engine's SIGINT handler sets the engine's flag and posts this only
    to wake the loop, which acts on the flag between steps, never in the middle of one. It
    carries no Ctrl-C of its own: read after the flag was acted on, it would count a second."""

    __slots__ = ()
    __match_args__ = ()


class HandBack(_Message):
    """Hand every running task back to the store and stop (``Engine.hand_back``: a signal
    before a time limit or preemption); ``reason`` goes into each ``task_released`` event."""

    __slots__ = ("reason",)
    __match_args__ = ("reason",)
    reason: str

    def __init__(self, reason: str) -> None:
        _set(self, "reason", reason)


Message = (
    Finished | Recorded | StartInline | Parked | SubmitChildren | AwaitChild
    | Stop | Wake | Interrupt | HandBack
)  # fmt: skip
