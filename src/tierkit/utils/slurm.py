"""Running under SLURM: a run folder that survives requeues, and in-place resume (stages/trainer.py keeps a
one-process stage out of the job's multi-task world).

A preempted or timed-out job is requeued with the same job id. Its run folder is named after that id, so the
requeued job finds the checkpoints of the first attempt (Lightning's ``hpc_ckpt_<n>.ckpt`` written on the requeue
signal, or the epoch-end ``last.ckpt``) and goes on from the newest.
"""

import logging
import os
from pathlib import Path

from tierkit.utils.files import dated_folder

log = logging.getLogger(__name__)


def job_id() -> str | None:
    """The job's id as ``scontrol requeue`` keeps it: ``<array job>_<task>`` for an array task."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def run_folder_name(parent: str) -> str:
    """``slurm/<job id>`` inside a SLURM job (every task and every requeue agree on it), else the date and time.

    Outside SLURM the folder is created here, under ``parent`` (see ``dated_folder``).
    """
    found = None
    # Outside SLURM (no task count set) Lightning is not imported: this runs as Hydra resolves the run folder, before
    # the config is checked, and a mistake on the command line should be reported without waiting for it.
    if "SLURM_NTASKS" in os.environ:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        found = job_id() if SLURMEnvironment.detect() else None
    if found:
        return f"slurm/{found}"
    return dated_folder(parent)


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 outside SLURM and on the first attempt)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def requeued_checkpoint(found: list[Path]) -> Path | None:
    """On a requeued job, the newest of the checkpoints ``found`` that earlier attempts left in the run folder."""
    if restart_count() == 0:
        return None
    if not found:
        log.info("Requeued SLURM job (restart %d), but no checkpoint left: starting over", restart_count())
        return None
    newest = max(found, key=lambda path: path.stat().st_mtime)
    log.info("Requeued SLURM job (restart %d): resuming from %s", restart_count(), newest)
    return newest
