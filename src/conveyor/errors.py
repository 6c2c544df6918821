"""The exception tree. Every user error carries a message fit to print as one line."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error conveyor raises on purpose."""

    exit_code = 1


class UsageError(ConveyorError):
    """Bad input or usage: the CLI prints the message and exits 2."""

    exit_code = 2


class GraphError(UsageError):
    """A graph that cannot run: cycle, unknown or duplicate id, bad key, bad function."""


class CycleError(GraphError):
    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        shown = " -> ".join([*cycle, cycle[0]]) if cycle else "?"
        super().__init__(f"the graph has a cycle: {shown}")


class StoreError(ConveyorError):
    """The store cannot be opened or used (bad URL, unreachable, corrupt, locked)."""

    exit_code = 2


class GraphMismatchError(StoreError):
    """The store holds unfinished work of another graph."""


class StoreLockedError(StoreError):
    """Another process holds the database's write lock for longer than the busy timeout."""


class StoreCorruptError(StoreError):
    """The file or database is not a (readable) conveyor store."""


class StoreUnreachableError(StoreError):
    """The database server cannot be reached or refuses the connection."""


class ClusterError(ConveyorError):
    """A batch system refuses or cannot be asked (no ``sbatch`` on PATH, an unknown partition,
    a ``--time`` SLURM rejects): its own message as one line, exit 2."""

    exit_code = 2


class ResultError(ConveyorError):
    """A task's result cannot be stored as asked (e.g. not JSON with ``results=json``)."""


class StaleLeaseError(ConveyorError):
    """A worker tried to finish a task whose lease was taken over by another worker."""


class TaskFailed(ConveyorError):
    """Raised by RunResult.raise_for_failures / result lookups of a failed task."""


class DropRow(Exception):  # a signal a generator raises, not an error
    """Raised by a table column's generator: leave this row out of the table, with a reason
    (counted per column and reason in the build's summary)."""

    def __init__(self, reason: str = "dropped") -> None:
        super().__init__(reason)
        self.reason = reason


class WouldBlock(Exception):
    """An ``*_nowait`` call could not proceed without waiting."""
