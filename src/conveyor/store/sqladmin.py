"""What `conveyor status|history|retry|prune|events` ask of a SQL store: a mixin of
``SqlStore``. None of these run on the claim/complete path; some scan tables (said below)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from conveyor.errors import GraphError, UsageError
from conveyor.model import TaskState

if TYPE_CHECKING:
    from conveyor.store.sqlbase import Tx

_LABELS = [s.label for s in TaskState]
_READY, _PENDING, _SKIPPED = TaskState.READY.value, TaskState.PENDING.value, TaskState.SKIPPED.value
_RETRYABLE = (TaskState.FAILED.value, TaskState.CANCELLED.value)
_DEAD = (TaskState.FAILED.value, TaskState.CANCELLED.value, TaskState.SKIPPED.value)


class SqlAdmin:
    """Status, history, manual retries, pruning and the event feed."""

    url: str

    if TYPE_CHECKING:

        def _read(self, name: str, /, **params: Any) -> list[Any]: ...
        def _atomic(self, op: Any) -> Any: ...
        def _list(self, values: list[Any]) -> Any: ...
        def graph_name(self) -> str | None: ...
        def counts(self) -> dict[str, int]: ...
        def unfinished(self) -> int: ...

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Counts by state and group, live workers, tasks/s over the last minute, ETA.
        Scans the tasks table (O(n)); for people and dashboards, not for workers."""
        now = time.time() if now is None else now
        counts = dict.fromkeys(_LABELS, 0)
        groups: dict[str, dict[str, int]] = {}
        for grp, state, n in self._read("counts_by_group"):
            label = _LABELS[state]
            counts[label] += int(n)
            groups.setdefault(grp, {})[label] = int(n)
        workers = [
            {"worker": name, "host": host, "pid": pid, "last_seen": last_seen, "lease_s": lease_s}
            for name, host, pid, last_seen, lease_s, _info in self._read("workers_alive")
            if last_seen + lease_s >= now
        ]
        n, first = self._read("done_since", since=now - 60.0)[0]
        rate = 0.0
        if n:
            rate = int(n) / max(1.0, min(60.0, now - float(first)))
        unfinished = sum(counts[s] for s in ("pending", "ready", "running", "retry_wait",
                                             "invalidated"))  # fmt: skip
        eta = unfinished / rate if rate > 0 else None
        # The last report of every worker that ran endpoint tasks (live or gone): 429s counted
        # by a worker that has left still tell what the endpoint did to this graph.
        endpoints = _merge_endpoints(
            json.loads(v)
            for _k, v in self._read("endpoint_stats", lo="endpoints:", hi="endpoints;")
        )
        return {
            "endpoints": endpoints,
            "graph": self.graph_name(), "total": sum(counts.values()), "unfinished": unfinished,
            "counts": counts, "groups": groups, "workers": workers, "workers_alive": len(workers),
            "tasks_per_s": round(rate, 2), "eta_s": None if eta is None else round(eta, 1),
        }  # fmt: skip

    def report_endpoints(self, worker: str, now: float, stats: dict[str, Any]) -> None:
        """Record this worker's endpoint limiter statistics for ``conveyor status``."""
        value = json.dumps({"ts": now, "endpoints": stats}, default=str)
        self._atomic(lambda tx: tx.run("meta_set", key=f"endpoints:{worker}", value=value))

    def events_after(self, after: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """Audit rows with an id above ``after``, oldest first, as ``(id, event)``."""
        from conveyor.store.sqlbase import audit_event

        rows = self._read("audit_after", after=after, limit=limit)
        return [(r[0], audit_event(r)) for r in rows]

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` audit rows of each task; returns how many went.
        The tasks table keeps every task's latest state whatever is pruned."""
        if keep < 1:
            raise UsageError("--keep must be at least 1")
        return int(self._atomic(lambda tx: tx.run("prune_audit", keep=keep).rowcount))

    def retry(self, ids: list[str] | None, now: float) -> list[str]:
        """Make failed (or cancelled) tasks claimable again with a fresh lost-lease budget,
        and un-skip what their failure skipped. ``ids=None``: every failed task."""

        def op(tx: Tx) -> list[str]:
            targets = ids if ids is not None else [r[0] for r in tx.rows("failed_ids")]
            seqs = []
            for tid in targets:
                rows = tx.rows("task_state", id=tid)
                if not rows:
                    raise GraphError(f"unknown task {tid!r}")
                seq, state, waiting = rows[0]
                if state not in _RETRYABLE:
                    raise UsageError(
                        f"task {tid!r} is {_LABELS[state]}: only failed or cancelled tasks can "
                        "be retried (a skipped task runs again when its failed parent does)"
                    )
                to = _READY if waiting == 0 else _PENDING
                tx.run("reset_task", seq=seq, state=to, now=now)
                tx.audit(now, "task_ready" if to == _READY else "task_submitted", tid, state, to,
                         reason="retry")  # fmt: skip
                seqs.append(seq)
            self._unskip(tx, seqs, now)
            tx.notify = bool(seqs)
            return list(targets)

        return self._atomic(op)  # type: ignore[no-any-return]

    def _unskip(self, tx: Tx, seqs: list[int], now: float) -> None:
        """Skipped descendants whose parents are no longer dead go back to waiting."""
        stack = list(seqs)
        while stack:
            for seq, tid, state, waiting in tx.rows("children_of", seq=stack.pop()):
                if state != _SKIPPED:
                    continue
                deps = json.loads(tx.scalar("spec_of", seq=seq)).get("deps", [])
                if any(tx.rows("task_state", id=d)[0][1] in _DEAD for d in deps):
                    continue
                to = _READY if waiting == 0 else _PENDING
                tx.run("reset_task", seq=seq, state=to, now=now)
                tx.audit(now, "task_ready" if to == _READY else "task_submitted", tid, state, to,
                         reason="retry")  # fmt: skip
                stack.append(seq)


def _merge_endpoints(reports: Any) -> dict[str, dict[str, Any]]:
    """Per endpoint over the live workers: limits, in flight, waiting and 429s add up (each
    worker adapts its own limit); the longest cooldown left is shown."""
    out: dict[str, dict[str, Any]] = {}
    for rep in reports:
        for key, st in rep.get("endpoints", {}).items():
            empty = dict.fromkeys(("limit", "in_flight", "waiting", "rate_limited", "workers"), 0)
            agg = out.setdefault(key, {**empty, "cooldown_left": 0.0})
            for f in ("limit", "in_flight", "waiting", "rate_limited"):
                agg[f] += int(st.get(f, 0))
            agg["cooldown_left"] = max(agg["cooldown_left"], float(st.get("cooldown_left", 0.0)))
            agg["workers"] += 1
    return out
