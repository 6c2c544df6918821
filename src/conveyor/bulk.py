"""``paused_gc()``: building a million small lists and records triggers CPython's cyclic GC over
and over (each pass walks every live object); none of them form cycles, so bulk loads pause it.

``freeze_survivors()`` goes further for a process that conveyor owns whole (the CLI's
``conveyor run``): it moves what the load built out of the collector's sight for good. A
library must not do that: it would also keep the caller's cyclic garbage from ever being
collected (issue 16, point 18). The end of a pause costs a collection that walks every object
made during it (they are all young); a process that pauses the collector itself until it
freezes (``conveyor run``) never pays it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc(*, promote: bool = False) -> Iterator[None]:
    """Pause the cyclic GC for a bulk load; it is as it was afterwards (nothing is frozen).

    ``promote``: what the load made lives on (a loaded graph), so the end of the pause does
    not pay the collection that would walk all of it as young objects: every tracked object
    moves to the oldest generation at once (``gc.freeze`` then ``gc.unfreeze``: two list
    splices, no walk). Cyclic garbage moved along is still collected, by the next full
    collection. Not done while the process holds frozen objects of its own (``unfreeze``
    would hand them back to the collector)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if promote and gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def freeze_survivors() -> None:
    """Move every object alive now to the permanent generation (``gc.freeze``): later
    collections skip the task records, which live as long as the process. Then turn the
    collector on (a caller may have paused it for the load, so that no collection walks the
    loaded graph before it is frozen). For the CLI's short-lived run process only; never call
    it from library code."""
    gc.freeze()
    gc.enable()
