"""The FP32 stage: distil (and prune) the tier's student from the teacher, then test its best checkpoint.

The student is model.student trained from scratch, or (student=from_teacher) a copy of the teacher pruned to the
tier's size while the teacher distils into it."""

import copy
import logging
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from tierkit.distill import DistillationModule
from tierkit.errors import TierkitError
from tierkit.models.build import build_student, derives_from_teacher
from tierkit.models.checkpoint import load_student
from tierkit.prune import StructuredPruning
from tierkit.prune.sizing import model_size, ratio_for_size
from tierkit.stages.trainer import FitCheckpoints, build_trainer, fit_checkpoints, recipe_module
from tierkit.utils.instantiate import instantiate_callbacks

log = logging.getLogger(__name__)


def fit_student(
    cfg: DictConfig, datamodule: L.LightningDataModule, teacher: nn.Module | None, loggers: list, ckpt_path
) -> tuple[L.Trainer, DistillationModule, FitCheckpoints, dict[str, Any]]:
    """Fit the student (``ckpt_path`` resumes a fit) and test its best checkpoint."""
    L.seed_everything(cfg.seed, workers=True)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if derives_from_teacher(cfg):
        student = student_from_teacher(cfg, teacher, datamodule, callbacks)
    else:
        student = build_student(cfg)
    distilling = teacher if cfg.distill.alpha > 0 else None
    module = recipe_module(student, datamodule.num_classes, cfg, where="", teacher=distilling, **cfg.distill)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg, callbacks, loggers)
    for logger in trainer.loggers:
        logger.log_hyperparams(module.run_config)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    checkpoints = fit_checkpoints(trainer)
    # Testing the best checkpoint loads the callbacks' state saved with it, which can predate the fit's end (budget
    # pruning may conclude after the best epoch, early stopping counts on); the run's record is the state the fit
    # ended with.
    ended = [(c, state) for c in trainer.callbacks if (state := c.state_dict())]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoints.best or None, verbose=False)[0]
    for callback, state in ended:
        callback.load_state_dict(state)
    return trainer, module, checkpoints, test


def student_from_teacher(
    cfg: DictConfig, teacher: nn.Module, datamodule: L.LightningDataModule, callbacks: list
) -> nn.Module:
    """A copy of the teacher, weights and all, for the pruning callback to shrink to the tier's size.

    ``cfg.model.student`` becomes the teacher's config, so checkpoints rebuild the teacher's architecture and
    reshape it to the pruned layers.
    """
    pruning = next((c for c in callbacks if isinstance(c, StructuredPruning)), None)
    if pruning is None:
        raise TierkitError(
            "student=from_teacher shrinks a copy of the teacher by pruning, but callbacks.pruning is off",
            where="callbacks.pruning",
            fix="keep callbacks.pruning (the default callbacks have it), or use student=scratch",
        )
    tier = cfg.tier
    example = torch.zeros(1, *datamodule.input_shape)
    measure = tier.get("size_measure", "params")
    ratio, size = ratio_for_size(pruning, teacher, example, datamodule.num_classes, tier.size_vs_teacher, measure)
    pruning.retarget(ratio)
    with open_dict(cfg):
        cfg.model.student = cfg.model.teacher
    log.info(
        "Student: the teacher pruned to %.1f%% of its %s (%s params, %s MACs): %.0f%% of channels removed in %d steps",
        100 * size[measure] / model_size(teacher, example)[measure],
        measure,
        f"{size['params']:,}",
        f"{size['macs']:,}",
        100 * ratio,
        len(pruning.ratios),
    )
    student = copy.deepcopy(teacher).train()
    student.requires_grad_(True)
    return student


def test_checkpoint(
    cfg: DictConfig, datamodule: L.LightningDataModule, teacher: nn.Module | None, path: str
) -> tuple[DistillationModule, dict[str, Any]]:
    """Test a finished FP32 checkpoint again (resuming the QAT stage skips the FP32 fit)."""
    student, _ = load_student(path)
    module = recipe_module(student, datamodule.num_classes, cfg, where="", teacher=teacher, **cfg.distill)
    trainer = build_trainer(cfg, [], False, one_process=True, enable_progress_bar=False, accelerator="cpu")
    return module, trainer.test(module, datamodule=datamodule, verbose=False)[0]
