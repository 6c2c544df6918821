"""Pilot workers on SLURM: job arrays whose every element runs one ``conveyor worker`` on a
store. Submitting, seeing, scaling and cancelling them, and the store's record of them.

The record lives in the store's meta under ``slurm`` (JSON): the options the workers were
submitted with (``scale`` submits more alike) and every array submitted, with its job id,
offset and size; so the number of submissions a run made is the number of arrays recorded.
Job scripts and the elements' output go to a folder beside a SQLite store (a shared
filesystem, since the workers open the store there) or under ``~/.cache/conveyor/slurm``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.cluster import slurm
from conveyor.core.slurmplan import (
    ACTIVE_STATES,
    ArrayPart,
    Element,
    next_offset,
    parse_time_limit,
    plan_arrays,
    surplus,
)
from conveyor.errors import UsageError
from conveyor.store.base import Store

__all__ = [
    "PilotOptions",
    "PilotRow",
    "Submitted",
    "absolute_url",
    "cancel_all",
    "job_script",
    "load_record",
    "pilot_rows",
    "scale_to",
    "script_dir",
    "sqlite_path",
    "submit_pilots",
]

#: The store meta key of the record.
META_KEY = "slurm"
#: Variables of the submitter a job script sets again for its worker (besides PYTHONPATH):
#: a site may start jobs with a clean environment (``--export=NONE``).
EXPORT_PREFIX = "CONVEYOR_"
#: Variables the job script sets itself: the worker's number and its end (epoch seconds, read
#: by ``conveyor worker``: it starts no task that cannot finish by then).
OWN_VARS = ("CONVEYOR_SLURM_INDEX", "CONVEYOR_WORKER_END")


@dataclass(frozen=True, slots=True)
class PilotOptions:
    """How pilot workers are submitted: what each worker offers and what each element asks
    of SLURM."""

    db: str
    slots: int = 1  # tasks one worker runs at once
    idle_exit: float = 60.0
    labels: str | None = None  # as given to ``conveyor worker --labels``
    resources: str | None = None
    partition: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gpus: str | None = None
    max_parallel: int | None = None
    margin_s: int = 120  # --signal=B:USR2@margin: seconds before the time limit
    sbatch_args: tuple[str, ...] = ()
    job_name: str = "conveyor"
    env: Mapping[str, str] = field(default_factory=dict)  # exported by the job script
    python: str = sys.executable
    cwd: str = ""

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["sbatch_args"] = list(self.sbatch_args)
        out["env"] = dict(self.env)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PilotOptions:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["sbatch_args"] = tuple(known.get("sbatch_args", ()))
        return cls(**known)


@dataclass(frozen=True, slots=True)
class Submitted:
    """One array submitted for a store."""

    job: str
    offset: int
    count: int
    at: float

    @property
    def part(self) -> ArrayPart:
        return ArrayPart(self.offset, self.count)


def exported_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What of the submitter's environment a worker needs: PYTHONPATH (absolute paths) and
    ``CONVEYOR_*`` variables (not the index the job script sets itself)."""
    out = {k: v for k, v in environ.items() if k.startswith(EXPORT_PREFIX)}
    for own in OWN_VARS:
        out.pop(own, None)
    if environ.get("PYTHONPATH"):
        out["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).resolve()) for p in environ["PYTHONPATH"].split(os.pathsep) if p
        )
    return out


def worker_command(opts: PilotOptions) -> list[str]:
    """The command each element runs: one ``conveyor worker`` on the store."""
    cmd = [opts.python, "-m", "conveyor.cli", "worker", "--db", opts.db,
           "--workers", str(opts.slots), "--idle-exit", f"{opts.idle_exit:g}"]  # fmt: skip
    if opts.labels:
        cmd += ["--labels", opts.labels]
    if opts.resources:
        cmd += ["--resources", opts.resources]
    return cmd


def job_script(opts: PilotOptions, offset: int) -> str:
    """The batch script of an array whose element 0 is worker ``offset``. ``exec``: the
    worker replaces the batch shell, so ``--signal=B:...`` reaches it."""
    lines = [
        "#!/bin/bash",
        "# Written by `conveyor slurm submit`: each element of the array runs one conveyor",
        "# worker on the store; it exits when the graph is finished or it was idle too long.",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(opts.env.items())]
    lines.append(f"export CONVEYOR_SLURM_INDEX=$(( {offset} + ${{SLURM_ARRAY_TASK_ID:-0}} ))")
    limit_s = parse_time_limit(opts.time) if opts.time else None
    if limit_s is not None:  # SLURM >= 23.02 says when the job ends; before, start + limit
        lines.append("export CONVEYOR_WORKER_END="
                     f"${{SLURM_JOB_END_TIME:-$(( $(date +%s) + {int(limit_s)} ))}}")  # fmt: skip
    if opts.cwd:
        lines.append(f"cd {shlex.quote(opts.cwd)}")
    lines.append("exec " + shlex.join(worker_command(opts)))
    return "\n".join(lines) + "\n"


def sbatch_args(opts: PilotOptions, part: ArrayPart, out_dir: Path) -> list[str]:
    """sbatch's options for one array of the plan."""
    args = [f"--job-name={opts.job_name}", f"--array={part.spec}",
            f"--signal=B:USR2@{opts.margin_s}", f"--output={out_dir}/%A_%a.out"]  # fmt: skip
    for flag, value in (
        ("--partition", opts.partition), ("--time", opts.time),
        ("--cpus-per-task", opts.cpus_per_task), ("--mem", opts.mem), ("--gpus", opts.gpus),
    ):  # fmt: skip
        if value is not None:
            args.append(f"{flag}={value}")
    return [*args, *opts.sbatch_args]


def sqlite_path(url: str) -> Path | None:
    """The absolute path of a SQLite store's file (``None`` for other stores)."""
    from conveyor.store.urls import sqlite_target

    if not url.startswith("sqlite:"):
        return None
    return Path(sqlite_target(url)[0]).resolve()


def absolute_url(url: str) -> str:
    """``url`` with a relative SQLite path made absolute: a job may start in another folder."""
    path = sqlite_path(url)
    if path is None:
        return url
    _head, sep, query = url.partition("?")
    return f"sqlite:///{path}{sep}{query}"


def script_dir(url: str) -> Path:
    """Where a store's job scripts and output go: ``<file>.slurm/`` beside a SQLite store,
    else ``~/.cache/conveyor/slurm/<digest of the URL>/``."""
    from conveyor.store.urls import redact

    path = sqlite_path(url)
    if path is not None:
        return path.parent / f"{path.name}.slurm"
    digest = hashlib.sha256(redact(url).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "conveyor" / "slurm" / digest


# -- the record --------------------------------------------------------------------------------
def load_record(store: Store) -> tuple[PilotOptions | None, list[Submitted]]:
    raw = store.meta_get(META_KEY)
    if not raw:
        return None, []
    d = json.loads(raw)
    opts = PilotOptions.from_json(d["options"]) if d.get("options") else None
    return opts, [Submitted(**a) for a in d.get("arrays", [])]


def _save_record(store: Store, opts: PilotOptions, arrays: Sequence[Submitted]) -> None:
    record = {"options": opts.as_json(), "arrays": [asdict(a) for a in arrays]}
    store.meta_set(META_KEY, json.dumps(record))


# -- commands ----------------------------------------------------------------------------------
def submit_pilots(
    store: Store, opts: PilotOptions, workers: int, now: float, *, max_array_size: int | None
) -> list[Submitted]:
    """Submit ``workers`` more pilot workers as the fewest arrays the site's ``MaxArraySize``
    (or a smaller ``max_array_size``) allows, numbered after those already submitted. Each
    array is recorded as soon as SLURM took it."""
    if opts.partition is not None:
        slurm.check_partition(opts.partition)
    limit = slurm.max_array_size()
    if max_array_size is not None:
        limit = min(limit, max_array_size)
    _old_opts, arrays = load_record(store)
    plan = plan_arrays(workers, limit, first=next_offset(a.part for a in arrays),
                       max_parallel=opts.max_parallel)  # fmt: skip
    out_dir = script_dir(opts.db)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = []
    for part in plan:
        script = out_dir / f"pilots-{part.offset}.sh"
        _write_private(script, job_script(opts, part.offset))
        job = slurm.sbatch(sbatch_args(opts, part, out_dir), script)
        made.append(Submitted(job, part.offset, part.count, now))
        arrays.append(made[-1])
        _save_record(store, opts, arrays)
    return made


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only from the start: a job script holds the
    store's URL (with a PostgreSQL password, maybe)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o700)  # an older file keeps its mode through O_CREAT


@dataclass(frozen=True, slots=True)
class PilotRow:
    """One array element of the store's, with the conveyor worker it runs (if it joined)."""

    index: int  # the worker's number across the store's arrays
    array_job: str
    task: int
    job_id: str  # the element's own job id ("" once it left the queue)
    state: str  # squeue's state; "-": no longer in the queue, its worker not seen leaving
    node: str
    worker: str | None
    tasks: tuple[str, ...]  # what its worker runs now

    @property
    def array(self) -> str:
        return f"{self.array_job}_{self.task}"

    def element(self) -> Element:
        return Element(self.array_job, self.task, self.index, self.state, bool(self.tasks))

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "array": self.array, "job_id": self.job_id,
                "state": self.state, "node": self.node, "worker": self.worker,
                "tasks": list(self.tasks)}  # fmt: skip


def pilot_rows(store: Store, now: float) -> list[PilotRow]:
    """The store's array elements still in SLURM's queue, each with its worker (if it
    registered) and the tasks it runs, by worker number; then workers of these arrays still
    alive in the store that the queue no longer lists (state ``-``). One ``squeue`` call."""
    _opts, arrays = load_record(store)
    offsets = {a.job: a.offset for a in arrays}
    queue = slurm.squeue(list(offsets))
    workers: dict[tuple[str, int], Mapping[str, Any]] = {}
    # A requeued element rejoins under its job id as a new process: the latest seen is it.
    for w in sorted(store.status(now)["workers"], key=lambda w: w["last_seen"]):
        info = w.get("info") or {}
        if str(info.get("slurm_array_job")) in offsets and "slurm_array_task" in info:
            workers[(str(info["slurm_array_job"]), int(info["slurm_array_task"]))] = w
    rows = []
    for r in queue:
        if r.task is None:
            continue
        w = workers.pop((r.array_job, r.task), None)
        rows.append(_row(offsets[r.array_job] + r.task, r.array_job, r.task, r.job_id,
                         r.state, r.node, w))  # fmt: skip
    for (job, task), w in workers.items():
        node = str(w["info"].get("slurm_node", ""))
        rows.append(_row(offsets[job] + task, job, task, "", "-", node, w))
    return sorted(rows, key=lambda r: r.index)


def _row(index: int, job: str, task: int, job_id: str, state: str, node: str,
         worker: Mapping[str, Any] | None) -> PilotRow:  # fmt: skip
    if worker is None:
        return PilotRow(index, job, task, job_id, state, node, None, ())
    return PilotRow(index, job, task, job_id, state, node, str(worker["worker"]),
                    tuple(worker.get("tasks", ())))  # fmt: skip


def scale_to(
    store: Store, target: int, now: float, *, max_array_size: int | None = None
) -> tuple[list[Submitted], list[str]]:
    """Keep ``target`` active elements: submit the missing ones with the recorded options,
    or cancel the surplus (not yet running first, then idle, then busy; highest number first)
    in one ``scancel``. Returns what was submitted and the element ids cancelled."""
    opts, _arrays = load_record(store)
    if opts is None:
        raise UsageError(f"{store.url}: no pilot workers submitted here yet: "
                         "`conveyor slurm submit` first")  # fmt: skip
    elements = [r.element() for r in pilot_rows(store, now)]
    cancel = surplus(elements, target)
    if cancel:
        slurm.scancel([e.job_id for e in cancel])
        return [], [e.job_id for e in cancel]
    missing = target - len([e for e in elements if e.state in ACTIVE_STATES])
    if missing > 0:
        return submit_pilots(store, opts, missing, now, max_array_size=max_array_size), []
    return [], []


def cancel_all(store: Store) -> list[str]:
    """Cancel every array submitted for this store, in one ``scancel``; their job ids."""
    _opts, arrays = load_record(store)
    jobs = [a.job for a in arrays]
    slurm.scancel(jobs)
    return jobs
