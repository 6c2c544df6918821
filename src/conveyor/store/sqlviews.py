"""Reads for people (the dashboard's pages): one task in full, the workers ever seen, ids by
state, groups of ids. Never on the claim/complete path; each is a few index seeks, except
``worker_rows`` (the small workers table) and ``task_ids`` (a scan stopped at ``limit``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from conveyor.errors import GraphError
from conveyor.model import TaskState
from conveyor.store.codec import SUBMITTED_BY, stored_spec
from conveyor.store.sqltx import Reads


def task_info(reads: Reads, task_id: str) -> dict[str, Any]:
    rows = reads.rows("view_task", id=task_id)
    if not rows:
        raise GraphError(f"unknown task {task_id!r}")
    seq, state, grp, attempt, lost, worker, _lease, not_before, error, updated, spec, fp = rows[0]
    d = stored_spec(spec)
    return {
        "id": task_id, "state": TaskState(state).label, "group": grp, "attempt": int(attempt),
        "lost": int(lost), "worker": worker, "error": error, "updated": updated,
        "not_before": not_before, "fingerprint": fp,
        "parents": [r[0] for r in reads.rows("view_parents", seq=seq)],
        "children": [r[0] for r in reads.rows("view_children", seq=seq)],
        "submitted_by": d.pop(SUBMITTED_BY, None), "spec": d,
    }  # fmt: skip


def task_ids(reads: Reads, states: Sequence[str], limit: int) -> list[str]:
    nums = [int(TaskState.from_label(s)) for s in states]
    return [r[0] for r in reads.rows("view_task_ids", states=reads.as_list(nums), limit=limit)]


def task_groups(reads: Reads, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    return {tid: grp for tid, grp in reads.rows("view_groups_of", ids=reads.as_list(list(ids)))}


def worker_rows(reads: Reads, now: float) -> list[dict[str, Any]]:
    running: dict[str, list[str]] = {}
    for worker, task in reads.rows("running_by_worker"):
        running.setdefault(worker, []).append(task)
    out = []
    for name, host, pid, joined, last_seen, lease_s, state, info in reads.rows("view_workers"):
        if state == "alive" and last_seen + lease_s < now:
            state = "lost"
        out.append({"worker": name, "host": host, "pid": pid, "joined": joined,
                    "last_seen": last_seen, "lease_s": lease_s, "state": state,
                    "info": json.loads(info) if info else {},
                    "tasks": running.get(name, [])})  # fmt: skip
    return out
