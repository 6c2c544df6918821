"""Steps of task transitions inside one SQL transaction that several paths share: starting
claimed tasks (with the no-ops completed on the spot), readying children, skipping downstream of
a dead task, and a task leaving running. Plain claims and admission claims, completions, leases
and submissions all call these, so each rule is written once; the rules themselves (what is
skippable, the key, the skip's message) come from ``conveyor.core``.

Also ``Worker``: who claims through one store handle, and how (``Store.configure``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.core.ordering import PriorityKey, band_from
from conveyor.core.transitions import skip_closure, upstream_failed
from conveyor.model import TaskSpec, TaskState
from conveyor.store.base import Claim, WorkerProfile
from conveyor.store.codec import decode_spec
from conveyor.store.sqltx import Tx, audit_row

PENDING, READY, RUNNING = TaskState.PENDING, TaskState.READY, TaskState.RUNNING
DONE, SKIPPED, RETRY_WAIT = TaskState.DONE, TaskState.SKIPPED, TaskState.RETRY_WAIT

#: Largest batch a worker claims at once under a backlog of fast tasks (a store's default
#: ``?batch=``; ``sqlclaim.BATCH_WORK_S`` says when a store that allows more claims more).
MAX_BATCH = 32
#: SQLite's default ``?batch=``: one writer at a time, so each claim transaction's fixed cost
#: is paid by every worker in turn; trivial tasks go up to this many per transaction.
FAST_BATCH = 256
#: No-op tasks one claim transaction may complete on the way (they cost no commit of their own;
#: more per transaction means fewer lock hand-offs between worker processes).
NOOP_BATCH = 256
#: Owed decrements (``SqlIo.owes_releases``) one release folds at most, besides its own: enough
#: to keep up with what 4 workers owe each other on a graph of big fan-ins, few enough that a
#: release stays short.
OWED_FOLD = 256


@dataclass(slots=True)
class Worker:
    """Who claims through one store handle (set at ``register_worker`` or the first claim),
    with what profile (``configure``; the URL's ``lease`` and ``batch`` until then)."""

    name: str | None = None
    profile: WorkerProfile = field(default_factory=WorkerProfile)
    max_batch: int = MAX_BATCH
    #: The lease of claims taken ahead, and of this worker's row (the last heartbeat's).
    lease_s: float = 30.0

    def configure(self, profile: WorkerProfile) -> None:
        self.profile = profile
        self.lease_s = profile.lease_s
        if profile.max_batch is not None:
            self.max_batch = max(1, min(MAX_BATCH, profile.max_batch))

    @property
    def constrained(self) -> bool:
        """Whether this worker offers labels or accounts resources (some tasks may not fit)."""
        return bool(self.profile.labels) or self.profile.resources is not None


def due_retries(tx: Tx, now: float) -> None:
    """Retries whose backoff has passed become ready (first thing in every claim)."""
    for tid, attempt in tx.rows("due_retries", now=now):
        tx.audit(now, "task_ready", tid, RETRY_WAIT, READY, attempt=attempt)


def start(
    tx: Tx,
    seqs: list[int],
    worker: str,
    now: float,
    lease_s: float,
    noops: int,
    *,
    last: bool = False,
    noop_seqs: list[int] | None = None,
) -> list[Claim]:
    """Claim the ready tasks ``seqs`` for ``worker`` in key order, each with a new lease
    generation; tasks no longer ready are left out. Up to ``noops`` no-op tasks among them are
    completed right here (a claim marked ``committed``): the engine would complete each the
    moment it is claimed, and here that costs no commit of its own. ``last``: no claim
    follows in this transaction (see ``release_children``). O(len(seqs) · log n).

    ``noop_seqs``: which of ``seqs`` are no-ops, in key order, when the caller read it (rows
    it locked: they are all still ready). A backend with ``specs_in_claim`` then claims and
    completes those in one update of each row, not two (each rewrote every index entry of
    the row: most of what a no-op cost the server)."""
    specs: dict[int, str] = {}
    params = {"seqs": tx.as_list(seqs), "worker": worker, "lease_until": now + lease_s, "now": now}
    finished: set[int] = set()
    if tx.io.specs_in_claim:
        if noop_seqs is not None:
            finished = set(noop_seqs[: max(0, noops)])
        got = []
        for *row, spec in tx.rows("claim_seqs_specs", done=tx.as_list(sorted(finished)), **params):
            got.append(tuple(row))
            if spec is not None:
                specs[row[0]] = spec
    else:
        got = tx.rows("claim_seqs", **params)
    got.sort(key=lambda r: PriorityKey(r[4], r[5], r[0]))
    inline: list[bool] = []
    for r in got:
        if finished:
            inline.append(r[0] in finished)
        else:
            inline.append(bool(r[6]) and noops > 0)
        noops -= inline[-1]
    need = [r[0] for r, i in zip(got, inline, strict=True) if not i and r[0] not in specs]
    if need:
        specs.update(tx.rows("specs_of", seqs=tx.as_list(need)))
    out: list[Claim] = []
    done: list[int] = []
    undecoded: list[tuple[Claim, str]] = []
    for (seq, tid, attempt, token, neg_depth, root_seq, _noop), i in zip(got, inline, strict=True):
        tx.audit(now, "task_started", tid, READY, RUNNING, worker, attempt)
        depth = PriorityKey(neg_depth, root_seq, seq).depth
        claim = Claim(TaskSpec(tid), attempt, token, seq, depth)
        if i:
            claim.extra["committed"] = True
            tx.audit(now, "task_finished", tid, RUNNING, DONE, worker, attempt)
            done.append(seq)
        else:
            claim.band = band_from(neg_depth)
            undecoded.append((claim, specs[seq]))
        out.append(claim)
    if undecoded:
        # The specs are decoded once the claim committed: other writers need not wait for it.
        tx.after.append(lambda: _decode(undecoded))
    if done:
        listed = tx.as_list(done)
        if not finished:
            tx.run("complete_seqs", seqs=listed, now=now)
        release_children(tx, now, last=last, seqs=listed)
    return out


def _decode(claims: list[tuple[Claim, str]]) -> None:
    """Give each claim its spec (and parents), decoded from the stored JSON. A spec that does
    not decode (a damaged row) is said in ``extra["unreadable"]``: the task fails with it when
    it is started, not the worker that claimed it, nor the other tasks of the claim."""
    for claim, text in claims:
        try:
            spec = claim.spec = decode_spec(claim.spec.id, text)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            claim.extra["unreadable"] = f"its stored spec cannot be read ({why})"
            continue
        claim.parents = spec.deps


def release_children(tx: Tx, now: float, *, last: bool, **params: Any) -> None:
    """Children of the finished tasks ``seqs`` (or ``seq``) lose a waiting parent; those at
    zero become ready. With ``last`` (no claim follows in this transaction) and a backend
    that asks for it (``SqlIo.release_last``), this runs just before the commit.

    A backend that ``owes_releases`` (PostgreSQL) releases one parent as a batch of one: its
    statement is the one that may owe decrements and folds owed ones (``RELEASE_OWED``), up to
    ``OWED_FOLD`` of them each time."""
    if tx.io.owes_releases:
        if "seq" in params:
            params = {"seqs": tx.as_list([params.pop("seq")]), **params}
        params.setdefault("owed_max", OWED_FOLD)
    name = "release_children_of" if "seqs" in params else "release_children"

    def step() -> None:
        children_ready(tx, tx.rows(name, now=now, **params), now)

    def step_audited() -> None:
        # The statement writes the task_ready rows itself: the commit follows it at once.
        ts = tx.stamp(now)
        rows = tx.rows(name + "_audit", now=now, ts=ts, **params)
        children_ready(tx, rows, ts, written=True)

    if last and tx.io.release_last:
        tx.last.append(step_audited)
    else:
        step()


def fold_owed(tx: Tx, now: float, *, most: int = 0) -> None:
    """Apply up to ``most`` (default ``OWED_FOLD``) owed decrements whose children no other
    transaction holds: a release of no finished task (``owes_releases`` backends only). Its
    ``task_ready`` rows are stamped when this transaction ends (``Db.atomic``), after the
    commits of the parents whose decrements it applies: the trail stays causal."""
    release_children(tx, now, last=False, seqs=tx.as_list([]), owed_max=most or OWED_FOLD)


def children_ready(
    tx: Tx, rows: list[tuple[str | None, int, int]], now: float, *, written: bool = False
) -> None:
    """Audit the children a completion made ready (rows ``(id, state, waiting)`` of a
    ``release_children*`` query) and signal idle workers. ``written``: the query wrote their
    audit rows (stamped ``now``); they are only emitted. A row without an id says that the
    release left decrements owed (``RELEASE_OWED``): idle workers are woken to fold them (an
    idle worker folds when it finds nothing to claim: ``SqlStore.has_running``)."""
    for tid, state, waiting in rows:
        if tid is None:
            tx.notify = True
        elif state == READY and waiting == 0:
            if written:
                tx.written.append(audit_row(now, "task_ready", tid, PENDING, READY))
            else:
                tx.audit(now, "task_ready", tid, PENDING, READY)
            tx.notify = True


def skip_downstream(tx: Tx, dead: list[int], now: float, cause: str) -> None:
    """Skip what the dead tasks ``dead`` (seqs) leave unable to run: ``skip_closure`` over the
    edges, one query per level. O(descendants)."""

    def children(seqs: list[int]) -> list[tuple[tuple[int, str], int]]:
        rows = tx.rows("children_to_skip", seqs=tx.as_list(seqs))
        return [((seq, tid), state) for seq, tid, state in rows]

    skipped = skip_closure(children(dead), lambda level: children([s for s, _ in level]))
    if not skipped:
        return
    error = upstream_failed(cause)
    tx.run("skip_seqs", seqs=tx.as_list(sorted(s for (s, _), _ in skipped)), error=error, now=now)
    for (_, tid), state in skipped:
        tx.audit(now, "task_skipped", tid, state, SKIPPED, error=error,
                 reason="upstream_failed", cause=cause)  # fmt: skip


def left_running(tx: Tx, grp: str | None) -> None:
    """A task claimed by admission left running (done, failed, released, lost): its group runs
    one fewer. Plain claims carry no group (``None``) and cost nothing here."""
    if grp is not None:
        tx.run("adm_running_add", grp=grp, n=-1)


def left_running_seq(tx: Tx, seq: int, admission: bool) -> None:
    """``left_running`` for a task known by its seq (lost leases, fenced attempts)."""
    if admission:
        left_running(tx, tx.scalar("adm_group_of", seq=seq))
