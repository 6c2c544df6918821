"""Seed-column samplers: values for global rows ``[start, stop)``, a pure function of
``(seed, column name, global row index)`` -- never of the row-group size or the call order.

``row_seed`` is the one home of the per-row seed (splitmix64 over the seed, a stable digest of the
column name and the row). Samplers draw in fixed blocks of ``BLOCK`` global rows: block ``b`` of a
column gets a ``random.Random`` seeded from ``row_seed`` in a separate domain, and row ``i`` is the
``i % BLOCK``-th draw of block ``i // BLOCK``. A pure-Python 64-bit mix per row costs ~1 us; a
Mersenne Twister per block of 1024 rows costs ~7 us per block plus ~0.1 us per draw, so 1M
``category`` values take ~0.2 s. Only ``Random.random()`` is used (its sequence for an int seed is
stable across Python versions, unlike ``choices``/``randrange``).

No I/O except ``seed_file``, which reads its file once, lazily, and keeps it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Any, Literal, Self

from conveyor.errors import UsageError
from conveyor.table.seedfiles import read_seed_columns

__all__ = [
    "BLOCK",
    "Sampler",
    "category",
    "choice",
    "integers",
    "row_seed",
    "seed_file",
    "uniform",
]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: 2**64 / golden ratio, odd
_BLOCK_DOMAIN = 0x5EED_B10C_0000_0001  # keeps block seeds apart from the builder's row seeds

BLOCK = 1024
"""Global rows per sampler block. Part of the output's identity: changing it changes every value."""


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit ints with full avalanche."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@lru_cache(maxsize=1024)
def _column_key(column: str) -> int:
    """A stable 64-bit digest of a column name (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(column.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def row_seed(seed: int, column: str, row: int) -> int:
    """The 64-bit seed of one cell: ``(seed, column, global row)`` -> int in ``[0, 2**64)``."""
    base = _mix64((seed & _MASK) ^ _column_key(column))
    return _mix64((base + (row + 1) * _GOLDEN) & _MASK)


def _block_rng(seed: int, column: str, block: int) -> random.Random:
    return random.Random(_mix64(row_seed(seed, column, block) ^ _BLOCK_DOMAIN))


def _digest(kind: str, params: Any) -> str:
    text = json.dumps(params, sort_keys=True, ensure_ascii=False, default=repr)
    return f"{kind}:{hashlib.blake2b(text.encode('utf-8'), digest_size=12).hexdigest()}"


class Sampler(ABC):
    """Fills one or more seed columns. ``fields`` are the column names it fills; empty until
    ``bind(name)`` when the sampler fills just the column it is declared as."""

    def __init__(self, fields: Sequence[str] = ()) -> None:
        self._fields: tuple[str, ...] = tuple(fields)
        self._explicit = bool(self._fields)
        self._name: str | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    @property
    def name(self) -> str | None:
        """The column this sampler is declared as (its seed key), once bound."""
        return self._name

    def bind(self, name: str) -> Self:
        self._name = name
        if not self._explicit:
            self._fields = (name,)
        return self

    def sample(self, start: int, stop: int, seed: int) -> dict[str, list[Any]]:
        """Values for global rows ``[start, stop)``, one list per field."""
        key = self._key(start, stop)
        items: list[Any] = []
        for block in range(start // BLOCK, (stop - 1) // BLOCK + 1 if stop > start else 0):
            first = block * BLOCK
            lo, hi = max(start, first) - first, min(stop, first + BLOCK) - first
            drawn = self._draw(_block_rng(seed, key, block), hi)  # O(hi): a block from its start
            items.extend(drawn[lo:hi])
        return self._columns(items)

    def _key(self, start: int, stop: int) -> str:
        if self._name is None:
            kind = type(self).__name__.strip("_").lower()  # not describe(): it may read a file
            raise ValueError(f"this {kind} sampler is not bound to a column (call bind(name))")
        if not 0 <= start <= stop:
            raise ValueError(f"bad row range [{start}, {stop})")
        return self._name

    @abstractmethod
    def _draw(self, rng: random.Random, n: int) -> list[Any]:
        """The first ``n`` draws of a fresh block generator, one item per row."""

    def _columns(self, items: list[Any]) -> dict[str, list[Any]]:
        (field,) = self.fields
        return {field: items}

    @abstractmethod
    def describe(self) -> str:
        """One line for ``--plan``."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A stable string of the parameters: changes exactly when they change."""

    def __repr__(self) -> str:
        return self.describe()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


class _Category(Sampler):
    def __init__(self, values: list[Any], weights: list[float], kind: str) -> None:
        super().__init__()
        self.values = values
        self.weights = weights
        self._kind = kind
        self._cum: list[float] = []
        total = 0.0
        for w in weights:
            total += w
            self._cum.append(total)
        self._total = total

    def _draw(self, rng: random.Random, n: int) -> list[Any]:
        vals, cum, total, r = self.values, self._cum, self._total, rng.random
        bis = bisect.bisect_right
        hi = len(vals) - 1  # u * total can round up to total: never index past the end
        return [vals[bis(cum, r() * total, 0, hi)] for _ in repeat(None, n)]

    def describe(self) -> str:
        if self._kind == "choice":
            shown = ", ".join(_short(v) for v in self.values[:6])
        else:
            shown = ", ".join(
                f"{_short(v)}: {w / self._total:.3g}"
                for v, w in zip(self.values[:6], self.weights, strict=False)
            )
        more = f", ... ({len(self.values)} values)" if len(self.values) > 6 else ""
        return f"{self._kind}({shown}{more})"

    def fingerprint(self) -> str:
        norm = [w / self._total for w in self.weights]
        return _digest("category", [[repr(v) for v in self.values], norm])


def _weight(w: Any, what: str) -> float:
    if isinstance(w, bool) or not isinstance(w, int | float):
        raise UsageError(f"{what}: weight {w!r} is not a number")
    f = float(w)
    if not math.isfinite(f) or f < 0:
        raise UsageError(f"{what}: weight {w!r} must be finite and >= 0")
    return f


def category(
    values: Sequence[Any] | Mapping[Any, float], weights: Sequence[float] | None = None
) -> Sampler:
    """A weighted pick from ``values`` (a sequence, or a ``{value: weight}`` mapping).
    Weights are normalised; none means equal weights."""
    if isinstance(values, Mapping):
        if weights is not None:
            raise UsageError("category: give weights either as a mapping or as weights=, not both")
        vals, ws = list(values.keys()), list(values.values())
    elif isinstance(values, str | bytes):
        raise UsageError("category: values must be a list or a mapping, not a string")
    else:
        vals = list(values)
        ws = [1.0] * len(vals) if weights is None else list(weights)
    if not vals:
        raise UsageError("category: no values")
    if len(ws) != len(vals):
        raise UsageError(f"category: {len(vals)} values but {len(ws)} weights")
    norm = [_weight(w, "category") for w in ws]
    if sum(norm) <= 0:
        raise UsageError("category: the weights sum to zero")
    return _Category(vals, norm, "category")


def choice(seq: Sequence[Any]) -> Sampler:
    """A uniform pick from ``seq``."""
    if isinstance(seq, str | bytes | Mapping):
        raise UsageError("choice: expects a list of values")
    vals = list(seq)
    if not vals:
        raise UsageError("choice: no values")
    return _Category(vals, [1.0] * len(vals), "choice")


class _Uniform(Sampler):
    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def _draw(self, rng: random.Random, n: int) -> list[Any]:
        low, span, r = self.low, self.high - self.low, rng.random
        return [low + span * r() for _ in repeat(None, n)]

    def describe(self) -> str:
        return f"uniform({self.low!r}, {self.high!r})"

    def fingerprint(self) -> str:
        return _digest("uniform", [self.low, self.high])


def _number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise UsageError(f"{what}: {x!r} is not a finite number")
    return float(x)


def uniform(low: float, high: float) -> Sampler:
    """Floats uniform in ``[low, high)``."""
    lo, hi = _number(low, "uniform"), _number(high, "uniform")
    if not lo < hi:
        raise UsageError(f"uniform: low {low!r} must be below high {high!r}")
    return _Uniform(lo, hi)


class _Integers(Sampler):
    def __init__(self, low: int, high: int) -> None:
        super().__init__()
        self.low, self.high = low, high

    def _draw(self, rng: random.Random, n: int) -> list[Any]:
        low, span, r = self.low, self.high - self.low + 1, rng.random
        if span <= 1 << 32:  # floor(u * span): bias below 2**-21, one draw a row
            return [low + int(r() * span) for _ in repeat(None, n)]
        words = -(-(span.bit_length() + 32) // 53)  # enough 53-bit draws to make bias negligible
        out = []
        for _ in repeat(None, n):
            x = 0
            for _ in repeat(None, words):
                x = (x << 53) | int(r() * (1 << 53))
            out.append(low + x % span)
        return out

    def describe(self) -> str:
        return f"integers({self.low}, {self.high})"

    def fingerprint(self) -> str:
        return _digest("integers", [self.low, self.high])


def integers(low: int, high: int) -> Sampler:
    """Ints uniform in ``[low, high]``, both ends included."""
    for x in (low, high):
        if isinstance(x, bool) or not isinstance(x, int):
            raise UsageError(f"integers: {x!r} is not an int")
    if low > high:
        raise UsageError(f"integers: low {low} is above high {high}")
    return _Integers(low, high)


Order = Literal["random", "cycle"]
_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".csv")


class _SeedFile(Sampler):
    """Rows of a Parquet, JSONL or CSV file. Loaded on first use and kept (two threads that race
    on the first use both read the same file; the last assignment wins, harmlessly)."""

    def __init__(self, path: Path, columns: tuple[str, ...] | None, order: Order) -> None:
        super().__init__(columns or ())
        self.path = path
        self.columns = columns
        self.order: Order = order
        self._data: dict[str, list[Any]] | None = None
        self._rows = 0
        self._digest = ""

    @property
    def fields(self) -> tuple[str, ...]:
        if self.columns is None:
            return tuple(self._load())
        return self.columns

    def bind(self, name: str) -> Self:
        self._name = name  # fields are the file's columns, never the column's own name
        return self

    def _load(self) -> dict[str, list[Any]]:
        if self._data is None:
            try:
                raw = self.path.read_bytes()
            except OSError as e:
                raise UsageError(f"seed file {self.path}: cannot read ({e.strerror})") from None
            data = read_seed_columns(self.path, raw)
            rows = len(next(iter(data.values()))) if data else 0
            if rows == 0:
                raise UsageError(f"seed file {self.path}: no rows")
            if self.columns is not None:
                missing = [c for c in self.columns if c not in data]
                if missing:
                    raise UsageError(
                        f"seed file {self.path}: no column {missing[0]!r} (has {', '.join(data)})"
                    )
                data = {c: data[c] for c in self.columns}
            self._digest = hashlib.sha256(raw).hexdigest()
            self._rows = rows
            self._data = data
        return self._data

    def sample(self, start: int, stop: int, seed: int) -> dict[str, list[Any]]:
        if self.order == "random":
            return super().sample(start, stop, seed)
        self._key(start, stop)
        self._load()
        n = self._rows
        return self._columns([i % n for i in range(start, stop)])

    def _draw(self, rng: random.Random, n: int) -> list[Any]:
        self._load()
        rows, r = self._rows, rng.random
        return [int(r() * rows) for _ in repeat(None, n)]

    def _columns(self, items: list[Any]) -> dict[str, list[Any]]:
        data = self._load()
        return {c: [col[i] for i in items] for c, col in data.items()}

    def describe(self) -> str:
        data = self._load()
        return (
            f"seed_file({self.path.name}, {self._rows:,} rows, "
            f"columns {', '.join(data)}, order={self.order})"
        )

    def fingerprint(self) -> str:
        self._load()
        return _digest("seed_file", [self._digest, list(self.fields), self.order])


def seed_file(
    path: str | Path, *, columns: Sequence[str] | None = None, order: Order = "random"
) -> Sampler:
    """Rows of a Parquet (needs pyarrow), JSONL or CSV file (values as strings), by suffix.
    ``fields`` are ``columns`` (default: all of the file's). ``order="cycle"`` gives global row
    ``i`` the file row ``i % n``; ``"random"`` draws a file row per global row."""
    p = Path(path)
    if p.suffix.lower() not in _SUFFIXES:
        raise UsageError(
            f"seed file {p}: unknown suffix {p.suffix or '(none)'!r} (use {', '.join(_SUFFIXES)})"
        )
    if order not in ("random", "cycle"):
        raise UsageError(f"seed file {p}: order must be 'random' or 'cycle', not {order!r}")
    if isinstance(columns, str):
        columns = [columns]
    cols = None if columns is None else tuple(columns)
    if cols is not None and (not cols or len(set(cols)) != len(cols)):
        raise UsageError(f"seed file {p}: columns must be a non-empty list without repeats")
    return _SeedFile(p, cols, order)
