"""Resuming from a checkpoint saved at any point of an epoch, as SLURM's requeue signal can land anywhere.

An epoch-end checkpoint resumes exactly on its own. A mid-epoch one (Lightning's ``hpc_ckpt_<n>.ckpt``) needs two
things Lightning leaves out for an in-memory loader: which of the epoch's samples were already trained on, and,
when it was saved from an ``on_train_epoch_start`` hook, batch counters that belong to the new epoch.
"""

from typing import Any

import lightning as L


def interrupted_epoch(trainer: L.Trainer | None) -> dict[str, int]:
    """The epoch being trained and how many of its batches are in the weights; empty outside a fit."""
    if trainer is None or not trainer.training:
        return {}
    loop = trainer.fit_loop
    epoch = loop.epoch_progress.current
    # Between an epoch's "ready" and "started" (its start hooks), the batch counters still hold the last epoch's.
    batches = loop.epoch_loop.batch_progress.current.processed if epoch.started == epoch.ready else 0
    return {"epoch": trainer.current_epoch, "batches": batches}


def restart_epoch_at_its_start(checkpoint: dict[str, Any]) -> None:
    """A checkpoint saved from an epoch's start hooks: zero the batch counters it carried over from the previous
    epoch, or Lightning takes the new epoch for finished and skips it on resume."""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop:
        return
    epoch = loop["epoch_progress"]["current"]
    if epoch["ready"] > epoch["started"]:
        batches = loop["epoch_loop.batch_progress"]
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False
