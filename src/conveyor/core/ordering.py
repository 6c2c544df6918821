"""Priority bands, then depth-first progress ordering (Iris): a higher band first, then deeper
work, then the older root tree, then FIFO.

The key of a task is ``(rank, root_seq, submit_seq)`` where ``rank`` packs the task's band and
depth into one integer: ``(band - DEFAULT_BAND) * BAND_STRIDE - depth``. A lower band number is
a higher band and every rank of a higher band sorts before every rank of a lower one; inside a
band the rank is ``-depth`` shifted by a constant, so the depth-first rule is unchanged there.
The default band (``batch``) has offset 0: its rank *is* ``-depth``, the key every store kept
before bands existed, so rows written then need no migration. ``submit_seq`` is unique per task
(a global submission counter whose order inside one graph is the graph-file order), so the key
is a total order and doubles as the heap tie-breaker: heap entries are keys, and in the memory
store the task index *is* its ``submit_seq``.

This module is the one home of the key and of the bands (names, numbers, inheritance). The SQL
stores keep the key as three indexed columns (``KEY_COLUMNS``; the first is named
``neg_depth`` and holds the rank; their queries say ``ORDER BY {KEY}``, filled in from here
when loaded), build keys of their rows with ``PriorityKey``, and ``explain`` compares keys made
here. Only the ``Frontier``'s hot loop writes the same tuple inline (a call per push would cost
~10%).

Ranges: bands are integers ``MIN_BAND..MAX_BAND``; a depth at or beyond ``BAND_STRIDE - 1``
ranks as ``BAND_STRIDE - 1`` (the depth-first order then ties among such deep tasks and falls to
``root_seq`` and ``submit_seq``); every rank fits a 32-bit column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

#: A key as a plain tuple (heap entries of ``AdmissionQueue`` may carry a fourth field).
Key = tuple[int, int, int]

#: The key as the SQL stores keep it: these columns of ``tasks``, in this order.
KEY_COLUMNS = ("neg_depth", "root_seq", "seq")

#: Band names and their numbers; a lower number is a higher band (runs first).
BANDS = {"interactive": 10, "batch": 20, "best_effort": 30}
#: The band of a task that names none and has no parent task to inherit from.
DEFAULT_BAND = BANDS["batch"]
MIN_BAND = 0
MAX_BAND = 99
#: Depths per band in the packed rank: (MAX_BAND - DEFAULT_BAND + 1) * 2**24 < 2**31.
BAND_STRIDE = 1 << 24
_BAND_NAMES = {n: name for name, n in BANDS.items()}


class PriorityKey(NamedTuple):
    """The sort key of a ready task; smaller runs first. A plain tuple for comparisons."""

    rank: int
    root_seq: int
    submit_seq: int

    @classmethod
    def of(
        cls, depth: int, root_seq: int, submit_seq: int, band: int = DEFAULT_BAND
    ) -> PriorityKey:
        return cls(rank_of(depth, band), root_seq, submit_seq)

    @property
    def depth(self) -> int:
        return depth_from(self.rank)

    @property
    def band(self) -> int:
        return band_from(self.rank)


def rank_of(depth: int, band: int = DEFAULT_BAND) -> int:
    """The key's first field: the band's offset minus the (capped) depth."""
    return (band - DEFAULT_BAND) * BAND_STRIDE - min(depth, BAND_STRIDE - 1)


def band_offset(band: int) -> int:
    """``rank_of(depth, band) == band_offset(band) - depth`` for depths below the cap."""
    return (band - DEFAULT_BAND) * BAND_STRIDE


def band_from(rank: int) -> int:
    """A task's band from the key's first field (the ``neg_depth`` column of a SQL store)."""
    return DEFAULT_BAND - (-rank // BAND_STRIDE)  # the band whose ranks hold ``rank``


def depth_from(rank: int) -> int:
    """A task's depth (capped at ``BAND_STRIDE - 1``) from the key's first field."""
    return band_offset(band_from(rank)) - rank


#: A ready task of a band below batch (``best_effort``, 21-99) that waited this long orders as
#: ``batch`` from then on (aging): a stream of higher-band work never starves it for ever.
AGE_AFTER_S = 300.0


def aged_rank(rank: int) -> int:
    """The key's first field of an aged task: the same depth, in the default band (ranks of
    the default band and above are unchanged). SQL: ``store/sql/queries.sql`` ``age_ready``."""
    return rank if rank <= 0 else rank - band_offset(band_from(rank))


def band_floor(band: int) -> int:
    """The smallest rank of ``band``: every rank below it is of a higher band."""
    return band_offset(band) - (BAND_STRIDE - 1)


def priority_key(
    depth: int, root_seq: int, submit_seq: int, band: int = DEFAULT_BAND
) -> PriorityKey:
    """The sort key of a ready task at ``depth`` of root ``root_seq``; smaller runs first."""
    return PriorityKey(rank_of(depth, band), root_seq, submit_seq)


def band_number(band: str | int | None, inherited: int = DEFAULT_BAND) -> int:
    """The number of a band given by name or number; ``None`` takes ``inherited`` (a run-time
    child inherits its submitter's band, a graph's task the graph's). ``ValueError`` names the
    accepted values."""
    if band is None:
        return inherited
    if isinstance(band, bool):
        raise ValueError(f"band must be one of {', '.join(BANDS)} or an integer, got {band!r}")
    if isinstance(band, int):
        if MIN_BAND <= band <= MAX_BAND:
            return band
        raise ValueError(f"band {band} is out of range {MIN_BAND}..{MAX_BAND}")
    n = BANDS.get(band)
    if n is None:
        raise ValueError(f"unknown band {band!r}; expected one of {', '.join(BANDS)} or an integer")
    return n


def band_numbers(bands: Sequence[str | int | None]) -> list[int | None] | None:
    """The band numbers tasks name (``None``: inherit), or ``None`` when none names one (the
    frontier then keeps the keys of the default band)."""
    if all(b is None for b in bands):
        return None
    return [None if b is None else band_number(b) for b in bands]


def band_label(band: int) -> str:
    """``"interactive (10)"`` for a named band, ``"band 15"`` otherwise (for ``why``)."""
    name = _BAND_NAMES.get(band)
    return f"{name} ({band})" if name else f"band {band}"
