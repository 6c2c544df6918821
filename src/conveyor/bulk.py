"""``paused_gc()``: building a million small lists and records triggers CPython's cyclic GC over
and over (each pass walks every live object); none of them form cycles, so bulk loads pause it."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC for a bulk load, then move what survived to the permanent generation
    (``gc.freeze``): task records live for the whole run, so later collections skip them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
