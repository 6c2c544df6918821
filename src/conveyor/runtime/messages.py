"""What the engine's queue carries: one frozen message type per thing that can happen.

Executors, pool threads and task threads post messages; only the engine thread reads them
(``Engine._handle`` matches on the type). A task thread that needs an answer (its children's
ids, a child's result) waits on the ``Reply`` its message carries.

Messages compare by identity (``eq=False``): nothing compares them, and leaving out the
generated ``__eq__``/``__hash__`` makes this module a third cheaper to import (each frozen
slotted dataclass costs ~0.5 ms at import, and one is made per message).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True, eq=False)
class Finished:
    """An executor finished ``run``: ``ok`` with its value, or not with an error text."""

    run: Running
    ok: bool
    value: Any


@dataclass(frozen=True, slots=True, eq=False)
class Recorded:
    """Results a pool thread recorded itself (it then ran its next task), to be handed out."""

    results: list[TaskResult]


@dataclass(frozen=True, slots=True, eq=False)
class StartInline:
    """A task a pool thread claimed that it does not run itself: the engine thread starts it
    (``executor="inline"``; on a shared store, any task but a sync function's that needs
    nothing from the store to start)."""

    claim: Claim


@dataclass(frozen=True, slots=True, eq=False)
class Parked:
    """A pool thread parked a success itself (shared store, group commit): the engine looks
    again at when to record the group."""


@dataclass(frozen=True, slots=True, eq=False)
class SubmitChildren:
    """A running task submits children; the reply is their ids."""

    parent: Claim
    specs: list[TaskSpec]
    reply: Reply[list[str]]


@dataclass(frozen=True, slots=True, eq=False)
class AwaitChild:
    """A running task waits for a child; the reply is the child's final result."""

    task_id: str
    reply: Reply[TaskResult]


@dataclass(frozen=True, slots=True, eq=False)
class Stop:
    """Start no new tasks; those running finish (``Engine.stop``)."""


@dataclass(frozen=True, slots=True, eq=False)
class Wake:
    """Look again: a pool thread left the engine with nothing running, or stopping."""


@dataclass(frozen=True, slots=True, eq=False)
class Interrupt:
    """Ctrl-C arrived (the engine's SIGINT handler posts it; the loop acts on it between
    steps, never in the middle of one)."""


@dataclass(frozen=True, slots=True, eq=False)
class HandBack:
    """Hand every running task back to the store and stop (``Engine.hand_back``: a signal
    before a time limit or preemption); ``reason`` goes into each ``task_released`` event."""

    reason: str


Message = (
    Finished | Recorded | StartInline | Parked | SubmitChildren | AwaitChild
    | Stop | Wake | Interrupt | HandBack
)  # fmt: skip
