"""A small JSON value that validates against a JSON Schema, chosen deterministically from a seed.

Pure: no I/O, no clock, no randomness beyond the ``seed`` the caller passes (the fake LLM server
passes a hash of the request, so the same prompt always gets the same object and different
prompts get different strings, enum members and numbers).

Covers what pydantic's ``model_json_schema()`` and OpenAI's structured outputs produce:
``type`` (one or a list), ``enum``, ``const``, ``$ref`` into ``$defs``/``definitions``,
``anyOf``/``oneOf`` (the first branch that is not ``null``), ``allOf`` (merged), objects
(every declared property; only the required ones below ``_MAX_DEPTH``, so recursive models end),
arrays (``items``, ``prefixItems``, ``minItems``/``maxItems``), strings (``minLength``,
``maxLength`` and the common ``format``\\ s), numbers and integers (``minimum``, ``maximum``,
their exclusive forms, ``multipleOf``), booleans and null. Not honoured: ``pattern``,
``not``, ``if``/``then``/``else``, ``dependentRequired``.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["example_for"]

# Below this many nested objects/arrays only required properties and ``minItems`` items are
# generated: a recursive model (a tree of nodes) then ends with empty children.
_MAX_DEPTH = 6

_WORDS = ("amber", "birch", "cobalt", "delta", "ember", "fjord", "granite", "harbor")

_FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "duration": "PT1S",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}


def example_for(schema: Mapping[str, Any] | bool, *, seed: int = 0) -> Any:
    """A value valid under ``schema``; the same ``(schema, seed)`` always gives the same value.

    Raises ``ValueError`` for a ``$ref`` that does not point into the schema's own definitions.
    """
    root = schema if isinstance(schema, Mapping) else {}
    return _Example(root).value(schema, seed, "", 0)


def _mix(seed: int, path: str) -> int:
    """A seed for one place in the value, so sibling fields do not all pick the same member."""
    digest = hashlib.blake2b(f"{seed}:{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class _Example:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen: set[str] = set()
        while "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#") or ref in seen:
                raise ValueError(f"cannot follow $ref {ref!r}")
            seen.add(ref)
            target: Any = self.root
            for part in ref.lstrip("#").strip("/").split("/") if ref != "#" else []:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, Mapping) or part not in target:
                    raise ValueError(f"cannot follow $ref {ref!r}")
                target = target[part]
            # keywords beside a $ref (pydantic puts "description" or "default" there) also apply
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest}
        return schema

    def value(self, schema: Mapping[str, Any] | bool, seed: int, path: str, depth: int) -> Any:
        if not isinstance(schema, Mapping):  # ``true``: anything goes
            return _word(seed, path)
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            members = list(schema["enum"])
            return members[_mix(seed, path) % len(members)]
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, self.resolve(part) if isinstance(part, Mapping) else {})
            return self.value(merged, seed, path, depth)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = [self.resolve(o) if isinstance(o, Mapping) else {} for o in schema[key]]
                options = [o for o in branches if o.get("type") != "null"]
                choice = options[0] if options else {"type": "null"}
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, choice), seed, path, depth)
        kind = _type_of(schema)
        if kind == "object":
            return self.object(schema, seed, path, depth)
        if kind == "array":
            return self.array(schema, seed, path, depth)
        if kind == "string":
            return _string(schema, seed, path)
        if kind in ("integer", "number"):
            return _number(schema, _mix(seed, path), integer=kind == "integer")
        if kind == "boolean":
            return _mix(seed, path) % 2 == 0
        if kind == "null":
            return None
        return _word(seed, path)

    def object(self, schema: Mapping[str, Any], seed: int, path: str, depth: int) -> Any:
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        names = list(properties) if depth < _MAX_DEPTH else [n for n in properties if n in required]
        names += [n for n in required if n not in properties]  # required, yet undeclared
        out: dict[str, Any] = {}
        for name in names:
            sub = properties.get(name, schema.get("additionalProperties", True))
            out[name] = self.value(sub, seed, f"{path}/{name}", depth + 1)
        extra = schema.get("additionalProperties", True)
        for i in range(len(out), int(schema.get("minProperties", 0))):
            out[f"key{i}"] = self.value(extra, seed, f"{path}/key{i}", depth + 1)
        return out

    def array(self, schema: Mapping[str, Any], seed: int, path: str, depth: int) -> list[Any]:
        prefix: list[Any] = list(schema.get("prefixItems", ()))
        low = max(int(schema.get("minItems", 0)), len(prefix))
        count = max(low, 1) if depth < _MAX_DEPTH else low
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        items = schema.get("items", True)
        return [
            self.value(prefix[i] if i < len(prefix) else items, seed, f"{path}/{i}", depth + 1)
            for i in range(count)
        ]


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and key in out:
            out[key] = {**out[key], **value}
        elif key == "required" and key in out:
            out[key] = [*out[key], *value]
        else:
            out.setdefault(key, value)
    return out


def _type_of(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        return str(kinds[0])
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _word(seed: int, path: str) -> str:
    return _WORDS[_mix(seed, path) % len(_WORDS)]


def _string(schema: Mapping[str, Any], seed: int, path: str) -> str:
    mixed = _mix(seed, path)
    fmt = schema.get("format")
    if fmt in _FORMATS:
        return _FORMATS[fmt]
    if fmt == "uuid":
        return str(uuid.UUID(int=mixed << 64 | mixed, version=4))
    if fmt == "email":
        text = f"{_word(seed, path)}{mixed % 1000}@example.com"
    elif fmt in ("uri", "url", "iri"):
        text = f"https://example.com/{_word(seed, path)}/{mixed % 1000}"
    else:
        # named after the nearest property: "tags 0" reads worse than "tags amber 17"
        name = next((p for p in reversed(path.split("/")) if p and not p.isdigit()), "text")
        text = f"{name} {_word(seed, path)} {mixed % 1000}"
    low = int(schema.get("minLength", 0))
    high = int(schema.get("maxLength", max(low, len(text))))
    return text.ljust(low, "x")[:high]


def _number(schema: Mapping[str, Any], mixed: int, *, integer: bool) -> int | float:
    low, high = _bounds(schema, integer=integer)
    step = schema.get("multipleOf", 1 if integer else None)
    if step is not None:
        # a multiple of ``step`` between the bounds: k * step for an integer k in [k_low, k_high]
        k_low = math.ceil(low / step) if low is not None else None
        k_high = math.floor(high / step) if high is not None else None
        k = _pick(k_low, k_high, mixed)
        return int(k * step) if integer else k * step
    if low is not None and high is not None:
        return (low + high) / 2
    if low is not None:
        return float(low + 1)
    if high is not None:
        return float(high - 1)
    return float(mixed % 100)


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float | None, float | None]:
    """Inclusive bounds. An exclusive bound moves inward by 1 for integers; for numbers it is
    kept and only ever used through a midpoint or a +/-1 step, which stay strictly inside."""
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:  # draft 4: a flag on minimum
        ex_low, low = low, None
    if ex_high is True:
        ex_high, high = high, None
    if isinstance(ex_low, int | float) and not isinstance(ex_low, bool):
        moved = math.floor(ex_low) + 1 if integer else ex_low
        low = moved if low is None else max(low, moved)
    if isinstance(ex_high, int | float) and not isinstance(ex_high, bool):
        moved = math.ceil(ex_high) - 1 if integer else ex_high
        high = moved if high is None else min(high, moved)
    return low, high


def _pick(low: int | None, high: int | None, mixed: int) -> int:
    if low is not None and high is not None:
        return low + mixed % (high - low + 1) if high >= low else low
    if low is not None:
        return low + mixed % 100
    if high is not None:
        return high - mixed % 100
    return mixed % 100
