"""How long tasks of each kind ran, shared through the store, so that a worker near its end
(``conveyor worker --until``, a SLURM job's time limit) does not start a task that declares no
``expected_s`` but whose kind's past runs say it cannot finish in time (``core/timelimit.py``).

Every worker of a shared store keeps its own runs (``record``) and publishes them with its
endpoint reports (``publish``); a worker with an end reads everybody's (``learn``, every
``LEARN_EVERY_S``) and asks ``expected`` before it starts a task.
"""

from __future__ import annotations

from conveyor.core.timelimit import estimate, merge_runtimes, runtime_key
from conveyor.model import TaskSpec
from conveyor.store.base import Store

__all__ = ["LEARN_EVERY_S", "Runtimes"]

#: How often a worker with an end reads the other workers' runtime reports.
LEARN_EVERY_S = 10.0


class Runtimes:
    """This worker's runs per task kind, and what the store's workers know together."""

    def __init__(self, store: Store, worker: str) -> None:
        self._store = store
        self._worker = worker
        self._mine: dict[str, list[float]] = {}
        self._known: dict[str, list[float]] = {}
        self._changed = False
        self._learned_at: float | None = None

    def record(self, spec: TaskSpec, seconds: float) -> None:
        """A task of ``spec``'s kind ran ``seconds`` and succeeded."""
        key = runtime_key(spec.fn, spec.cmd)
        if key is None:
            return
        have = self._mine.get(key)
        if have is None:
            self._mine[key] = [1.0, seconds, seconds]
        else:
            have[0] += 1.0
            have[1] += seconds
            have[2] = max(have[2], seconds)
        self._changed = True

    def publish(self) -> None:
        """Tell the store this worker's runs, when there is news."""
        if self._changed:
            self._changed = False
            self._store.report_runtimes(self._worker, self._mine)

    def learn(self, now: float) -> None:
        """Read every worker's runs (at most every ``LEARN_EVERY_S``)."""
        if self._learned_at is not None and now - self._learned_at < LEARN_EVERY_S:
            return
        self._learned_at = now
        reports = self._store.runtime_reports()
        reports[self._worker] = self._mine  # this worker's own runs are the freshest
        self._known = merge_runtimes(reports.values())

    def expected(self, spec: TaskSpec) -> float | None:
        """How long a task of ``spec`` is expected to run: what it declares, else the mean of
        its kind's past runs on every worker (``None``: nothing known)."""
        if spec.expected_s is not None:
            return spec.expected_s
        key = runtime_key(spec.fn, spec.cmd)
        if key is None:
            return None
        return estimate(self._known.get(key) or self._mine.get(key))
