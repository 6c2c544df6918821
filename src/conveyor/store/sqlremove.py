"""Tasks an edited graph no longer has, in the SQL stores: submitting a graph again without
some of its tasks marks those ``removed`` (one ``task_removed`` audit row each), and a task
that comes back in a later submission is put back to run.

Which tasks are the graph file's: every task but those submitted at run time by a running task
(their spec carries ``submitted_by``), which stay unless the task that submitted them was
removed. A removed task that was running is fenced (its lease generation moves on), so its late
completion is refused. Runs at submit only; reads every task's id and state (a resume does
anyway) and the specs of the tasks not in the graph: O(tasks in the store).
"""

from __future__ import annotations

import json

from conveyor.model import GraphSpec, TaskState
from conveyor.store.codec import SUBMITTED_BY
from conveyor.store.sqlsteps import left_running_seq
from conveyor.store.sqltx import Reads, Tx

DONE, READY, PENDING = TaskState.DONE, TaskState.READY, TaskState.PENDING
RUNNING, REMOVED = TaskState.RUNNING, TaskState.REMOVED


def removals(reads: Reads, graph: GraphSpec) -> list[tuple[int, str, int]]:
    """``(seq, id, state)`` of the tasks in the store that ``graph`` no longer has and that
    are not removed yet, in submission order. Changes nothing (``plan`` lists them)."""
    ids = {t.id for t in graph.tasks}
    rows = reads.rows("all_task_keys")
    candidates = {int(seq): (tid, int(state)) for tid, seq, state, _nd in rows if tid not in ids}
    if not candidates:
        return []
    specs = reads.rows("specs_of", seqs=reads.as_list(sorted(candidates)))
    by = {int(seq): json.loads(text).get(SUBMITTED_BY) for seq, text in specs}
    gone = {candidates[seq][0] for seq, who in by.items() if who is None}
    while True:  # run-time children of removed tasks go too (and theirs)
        more = {candidates[seq][0] for seq, who in by.items() if who in gone} - gone
        if not more:
            break
        gone |= more
    return [
        (seq, tid, state)
        for seq, (tid, state) in sorted(candidates.items())
        if tid in gone and state != REMOVED
    ]


def remove_missing(tx: Tx, graph: GraphSpec, now: float, admission: bool) -> list[str]:
    """Mark ``removals`` removed inside the submitting transaction; returns their ids."""
    out = []
    for seq, tid, state in removals(tx, graph):
        tx.run("remove_task", seq=seq, fence=int(state == RUNNING), now=now)
        if state == RUNNING:
            left_running_seq(tx, seq, admission)
        tx.audit(now, "task_removed", tid, state, REMOVED, reason="not_in_graph")
        out.append(tid)
    return out


def restore(tx: Tx, graph: GraphSpec, now: float) -> None:
    """Put removed tasks that ``graph`` has again back to run (without fingerprints; with
    them ``sqlfp.resume`` runs them again like failed ones): ready when their parents are
    done, else waiting on them."""
    for t in graph.tasks:
        rows = tx.rows("task_state", id=t.id)
        if not rows or rows[0][1] != REMOVED:
            continue
        seq = rows[0][0]
        waiting = 0
        for d in t.deps:
            found = tx.rows("task_state", id=d)
            waiting += int(not found or found[0][1] != DONE)
        to = READY if waiting == 0 else PENDING
        tx.run("fp_set_task", seq=seq, state=to, waiting=waiting, fence=0, now=now)
        tx.audit(now, "task_ready" if to == READY else "task_submitted", t.id, REMOVED, to,
                 reason="back_in_graph")  # fmt: skip
