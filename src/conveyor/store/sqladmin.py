"""What ``conveyor status|retry|prune|events`` ask of a SQL store: functions over reads or a
transaction. None of these run on the claim/complete path; some scan tables (said below)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from conveyor.core.transitions import DEAD, RETRYABLE, UNFINISHED
from conveyor.errors import GraphError, UsageError
from conveyor.model import TaskState
from conveyor.store.sqltx import Reads, Tx

READY, PENDING, SKIPPED = TaskState.READY, TaskState.PENDING, TaskState.SKIPPED
_ENDPOINTS = "endpoints:"  # meta keys of the workers' endpoint reports
_RUNTIMES = "runtimes:"  # meta keys of the workers' runtime reports
#: The names ``ResultCodec.encode`` gives result files: ``<seq>-<token>.<kind>[.tmp<pid>]``.
_RESULT_FILE = re.compile(r"(\d+)-(\d+)\.(?:json|pickle)(?:\.tmp\d+)?")


def status(reads: Reads, now: float) -> dict[str, Any]:
    """Counts by state and group, live workers, tasks/s over the last minute, ETA.
    Scans the tasks table (O(n)); for people and dashboards, not for workers."""
    counts = {s.label: 0 for s in TaskState}
    groups: dict[str, dict[str, int]] = {}
    for grp, state, n in reads.rows("counts_by_group"):
        label = TaskState(state).label
        counts[label] += int(n)
        groups.setdefault(grp, {})[label] = int(n)
    running: dict[str, list[str]] = {}
    for worker, task in reads.rows("running_by_worker"):
        running.setdefault(worker, []).append(task)
    # ``info``: what the worker registered (slots, labels, its SLURM ids); ``tasks``: what it
    # runs now.
    workers = [
        {"worker": name, "host": host, "pid": pid, "last_seen": last_seen, "lease_s": lease_s,
         "info": json.loads(info) if info else {}, "tasks": running.get(name, [])}
        for name, host, pid, last_seen, lease_s, info in reads.rows("workers_alive")
        if last_seen + lease_s >= now
    ]  # fmt: skip
    n, first = reads.rows("done_since", since=now - 60.0)[0]
    rate = 0.0
    if n:
        rate = int(n) / max(1.0, min(60.0, now - float(first)))
    unfinished = sum(counts[s.label] for s in UNFINISHED)
    eta = unfinished / rate if rate > 0 else None
    # The last report of every worker that ran endpoint tasks (live or gone): 429s counted
    # by a worker that has left still tell what the endpoint did to this graph.
    reports = reads.rows("endpoint_stats", lo=_ENDPOINTS, hi=_ENDPOINTS[:-1] + ";")
    return {
        "endpoints": merge_endpoints(json.loads(v) for _k, v in reports),
        "graph": reads.scalar("meta_get", key="graph"), "total": sum(counts.values()),
        "unfinished": unfinished, "counts": counts, "groups": groups, "workers": workers,
        "workers_alive": len(workers), "tasks_per_s": round(rate, 2),
        "eta_s": None if eta is None else round(eta, 1),
    }  # fmt: skip


def merge_endpoints(reports: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per endpoint over the workers' reports: limits, in flight, waiting and 429s add up
    (each worker adapts its own limit); the longest cooldown left is shown."""
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


def endpoint_reports(reads: Reads, now: float, within: float) -> dict[str, dict[str, Any]]:
    """Worker -> its endpoint statistics, for the reports written in the last ``within``
    seconds: what the processes sharing an endpoint tell each other. Reads one meta row per
    worker that ever reported (a range of the meta table's key)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in reads.rows("endpoint_stats", lo=_ENDPOINTS, hi=_ENDPOINTS[:-1] + ";"):
        rep = json.loads(value)
        if float(rep.get("ts", 0.0)) >= now - within:
            out[str(key)[len(_ENDPOINTS) :]] = dict(rep.get("endpoints", {}))
    return out


def report_endpoints(tx: Tx, worker: str, now: float, stats: Mapping[str, Any]) -> None:
    """Record one worker's endpoint limiter statistics for ``conveyor status``."""
    value = json.dumps({"ts": now, "endpoints": stats}, default=str)
    tx.run("meta_set", key=_ENDPOINTS + worker, value=value)


def report_runtimes(tx: Tx, worker: str, stats: Mapping[str, Sequence[float]]) -> None:
    """Record how long one worker's tasks ran, per task kind (``Store.report_runtimes``)."""
    tx.run("meta_set", key=_RUNTIMES + worker, value=json.dumps(stats))


def runtime_reports(reads: Reads) -> dict[str, dict[str, list[float]]]:
    """Worker -> its runtime report, for every worker that ever reported: one meta row each
    (a range of the meta table's key)."""
    rows = reads.rows("endpoint_stats", lo=_RUNTIMES, hi=_RUNTIMES[:-1] + ";")
    return {str(key)[len(_RUNTIMES) :]: json.loads(value) for key, value in rows}


def prune(tx: Tx, keep: int) -> int:
    """Delete all but the newest ``keep`` audit rows of each task; returns how many went.
    The tasks table keeps every task's latest state whatever is pruned."""
    if keep < 1:
        raise UsageError("--keep must be at least 1")
    return tx.count("prune_audit", keep=keep)


def prune_results(tx: Tx, results_dir: str) -> tuple[int, int]:
    """Remove the files in ``results_dir`` that no result row names and that no running
    attempt may still name (a completion writes its file before it takes the write lock, and
    this runs holding it): results of tasks run again, of a replaced graph or of tasks removed
    from their graph (their result rows go first: a task added back runs again), and the
    leftovers of writers that crashed. Only files named as ``ResultCodec`` names them are
    touched. Returns ``(files, bytes)``. Scans the results directory and the file rows."""
    tx.run("drop_removed_results")
    try:
        names = os.listdir(results_dir)
    except FileNotFoundError:
        return 0, 0
    named = {bytes(r[0]).decode("utf-8", "replace") for r in tx.rows("result_files")}
    running = {(int(seq), int(token)) for seq, token in tx.rows("running_tokens")}
    files = size = 0
    for name in names:
        m = _RESULT_FILE.fullmatch(name)
        if m is None or name in named or (int(m[1]), int(m[2])) in running:
            continue
        path = Path(results_dir) / name
        try:
            n = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        files, size = files + 1, size + n
    return files, size


def retry(tx: Tx, ids: list[str] | None, now: float) -> list[str]:
    """Make failed (or cancelled) tasks claimable again with a fresh lost-lease budget, and
    un-skip what their failure skipped. ``ids=None``: every failed task."""
    targets = ids if ids is not None else [r[0] for r in tx.rows("failed_ids")]
    seqs = []
    for tid in targets:
        rows = tx.rows("task_state", id=tid)
        if not rows:
            raise GraphError(f"unknown task {tid!r}")
        seq, state, waiting = rows[0]
        if state not in RETRYABLE:
            raise UsageError(
                f"task {tid!r} is {TaskState(state).label}: only failed or cancelled tasks can "
                "be retried (a skipped task runs again when its failed parent does)"
            )
        _reset(tx, seq, tid, state, waiting, now)
        seqs.append(seq)
    _unskip(tx, seqs, now)
    tx.notify = bool(seqs)
    return list(targets)


def _reset(tx: Tx, seq: int, tid: str, state: int, waiting: int, now: float) -> None:
    to = READY if waiting == 0 else PENDING
    tx.run("reset_task", seq=seq, state=to, now=now)
    tx.audit(now, "task_ready" if to == READY else "task_submitted", tid, state, to,
             reason="retry")  # fmt: skip


def _unskip(tx: Tx, seqs: list[int], now: float) -> None:
    """Skipped descendants whose parents are no longer dead go back to waiting."""
    stack = list(seqs)
    while stack:
        for seq, tid, state, waiting in tx.rows("children_of", seq=stack.pop()):
            if state != SKIPPED:
                continue
            deps = json.loads(tx.scalar("spec_of", seq=seq)).get("deps", [])
            if any(tx.rows("task_state", id=d)[0][1] in DEAD for d in deps):
                continue
            _reset(tx, seq, tid, state, waiting, now)
            stack.append(seq)
