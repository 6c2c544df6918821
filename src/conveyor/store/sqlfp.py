"""Fingerprints in the SQL stores (issue 7, docs/incremental.md): plans, and applying them at
submit. Functions over a transaction (or reads); the caller computed the fingerprint parts.

``open_graph`` of a graph the store already holds calls ``resume`` inside its transaction:
the new spec's fingerprint parts (computed before the transaction, O(V + E) in Python) are
compared with what the store remembers, and only what changed is written:

- a done task whose decision is ``run`` becomes ``invalidated`` (an audit row with the old and
  new fingerprint and the reason), ready at once when its parents are all done;
- a running task whose fingerprint changed is fenced (its lease generation moves on, so the
  stale attempt's completion is refused) and invalidated the same way;
- failed, skipped and cancelled tasks run again (``failed_before``);
- unfinished tasks get the new fingerprint, and their waiting counts are recomputed when a
  parent stopped being done.

The stored fingerprint of a task is the one it is to run with; once the task is done it is the
one of its last successful run, because it is written only for tasks that will run or whose
fingerprint did not change, and a running attempt it no longer describes is fenced. So the
claim/complete path never reads or writes fingerprints, and a completion costs nothing more.

None of this runs on the claim path. The work in the store is O(changed + their edges), plus
one read of every task's (id, state, fingerprint) to compare.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from conveyor.core.fingerprint import Decision, Parts, Stored, decide, decide_all
from conveyor.core.transitions import DEAD
from conveyor.model import GraphSpec, TaskState
from conveyor.store.base import GraphFingerprints
from conveyor.store.codec import encode_spec, plain_json
from conveyor.store.sqlremove import removals
from conveyor.store.sqlsteps import fold_owed, left_running_seq
from conveyor.store.sqltx import Reads, Tx

PENDING, READY, RUNNING = TaskState.PENDING, TaskState.READY, TaskState.RUNNING
DONE, INVALIDATED, RETRY_WAIT = TaskState.DONE, TaskState.INVALIDATED, TaskState.RETRY_WAIT
REMOVED = TaskState.REMOVED
#: Every owed release at once (``resume``: a resume is rare and holds the tasks table).
_FOLD_ALL = 2**31 - 1
#: What ``resume`` reads of a task before and after: (id, seq, state, neg_depth, fingerprint).
Info = tuple[str, int, int, int, str | None]


def parts_json(p: Parts) -> str:
    return plain_json({"code": p.code, "args": p.args, "inputs": p.inputs, "parents": p.parents})


def parts_from_json(fp: str, text: str) -> Parts:
    d = json.loads(text)
    inputs = tuple((str(a), str(b)) for a, b in d["inputs"])
    parents = tuple((str(a), str(b)) for a, b in d["parents"])
    return Parts(d["code"], d["args"], inputs, parents, fp)


# -- planning -------------------------------------------------------------------------------------
def file_hashes(reads: Reads) -> dict[str, tuple[int, int, str]]:
    """Input-file hashes remembered from earlier runs, for the caller's fingerprints."""
    return {p: (int(m), int(s), d) for p, m, s, d in reads.rows("fp_file_hashes")}


def file_rows(reads: Reads, fps: GraphFingerprints) -> list[dict[str, Any]]:
    """The file hash rows the caller computed that the store does not hold yet."""
    known = file_hashes(reads)
    return [
        {"path": p, "mtime_ns": e[0], "size": e[1], "digest": e[2]}
        for p, e in fps.files.items()
        if known.get(p) != tuple(e)
    ]


def _decide(
    reads: Reads, rows: list[Any], graph: GraphSpec, fps: GraphFingerprints
) -> tuple[list[Decision], dict[str, Stored]]:
    """Decisions for ``graph``'s tasks in graph order, from ``fp_all`` rows, and what the
    store remembers of the tasks that are not plainly unchanged. Parts are read only for
    done or running tasks whose fingerprint differs (to say what changed)."""
    parts = fps.parts
    by_id = {r[0]: r for r in rows}
    stored: dict[str, Stored] = {}
    differ: dict[int, str] = {}
    out: list[Decision | None] = []
    for t in graph.tasks:
        r = by_id.get(t.id)
        if r is None:
            out.append(None)
            continue
        _id, seq, state, _nd, fp = r
        new = parts[t.id]
        if fp == new.fingerprint and state == DONE and t.cache and not t.outputs:
            out.append(Decision(t.id, "reuse", "unchanged"))  # the common case, fast
            continue
        out.append(None)
        p = None
        if fp is not None and fp == new.fingerprint:
            p = new
        elif fp is not None and state in (DONE, RUNNING):
            differ[seq] = t.id
        stored[t.id] = Stored(TaskState(state).label, p)
    if differ:
        for seq, fp, text in reads.rows("fp_parts_of", seqs=reads.as_list(sorted(differ))):
            tid = differ[seq]
            stored[tid] = Stored(stored[tid].state, parts_from_json(fp, text))
    rest = iter(decide_all(graph.tasks, parts, stored, fps.missing,
                           only=[d is None for d in out]))  # fmt: skip
    return [d if d is not None else next(rest) for d in out], stored


def plan(reads: Reads, graph: GraphSpec, fps: GraphFingerprints) -> list[Decision]:
    """What ``open_graph`` would run again and why, per task in graph order, then the tasks
    it would mark removed (action ``remove``, reason ``not_in_graph``). Changes nothing."""
    if reads.scalar("meta_get", key="graph") != graph.name:
        return decide_all(graph.tasks, fps.parts, {}, fps.missing)
    removed = [Decision(tid, "remove", "not_in_graph", {"state": TaskState(state).label})
               for _seq, tid, state in removals(reads, graph)]  # fmt: skip
    return _decide(reads, reads.rows("fp_all"), graph, fps)[0] + removed


# -- applying a plan at submit ------------------------------------------------------------------
def save_files(tx: Tx, rows: list[dict[str, Any]]) -> None:
    tx.many("fp_file_hash_set", rows)


def insert(tx: Tx, first: int, parts: list[Parts]) -> None:
    """Fingerprint rows of newly inserted tasks: ``parts[i]`` of seq ``first + i``."""
    texts: dict[int, str] = {}  # by id(Parts): tasks alike share one (``graph_parts``)

    def rows() -> Iterator[dict[str, Any]]:  # made as they are sent (``Tx.stream``)
        for seq, p in enumerate(parts, first):
            text = texts.get(id(p))
            if text is None:
                text = texts[id(p)] = parts_json(p)
            yield {"seq": seq, "fp": p.fingerprint, "parts": text}

    tx.stream("fp_insert", rows())


def resume(
    tx: Tx, graph: GraphSpec, fps: GraphFingerprints, now: float, admission: bool
) -> tuple[dict[str, tuple[int, int, int]], list[tuple[str, list[str], list[str]]]]:
    """Apply the plan to the tasks the store holds; returns ``{id: (seq, state, neg_depth)}``
    of every task after it (for inserting the new ones), and the parents gone and added of
    tasks whose parents changed (for ``edges``, after the insert)."""
    tx.lock("tasks")
    if tx.io.owes_releases:
        # The waiting counts below must be whole: no release is owed while they are rewritten.
        # Under the lock no worker holds a task row it updates, so the fold skips none.
        fold_owed(tx, now, most=_FOLD_ALL)
    rows = tx.rows("fp_all")
    info: dict[str, Info] = {r[0]: (r[0], r[1], r[2], r[3], r[4]) for r in rows}
    parts = fps.parts
    plan, stored = _decide(tx, rows, graph, fps)
    decisions = {d.task: d for d in plan}
    tasks = graph.tasks
    lay = graph.layout
    order = (
        sorted(range(len(tasks)), key=lay.depth.__getitem__)
        if lay is not None and len(lay.depth) == len(tasks)
        else range(len(tasks))  # graph files and Graph objects always carry their layout
    )
    # 1. Which tasks change: their new state is decided below, parents first.
    done_after: dict[str, bool] = {}  # existing spec tasks: done after this submit?
    rerun: dict[str, tuple[int, Decision]] = {}  # id -> (state before, decision)
    fp_rows: list[dict[str, Any]] = []
    rewrite: list[str] = []  # tasks whose stored spec (and edges) may have changed
    for i in order:
        t = tasks[i]
        r = info.get(t.id)
        if r is None:
            continue
        _id, seq, state, _nd, fp = r
        new = parts[t.id]
        d = decisions[t.id]
        if state == DONE:
            if d.action == "reuse":
                done_after[t.id] = True
                if fp is None:  # finished before fingerprints: adopt the new one
                    fp_rows.append({"seq": seq, "fp": new.fingerprint, "parts": parts_json(new)})
                continue
            rerun[t.id] = (state, d)
        elif state == RUNNING:
            old_parts = stored[t.id].parts
            if fp is not None and fp != new.fingerprint and old_parts is not None:
                rerun[t.id] = (state, decide(t.id, new, Stored("done", old_parts),
                                             cache=t.cache))  # fmt: skip
        elif state in DEAD or state == REMOVED:  # a removed task back in the graph runs
            rerun[t.id] = (state, d)
        done_after[t.id] = False
        if fp != new.fingerprint:
            fp_rows.append({"seq": seq, "fp": new.fingerprint, "parts": parts_json(new)})
            if fp is not None:
                rewrite.append(t.id)
    # 2. Waiting counts: of every task that runs again, and of unfinished children of
    # tasks that stopped being done. New tasks are never done.
    flipped = {tid for tid, (st, _) in rerun.items() if st == DONE}
    spec_of = {t.id: t for t in tasks}
    recount: set[str] = set(rerun)
    if flipped:
        for t in tasks:
            if (
                t.id in info
                and not done_after.get(t.id, True)
                and any(p in flipped for p in t.deps)
            ):
                recount.add(t.id)
    old_specs: dict[str, Any] = {}
    if rewrite:
        seqs = [info[tid][1] for tid in rewrite]
        by_seq = dict(tx.rows("specs_of", seqs=tx.as_list(seqs)))
        for tid in rewrite:
            text = by_seq.get(info[tid][1])
            old_specs[tid] = text
            if text is not None and set(json.loads(text).get("deps", [])) != set(spec_of[tid].deps):
                recount.add(tid)
    ready = False
    for tid in sorted(recount, key=lambda x: info[x][1]):
        t = spec_of[tid]
        _id, seq, state, _nd, fp = info[tid]
        waiting = sum(1 for p in t.deps if not done_after.get(p, False))
        why = rerun.get(tid)
        if why is not None and state in (DONE, RUNNING):
            d = why[1]
            to = READY if waiting == 0 else INVALIDATED
            fence = int(state == RUNNING)
            tx.run("fp_set_task", seq=seq, state=to, waiting=waiting, fence=fence, now=now)
            if fence:  # left running (as a reaped lease does): its group runs one fewer
                left_running_seq(tx, seq, admission)
            extra = {"reason": d.reason, "old_fingerprint": fp,
                     "new_fingerprint": parts[tid].fingerprint, **d.detail}  # fmt: skip
            tx.audit(now, "task_invalidated", tid, state, INVALIDATED, **extra)
            if to == READY:
                tx.audit(now, "task_ready", tid, INVALIDATED, READY)
        elif why is not None:  # failed, skipped or cancelled before: runs again
            to = READY if waiting == 0 else PENDING
            tx.run("fp_set_task", seq=seq, state=to, waiting=waiting, fence=0, now=now)
            tx.audit(now, "task_ready" if to == READY else "task_submitted", tid, state, to,
                     reason=why[1].reason)  # fmt: skip
        else:  # unfinished: its parents' states changed (or its parents did)
            if state == RUNNING:
                to = RUNNING
            elif waiting == 0:
                to = RETRY_WAIT if state == RETRY_WAIT else READY
            else:
                to = INVALIDATED if state == INVALIDATED else PENDING
            tx.run("fp_set_waiting", seq=seq, state=to, waiting=waiting, now=now)
            if to != state:
                ev = "task_ready" if to == READY else "task_submitted"
                tx.audit(now, ev, tid, state, to, reason="upstream_invalidated")
        ready = ready or to == READY
        info[tid] = (tid, seq, to, info[tid][3], fp)
    tx.many("fp_set", fp_rows)
    # 3. Specs that changed (arguments, command, version ...), and the edges of tasks
    # whose parents changed (new parents are inserted by the caller: see ``edges``).
    changes: list[tuple[str, list[str], list[str]]] = []
    for tid, text in old_specs.items():
        t = spec_of[tid]
        new_text = encode_spec(t)
        # (Texts of equal specs may differ: see ``codec.to_json``.)
        if text is not None and text != new_text and json.loads(text) != json.loads(new_text):
            tx.run("fp_update_spec", seq=info[tid][1], spec=new_text)
            old = set(json.loads(text).get("deps", []))
            if old != set(t.deps):
                changes.append((tid, sorted(old - set(t.deps)), sorted(set(t.deps) - old)))
    tx.notify = tx.notify or ready
    return {tid: (r[1], r[2], r[3]) for tid, r in info.items()}, changes


def edges(tx: Tx, changes: list[tuple[str, list[str], list[str]]]) -> None:
    """Edges of existing tasks whose parents changed; after the new tasks are inserted."""
    for tid, gone, added in changes:
        child = tx.scalar("fp_seq_of", id=tid)
        for p in gone:
            seq = tx.scalar("fp_seq_of", id=p)
            if seq is not None:
                tx.run("fp_delete_edge", parent=seq, child=child)
        for p in added:
            seq = tx.scalar("fp_seq_of", id=p)
            tx.run("insert_edge", parent=seq, child=child)
