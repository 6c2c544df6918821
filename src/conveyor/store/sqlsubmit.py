"""Submission in the SQL stores: a graph (new, resumed, or replacing another) and the children
a running task submits. New tasks get their key, waiting count, shape and edges in one
transaction; a task under a dead parent is skipped at once (``skip_closure``, as after a
failure). O(V + E) for the batch; a resume with fingerprints applies the plan (``sqlfp.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from conveyor.core.dag import Layout, layout
from conveyor.core.ordering import (
    BAND_STRIDE,
    DEFAULT_BAND,
    band_from,
    band_number,
    depth_from,
    rank_of,
)
from conveyor.core.transitions import DEAD, skip_closure, upstream_failed
from conveyor.errors import GraphMismatchError, StaleLeaseError
from conveyor.model import GraphSpec, TaskSpec, TaskState
from conveyor.store import sqlremove
from conveyor.store.base import Claim, GraphFingerprints, OpenedGraph
from conveyor.store.codec import SUBMITTED_BY, encode_bare_spec, encode_spec
from conveyor.store.sqladmission import Admission
from conveyor.store.sqltx import Tx, audit_row

PENDING, READY, RUNNING = TaskState.PENDING, TaskState.READY, TaskState.RUNNING
DONE, SKIPPED = TaskState.DONE, TaskState.SKIPPED
#: An existing task as a submission sees it: (seq, state, neg_depth).
Known = tuple[int, int, int]
_TABLES = ("tasks", "specs", "results", "edges", "audit", "workers", "admission", "groups",
           "fingerprints", "owed")  # fmt: skip


class Submissions:
    """``open_graph`` and ``submit_children`` inside the caller's transaction."""

    def __init__(self, url: str, admission: Admission) -> None:
        self.url = url
        self.admission = admission

    def open(
        self,
        tx: Tx,
        graph: GraphSpec,
        now: float,
        replace: bool,
        fps: GraphFingerprints | None,
        file_rows: list[dict[str, Any]],
    ) -> OpenedGraph:
        """Submit ``graph``, or resume it (with ``fps``: running again what changed), or
        replace another graph's finished work (``replace``: unfinished work too)."""
        from conveyor.store import sqlfp  # (a worker, which submits nothing, never needs it)

        tx.lock("graph")
        name = tx.scalar("meta_get", key="graph")
        if name is not None and name != graph.name:
            left = tx.scalar("unfinished")
            if left and not replace:
                raise GraphMismatchError(
                    f"{self.url} holds unfinished work of graph {name!r} ({left} tasks "
                    f"left), not {graph.name!r}: use --replace to discard it, or another --db"
                )
            last_event = tx.scalar("audit_last")
            for table in _TABLES:
                tx.run("wipe_" + table)
            if last_event is not None:  # the new graph's events follow on the old one's
                tx.audit_from = int(last_event) + 1
            self.admission.forget()
            name = None
        existing: dict[str, Known] = {}
        edge_changes: list[tuple[str, list[str], list[str]]] = []
        roots = 0
        if name is None:
            tx.run("meta_set", key="graph", value=graph.name)
        else:
            roots = int(tx.scalar("meta_get", key="roots") or 0)
            sqlremove.remove_missing(tx, graph, now, self.admission.on)
            if fps is not None:
                existing, edge_changes = sqlfp.resume(tx, graph, fps, now, self.admission.on)
            else:
                sqlremove.restore(tx, graph, now)
                existing = {r[0]: (r[1], r[2], r[3]) for r in tx.rows("all_task_keys")}
        self.admission.declare_groups(tx, graph.groups, graph.borrow)
        new = [t for t in graph.tasks if t.id not in existing]
        if new:
            roots += 1
            tx.run("meta_set", key="roots", value=str(roots))
            # A graph submitted whole brings its layout (depths, parents) and, when loaded
            # structure_only, tasks that are ids and parents alone: neither is worked out again.
            whole = not existing and len(new) == len(graph.tasks)
            lay = graph.layout if whole and isinstance(graph.layout, Layout) else None
            first = self.insert(tx, new, existing.get, 0, roots, now, lay=lay,
                                bare=whole and graph.structure_only)  # fmt: skip
            tx.notify = True
            if fps is not None:
                sqlfp.insert(tx, first, [fps.parts[t.id] for t in new])
        if fps is not None:
            sqlfp.edges(tx, edge_changes)
            sqlfp.save_files(tx, file_rows)
        return OpenedGraph(graph.name, len(new), name is not None, tx.scalar("unfinished"))

    def children(self, tx: Tx, parent: Claim, tasks: list[TaskSpec], now: float) -> list[str]:
        """Tasks submitted by the running ``parent``: one level deeper, same root order.
        Holds the submissions' lock: children submitted at once by two workers must not
        interleave (new shapes, ids taken in between)."""
        tx.lock("graph")
        found = tx.rows("task_by_id", id=parent.id)
        row = found[0] if found else None
        # (seq, token) fences: seqs are never reused, so a claim of a replaced graph names none.
        if row is None or row[0] != parent.handle or row[1] != RUNNING or row[4] != parent.token:
            raise StaleLeaseError(f"task {parent.id!r} no longer holds its lease")

        def lookup(tid: str) -> Known | None:
            r = tx.rows("task_by_id", id=tid)
            return (r[0][0], r[0][1], r[0][2]) if r else None

        # A child this parent submitted before (an earlier attempt, ended by a crash, a lost
        # lease or a retry) is that task again: its state and result stand.
        known = tx.rows("specs_by_ids", ids=tx.as_list([t.id for t in tasks]))
        again = {tid for tid, text in known if json.loads(text).get(SUBMITTED_BY) == parent.id}
        fresh = [t for t in tasks if t.id not in again] if again else tasks
        if fresh:
            self.insert(
                tx,
                fresh,
                lookup,
                depth_from(row[2]) + 1,
                row[3],
                now,
                parent.id,
                band=band_from(row[2]),
            )  # (children inherit their submitter's band)
            tx.notify = True
        return [t.id for t in tasks]

    def insert(
        self,
        tx: Tx,
        tasks: list[TaskSpec],
        lookup: Callable[[str], Known | None],
        base_depth: int,
        root_seq: int,
        now: float,
        submitted_by: str | None = None,
        *,
        lay: Layout | None = None,
        bare: bool = False,
        band: int = DEFAULT_BAND,
    ) -> int:
        """Insert new tasks with their edges and audit rows; returns the first new seq.
        ``lookup(id)`` gives an existing task's ``(seq, state, neg_depth)``; ``submitted_by``:
        the running task that submits them (kept in their specs: they are not its graph
        file's); ``lay``: their layout when already known (a whole graph with no tasks in the
        store); ``bare``: every task is an id, parents and maybe a runtime; ``band``: the band
        of the tasks that name none. O(V + E)."""
        known: dict[str, Known] = {}  # lookups of existing parents, each made once

        def external(tid: str) -> Known | None:
            r = known.get(tid)
            if r is None:
                r = lookup(tid)
                if r is not None:
                    known[tid] = r
            return r

        def external_depth(tid: str) -> int | None:
            r = external(tid)
            return None if r is None else depth_from(r[2])

        ids = [t.id for t in tasks]
        if lay is None or len(lay.depth) != len(tasks):
            lay = layout(ids, [t.deps for t in tasks], external_depth=external_depth,
                         base_depth=base_depth)  # fmt: skip
        shapes = self.admission.shape_ids(tx, tasks)  # validates groups, labels, gangs first
        first = int(tx.scalar("draw_seqs", n=len(tasks))) - len(tasks) + 1
        waiting = [len(lp) for lp in lay.local_parents]
        edges: list[tuple[int, int]] = []
        dead: dict[str, list[int]] = {}  # a dead parent -> the new tasks under it
        for i, lp in enumerate(lay.local_parents):
            edges.extend((first + j, first + i) for j in lp)
        for i, ext in lay.external_parents.items():
            for tid in ext:
                found = external(tid)
                assert found is not None  # layout() refused unknown parents
                seq, state, _ = found
                edges.append((seq, first + i))
                if state != DONE:
                    waiting[i] += 1
                if state in DEAD:
                    dead.setdefault(tid, []).append(i)
        # Downstream of a dead parent is skipped right away (inside the batch too).
        skipped: dict[int, str] = {}

        def children(level: list[int]) -> list[tuple[int, int]]:
            return [(c, PENDING) for i in level for c in lay.children[i] or ()]

        for cause, under in dead.items():
            first_level = [(i, int(PENDING)) for i in under if i not in skipped]
            for i, _ in skip_closure(first_level, children):
                skipped.setdefault(i, cause)
        # Per task: its rows as dicts made from templates (a 10,000-task submission makes
        # 40,000 rows), its audit rows alike but for the task (``audit_row``). Made as they
        # are sent (``Tx.stream``): PostgreSQL stores the first while the rest are made.
        audit = tx.audit_rows.append
        submitted = audit_row(now, "task_submitted", None, None, PENDING)
        ready = audit_row(now, "task_ready", None, PENDING, READY)
        plain_rank = rank_of(0, band)  # rank_of(depth, band) == plain_rank - depth, uncapped
        depths = lay.depth

        def task_rows() -> Iterator[dict[str, Any]]:
            for i, t in enumerate(tasks):
                tid = t.id
                error = None
                if i in skipped:
                    state, error = SKIPPED, upstream_failed(skipped[i])
                else:
                    state = READY if waiting[i] == 0 else PENDING
                depth = depths[i]
                rank = (
                    plain_rank - depth
                    if t.band is None and depth < BAND_STRIDE
                    else rank_of(depth, band_number(t.band, band))
                )
                yield {
                    "seq": first + i, "id": tid, "state": state,
                    "neg_depth": rank, "root_seq": root_seq, "grp": t.group,
                    "waiting": waiting[i], "noop": int(t.is_noop),
                    "labels": json.dumps(t.labels, sort_keys=True) if t.labels else None,
                    "resources": (json.dumps(t.resources, sort_keys=True)
                                  if t.resources else None),
                    "error": error, "shape": shapes[i], "now": now,
                }  # fmt: skip
                audit({**submitted, "task": tid})
                if state == READY:
                    audit({**ready, "task": tid})
                elif state == SKIPPED:
                    tx.audit(now, "task_skipped", tid, PENDING, SKIPPED, error=error,
                             reason="upstream_failed", cause=skipped[i])  # fmt: skip

        encode = encode_bare_spec if bare else lambda t: encode_spec(t, submitted_by)
        tx.stream("insert_task", task_rows())
        tx.stream("insert_spec", ({"seq": first + i, "spec": encode(t)}
                                  for i, t in enumerate(tasks)))  # fmt: skip
        tx.stream("insert_edge", ({"parent": p, "child": c} for p, c in edges))
        return first
