"""How a task's ``resources`` and ``labels`` become Ray task options, and what a Ray cluster
offers in conveyor's terms. Pure: values in, values out; nothing here imports Ray.

Resources: ``cpu`` -> ``num_cpus``, ``gpu`` -> ``num_gpus``, ``memory`` -> ``memory`` (bytes,
Ray's own unit), any other name -> a Ray custom resource of that name. A task that declares no
``cpu`` asks Ray for one CPU (Ray's default), so Ray never runs more of them at once than the
cluster has CPUs.

Labels: a constraint Ray's label selectors can say (equals, not equals, ``in``, ``not_in``)
becomes ``label_selector`` (``"a100"``, ``"!k80"``, ``"in(a,b)"``, ``"!in(a,b)"``): Ray picks a
node whose labels match. ``exists`` and the ordered comparisons (``>=`` ...) have no Ray
selector: conveyor alone judges them, against the labels the cluster's nodes offer
(``cluster_offer``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from conveyor.core.constraints import Constraint, parse_constraints

__all__ = ["cluster_offer", "label_selector", "node_shortfall", "ray_options"]

#: conveyor resource name -> Ray option; every other name is a Ray custom resource.
_RAY_OPTION = {"cpu": "num_cpus", "gpu": "num_gpus", "memory": "memory"}
#: Ray's own resource names -> conveyor's.
_CONVEYOR_NAME = {"CPU": "cpu", "GPU": "gpu", "memory": "memory"}
#: Ray resources that are bookkeeping, not something a task asks for.
_NOT_OFFERED = ("node:", "accelerator_type:", "object_store_memory")


def ray_options(resources: Mapping[str, float], labels: Mapping[str, Any]) -> dict[str, Any]:
    """The ``.options(...)`` of one task: its resources and the label selector Ray can judge.
    Empty for a task that declares neither (Ray's defaults: one CPU)."""
    out: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for name, amount in resources.items():
        option = _RAY_OPTION.get(name)
        if option == "memory":
            out[option] = int(amount)
        elif option is not None:
            out[option] = float(amount)
        elif amount:
            custom[name] = float(amount)
    if custom:
        out["resources"] = custom
    selector = label_selector(parse_constraints(labels))
    if selector:
        out["label_selector"] = selector
    return out


def label_selector(constraints: Iterable[Constraint]) -> dict[str, str]:
    """Ray's ``label_selector`` for the constraints it can express (one per key: Ray takes one
    selector a key; a second constraint on the same key is left to conveyor)."""
    out: dict[str, str] = {}
    for c in constraints:
        if c.key in out:
            continue
        if c.op == "eq":
            out[c.key] = _value(c.value)
        elif c.op == "ne":
            out[c.key] = "!" + _value(c.value)
        elif c.op in ("in", "not_in"):
            values = ",".join(sorted(_value(v) for v in c.value))
            out[c.key] = ("!" if c.op == "not_in" else "") + f"in({values})"
    return out


def _value(value: Any) -> str:
    """A label value as Ray writes it: a string (``True`` -> ``"true"``, ``2`` -> ``"2"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cluster_offer(
    total: Mapping[str, float], node_labels: Iterable[Mapping[str, str]]
) -> tuple[dict[str, float], dict[str, Any]]:
    """What a Ray cluster offers conveyor's admission: its resources in conveyor's names
    (``ray.cluster_resources()``: CPU -> cpu, GPU -> gpu, memory in bytes, custom as they are;
    Ray's bookkeeping entries left out), and its nodes' labels merged (the first node naming a
    key gives its value; Ray itself picks the node by the selector)."""
    resources: dict[str, float] = {}
    for name, amount in total.items():
        if name.startswith(_NOT_OFFERED):
            continue
        resources[_CONVEYOR_NAME.get(name, name)] = float(amount)
    labels: dict[str, Any] = {}
    for node in node_labels:
        for key, value in node.items():
            labels.setdefault(key, value)
    return resources, labels


def node_shortfall(needs: Mapping[str, float], nodes: Iterable[Mapping[str, float]]) -> str | None:
    """Why no node (its resources in conveyor's names) can ever hold a task asking ``needs``,
    or ``None`` when one can: Ray would keep such a task pending for ever."""
    asked = {k: float(v) for k, v in needs.items() if v}
    if not asked:
        return None
    most: dict[str, float] = dict.fromkeys(asked, 0.0)
    for node in nodes:
        if all(node.get(k, 0.0) >= v for k, v in asked.items()):
            return None
        for k in asked:
            most[k] = max(most[k], float(node.get(k, 0.0)))
    want = ", ".join(f"{k}={v:g}" for k, v in sorted(asked.items()))
    has = ", ".join(f"{k}={v:g}" for k, v in sorted(most.items()))
    return f"it asks {want} and no node of the Ray cluster has that much (the most: {has})"
