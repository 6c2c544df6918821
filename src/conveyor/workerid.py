"""The name a worker goes by in a store: ``host:pid`` (one home for it)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def _host() -> str:
    """This machine's host name: ``socket.gethostname()``, read without importing ``socket``
    where ``os.uname`` gives the same (POSIX: both read the kernel's node name)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket  # (Windows)

    return socket.gethostname()


HOST = _host()


def default_worker_id() -> str:
    """``host:pid`` of this process (read at each call: a forked child has its own pid)."""
    return f"{HOST}:{os.getpid()}"


#: What a worker started by SLURM registers about itself, from its environment: info key ->
#: variable. ``slurm_index`` is the worker's global index over all of a store's arrays (set by
#: the job script ``conveyor slurm submit`` writes: the array's offset + its task id).
SLURM_VARS = {
    "slurm_job": "SLURM_JOB_ID",
    "slurm_array_job": "SLURM_ARRAY_JOB_ID",
    "slurm_array_task": "SLURM_ARRAY_TASK_ID",
    "slurm_node": "SLURMD_NODENAME",
    "slurm_index": "CONVEYOR_SLURM_INDEX",
}


def slurm_info(environ: Mapping[str, str]) -> dict[str, str]:
    """The SLURM ids in ``environ`` (``os.environ`` of a worker), for its worker row; empty
    outside SLURM."""
    return {key: environ[var] for key, var in SLURM_VARS.items() if environ.get(var)}
