"""What conveyor reads from SLURM's commands, and the job script it writes: pure functions,
tested on text (the real cluster is in test_slurm.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conveyor.cluster.pilots import PilotOptions, job_script, sbatch_args
from conveyor.cluster.slurm import QueueRow, parse_config_value, parse_squeue
from conveyor.core.slurmplan import ArrayPart


def test_parse_config_value_reads_max_array_size() -> None:
    text = "Configuration data as of x\nMaxArraySize            = 1001\nMaxJobCount = 10000\n"
    assert parse_config_value(text, "MaxArraySize") == "1001"
    assert parse_config_value(text, "MaxArray") is None


def test_parse_squeue_reads_elements_pending_and_running() -> None:
    text = "4|3|4|PENDING|\n4|0|5|RUNNING|vm\n7|N/A|7|RUNNING|vm\nnoise\n"
    assert parse_squeue(text) == [
        QueueRow("4", 3, "4", "PENDING", ""),
        QueueRow("4", 0, "5", "RUNNING", "vm"),
        QueueRow("7", None, "7", "RUNNING", "vm"),
    ]


def test_job_script_runs_one_worker_with_its_global_index() -> None:
    opts = PilotOptions(db="sqlite:////s p/run.db", slots=2, idle_exit=30, labels="gpu=a100",
                        env={"PYTHONPATH": "/src"}, python="/py", cwd="/w", max_parallel=4,
                        margin_s=90, sbatch_args=("--qos=long",), partition="debug")  # fmt: skip
    script = job_script(opts, 1001)
    assert "export PYTHONPATH=/src\n" in script
    assert "export CONVEYOR_SLURM_INDEX=$(( 1001 + ${SLURM_ARRAY_TASK_ID:-0} ))" in script
    assert "CONVEYOR_WORKER_END" not in script  # no --time: the end is not known
    timed = job_script(PilotOptions(db="sqlite:////r.db", time="1-0:00:10"), 0)
    assert "export CONVEYOR_WORKER_END=${SLURM_JOB_END_TIME:-$(( $(date +%s) + 86410 ))}" in timed
    ends = subprocess.run(
        ["bash", "-c", timed.split("\nexec")[0] + "\necho $CONVEYOR_WORKER_END"],
        capture_output=True,
        text=True,
        env={"SLURM_JOB_END_TIME": "1234"},
    )
    assert ends.stdout.split()[-1] == "1234"
    assert script.endswith("exec /py -m conveyor.cli worker --db 'sqlite:////s p/run.db' "
                           "--workers 2 --idle-exit 30 --labels gpu=a100\n")  # fmt: skip
    out = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert out.returncode == 0, out.stderr  # bash parses it
    args = sbatch_args(opts, ArrayPart(1001, 10, 4), Path("/o"))
    assert args[:4] == ["--job-name=conveyor", "--array=0-9%4", "--signal=B:USR2@90",
                        "--output=/o/%A_%a.out"]  # fmt: skip
    assert args[4:] == ["--partition=debug", "--qos=long"]
