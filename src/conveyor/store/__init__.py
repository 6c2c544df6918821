"""Where task state lives: one ``Store`` interface (``store/base.py``), three implementations.

``open_store(url)`` (``store/urls.py``) picks the implementation from the URL scheme:
``memory://``, ``sqlite:///path/run.db``, ``postgresql://...``.
"""

from __future__ import annotations

from conveyor.store.base import Claim, GraphFingerprints, Store, WorkerProfile
from conveyor.store.urls import open_store

__all__ = ["Claim", "GraphFingerprints", "Store", "WorkerProfile", "open_store"]
