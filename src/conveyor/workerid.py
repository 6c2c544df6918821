"""The name a worker goes by in a store: ``host:pid`` (one home for it)."""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()


def default_worker_id() -> str:
    """``host:pid`` of this process (read at each call: a forked child has its own pid)."""
    return f"{HOST}:{os.getpid()}"
