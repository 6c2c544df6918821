"""What a cell task runs: a column's generator wrapped so its outcome is a value the builder
can file.

A cell's function returns the generator's value, or ``Dropped`` (the row leaves the table:
``DropRow``, ``keep_when``, an error that retrying cannot cure), and *raises* only errors worth
retrying (429, 5xx, timeouts, connection errors: ``conveyor.http``'s classification), which the
engine retries with backoff. A column with an ``endpoint`` makes its call inside a slot of that
endpoint's adaptive limiter, so a 429 reaches the limiter before any retry does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from conveyor.core.limiter import Outcome
from conveyor.errors import DropRow
from conveyor.http import classify_exception
from conveyor.runtime.context import current
from conveyor.runtime.executors import describe
from conveyor.table.samplers import row_seed
from conveyor.table.spec import Column

__all__ = ["Dropped", "batch_function", "cell_function"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """A row left out: ``reason`` is counted per column; ``error`` says what failed, if
    something did (``None`` for ``DropRow`` and ``keep_when``)."""

    reason: str
    error: str | None = None
    #: the error says the endpoint refuses every call (a key it rejects, a model or URL it
    #: does not have, a spent quota): the build stops rather than drop row after row
    fatal: bool = False


#: HTTP statuses that are about the endpoint or its configuration, not the row: 401, 403,
#: 404 (a wrong key, no access, a wrong base_url or model name)
_CONFIG_STATUSES = frozenset({401, 403, 404})


def _retryable(exc: BaseException) -> bool:
    return classify_exception(exc, wall_now=time.time()).outcome.retryable


def _stops_the_build(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    if status in _CONFIG_STATUSES:
        return True
    return classify_exception(exc, wall_now=time.time()).outcome is Outcome.QUOTA_EXHAUSTED


def _failed(exc: BaseException) -> Dropped:
    return Dropped(f"error: {type(exc).__name__}", describe(exc), _stops_the_build(exc))


def _split(col: Column, value: Any) -> Any:
    """A generator with side effects returns ``{its column: v, side column: w, ...}``."""
    if not col.side_effects:
        return value
    if not isinstance(value, Mapping) or col.name not in value:
        raise TypeError(
            f"column {col.name!r} declares side effects {list(col.side_effects)}: its generator"
            f" must return a dict with {col.name!r} and them, got {type(value).__name__}"
        )
    return value


def _keep(col: Column, value: Any) -> bool:
    pred = col.keep_when
    if pred is None:
        return True
    own = value[col.name] if col.side_effects else value
    return bool(pred(own))


def _finish(col: Column, value: Any) -> Any:
    """A generator's value as filed: split into its side effects, or ``Dropped`` by
    ``keep_when``."""
    value = _split(col, value)
    if not _keep(col, value):
        return Dropped("keep_when")
    return value


def _caught(exc: Exception) -> Dropped | Retry:
    """What a generator's exception means for its cell: ``DropRow`` and errors retrying
    cannot cure drop the row; the others (429, 5xx, timeouts, connection errors) are retried."""
    if isinstance(exc, DropRow):
        return Dropped(exc.reason)
    if _retryable(exc):
        return Retry(describe(exc))
    return _failed(exc)


def _settled(exc: Exception) -> Dropped:
    """A cell's exception as its ``Dropped`` value, or raised again to be retried (by the
    engine, with backoff) when it is one retrying may cure."""
    got = _caught(exc)
    if isinstance(got, Retry):
        raise exc
    return got


def _given(col: Column, seed: int, row: int, kw: dict[str, Any]) -> None:
    for g in col.given:
        if g == "rng":
            kw["rng"] = random.Random(row_seed(seed, col.name, row))
        elif g == "row_index":
            kw["row_index"] = row


def _given_each(col: Column, seed: int, rows: list[int], kws: list[dict[str, Any]]) -> None:
    for row, kw in zip(rows, kws, strict=True):
        _given(col, seed, row, kw)


def cell_function(col: Column, seed: int) -> Callable[[dict[str, Any], int], Any]:
    """The function a cell task of ``col`` runs, called with ``(arguments, row index)``;
    a coroutine function when the generator is one."""
    fn = col.fn
    assert fn is not None
    given = bool(col.given)
    # (a generator that takes its endpoint's slot itself, an LLM column, is called bare)
    endpoint = col.endpoint is not None and not getattr(fn, "takes_slot", False)

    if col.is_async:

        async def run_async(kw: dict[str, Any], row: int) -> Any:
            if given:
                _given(col, seed, row, kw)
            try:
                if endpoint:
                    value = await _through_limiter(fn, kw)
                else:
                    value = await fn(**kw)
                return _finish(col, value)
            except Exception as exc:
                return _settled(exc)

        return run_async

    def run(kw: dict[str, Any], row: int) -> Any:
        if given:
            _given(col, seed, row, kw)
        try:
            value = _through_limiter_sync(fn, kw) if endpoint else fn(**kw)
            return _finish(col, value)
        except Exception as exc:
            return _settled(exc)

    return run


@dataclass(frozen=True, slots=True)
class Retry:
    """A cell of a run (``run_function``) that raised an error worth retrying."""

    error: str


@dataclass(frozen=True, slots=True)
class RunOut:
    """What a run of cells returns: one outcome per cell (a value, ``Dropped`` or ``Retry``)
    and the seconds the generator calls took, which size the next runs."""

    outcomes: list[Any]
    seconds: float


def run_function(col: Column, seed: int) -> Callable[[list[dict[str, Any]], list[int]], Any]:
    """The function a *run* of cells of ``col`` runs: several cells of one generator in one
    engine task, called with ``(each cell's arguments, their row indices)``, one after the
    other. For generators without an endpoint or a timeout whose calls are much shorter than
    the engine's cost of a task (the builder sizes runs by measured call time), so that cost
    is paid once per run rather than once per cell. An error worth retrying comes back as a
    ``Retry`` for that cell alone."""
    fn = col.fn
    assert fn is not None
    given, is_async = bool(col.given), col.is_async
    clock = time.perf_counter

    async def run_async(kws: list[dict[str, Any]], rows: list[int]) -> RunOut:
        out: list[Any] = []
        t0 = clock()
        if given:
            _given_each(col, seed, rows, kws)
        for kw in kws:
            try:
                value = fn(**kw)
                out.append(_finish(col, await value if is_async else value))
            except Exception as exc:
                out.append(_caught(exc))
        return RunOut(out, clock() - t0)

    if is_async:
        return run_async

    def run(kws: list[dict[str, Any]], rows: list[int]) -> RunOut:
        # The same loop: with a sync generator it awaits nothing, so one step runs it through.
        try:
            run_async(kws, rows).send(None)
        except StopIteration as done:
            return cast(RunOut, done.value)
        raise AssertionError("a run of sync cells awaited something")  # pragma: no cover

    return run


@dataclass(frozen=True, slots=True)
class BatchOut:
    """A ``full_column`` task's outcome: one value (or ``Dropped``) per row it was given; or
    ``failed`` when the whole row group fails (a wrong number of values, an error)."""

    values: Sequence[Any] = ()
    failed: Dropped | None = None


def batch_function(col: Column, seed: int) -> Callable[[dict[str, list[Any]], list[int]], Any]:
    """The function a ``full_column`` task of ``col`` runs, called with ``(the kept rows'
    column slices, their global row indices)``; samplers too."""
    sampler = col.sampler
    if sampler is not None:

        def sample(kw: dict[str, list[Any]], rows: list[int]) -> BatchOut:
            got = sampler.sample(rows[0], rows[-1] + 1, seed)
            first = rows[0]
            fields = col.fields
            if len(rows) == rows[-1] - first + 1:
                cols = [got[f] for f in fields]
            else:
                cols = [[got[f][r - first] for r in rows] for f in fields]
            if len(fields) == 1:
                return BatchOut(cols[0])
            return BatchOut(
                [dict(zip(fields, vals, strict=True)) for vals in zip(*cols, strict=True)]
            )

        return sample

    fn = col.fn
    assert fn is not None

    def given(kw: dict[str, Any], rows: list[int]) -> None:
        for g in col.given:
            if g == "rng":
                kw["rng"] = random.Random(row_seed(seed, col.name, rows[0] if rows else 0))
            elif g == "row_indices":
                kw["row_indices"] = rows

    def check(values: Any, rows: list[int]) -> BatchOut:
        if col.side_effects:
            if not isinstance(values, Mapping) or col.name not in values:
                msg = (f"column {col.name!r} declares side effects: its generator must return"
                       f" a dict of lists with {col.name!r} and them")  # fmt: skip
                return BatchOut(failed=Dropped("error: wrong output", msg))
            names = [col.name, *(s for s in col.side_effects if s in values)]
            lists = [list(values[n]) for n in names]
            if any(len(v) != len(rows) for v in lists):
                return _wrong_count(col, min(len(v) for v in lists), len(rows))
            values = [dict(zip(names, vals, strict=True)) for vals in zip(*lists, strict=True)]
        else:
            try:
                values = list(values)
            except TypeError:
                return _wrong_count(col, None, len(rows))
            if len(values) != len(rows):
                return _wrong_count(col, len(values), len(rows))
        out = []
        for v in values:
            if isinstance(v, DropRow):
                out.append(Dropped(v.reason))
            elif not _keep(col, v):
                out.append(Dropped("keep_when"))
            else:
                out.append(v)
        return BatchOut(out)

    if col.is_async:

        async def run_async(kw: dict[str, Any], rows: list[int]) -> BatchOut:
            given(kw, rows)
            try:
                if col.endpoint is not None:
                    values = await _through_limiter(fn, kw)
                else:
                    values = await fn(**kw)
            except Exception as exc:
                return _batch_failed(exc)
            return check(values, rows)

        return run_async

    def run(kw: dict[str, Any], rows: list[int]) -> BatchOut:
        given(kw, rows)
        try:
            values = _through_limiter_sync(fn, kw) if col.endpoint is not None else fn(**kw)
        except Exception as exc:
            return _batch_failed(exc)
        return check(values, rows)

    return run


def _batch_failed(exc: Exception) -> BatchOut:
    """A ``full_column`` generator's exception: the row group failed, or raised again to be
    retried (by the engine, with backoff) when retrying may cure it."""
    if _retryable(exc):
        raise exc
    return BatchOut(failed=_failed(exc))


def _wrong_count(col: Column, got: int | None, want: int) -> BatchOut:
    what = "something that is not a list" if got is None else f"{got} values"
    msg = f"column {col.name!r} (full_column) returned {what} for {want} rows"
    return BatchOut(failed=Dropped("error: wrong number of values", msg))


async def _through_limiter(fn: Callable[..., Any], kw: dict[str, Any]) -> Any:
    """Call ``fn`` in a slot of the cell's endpoint. A return is a success (it lets the
    adaptive limit grow; an unreported slot would count as cancelled and hold it where it
    started); an exception leaving the block is classified (a 429 cuts the limit)."""
    async with current().acquire() as slot:
        value = await fn(**kw)
        slot.report(Outcome.SUCCESS)
    return value


def _through_limiter_sync(fn: Callable[..., Any], kw: dict[str, Any]) -> Any:
    """``_through_limiter`` for a sync generator, on its pool thread."""
    with current().acquire_sync() as slot:
        value = fn(**kw)
        slot.report(Outcome.SUCCESS)
    return value
