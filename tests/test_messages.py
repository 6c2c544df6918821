"""The engine's messages (runtime/messages.py) are written out by hand rather than made by
``@dataclass`` (start-up cost): they must still be frozen, match on their fields in order,
and name their fields in a ``repr``, as the dataclasses did."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from conveyor.runtime.messages import (
    AwaitChild,
    Finished,
    HandBack,
    Interrupt,
    Parked,
    Recorded,
    Reply,
    StartInline,
    Stop,
    SubmitChildren,
    Wake,
)


def _fields(msg: Any) -> tuple[Any, ...]:
    match msg:
        case Finished(run, ok, value):
            return (run, ok, value)
        case SubmitChildren(parent, specs, reply):
            return (parent, specs, reply)
        case AwaitChild(task_id, reply):
            return (task_id, reply)
        case HandBack(reason) | Recorded(reason) | StartInline(reason):
            return (reason,)
        case Parked() | Stop() | Wake() | Interrupt():
            return ()
    raise AssertionError(f"no case matched {msg!r}")


MESSAGES = [
    Finished("run", True, 42),
    Recorded(["r"]),
    StartInline("claim"),
    SubmitChildren("parent", ["spec"], Reply()),
    AwaitChild("t1", Reply()),
    HandBack("preempted"),
    Parked(),
    Stop(),
    Wake(),
    Interrupt(),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_matches_on_its_fields_in_order_and_cannot_change(msg: Any) -> None:
    values = _fields(msg)
    assert values == tuple(getattr(msg, name) for name in type(msg).__match_args__)
    assert repr(msg) == (
        f"{type(msg).__name__}("
        + ", ".join(f"{n}={v!r}" for n, v in zip(type(msg).__match_args__, values, strict=True))
        + ")"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.extra = 1
    for name in type(msg).__match_args__:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, name, None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(msg, name)
        assert getattr(msg, name) is not None


def test_finished_keeps_what_it_was_given() -> None:
    msg = Finished("run", False, "boom")
    assert (msg.run, msg.ok, msg.value) == ("run", False, "boom")
    assert _fields(msg) == ("run", False, "boom")
