"""The FP32 stage: distil (and prune) the tier's student from the teacher, then test its best checkpoint."""

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tierkit.distill import DistillationModule
from tierkit.models.build import build_student
from tierkit.models.checkpoint import load_student
from tierkit.stages.trainer import FitCheckpoints, build_trainer, fit_checkpoints, recipe_module
from tierkit.utils.instantiate import instantiate_callbacks


def fit_student(
    cfg: DictConfig, datamodule: L.LightningDataModule, teacher: nn.Module | None, loggers: list, ckpt_path
) -> tuple[L.Trainer, DistillationModule, FitCheckpoints, dict[str, Any]]:
    """Fit the student (``ckpt_path`` resumes a fit) and test its best checkpoint."""
    L.seed_everything(cfg.seed, workers=True)
    student = build_student(cfg)
    module = recipe_module(student, datamodule.num_classes, cfg, where="", teacher=teacher, **cfg.distill)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg, instantiate_callbacks(cfg.get("callbacks")), loggers)
    for logger in trainer.loggers:
        logger.log_hyperparams(module.run_config)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    checkpoints = fit_checkpoints(trainer)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoints.best or None, verbose=False)[0]
    return trainer, module, checkpoints, test


def test_checkpoint(
    cfg: DictConfig, datamodule: L.LightningDataModule, teacher: nn.Module | None, path: str
) -> tuple[DistillationModule, dict[str, Any]]:
    """Test a finished FP32 checkpoint again (resuming the QAT stage skips the FP32 fit)."""
    student, _ = load_student(path)
    module = recipe_module(student, datamodule.num_classes, cfg, where="", teacher=teacher, **cfg.distill)
    trainer = build_trainer(cfg, [], False, one_process=True, enable_progress_bar=False, accelerator="cpu")
    return module, trainer.test(module, datamodule=datamodule, verbose=False)[0]
