"""Workers and their leases in the SQL stores: joining and leaving, heartbeats, and reaping
the leases of workers that went silent or whose process is gone.

A lease carries a generation (``token``): reaping moves it on, so a late completion of the old
attempt is refused. A task whose lease expired ``lost_budget`` times fails (a crash loop is not
retried forever) and its downstream is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.model import TaskState
from conveyor.store.sqlsteps import Worker, left_running_seq, skip_downstream
from conveyor.store.sqltx import Tx
from conveyor.workerid import HOST

RUNNING, READY, FAILED = TaskState.RUNNING, TaskState.READY, TaskState.FAILED

#: Leases that may expire on one task before it is failed.
LOST_BUDGET = 3


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet waited for is a zombie: dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Leases:
    """Worker rows and leases; each method runs inside the caller's transaction."""

    def __init__(self, worker: Worker, lost_budget: int = LOST_BUDGET) -> None:
        self.worker = worker
        self.lost_budget = lost_budget

    def register(self, tx: Tx, name: str, now: float, info: Mapping[str, Any]) -> None:
        """Note worker ``name`` joining, with what it offers (for ``why`` and ``status``)."""
        profile = self.worker.profile
        resources = None if profile.resources is None else dict(profile.resources)
        info = {**info, "labels": dict(profile.labels), "resources": resources}
        host, _, pid = name.rpartition(":")
        tx.run("worker_upsert", name=name, host=host or None,
               pid=int(pid) if pid.isdigit() else None, now=now, lease_s=self.worker.lease_s,
               info=json.dumps(info, default=str))  # fmt: skip
        tx.audit(now, "worker_joined", None, None, None, name)

    def heartbeat(self, tx: Tx, name: str, now: float, lease_s: float) -> int:
        """Renew every lease ``name`` holds; returns how many."""
        n = tx.count("renew_leases", worker=name, lease_until=now + lease_s)
        tx.run("worker_seen", name=name, now=now, lease_s=lease_s)
        return n

    def reap(self, tx: Tx, now: float, admission: bool) -> list[str]:
        """Requeue tasks whose lease expired (or whose worker on this host is gone); a task
        lost ``lost_budget`` times fails. Marks silent workers lost. O(running tasks)."""
        rows = {r[0]: r for r in tx.rows("expired_leases", now=now)}
        for name, host, pid, last_seen, lease_s, _info in tx.rows("workers_alive"):
            gone = host == HOST and pid is not None and not pid_alive(pid)
            if not gone and last_seen + lease_s >= now:
                continue
            if tx.count("worker_lost", name=name) == 1:
                tx.audit(now, "worker_lost", None, None, None, name,
                         reason="exited" if gone else "silent")  # fmt: skip
            if gone:
                rows.update({r[0]: r for r in tx.rows("leases_of_worker", worker=name)})
        out = []
        for seq, tid, worker, attempt, lost, token in rows.values():
            params = {"seq": seq, "token": token, "now": now}
            if lost + 1 >= self.lost_budget:
                error = f"lost: its lease expired {lost + 1} times (worker crashes?)"
                if tx.count("fail_lost", error=error, **params) == 1:
                    left_running_seq(tx, seq, admission)
                    tx.audit(now, "lease_expired", tid, RUNNING, FAILED, worker, attempt, error)
                    skip_downstream(tx, [seq], now, tid)
                    out.append(tid)
            elif tx.count("requeue_lost", **params) == 1:
                left_running_seq(tx, seq, admission)
                tx.audit(now, "lease_expired", tid, RUNNING, READY, worker, attempt)
                tx.notify = True
                out.append(tid)
        return out
