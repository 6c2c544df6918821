"""``explain``: the one dominant reason a task is not running, with numbers. Pure.

Reason codes (the ``why`` contract): ``waiting_on_parents``, ``retry_backoff``, ``group_cap``,
``fair_share``, ``behind_higher_priority``, ``no_matching_worker``, ``insufficient_resources``,
``gang_incomplete``, ``never_fits``, ``endpoint_limited``; and for tasks that are not pending:
``running``, ``done``, ``failed``, ``skipped``, ``cancelled``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.admission import AdmissionQueue, Offer, Shape
from conveyor.core.frontier import Frontier
from conveyor.model import TaskState


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
    state = TaskState(f.state[i])
    tid = f.ids[i]
    if state is TaskState.PENDING:
        ps = parents if parents is not None else _parents(f, i)
        names = [f.ids[p] for p in ps if f.state[p] != TaskState.DONE]
        return Reason(
            "waiting_on_parents",
            f"{tid} waits on {len(names)} unfinished parent(s): {', '.join(names[:5])}",
            {"parents": names, "waiting": f.waiting[i]},
        )
    if state is TaskState.RETRY_WAIT:
        until = not_before if not_before is not None else _not_before(f, i)
        return Reason(
            "retry_backoff",
            f"{tid} waits for its retry backoff",
            {"until": until, "in_s": None if until is None else max(0.0, until - now)},
        )
    if state is not TaskState.READY:
        return Reason(state.label, f"{tid} is {state.label}", {})
    q = f.queue
    key = f.key(i)
    if q is None:
        return _behind(f, i, key, [e for e in f._heap if f.state[e[2]] == TaskState.READY])
    shape = q.shapes[f.shape[i]]
    group = q.groups[shape.group]
    if offers:
        fit = _fit_reason(tid, shape, offers)
        if fit is not None:
            return fit
    gang = f.gang_of.get(i)
    if gang is not None:
        ready = len(q.gang_ready.get(gang, ()))
        size = q.gang_size.get(gang, 0)
        if ready < size:
            return Reason(
                "gang_incomplete",
                f"gang {gang}: {ready} of {size} members ready",
                {"gang": gang, "need": size, "ready": ready},
            )
        free = max((o.fit_count(shape) for o in offers), default=0)
        detail = {
            "gang": gang,
            "need": size,
            "largest_free_set": free,
            "reserved": gang in q.reservations,
            "reservation_released": gang in q.released,
        }
        msg = f"gang {gang} needs {size} matching free slots at once; largest free set is {free}"
        if gang in q.released:
            msg += " (its reservation timed out and was released)"
        return Reason("gang_incomplete", msg, detail)
    ep = shape.endpoint
    if ep is not None and q.endpoint_running.get(ep, 0) >= q.endpoint_caps.get(ep, 1 << 30):
        return Reason(
            "endpoint_limited",
            f"endpoint {ep} allows {q.endpoint_caps[ep]} tasks now; "
            f"{q.endpoint_running.get(ep, 0)} are running",
            {"endpoint": ep, "task_cap": q.endpoint_caps[ep],
             "running": q.endpoint_running.get(ep, 0)},
        )  # fmt: skip
    if group.cap is not None and group.running >= group.cap:
        return Reason(
            "group_cap",
            f"group {shape.group} is at its cap: {group.running}/{group.cap}",
            {"group": shape.group, "running": group.running, "cap": group.cap},
        )
    ahead_groups = _groups_ahead(f, q, shape.group)
    if ahead_groups:
        total = sum(o.capacity or o.slots for o in offers) if offers else None
        weights = {g: q.groups[g].weight for g in (shape.group, *ahead_groups)}
        share = None
        if total:
            share = (
                total
                * group.weight
                / sum(q.groups[g].weight for g in q.groups if _has_ready(f, q, g))
            )
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
    entries = [e for e in q.heaps[f.shape[i]] if f.state[e[2]] == TaskState.READY]
    return _behind(f, i, key, entries)


def _behind(f: Frontier, i: int, key: tuple[int, int, int], entries: list[Any]) -> Reason:
    ahead = sorted(e[:3] for e in entries if e[:3] < key)
    first = f.ids[ahead[0][2]] if ahead else None
    return Reason(
        "behind_higher_priority",
        f"{f.ids[i]} is ready; {len(ahead)} task(s) go first"
        + (f", the first {first}" if first else ""),
        {"ahead": len(ahead), "first": first, "key": list(key)},
    )


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


def _groups_ahead(f: Frontier, q: AdmissionQueue, group: str) -> list[str]:
    me = q.groups[group].share()
    return sorted(
        g
        for g, info in q.groups.items()
        if g != group and info.share() < me and _has_ready(f, q, g)
    )


def _has_ready(f: Frontier, q: AdmissionQueue, group: str) -> bool:
    for sid, heap in enumerate(q.heaps):
        if q.shapes[sid].group == group and any(f.state[e[2]] == TaskState.READY for e in heap[:8]):
            return True
    return False


def _parents(f: Frontier, i: int) -> list[int]:
    # Parents are not stored (only children are, for the hot path); explain is rare, so walk
    # the children lists of earlier tasks. O(E) — never on the claim/complete path.
    return [p for p in range(len(f.ids)) if f.children[p] and i in f.children[p]]


def _not_before(f: Frontier, i: int) -> float | None:
    for t, k in f._delayed:
        if k == i:
            return t
    return None


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f}"
