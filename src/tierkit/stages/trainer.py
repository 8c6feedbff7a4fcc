"""The one Trainer recipe every stage uses: the run's trainer config with a stage's overrides, a module built from a
recipe node (optimizer and scheduler), and the best and last checkpoints a fit leaves."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig
from torch import nn

from tierkit.distill import DistillationModule
from tierkit.utils.instantiate import instantiate


class OneTaskOfSLURM(SLURMEnvironment):
    """SLURM's requeue on its signal, for a stage that runs in one process of a multi-task job (teacher, QAT).

    Lightning's own SLURM environment would take the job's task count as the world size and refuse ``devices=1``.
    """

    def world_size(self) -> int:
        return 1

    def global_rank(self) -> int:
        return 0

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return 0

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """One device on one node, whatever the job asked of SLURM."""


def single_process_plugins() -> list:
    """Trainer plugins for a one-process stage: keeps SLURM's requeue handling, drops its multi-task world."""
    return [OneTaskOfSLURM()] if SLURMEnvironment.detect() else []


def build_trainer(
    cfg: DictConfig,
    callbacks: list,
    loggers: Any,
    one_process: bool = False,
    root_dir: Path | None = None,
    **overrides: Any,
) -> L.Trainer:
    """``cfg.trainer`` with ``overrides``. ``one_process`` runs a stage on one device outside any DDP world (the
    teacher before the student's ranks start, the quantization stage after they end), keeping SLURM's requeue
    handling; ``root_dir`` keeps a stage's requeue checkpoints (hpc_ckpt_<n>.ckpt) apart from the others'."""
    if one_process:
        overrides.update(plugins=single_process_plugins(), devices=1, num_nodes=1, strategy="auto")
    if root_dir is not None:
        overrides["default_root_dir"] = str(root_dir)
    return instantiate(cfg.trainer, where="trainer", callbacks=callbacks, logger=loggers, **overrides)


def recipe_module(
    student: nn.Module,
    num_classes: int,
    recipe: DictConfig,
    where: str,
    teacher: nn.Module | None = None,
    **distill: Any,
) -> DistillationModule:
    """A DistillationModule trained with ``recipe.optimizer`` (and ``recipe.scheduler`` when the recipe has one);
    ``where`` names the recipe's config node in error messages ("" for the top level)."""
    scheduler, prefix = recipe.get("scheduler"), f"{where}." if where else ""
    return DistillationModule(
        student=student,
        num_classes=num_classes,
        optimizer=instantiate(recipe.optimizer, where=f"{prefix}optimizer"),
        scheduler=instantiate(scheduler, where=f"{prefix}scheduler") if scheduler else None,
        teacher=teacher,
        **distill,
    )


@dataclass
class FitCheckpoints:
    """What a fit's ModelCheckpoints hold: the monitored one's best file and score, and the unmonitored last file."""

    best: str = ""
    best_score: float | None = None
    last: str = ""


def fit_checkpoints(trainer: L.Trainer) -> FitCheckpoints:
    """Read these right after ``fit``: restoring best.ckpt for testing also restores the callbacks' older state."""
    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    best = next((c for c in checkpoints if c.monitor), None)
    latest = next((c for c in checkpoints if not c.monitor), None)
    return FitCheckpoints(
        best=best.best_model_path if best else "",
        best_score=float(best.best_model_score) if best and best.best_model_score is not None else None,
        last=latest.best_model_path if latest else "",
    )
