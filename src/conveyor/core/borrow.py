"""Borrowing: how far a group may run beyond its fair share of the slots. Pure.

A group's **fair share** is ``total slots x weight / sum of the weights of the active groups``;
a group is *active* while it has unfinished work (ready, running, waiting on parents or on a
retry), so a group whose tasks are not ready yet still has its share counted. Running beyond
the share is **borrowing**. The policies (docs/fairness.md, "Borrowing"):

- ``work_conserving``: a group may borrow every idle slot (it hands them back as its tasks end);
- ``strict``: never beyond the share (rounded up: a group may start while it runs fewer tasks
  than its share);
- ``bounded`` (the default): at most a set number of slots (``bounded:2``) or a share of all
  slots (``bounded:25%``) beyond the share; plain ``bounded`` is ``bounded:25%`` (at least one
  slot). A group that arrives late then finds at least its share less the others' bounds idle,
  and gets the rest as borrowed tasks end: within one task duration.

A group alone with work has the whole pool as its share, so no policy limits a single group.
``borrow_check`` is the one rule: admission skips a group it refuses, and ``explain`` reports
its numbers (``borrow_limit``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

POLICIES = ("strict", "bounded", "work_conserving")
#: ``bounded`` without a number: this share of all slots beyond the fair share.
DEFAULT_BOUND_SHARE = 0.25
#: The grammar of a policy in a graph file, an option or the store's meta.
_POLICY = re.compile(r"^(strict|work_conserving|bounded(:([0-9]+|[0-9]+(\.[0-9]+)?%))?)$")


@dataclass(frozen=True, slots=True)
class BorrowPolicy:
    """``mode`` is one of ``POLICIES``; a bounded policy borrows at most ``slots`` slots or
    ``share`` of all slots (``None`` for both: ``DEFAULT_BOUND_SHARE``)."""

    mode: str = "bounded"
    slots: int | None = None
    share: float | None = None

    @classmethod
    def parse(cls, text: str) -> BorrowPolicy:
        """``strict``, ``work_conserving``, ``bounded``, ``bounded:N`` or ``bounded:P%``;
        ``ValueError`` (one line naming the accepted forms) otherwise."""
        m = _POLICY.match(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise ValueError(
                f"unknown borrow policy {text!r}; expected strict, work_conserving, bounded, "
                "bounded:N (slots) or bounded:P% (of all slots)"
            )
        mode, _, amount = text.strip().partition(":")
        if not amount:
            return cls(mode)
        if amount.endswith("%"):
            percent = float(amount[:-1])
            if percent > 100:  # a group cannot borrow more than all the slots there are
                raise ValueError(
                    f"borrow policy {text.strip()!r}: a share is at most 100% of all slots "
                    "(bounded:100% or work_conserving lets a group borrow any idle slot)"
                )
            return cls(mode, share=percent / 100.0)
        return cls(mode, slots=int(amount))

    def bound(self, total: int) -> float:
        """Slots a group may borrow beyond its share, of ``total`` slots (``inf``: any)."""
        if self.mode == "work_conserving":
            return math.inf
        if self.mode == "strict":
            return 0.0
        if self.slots is not None:
            return float(self.slots)
        if self.share is None:
            return max(1.0, math.floor(total * DEFAULT_BOUND_SHARE))
        return float(math.floor(total * self.share))

    def __str__(self) -> str:
        if self.slots is not None:
            return f"{self.mode}:{self.slots}"
        if self.share is not None:
            return f"{self.mode}:{self.share * 100:g}%"
        return self.mode


DEFAULT_POLICY = BorrowPolicy()


@dataclass(frozen=True, slots=True)
class BorrowCheck:
    """Why a group may not start another task now: the numbers ``why`` reports."""

    group: str
    running: int
    share: float  # its fair share of ``total`` slots
    bound: float  # slots it may borrow beyond the share
    total: int
    policy: str


def fair_share(
    group: str, weights: Mapping[str, float], active: Iterable[str], total: int
) -> float:
    """``group``'s fair share of ``total`` slots among the ``active`` groups (``group`` counts
    as active)."""
    names = set(active) | {group}
    denom = sum(weights.get(g, 1.0) for g in names)
    return total * weights.get(group, 1.0) / denom if denom else float(total)


def borrow_check(
    group: str,
    running: int,
    weights: Mapping[str, float],
    active: Iterable[str],
    total: int,
    policy: BorrowPolicy,
) -> BorrowCheck | None:
    """``None`` when ``group`` (running ``running`` tasks) may start one more task of ``total``
    slots under ``policy``; else the numbers of the refusal. O(active groups)."""
    others = set(active) - {group}
    if policy.mode == "work_conserving" or total <= 0 or not others:
        return None  # (a group alone with work has the whole pool as its share)
    share = fair_share(group, weights, active, total)
    bound = policy.bound(total)
    if running < share + bound:
        return None
    return BorrowCheck(group, running, share, bound, total, str(policy))


def borrowing(
    running: Mapping[str, int], weights: Mapping[str, float], active: Iterable[str], total: int
) -> frozenset[str]:
    """The groups running more tasks than their fair share of ``total`` slots (their slots
    beyond it are borrowed: preemption takes them back first, ``core/preempt.py``). A group
    alone with work borrows nothing. O(groups)."""
    names = set(active) | {g for g, n in running.items() if n > 0}
    if len(names) < 2 or total <= 0:
        return frozenset()
    return frozenset(
        g for g, n in running.items() if n > fair_share(g, weights, names, total) + 1e-9
    )


def policy_of(
    group: str, policies: Mapping[str, BorrowPolicy], default: BorrowPolicy = DEFAULT_POLICY
) -> BorrowPolicy:
    """A group's own policy, else the run's."""
    return policies.get(group, default)
