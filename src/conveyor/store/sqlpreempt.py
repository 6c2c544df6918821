"""Preemption across durable workers (schema migration 5): one global decision in one
transaction, so two workers never both preempt for one waiting task.

Any worker, on its tick, takes a cheap look (two index seeks): is the best ready task of a
higher band than the lowest band running? Only then does it decide, in one transaction (SQLite:
the writer lock; PostgreSQL: an advisory lock as well, since its reads do not block): it drops
stale requests, reads the ready tasks of a higher band (their labels and resources, to know
which workers they fit), the running tasks (band, start time, worker, gang, past preemptions)
and the live workers' slots, counts the slots that pending requests will free as free, and runs
the pure ``core/preempt.choose_preemptions``. Each victim gets a row in ``preempt_requests``
naming its worker. That worker reads its requests on its next tick, cancels the tasks
cooperatively and hands them back (``SqlStore.preempt``: ``task_preempted``); the freed slot
goes to the higher-band task, which is at the head of the ready queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from conveyor.core.admission import Offer, Shape
from conveyor.core.borrow import borrowing as borrowing_groups
from conveyor.core.ordering import band_floor, band_from
from conveyor.core.preempt import PreemptPolicy, RunningTask, WaitingTask, choose_preemptions
from conveyor.store.sqltx import Db, Reads, Tx

__all__ = ["DECIDE_BACKOFF_S", "Decisions", "borrowing", "preempt_requests"]


#: Seconds one store handle waits before deciding again after a decision that asked nobody
#: (the waiting task fits no worker, every candidate is protected, a thread task has not given
#: its slot up yet): not a write transaction per tick per worker meanwhile.
DECIDE_BACKOFF_S = 1.0


class Decisions:
    """One store handle's part in the global decision, with its back-off."""

    def __init__(self) -> None:
        self._not_before = 0.0

    def plan(
        self, db: Db, atomic: Callable[[Callable[[Tx], int]], int], now: float,
        policy: PreemptPolicy,
    ) -> int:  # fmt: skip
        """Record the preemptions the waiting higher-band tasks need; how many victims were
        asked. A read (no transaction) when there is nothing to do."""
        if now < self._not_before:
            return 0
        if not _worth_deciding(db.rows("preempt_best_ready"), db.rows("preempt_lowest_running")):
            return 0
        asked = atomic(lambda tx: _decide(tx, now, policy))
        self._not_before = now if asked else now + DECIDE_BACKOFF_S
        return asked


def _worth_deciding(best: list[Any], lowest: list[Any]) -> bool:
    if not best or not lowest or lowest[0][0] is None:
        return False
    return band_from(int(best[0][0])) < band_from(int(lowest[0][0]))


def _decide(tx: Tx, now: float, policy: PreemptPolicy) -> int:
    tx.lock("admission")  # PostgreSQL: one decision at a time (SQLite: its writer lock)
    tx.run("preempt_stale")
    if not _worth_deciding(tx.rows("preempt_best_ready"), tx.rows("preempt_lowest_running")):
        return 0
    pending = {int(seq): worker for seq, worker in tx.rows("preempt_pending")}
    rows = tx.rows("preempt_running")
    offers = _offers(tx)
    per_group: dict[str, int] = {}
    for row in rows:
        per_group[row[5]] = per_group.get(row[5], 0) + 1
    borrowed = borrowing(tx, per_group, sum(o.slots for o in offers.values()))
    running: list[RunningTask] = []
    tokens: dict[str, tuple[int, int]] = {}
    busy: dict[str, int] = {}
    asked: dict[str, int] = {}
    for seq, tid, rank, worker, started, grp, token, times, last, gang in rows:
        busy[worker] = busy.get(worker, 0) + 1
        if int(seq) in pending:  # already asked: its slot counts as free
            asked[worker] = asked.get(worker, 0) + 1
            continue
        running.append(RunningTask(
            tid, worker, band_from(int(rank)), float(started or 0.0), grp, gang,
            grp in borrowed, None if last is None else float(last), int(times or 0),
        ))  # fmt: skip
        tokens[tid] = (int(seq), int(token))
    if not running:
        return 0
    lowest = max(t.band for t in running)
    free = {w: max(0, o.slots - busy.get(w, 0)) + asked.get(w, 0) for w, o in offers.items()}
    waiting = []
    heads = tx.rows("preempt_ready_heads", below=band_floor(lowest), n=len(running) + len(pending))
    for k, (_seq, tid, rank, grp, labels, resources, gang) in enumerate(heads):
        if gang is not None:
            continue  # a waiting gang does not preempt
        shape = Shape.of(grp, json.loads(resources or "{}"), json.loads(labels or "{}"))
        fits = frozenset(w for w, o in offers.items() if o.fit_count(shape) > 0)
        if fits:
            waiting.append(WaitingTask(tid, band_from(int(rank)), float(k), fits))
    if not waiting:
        return 0
    plan = choose_preemptions(waiting, running, free, now, policy)
    by_id = {t.task: t for t in running}
    n = 0
    for p in plan.preemptions:
        for victim in p.victims:
            seq, token = tokens[victim]
            tx.run("preempt_request", seq=seq, token=token, worker=by_id[victim].worker,
                   waiting=p.waiting, now=now)  # fmt: skip
            n += 1
    return n


def _offers(tx: Tx) -> dict[str, Offer]:
    """What each live worker offers when idle: its slots, labels and resources."""
    out = {}
    for name, _host, _pid, _seen, _lease, info in tx.rows("workers_alive"):
        meta = json.loads(info or "{}")
        slots = int(meta.get("slots") or 1)
        res = dict(meta.get("resources") or {})
        out[name] = Offer(slots, res, dict(meta.get("labels") or {}), slots, res)
    return out


def borrowing(reads: Reads, running: Mapping[str, int], total: int) -> frozenset[str]:
    """The groups running beyond their fair share of ``total`` slots (``core/borrow.py``):
    the weights of ``task_groups``; active are the groups running or with work waiting."""
    weights = {str(name): float(w) for name, w, _cap, _n in reads.rows("adm_groups")}
    if len(weights) < 2 and len(running) < 2:
        return frozenset()
    active = [g for g in weights if running.get(g) or reads.rows("preempt_group_waiting", grp=g)]
    return borrowing_groups(running, weights, active, total)


def preempt_requests(db: Db, worker: str) -> dict[int, tuple[int, str]]:
    """The requests for ``worker``'s running tasks: ``seq -> (token, waiting task)``."""
    return {int(s): (int(t), str(w)) for s, t, w in db.rows("preempt_requests_of", worker=worker)}
