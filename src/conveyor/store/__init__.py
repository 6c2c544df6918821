"""Where task state lives: one ``Store`` interface, three implementations.

``open_store(url)`` picks the implementation from the URL scheme: ``memory://``,
``sqlite:///path/run.db``, ``postgresql://...``.
"""

from __future__ import annotations

from conveyor.store.base import Claim, Store, open_store

__all__ = ["Claim", "Store", "open_store"]
