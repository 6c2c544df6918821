"""Event-driven readiness and the depth-first ready heap, for one process. Pure.

A task is an index into parallel lists and flat arrays (children: one offset per task, one entry per
edge; `core/dag.py` `Children`), cheap at a million tasks; the README gives the bytes. Each task
keeps the number of its unfinished parents; finishing a task walks only its own children
(O(fan-out)), and a child whose count reaches zero is pushed on the ready heap (O(log n)).
No operation here visits tasks that its event does not concern.

The memory store is a thin shell around this class; the SQL stores keep the same counts and keys
as indexed columns and follow the same rules in SQL.

The ready heap holds each key ``(rank, root_seq, index)`` (``ordering.priority_key``) packed in
one int, ``rank << hi | root_seq << lo | index``: ints compare in one step where tuples take
three or four, and a push makes no tuple (together ~a quarter of a no-op run). The fields' widths
follow the graph: ``lo`` bits hold every index, ``hi - lo`` every root; when a batch outgrows
them the heap is packed again (``_widen``: at powers of two, O(1) amortised per task). Nothing
outside this module reads the packed ints: ``heap_keys`` gives the keys back as tuples.

Size: the frontier's state is parallel arrays that every hot loop (pop, complete,
``finish_ready``, release, aging) walks per task; they stay in one class so no call crosses a
module per task.
"""

from __future__ import annotations

import heapq
import operator
from collections import Counter, deque
from collections.abc import Callable, Sequence
from itertools import compress
from typing import TYPE_CHECKING, overload

from conveyor.core.dag import Children, Layout, layout
from conveyor.core.offer import Offer
from conveyor.core.ordering import (
    AGE_AFTER_S,
    BAND_STRIDE,
    DEFAULT_BAND,
    band_offset,
    priority_key,
)
from conveyor.errors import GraphError
from conveyor.model import TaskState

if TYPE_CHECKING:  # (admission is switched on, and imported, by graphs that need it)
    from conveyor.core.admission import AdmissionQueue

PENDING = TaskState.PENDING.value
READY = TaskState.READY.value
RUNNING = TaskState.RUNNING.value
DONE = TaskState.DONE.value
FAILED = TaskState.FAILED.value
SKIPPED = TaskState.SKIPPED.value
RETRY_WAIT = TaskState.RETRY_WAIT.value
CANCELLED = TaskState.CANCELLED.value
_DEAD = frozenset({FAILED, SKIPPED, CANCELLED})
_heappush = heapq.heappush
_DEPTH_CAP = BAND_STRIDE - 1  # (ordering.rank_of caps depths here)
_heappop = heapq.heappop


class Frontier:
    """Readiness counts, task states and the ready heap keyed ``(-depth, root_seq, submit_seq)``."""

    __slots__ = (
        "_aging",
        "_delayed",
        "_heap",
        "_hi",
        "_lo",
        "band",
        "band_off",
        "children",
        "counts",
        "depth",
        "gang_of",
        "ids",
        "index",
        "queue",
        "root_seq",
        "roots_submitted",
        "shape",
        "state",
        "waiting",
    )

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.state = bytearray()
        self.waiting: list[int] = []  # unfinished parents
        self.children = Children()
        self.depth: list[int] = []
        self.root_seq: list[int] = []
        #: Each task's band and its rank offset (``ordering.band_offset``); ``None`` until a
        #: task of a band other than the default arrives (then the key's first field is
        #: ``band_off[i] - depth[i]``).
        self.band: list[int] | None = None
        self.band_off: list[int] | None = None
        #: Ready tasks of a band below the default, for aging (``age``); ``None`` without bands.
        self._aging: Aging | None = None
        self.roots_submitted = 0
        self.counts = [0] * len(TaskState)
        self._heap: list[int] = []  # packed keys: rank << _hi | root_seq << _lo | index
        self._lo = 1  # bits of the index field: 1 << _lo > every index
        self._hi = 2  # _lo + bits of the root_seq field: 1 << (_hi - _lo) > every root_seq
        self._delayed: list[tuple[float, int]] = []  # (not_before, index): retries in backoff
        # Admission (groups, resources, labels, gangs): when ``queue`` is set, ready tasks go
        # into its per-shape heaps instead of ``_heap``. ``shape[i]`` is task i's shape id.
        self.queue: AdmissionQueue | None = None
        self.shape: list[int] = []
        self.gang_of: dict[int, str] = {}

    # -- submission -------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        parents: Sequence[Sequence[str]],
        *,
        submitter: int | None = None,
        shapes: Sequence[int] | None = None,
        gangs: dict[int, str] | None = None,
        known_layout: Layout | None = None,
        bands: Sequence[int | None] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Add a graph (``submitter is None``) or a run-time child job of task ``submitter``.

        Returns ``(new indices, those of them ready now)``. A root graph gets the next
        ``root_seq``; a child job inherits its submitter's and starts one level deeper.
        Validation (duplicates, unknown parents, cycles) happens before any state changes.
        With an admission queue, ``shapes[k]`` is the shape id of the k-th new task and
        ``gangs`` maps batch positions to gang names. ``known_layout`` is this batch's layout
        when the caller already validated it (used only while the frontier is empty).
        ``bands[k]`` is the band number of the k-th new task, ``None`` to inherit: a child job's
        tasks take their submitter's band, a graph's the default (``ordering.band_number``).
        """
        index = self.index
        depth_of = self.depth

        def external_depth(tid: str) -> int | None:
            j = index.get(tid)
            return None if j is None else depth_of[j]

        if submitter is None:
            base, root = 0, self.roots_submitted + 1
        else:
            base, root = self.depth[submitter] + 1, self.root_seq[submitter]
        if known_layout is not None and not index and submitter is None and not known_layout.taken:
            lay = known_layout  # validated by the caller: same ids, same parents, no others
        else:
            lay = layout(
                ids, parents, external_depth=external_depth if index else None, base_depth=base
            )
        if submitter is None:
            self.roots_submitted = root
        n = len(ids)
        first = len(self.ids)
        new = range(first, first + n)
        state = self.state
        state.extend(bytes(n))  # PENDING
        self.root_seq.extend([root] * n)
        self._widen()
        self._add_bands(n, bands, submitter)
        dead: list[int] = []
        if first == 0:
            # The first batch: the layout's lists become this frontier's own (no copies).
            lay.taken = True
            self.ids = list(ids)
            self.index = index = lay.index
            self.depth = lay.depth
            self.children = children = lay.children
            self.waiting = waiting = lay.waiting
        else:
            children = self.children
            self.ids.extend(ids)
            index.update(zip(ids, new, strict=True))
            self.depth.extend(lay.depth)
            children.extend(lay.children, first)
            waiting = lay.waiting
            for k, ext in lay.external_parents.items():
                i = first + k
                for p in (index[tid] for tid in ext):
                    s = state[p]
                    if s == DONE:
                        continue
                    if s in _DEAD:
                        dead.append(i)
                    waiting[k] += 1
                    children.add(p, i)
            self.waiting.extend(waiting)
        if self.queue is not None:
            new_shapes = shapes if shapes is not None else [0] * n
            self.shape.extend(new_shapes)
            for sid, count in Counter(new_shapes).items():
                self.queue.add_unfinished(sid, count)
            if gangs:
                self.gang_of.update({first + k: g for k, g in gangs.items()})
        self.counts[PENDING] += n
        ready = list(compress(new, map(operator.not_, waiting)))
        for i in ready:
            self._make_ready(i)
        for i in dead:
            if state[i] == PENDING:
                self.cascade_skip(i, include_self=True)
        return list(new), ready

    def _add_bands(self, n: int, bands: Sequence[int | None] | None, submitter: int | None) -> None:
        inherited = DEFAULT_BAND if submitter is None or self.band is None else self.band[submitter]
        if self.band is None:
            if inherited == DEFAULT_BAND and (bands is None or all(
                b is None or b == DEFAULT_BAND for b in bands
            )):  # fmt: skip
                return  # every task so far is of the default band: keys as before bands
            known = len(self.state) - n
            self.band = [DEFAULT_BAND] * known
            self.band_off = [0] * known
            self._aging = Aging()
        assert self.band_off is not None
        new = [inherited] * n if bands is None else [inherited if b is None else b for b in bands]
        offsets = {b: band_offset(b) for b in set(new)}  # one int object per band
        self.band.extend(new)
        self.band_off.extend([offsets[b] for b in new])

    # -- the hot path ---------------------------------------------------------------------------
    def pop(self) -> int | None:
        """Claim the first ready task by key, or ``None``. O(log n).

        Entries of tasks skipped or cancelled while ready are dropped here, lazily.
        """
        if self.queue is not None:
            got = self.pick(Offer(1 << 30), 0.0)
            return got[0] if got else None
        heap = self._heap
        state = self.state
        mask = (1 << self._lo) - 1
        while heap:
            i = _heappop(heap) & mask
            if state[i] == READY:
                state[i] = RUNNING
                c = self.counts
                c[READY] -= 1
                c[RUNNING] += 1
                return i
        return None

    def pick(self, offer: Offer, now: float) -> list[int]:
        """Claim what admission picks for ``offer``: one task, a whole gang, or nothing."""
        q = self.queue
        if q is None:
            if offer.slots <= 0:
                return []
            i = self.pop()
            return [] if i is None else [i]
        state = self.state
        got = q.pick(offer, lambda i: state[i] == READY, now)
        if got is None:
            return []
        c = self.counts
        for i in got.members:
            state[i] = RUNNING
        c[READY] -= len(got.members)
        c[RUNNING] += len(got.members)
        q.started_shape(got.shape, len(got.members))
        return list(got.members)

    def enable_admission(self, queue: AdmissionQueue, default_shape: int) -> None:
        """Switch to per-shape heaps; tasks already known get ``default_shape``."""
        if self.queue is not None:
            return
        self.queue = queue
        self.shape = [default_shape] * len(self.ids)
        queue.add_unfinished(default_shape, self.unfinished())
        for key in self.heap_keys():
            if self.state[key[2]] == READY:
                queue.push(key[2], key, default_shape)
        self._heap = []

    def complete(self, i: int) -> list[int]:
        """Mark ``i`` done; return the children that became ready. O(fan-out · log n).

        This is the only place readiness changes on success: it touches ``i``'s children and
        nothing else, which is what keeps a million-task graph as cheap per task as a small one.
        """
        state = self.state
        state[i] = DONE
        c = self.counts
        c[RUNNING] -= 1
        c[DONE] += 1
        q = self.queue
        if q is not None:
            q.finished_shape(self.shape[i])
            q.add_unfinished(self.shape[i], -1)
            gang = self.gang_of.get(i)
            if gang is not None:
                q.gang_size[gang] -= 1  # a retried sibling re-forms a gang of those left
        ch = self.children  # ``ch[i]``, inlined: a call per completion costs ~3% of a no-op run
        kids = ch[i] if ch.extra else ch.flat[ch.start[i] : ch.start[i + 1]]
        if not kids:
            return []
        ready = []
        waiting = self.waiting
        for k in kids:
            w = waiting[k] - 1
            waiting[k] = w
            if w == 0 and state[k] == PENDING:
                state[k] = READY
                ready.append(k)
        if not ready:
            return ready
        depth = self.depth
        root_seq = self.root_seq
        # The key is ``ordering.priority_key``, written inline in these hot loops (a call per
        # push costs ~10% of a no-op run); tests/test_frontier_props.py checks they agree.
        lo, hi = self._lo, self._hi
        off = self.band_off
        if off is not None:  # bands: the rank is ``ordering.rank_of``, inline as below
            cap = _DEPTH_CAP
            for k in ready:
                d = depth[k]
                rank = off[k] - (d if d < cap else cap)
                if q is None:
                    _heappush(self._heap, (rank << hi) + (root_seq[k] << lo) + k)
                else:
                    q.push(k, (rank, root_seq[k], k), self.shape[k], self.gang_of.get(k))
                if rank > 0:  # a band below the default: it ages
                    self._note_aging(k)
        elif q is None:
            heap = self._heap
            for k in ready:
                _heappush(heap, (root_seq[k] << lo) + k - (depth[k] << hi))
        else:
            shape, gang_of = self.shape, self.gang_of
            for k in ready:
                q.push(k, (-depth[k], root_seq[k], k), shape[k], gang_of.get(k))
        c[PENDING] -= len(ready)
        c[READY] += len(ready)
        return ready

    def finish_ready(self, limit: int, real: Callable[[int], bool] | None = None) -> list[int]:
        """Claim and complete at once the best ready tasks, in key order, as ``pop`` then
        ``complete`` each would: for no-op tasks, which finish where they are claimed. Stops
        after ``limit`` tasks, when none is ready, or at a ready task for which ``real(i)`` is
        true (left ready, at the head: the caller claims it as usual). Returns those finished.

        The run of a no-op graph, in one loop: no call, claim or list per task. Only without
        admission or bands (else ``[]``: the caller takes ``pop``/``complete``).
        """
        if self.queue is not None or self.band_off is not None or limit <= 0:
            return []
        heap, state, waiting = self._heap, self.state, self.waiting
        depth, root_seq, ch = self.depth, self.root_seq, self.children
        start, flat, extra = ch.start, ch.flat, ch.extra
        lo, hi = self._lo, self._hi
        mask = (1 << lo) - 1
        done: list[int] = []
        finished = done.append
        # (per task, no call and no count: what was released is what the heap gained)
        stale, heap_was, left = 0, len(heap), limit
        while heap:
            entry = _heappop(heap)
            i = entry & mask
            if state[i] != READY:  # skipped or cancelled while ready: the entry goes
                stale += 1
                continue
            if real is not None and real(i):
                _heappush(heap, entry)  # back as it was: the caller claims it next
                break
            state[i] = DONE
            finished(i)
            # The release of ``complete`` (its plain branch: no bands, no admission), inline.
            for k in ch[i] if extra else flat[start[i] : start[i + 1]]:
                w = waiting[k] - 1
                waiting[k] = w
                if w == 0 and state[k] == PENDING:
                    state[k] = READY
                    _heappush(heap, (root_seq[k] << lo) + k - (depth[k] << hi))
            left -= 1
            if not left:
                break
        released = len(heap) - heap_was + len(done) + stale
        c = self.counts
        c[READY] += released - len(done)
        c[DONE] += len(done)
        c[PENDING] -= released
        return done

    def requeue(self, i: int) -> None:
        """Put a running task back on the heap with its original key (lost lease, release)."""
        self._move(i, READY)
        self._push(i)

    def defer(self, i: int, not_before: float) -> None:
        """A failed attempt waits for its backoff; it holds no worker meanwhile."""
        self._move(i, RETRY_WAIT)
        heapq.heappush(self._delayed, (not_before, i))

    def release_due(self, now: float) -> list[int]:
        """Move retries whose backoff has passed back to the ready heap. O(k log n)."""
        out = []
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, i = heapq.heappop(delayed)
            if self.state[i] == RETRY_WAIT:
                self._make_ready(i, from_state=RETRY_WAIT)
                out.append(i)
        return out

    def next_due(self) -> float | None:
        """When the earliest waiting retry becomes ready, if any."""
        while self._delayed and self.state[self._delayed[0][1]] != RETRY_WAIT:
            heapq.heappop(self._delayed)
        return self._delayed[0][0] if self._delayed else None

    def fail(self, i: int) -> list[int]:
        """Mark ``i`` failed for good; skip everything downstream. Returns the skipped indices."""
        self._move(i, FAILED)
        return self.cascade_skip(i, include_self=False)

    def cancel(self, i: int) -> None:
        self._move(i, CANCELLED)

    def cascade_skip(self, i: int, *, include_self: bool) -> list[int]:
        """Skip the unfinished descendants of ``i``. Each task is visited at most once ever."""
        state = self.state
        skipped = []
        stack = [i] if include_self else list(self.children[i] or ())
        while stack:
            k = stack.pop()
            s = state[k]
            if s not in (PENDING, READY, RETRY_WAIT, TaskState.INVALIDATED.value):
                continue
            self._move(k, SKIPPED)
            skipped.append(k)
            stack.extend(self.children[k] or ())
        return skipped

    # -- queries ------------------------------------------------------------------------------
    def key(self, i: int) -> tuple[int, int, int]:
        band = DEFAULT_BAND if self.band is None else self.band[i]
        return priority_key(self.depth[i], self.root_seq[i], i, band)

    def band_of(self, i: int) -> int:
        return DEFAULT_BAND if self.band is None else self.band[i]

    def ready_count(self) -> int:
        return self.counts[READY]

    def unfinished(self) -> int:
        c = self.counts
        return c[PENDING] + c[READY] + c[RUNNING] + c[RETRY_WAIT] + c[TaskState.INVALIDATED]

    def get(self, tid: str) -> int:
        try:
            return self.index[tid]
        except KeyError:
            raise GraphError(f"unknown task {tid!r}") from None

    def heap_keys(self) -> HeapKeys:
        """The ready heap's entries as keys ``(rank, root_seq, index)``, in heap order (maybe
        stale: a task skipped, cancelled or aged keeps an entry until it is reached). Empty
        with admission (the queue's per-shape heaps hold the keys then)."""
        return HeapKeys(self._heap, self._lo, self._hi)

    # -- helpers --------------------------------------------------------------------------------
    def _widen(self) -> None:
        """Make the packed keys' fields wide enough for every index and root_seq, packing the
        heap again when they grow (the entries of tasks no longer ready are dropped then)."""
        lo = max(1, len(self.state).bit_length())
        hi = lo + max(1, self.roots_submitted.bit_length())
        if lo == self._lo and hi == self._hi:
            return
        state = self.state
        keys = [k for k in self.heap_keys() if state[k[2]] == READY]
        self._lo, self._hi = lo, hi
        self._heap = [self._pack(key) for key in keys]
        heapq.heapify(self._heap)

    def _move(self, i: int, to: int) -> None:
        c = self.counts
        q = self.queue
        if q is not None:
            was = self.state[i]
            if was == RUNNING:
                q.finished_shape(self.shape[i])
            elif was == READY and i in self.gang_of:
                q.drop_gang_member(self.gang_of[i], i)
            if to in _DEAD and was not in _DEAD and was != DONE:
                q.add_unfinished(self.shape[i], -1)
        c[self.state[i]] -= 1
        c[to] += 1
        self.state[i] = to

    def _make_ready(self, i: int, from_state: int = PENDING) -> None:
        self.state[i] = READY
        c = self.counts
        c[from_state] -= 1
        c[READY] += 1
        self._push(i)

    def _pack(self, key: tuple[int, int, int]) -> int:
        """A key as a heap entry (the hot loops of ``complete`` and ``finish_ready`` write this
        inline; ``HeapKeys`` unpacks it)."""
        return (key[0] << self._hi) + (key[1] << self._lo) + key[2]

    def _push(self, i: int) -> None:
        key = self.key(i)
        if self.queue is None:
            heapq.heappush(self._heap, self._pack(key))
        else:
            self.queue.push(i, key, self.shape[i], self.gang_of.get(i))
        if key[0] > 0:
            self._note_aging(i)

    def _note_aging(self, i: int) -> None:
        if self._aging is not None and i not in self.gang_of:  # a gang moves as one: no aging
            self._aging.current.append(i)

    def age(self, now: float, after_s: float = AGE_AFTER_S) -> list[int]:
        """Aging: the tasks of a band below the default that have been ready for ``after_s``
        (to within an eighth of it) order as the default band from now on; returns them.
        O(tasks aged) amortised: each ready task is looked at once."""
        aging = self._aging
        if aging is None:
            return []
        band, off, state = self.band, self.band_off, self.state
        assert band is not None and off is not None
        out = []
        for i in aging.due(now, after_s):
            if state[i] == READY and band[i] > DEFAULT_BAND:
                band[i], off[i] = DEFAULT_BAND, 0
                self._push(i)  # the old entry stays behind; it is dropped when reached
                out.append(i)
        return out


class HeapKeys(Sequence[tuple[int, int, int]]):
    """A view of a packed ready heap as ``(rank, root_seq, index)`` keys, unpacked on read;
    position ``p``'s children are at ``2p+1`` and ``2p+2`` as in the heap (preemption walks it
    best first: ``core/preempt.py`` ``best_ready``). For ``why`` and preemption, not the hot
    path."""

    __slots__ = ("_heap", "_hi", "_lo")

    def __init__(self, heap: list[int], lo: int, hi: int) -> None:
        self._heap, self._lo, self._hi = heap, lo, hi

    def __len__(self) -> int:
        return len(self._heap)

    @overload
    def __getitem__(self, pos: int) -> tuple[int, int, int]: ...
    @overload
    def __getitem__(self, pos: slice) -> list[tuple[int, int, int]]: ...
    def __getitem__(self, pos: int | slice) -> tuple[int, int, int] | list[tuple[int, int, int]]:
        if isinstance(pos, slice):
            return [self._unpack(e) for e in self._heap[pos]]
        return self._unpack(self._heap[pos])

    def _unpack(self, e: int) -> tuple[int, int, int]:
        lo, hi = self._lo, self._hi
        return (e >> hi, (e >> lo) & ((1 << (hi - lo)) - 1), e & ((1 << lo) - 1))


class Aging:
    """Ready tasks of a low band in generations, each stamped when it closed (so every task
    in it was ready by then), about an eighth of the aging time long: no clock reading per
    task (``Frontier.age`` brings ``now``), and a task ages after at least ``after_s``."""

    __slots__ = ("current", "generations", "started")

    def __init__(self) -> None:
        self.current: list[int] = []
        self.started: float | None = None
        self.generations: deque[tuple[float, list[int]]] = deque()

    def due(self, now: float, after_s: float) -> list[int]:
        """The tasks of every generation that closed at least ``after_s`` before ``now``."""
        if self.started is None:
            self.started = now
        if now - self.started >= after_s / 8:
            self.generations.append((now, self.current))
            self.current, self.started = [], now
        out: list[int] = []
        gens = self.generations
        while gens and gens[0][0] <= now - after_s:
            out.extend(gens.popleft()[1])
        return out
