"""What admission reads of a SQL store: its groups (weight, cap, running count) and its shapes
(what a task asks of a slot: group, resources, label constraints, expected run time; a gang has
a shape of its own).

Shapes are only ever added, so each handle parses them once (``Shapes``); the gangs'
reservation marks change and are read with every decision. Shared by admission claims
(``sqladmission.py``) and ``explain``/``status`` (``sqlexplain.py``).
"""

from __future__ import annotations

import json
from typing import Any

from conveyor.core.admission import GroupInfo, Shape
from conveyor.model import TaskSpec
from conveyor.store.sqltx import Reads, Tx

#: One shape as cached: (Shape, gang or None, gang size or None).
ShapeRow = tuple[Shape, str | None, int | None]
#: A gang's reservation: (held since, or None; whether it ran out and was released).
GangMark = tuple[float | None, bool]


def shape_sig(t: TaskSpec, gang: str | None) -> str:
    """The key a shape is stored under (one row per distinct signature). ``expected_s`` is in
    it only when declared: the signatures of stores written before it existed stay valid."""
    d: dict[str, Any] = {"group": t.group, "resources": dict(t.resources),
                         "labels": dict(t.labels), "gang": gang}  # fmt: skip
    if t.expected_s is not None:
        d["expected_s"] = float(t.expected_s)
    return json.dumps(d, sort_keys=True, default=str)


def read_groups(reads: Reads) -> dict[str, GroupInfo]:
    """Every group with its weight, cap and running count."""
    return {n: GroupInfo(float(w), cap, int(r)) for n, w, cap, r in reads.rows("adm_groups")}


def head(reads: Reads, sid: int, limit: int = 1) -> list[Any]:
    """The best-keyed ready tasks of shape ``sid`` as ``(seq, id, neg_depth, root_seq, noop)``:
    one seek on ``tasks_shape_ready``."""
    return reads.rows("adm_head", shape=sid, limit=limit)


class Shapes:
    """The shapes of one store, parsed once per handle; ``read`` adds the current gang marks."""

    def __init__(self) -> None:
        self._cache: dict[int, ShapeRow] = {}

    def forget(self) -> None:
        """The shape tables were wiped (a graph replaced): parse them anew."""
        self._cache.clear()

    def read(self, reads: Reads) -> tuple[dict[int, ShapeRow], dict[int, GangMark]]:
        """Every shape by id, and the reservation marks of the gangs' shapes."""
        shapes: dict[int, ShapeRow] = {}
        marks: dict[int, GangMark] = {}
        cache = self._cache
        for sid, _grp, sig, gang, size, reserved, released in reads.rows("adm_shapes"):
            row = cache.get(sid)
            if row is None:
                d = json.loads(sig)
                shape = Shape.of(d["group"], d["resources"], d["labels"],
                                 expected_s=d.get("expected_s"))  # fmt: skip
                row = cache[sid] = (shape, gang, size)
            shapes[sid] = row
            if gang is not None:
                marks[sid] = (reserved, bool(released))
        return shapes, marks

    def intern(self, tx: Tx, t: TaskSpec, gang: str | None, size: int | None, sig: str) -> int:
        """The id of the shape ``sig`` (of task ``t``), added with its group when new."""
        sid = tx.scalar("adm_shape_id", sig=sig)
        if sid is None:
            tx.run("adm_ensure_group", name=t.group)
            sid = tx.scalar("adm_insert_shape", grp=t.group, sig=sig, gang=gang, size=size)
        return int(sid)
