"""``open_store(url)``: pick the store implementation from a URL's scheme.

Kept apart from ``store/base.py`` so that the interface never imports its implementations.
"""

from __future__ import annotations

from conveyor.errors import StoreError
from conveyor.events import EventSink
from conveyor.store.base import Store

MEMORY_URLS = ("memory://", "memory", ":memory:")


def open_store(url: str | None, *, emit: EventSink | None = None) -> Store:
    """Open the store named by ``url``: ``None`` or ``memory://`` for an in-process store,
    ``sqlite:///path/run.db``, ``postgresql://...``."""
    if url is None or url in MEMORY_URLS:
        from conveyor.store.memory import MemoryStore

        store: Store = MemoryStore()
    elif url.startswith("sqlite://"):
        from conveyor.store.sqlite import SqliteStore

        store = SqliteStore.from_url(url)
    elif url.startswith(("postgresql://", "postgres://")):
        from conveyor.store.postgres import PostgresStore

        store = PostgresStore.from_url(url)
    else:
        raise StoreError(
            f"unknown store URL {url!r}: use memory://, sqlite:///path/run.db or postgresql://..."
        )
    store.emit = emit
    return store
