"""``explain``: the one dominant reason a task is not running, with numbers. Pure.

Reason codes (the ``why`` contract): ``waiting_on_parents``, ``retry_backoff``, ``group_cap``,
``borrow_limit`` (its group is beyond its fair share by all its borrow policy allows:
``core/borrow.py``), ``behind_higher_band`` (ready tasks of a higher priority band go first),
``fair_share``,
``behind_higher_priority``, ``no_matching_worker``, ``insufficient_resources``,
``gang_incomplete``, ``never_fits``, ``would_not_finish`` (its ``expected_s`` is more than any
matching worker has left before its end), ``endpoint_limited``, ``no_free_slot`` (it is next in
line but every slot of the live workers is busy), ``no_worker`` (it is next in line but no
worker is alive: a durable store, which knows its workers); and for tasks that are not
pending: ``running``, ``done``, ``failed``, ``skipped``, ``cancelled``.

Size: one reason per code above, each a few lines with its numbers; they share the order in
which they are tried (``explain``), which is the ``why`` contract, so they stay in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.admission import AdmissionQueue, GroupInfo, Offer, Shape
from conveyor.core.borrow import BorrowCheck
from conveyor.core.frontier import Frontier
from conveyor.core.ordering import Key, band_floor, band_from, band_label
from conveyor.core.timelimit import fits_in
from conveyor.model import TaskState

#: Every reason code ``explain`` gives (the ``why`` contract above, and ``table_cell``: a cell
#: of a table build, whose store explains its own tasks).
CODES = frozenset({
    "waiting_on_parents", "retry_backoff", "group_cap", "borrow_limit", "behind_higher_band",
    "fair_share", "behind_higher_priority", "no_matching_worker", "insufficient_resources",
    "gang_incomplete", "never_fits", "would_not_finish", "endpoint_limited", "no_free_slot",
    "no_worker", "running", "done", "failed", "skipped", "cancelled", "table_cell",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.code, "message": self.message, **self.details}


def explain(
    f: Frontier,
    i: int,
    now: float,
    offers: Sequence[Offer] = (),
    *,
    parents: Sequence[int] | None = None,
    not_before: float | None = None,
) -> Reason:
    """Why task ``i`` is not running. ``offers`` are the workers' current offers (free slots,
    resources, labels, capacity); empty means "unknown" and skips the fit checks. ``parents``
    are ``i``'s parent indices (found by a walk over all children lists when not given)."""
    tid = f.ids[i]

    def unfinished_parents() -> list[str]:
        ps = parents if parents is not None else _parents(f, i)
        return [f.ids[p] for p in ps if f.state[p] != TaskState.DONE]

    early = not_ready_reason(
        tid, TaskState(f.state[i]), now, unfinished_parents=unfinished_parents,
        not_before=lambda: not_before if not_before is not None else _not_before(f, i),
    )  # fmt: skip
    if early is not None:
        return early
    q = f.queue
    key = f.key(i)
    heaps = [f.heap_keys()] if q is None else q.heaps

    def higher_band() -> Reason | None:
        return _higher_band(f, i, key, heaps)

    if q is None:
        return higher_band() or slot_reason(
            tid,
            offers,
            _behind(f, i, key, [e for e in f.heap_keys() if f.state[e[2]] == TaskState.READY]),
        )
    shape = q.shapes[f.shape[i]]
    gang = f.gang_of.get(i)
    view = None
    if gang is not None:
        view = GangView(gang, q.gang_size.get(gang, 0), len(q.gang_ready.get(gang, ())),
                        gang in q.reservations, gang in q.released)  # fmt: skip
    ep = shape.endpoint
    return ready_reason(
        tid, shape, q.groups, offers, gang=view,
        endpoint_cap=None if ep is None else q.endpoint_caps.get(ep),
        endpoint_running=0 if ep is None else q.endpoint_running.get(ep, 0),
        has_ready=lambda g: _has_ready(f, q, g),
        higher_band=higher_band,
        borrow=lambda: q.borrow_refusal(shape.group, _capacity(offers)) if offers else None,
        behind=lambda: _behind(
            f, i, key, [e for e in q.heaps[f.shape[i]] if f.state[e[2]] == TaskState.READY]
        ),
    )  # fmt: skip


#: Reasons of a task that the live workers will never start as they are (another worker, more
#: time or resources must come first).
STUCK = frozenset({"no_matching_worker", "never_fits", "would_not_finish", "no_worker"})


def none_can_start(running: int, reasons: Mapping[str, int]) -> bool:
    """Nothing runs and every waiting task is stuck (``STUCK``) or waits on parents (that
    cannot finish then): no rate of progress holds, so there is no ETA."""
    return running == 0 and all(c in STUCK or c == "waiting_on_parents" for c in reasons)


def not_ready_reason(
    tid: str,
    state: TaskState,
    now: float,
    *,
    unfinished_parents: Callable[[], Sequence[str]],
    not_before: Callable[[], float | None],
) -> Reason | None:
    """The reason of a task that is not ready (``None`` when it is): it waits on parents, on its
    retry backoff, or it is not waiting at all (running, done, failed ...). Shared by the memory
    and the SQL stores, which supply the ids of the task's unfinished parents and the time its
    backoff ends (each read only when the state needs it)."""
    if state is TaskState.PENDING:
        names = list(unfinished_parents())
        text = f"{tid} waits on {len(names)} unfinished parent(s): {', '.join(names[:5])}"
        if not names:  # (PostgreSQL: a parent's release owed while another worker held tid)
            text = (f"{tid}'s parents are done; it is ready once the store applies their last "
                    "completion (owed while another worker held it: the next release or an "
                    "idle worker folds it)")  # fmt: skip
        return Reason("waiting_on_parents", text, {"parents": names, "waiting": len(names)})
    if state is TaskState.RETRY_WAIT:
        until = not_before()
        return Reason(
            "retry_backoff",
            f"{tid} waits for its retry backoff",
            {"until": until, "in_s": None if until is None else max(0.0, until - now)},
        )
    if state is not TaskState.READY:
        return Reason(state.label, f"{tid} is {state.label}", {})
    return None


@dataclass(frozen=True, slots=True)
class GangView:
    """What ``ready_reason`` needs to know of a task's gang."""

    name: str
    size: int
    ready: int  # members ready now
    reserved: bool = False
    released: bool = False


def ready_reason(
    tid: str,
    shape: Shape,
    groups: Mapping[str, GroupInfo],
    offers: Sequence[Offer],
    *,
    gang: GangView | None = None,
    endpoint_cap: int | None = None,
    endpoint_running: int = 0,
    has_ready: Callable[[str], bool],
    behind: Callable[[], Reason],
    higher_band: Callable[[], Reason | None] = lambda: None,
    borrow: Callable[[], BorrowCheck | None] = lambda: None,
    workers_known: bool = False,
) -> Reason:
    """Why the ready task ``tid`` of ``shape`` has not started: fit, gang, endpoint, cap, its
    group's borrow limit (``borrow()``: ``AdmissionQueue.borrow_refusal``), a higher band
    (``higher_band()``, from ``band_reason``), fair share, then key order (``behind()``).
    Shared by the memory and the SQL stores: it sees only plain data. ``has_ready(group)``
    says whether a group has ready work."""
    group = groups[shape.group]
    if offers:
        fit = _fit_reason(tid, shape, offers)
        if fit is not None:
            return fit
    if gang is not None:
        size = gang.size
        if gang.ready < size:
            return Reason(
                "gang_incomplete",
                f"gang {gang.name}: {gang.ready} of {size} members ready",
                {"gang": gang.name, "need": size, "ready": gang.ready},
            )
        free = max((o.fit_count(shape) for o in offers), default=0)
        detail = {
            "gang": gang.name,
            "need": size,
            "largest_free_set": free,
            "reserved": gang.reserved,
            "reservation_released": gang.released,
        }
        msg = (
            f"gang {gang.name} needs {size} matching free slots at once; largest free set is {free}"
        )
        if gang.released:
            msg += " (its reservation timed out and was released)"
        return Reason("gang_incomplete", msg, detail)
    ep = shape.endpoint
    if ep is not None and endpoint_cap is not None and endpoint_running >= endpoint_cap:
        return Reason(
            "endpoint_limited",
            f"endpoint {ep} allows {endpoint_cap} tasks now; {endpoint_running} are running",
            {"endpoint": ep, "task_cap": endpoint_cap, "running": endpoint_running},
        )
    if group.cap is not None and group.running >= group.cap:
        return Reason(
            "group_cap",
            f"group {shape.group} is at its cap: {group.running}/{group.cap}",
            {"group": shape.group, "running": group.running, "cap": group.cap},
        )
    refused = borrow()
    if refused is not None:
        return borrow_reason(refused)
    above = higher_band()
    if above is not None:
        return above
    me = group.share()
    ahead_groups = sorted(
        g for g, info in groups.items() if g != shape.group and info.share() < me and has_ready(g)
    )
    if ahead_groups:
        total = sum(o.capacity or o.slots for o in offers) if offers else None
        weights = {g: groups[g].weight for g in (shape.group, *ahead_groups)}
        share = None
        if total:
            share = total * group.weight / sum(groups[g].weight for g in groups if has_ready(g))
        return Reason(
            "fair_share",
            f"group {shape.group} runs {group.running} (fair share {_fmt(share)} slots); "
            f"groups further below their share go first: {', '.join(ahead_groups)}",
            {
                "group": shape.group,
                "running": group.running,
                "weight": group.weight,
                "share": share,
                "behind_groups": ahead_groups,
                "weights": weights,
            },
        )
    return slot_reason(tid, offers, behind(), workers_known=workers_known)


def slot_reason(
    tid: str, offers: Sequence[Offer], behind: Reason, *, workers_known: bool = False
) -> Reason:
    """The reason of a ready task that nothing else holds back: ``behind`` (key order) while
    other tasks go first; once it is next in line, ``no_free_slot`` when every slot of the
    ``offers`` is busy, or ``no_worker`` when ``workers_known`` (the offers are those of the
    store's live workers, not "unknown") and there are none."""
    if behind.details.get("ahead"):
        return behind
    if offers:
        free = sum(max(0, o.slots) for o in offers)
        if free > 0:
            return behind
        slots = _capacity(offers)
        return Reason(
            "no_free_slot",
            f"{tid} is next; all {slots} slot(s) of {len(offers)} live worker(s) are busy",
            {"workers": len(offers), "slots": slots, "busy": slots},
        )
    if workers_known:
        return Reason(
            "no_worker",
            f"{tid} is next; no worker is alive (start: conveyor worker --db URL)",
            {"workers": 0},
        )
    return behind


def with_preemption(reason: Reason, victims: Sequence[str]) -> Reason:
    """A ready task's ``reason``, told which running tasks are being preempted to make room
    for it (``victims``: their ids, asked and not yet given back). The code stays: the task
    still waits for what the code says until a victim's slot is free."""
    if not victims:
        return reason
    names = ", ".join(victims[:3]) + (f" and {len(victims) - 3} more" if len(victims) > 3 else "")
    return Reason(
        reason.code,
        f"{reason.message}; preempting {names} for it",
        {**reason.details, "preempting": list(victims)},
    )


def behind_reason(tid: str, key: Sequence[int], ahead: int, first: str | None) -> Reason:
    """``behind_higher_priority``: ``ahead`` tasks of its queue go first, ``first`` heads it."""
    return Reason(
        "behind_higher_priority",
        f"{tid} is ready; {ahead} task(s) go first" + (f", the first {first}" if first else ""),
        {"ahead": ahead, "first": first, "key": list(key)},
    )


def borrow_reason(c: BorrowCheck) -> Reason:
    """``borrow_limit``: the group runs its fair share plus all its policy lets it borrow."""
    return Reason(
        "borrow_limit",
        f"group {c.group} runs {c.running}; its fair share is {c.share:.1f} of {c.total} slots "
        f"and borrow policy {c.policy} lets it borrow {c.bound:g} more",
        {"group": c.group, "running": c.running, "share": c.share, "bound": c.bound,
         "total": c.total, "policy": c.policy},
    )  # fmt: skip


def _capacity(offers: Sequence[Offer]) -> int:
    return sum(o.capacity if o.capacity is not None else o.slots for o in offers)


def band_reason(
    tid: str, rank: int, ahead: int, best_rank: int, first: str | None
) -> Reason | None:
    """``behind_higher_band``: ``ahead`` ready tasks of higher bands than the task's (whose key
    starts with ``rank``) go first; ``best_rank`` is the best of their ranks, ``first`` the
    task that heads them. ``None`` when no higher band has ready work. Bands order before
    groups and depth (``core/ordering.py``), so this reason comes before ``fair_share``."""
    if ahead <= 0:
        return None
    band, top = band_from(rank), band_from(best_rank)
    return Reason(
        "behind_higher_band",
        f"{tid} is in {band_label(band)}; {ahead} ready task(s) of higher bands go first "
        f"(the highest: {band_label(top)}" + (f", first {first})" if first else ")"),
        {"band": band, "higher_band": top, "ahead": ahead, "first": first},
    )


def _higher_band(f: Frontier, i: int, key: Key, heaps: Sequence[Sequence[Any]]) -> Reason | None:
    floor = band_floor(band_from(key[0]))
    above = [e[:3] for h in heaps for e in h if e[0] < floor and f.state[e[2]] == TaskState.READY]
    if not above:
        return None
    best = min(above)
    return band_reason(f.ids[i], key[0], len(above), best[0], f.ids[best[2]])


def _behind(f: Frontier, i: int, key: Key, entries: list[Any]) -> Reason:
    ahead = sorted(e[:3] for e in entries if e[:3] < key)
    return behind_reason(f.ids[i], key, len(ahead), f.ids[ahead[0][2]] if ahead else None)


def _fit_reason(tid: str, shape: Shape, offers: Sequence[Offer]) -> Reason | None:
    label_ok = [o for o in offers if all(c.matches(o.labels) for c in shape.constraints)]
    if not label_ok:
        closest = max(offers, key=lambda o: sum(c.matches(o.labels) for c in shape.constraints))
        return Reason(
            "no_matching_worker",
            f"{tid} asks {', '.join(c.describe() for c in shape.constraints)}; no worker matches",
            {
                "asked": [c.describe() for c in shape.constraints],
                "closest_worker_labels": dict(closest.labels),
            },
        )
    if shape.expected_s is not None:
        timely = [o for o in label_ok if fits_in(shape.expected_s, o.time_left)]
        if not timely:
            most = max(o.time_left or 0.0 for o in label_ok)
            return Reason(
                "would_not_finish",
                f"{tid} is expected to run {shape.expected_s:g} s; the workers that match have "
                f"at most {most:.0f} s left before their end",
                {"expected_s": shape.expected_s, "most_time_left_s": most},
            )
        label_ok = timely
    need = dict(shape.resources)
    if need:

        def total_fits(o: Offer) -> bool:
            cap = o.capacity or o.slots
            if not o.resources:
                return cap > 0
            full = o.total if o.total is not None else o.resources  # idle, not free now
            return all(full.get(k, 0.0) >= v for k, v in need.items())

        if not any(o.fit_count(shape) > 0 for o in label_ok):
            free = {k: max((o.resources.get(k, 0.0) for o in label_ok), default=0.0) for k in need}
            code = "insufficient_resources"
            if not any(total_fits(o) for o in label_ok):
                code = "never_fits"
            return Reason(
                code, f"{tid} needs {need}; most free is {free}", {"need": need, "free": free}
            )
    return None


def _has_ready(f: Frontier, q: AdmissionQueue, group: str) -> bool:
    for sid, heap in enumerate(q.heaps):
        if q.shapes[sid].group == group and any(f.state[e[2]] == TaskState.READY for e in heap[:8]):
            return True
    return False


def _parents(f: Frontier, i: int) -> list[int]:
    # Parents are not stored (only children are, for the hot path); explain is rare, so walk
    # the children lists of earlier tasks. O(E) — never on the claim/complete path.
    return [p for p, kids in enumerate(f.children) if kids and i in kids]


def _not_before(f: Frontier, i: int) -> float | None:
    for t, k in f._delayed:
        if k == i:
            return t
    return None


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f}"
