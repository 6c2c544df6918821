"""Label constraints: what a task asks of a worker's labels (``{"gpu": "a100"}``,
``{"mem_gb": {">=": 64}}``), parsed once per shape and matched against each offer. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.errors import GraphError

#: Operators accepted in label constraints: ``{"gpu": "a100"}`` means equals;
#: ``{"gpu": {"ne": "k80"}}``, ``{"zone": {"in": ["a", "b"]}}``, ``{"ssd": {"exists": true}}``,
#: ``{"mem_gb": {">=": 64}}``.
OPERATORS = frozenset({"eq", "ne", "in", "not_in", "exists", ">=", "<=", ">", "<"})
_ORDERED = frozenset({">=", "<=", ">", "<"})


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    op: str
    value: Any = None

    def matches(self, labels: Mapping[str, Any]) -> bool:
        op = self.op
        present = self.key in labels
        if op == "exists":
            return present == bool(self.value)
        if not present:
            return op in ("ne", "not_in")
        have = labels[self.key]
        if op == "eq":
            return bool(have == self.value)
        if op == "ne":
            return bool(have != self.value)
        if op == "in":
            return have in self.value
        if op == "not_in":
            return have not in self.value
        try:
            h = float(have)
        except (TypeError, ValueError):
            return False  # an ordered comparison against a non-numeric label never matches
        v = float(self.value)
        if op == ">=":
            return h >= v
        if op == "<=":
            return h <= v
        if op == ">":
            return h > v
        return h < v

    def describe(self) -> str:
        if self.op == "eq":
            return f"{self.key}={self.value}"
        if self.op == "exists":
            return f"{self.key} exists" if self.value else f"{self.key} absent"
        return f"{self.key} {self.op} {self.value}"


def parse_constraints(labels: Mapping[str, Any], *, where: str = "task") -> tuple[Constraint, ...]:
    """Turn a task's ``labels`` into constraints; unknown operators and ordered comparisons on
    strings are input errors."""
    out = []
    for key in sorted(labels):
        spec = labels[key]
        if isinstance(spec, Mapping):
            for op in sorted(spec):
                if op not in OPERATORS:
                    raise GraphError(
                        f"{where}: label {key!r} uses unknown operator {op!r}; "
                        f"use one of {', '.join(sorted(OPERATORS))}"
                    )
                value = spec[op]
                if op in _ORDERED and (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    raise GraphError(
                        f"{where}: label {key!r}: {op} needs a number, got {value!r} "
                        "(ordered comparisons on strings are not allowed)"
                    )
                if op in ("in", "not_in"):
                    if not isinstance(value, list | tuple | set | frozenset):
                        raise GraphError(f"{where}: label {key!r}: {op} needs a list")
                    value = frozenset(value)
                out.append(Constraint(key, op, value))
        else:
            out.append(Constraint(key, "eq", spec))
    return tuple(out)
