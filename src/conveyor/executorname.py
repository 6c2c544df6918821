"""The executors a whole run can be given, and the check of that choice: one home for
``conveyor.run(executor=...)`` and ``conveyor run --executor`` (each worded for its caller:
parameter names in Python, flags on the command line)."""

from __future__ import annotations

from conveyor.errors import UsageError

__all__ = ["RUN_EXECUTORS", "check_executor"]

#: What ``executor`` may be for a run (a task's own ``executor`` is one of the first three).
RUN_EXECUTORS = ("thread", "inline", "process", "ray")


def check_executor(executor: object, ray_address: object = None, *, flags: bool = False) -> None:
    """A ``UsageError`` unless ``executor`` is ``None`` or one of ``RUN_EXECUTORS``, and unless
    a Ray address comes with ``executor="ray"``. ``flags``: word it as the CLI's options."""
    exe, addr = ("--executor", "--address") if flags else ("executor", "ray_address")
    ray = "--executor ray" if flags else "executor='ray'"
    if executor is not None and executor not in RUN_EXECUTORS:
        names = ", ".join(RUN_EXECUTORS[:-1]) + f" or {RUN_EXECUTORS[-1]}"
        raise UsageError(f"{exe} must be {names}, got {executor!r}")
    if ray_address is not None and executor != "ray":
        raise UsageError(f"{addr} names a Ray cluster: it needs {ray}")
