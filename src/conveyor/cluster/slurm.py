"""SLURM by its own commands (``sbatch``, ``squeue``, ``scontrol``, ``scancel``): the edge where
conveyor talks to a cluster, and the only place that starts them.

Every call covers many jobs at once (``squeue --jobs=a,b,c``; ``scancel a_1 a_2``), never one
process per job: sites limit RPCs per user. Nothing here needs accounting: no ``sacct``, no
slurmdbd; conveyor's store stays the truth about tasks, SLURM is asked only about its jobs.
A command that fails raises ``ClusterError`` with SLURM's own words, one line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import ClusterError

__all__ = [
    "QueueRow",
    "check_partition",
    "max_array_size",
    "parse_config_value",
    "parse_squeue",
    "require",
    "sbatch",
    "scancel",
    "squeue",
]

#: Seconds a SLURM command may take before the controller counts as not answering.
TIMEOUT_S = 60.0
#: SLURM's default MaxArraySize, for a configuration that does not say.
DEFAULT_MAX_ARRAY_SIZE = 1001
#: squeue's fields, ``|``-separated: array job id, array task id, job id, state, node list.
SQUEUE_FORMAT = "%F|%K|%A|%T|%N"


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One line of ``squeue --array``: a job, or one element of an array."""

    array_job: str  # the array's job id (the job's own id when it is no array)
    task: int | None  # the element's index; None for a job that is no array element
    job_id: str  # the element's own job id (its array's id while it is pending)
    state: str  # PENDING, RUNNING, COMPLETING, ...
    node: str  # where it runs ("" while pending)


def require(command: str) -> str:
    """The path of SLURM's ``command``, or a ``ClusterError`` saying it is not on PATH."""
    found = shutil.which(command)
    if found is None:
        raise ClusterError(
            f"{command} not found on PATH: conveyor slurm needs SLURM's commands "
            "(sbatch, squeue, scontrol, scancel) on this machine"
        )
    return found


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    path = require(args[0])
    try:
        return subprocess.run(
            [path, *args[1:]], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{args[0]} did not answer in {TIMEOUT_S:g} s") from None


def _said(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed command said, as one line: its stderr (else stdout), with the repeated
    ``sbatch: error:`` prefixes dropped."""
    text = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
    lines = [re.sub(r"^\w+: error: ", "", ln.strip()) for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines)


def parse_config_value(text: str, key: str) -> str | None:
    """``key``'s value in ``scontrol show config`` output (``Key = value`` lines)."""
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None


def max_array_size() -> int:
    """The site's ``MaxArraySize`` (``scontrol show config``): array indices stay below it."""
    proc = _run(["scontrol", "show", "config"])
    if proc.returncode != 0:
        raise ClusterError(f"scontrol show config: {_said(proc)}")
    value = parse_config_value(proc.stdout, "MaxArraySize")
    return int(value) if value and value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


def check_partition(name: str) -> None:
    """Refuse a partition the cluster does not have, before anything is submitted."""
    proc = _run(["scontrol", "show", "partition", name])
    if proc.returncode != 0:
        raise ClusterError(f"--partition {name}: unknown partition ({_said(proc)})")


def sbatch(args: Sequence[str], script: Path) -> str:
    """Submit ``script`` with ``args``; its job id. One process, one submission."""
    proc = _run(["sbatch", "--parsable", *args, str(script)])
    if proc.returncode != 0:
        raise ClusterError(f"sbatch refused the job: {_said(proc)}")
    job = proc.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"
    if not job.isdigit():
        raise ClusterError(f"sbatch answered {proc.stdout.strip()!r}, not a job id")
    return job


def parse_squeue(text: str) -> list[QueueRow]:
    """Rows of ``squeue --array --noheader --format=SQUEUE_FORMAT``."""
    rows = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        array_job, task, job_id, state, node = fields
        rows.append(QueueRow(array_job, int(task) if task.isdigit() else None, job_id,
                             state, node))  # fmt: skip
    return rows


def squeue(jobs: Sequence[str]) -> list[QueueRow]:
    """Every element still in the queue of the arrays ``jobs``, in one ``squeue`` call. Ended
    jobs are not listed (without accounting SLURM forgets them after ``MinJobAge``)."""
    if not jobs:
        return []
    proc = _run(["squeue", "--array", "--noheader", f"--format={SQUEUE_FORMAT}",
                 f"--jobs={','.join(jobs)}"])  # fmt: skip
    if proc.returncode != 0:
        # One id SLURM no longer knows is an error; several are filtered silently.
        if "Invalid job id" in proc.stderr:
            return []
        raise ClusterError(f"squeue: {_said(proc)}")
    return [r for r in parse_squeue(proc.stdout) if r.array_job in jobs]


def scancel(ids: Sequence[str]) -> None:
    """Cancel jobs, arrays (``<id>``) or array elements (``<id>_<task>``), in one call."""
    if not ids:
        return
    proc = _run(["scancel", *ids])
    if proc.returncode != 0:
        raise ClusterError(f"scancel: {_said(proc)}")
