"""One training run of the recipe: teacher, then the FP32 fit (distillation and pruning), then quantization, then
the run's metrics.json, console summary and logger results."""

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, open_dict

from tierkit.models.build import derives_from_teacher, model_name
from tierkit.models.checkpoint import record_int8_path
from tierkit.prune import StructuredPruning
from tierkit.prune.surgery import leave_distributed
from tierkit.run_folder import ModelSummary, RunFolder, RunMetrics
from tierkit.stages.fit import fit_student, test_checkpoint
from tierkit.stages.quantize import quantize_student
from tierkit.stages.summary import print_run_summary
from tierkit.stages.teacher import obtain_teacher
from tierkit.stages.trainer import FitCheckpoints
from tierkit.stages.verdict import tier_verdict
from tierkit.tracking import log_run_results
from tierkit.utils.instantiate import instantiate, instantiate_loggers
from tierkit.utils.model_stats import model_stats

log = logging.getLogger(__name__)


def run_recipe(cfg: DictConfig, ckpt_path: str | None, saved: dict[str, Any], started: float) -> dict[str, Any]:
    """Run every stage for a checked config; ``ckpt_path`` and ``saved`` (its tierkit metadata) resume a run.

    Returns metrics.json's content (rank 0 writes it).
    """
    datamodule: L.LightningDataModule = instantiate(cfg.data, where="data")
    datamodule.setup()
    with open_dict(cfg):  # recorded in checkpoints, so export rebuilds the model for this data
        cfg.data.input_shape = list(datamodule.input_shape)
        cfg.data.num_classes = int(datamodule.num_classes)

    teacher, teacher_info = None, {}
    if cfg.distill.alpha > 0 or derives_from_teacher(cfg):
        teacher, teacher_info = obtain_teacher(cfg, datamodule)
    loggers = instantiate_loggers(cfg.get("logger"))

    resume_qat = ckpt_path if saved.get("fp32_checkpoint") else None
    if resume_qat:
        checkpoints, trainer = FitCheckpoints(best=saved["fp32_checkpoint"]), None
        module, test = test_checkpoint(cfg, datamodule, teacher, checkpoints.best)
        epochs = None
    else:
        trainer, module, checkpoints, test = fit_student(cfg, datamodule, teacher, loggers, ckpt_path)
        epochs = trainer.current_epoch
        leave_distributed(trainer)
    best_path = checkpoints.best

    folder = RunFolder(Path(cfg.paths.output_dir))
    metrics = RunMetrics(
        tier=cfg.tier.name,
        seed=cfg.seed,
        epochs=epochs,
        student=ModelSummary(
            architecture=model_name(cfg.model.student),
            test_acc=test["test/acc"],
            val_acc_best=checkpoints.best_score,
            agreement=test.get("test/agreement"),
            **model_stats(module.student, datamodule.input_shape),
        ),
        checkpoints={"best": checkpoints.best, "last": checkpoints.last},
    )
    pruning = next((c for c in trainer.callbacks if isinstance(c, StructuredPruning)), None) if trainer else None
    if pruning is not None:
        metrics.pruning = {
            "target": pruning.target,
            "removed": pruning.history[-1]["removed"] if pruning.history else 0.0,
            "steps_done": pruning.steps_done,
            "steps_planned": len(pruning.ratios),
            "step_epochs": pruning.epochs,
            "schedule_fitted": pruning.fitted,
            "mode": pruning.mode,
            "stopped_early": pruning.stopped,
            "history": pruning.history,
        }
    if teacher is not None:
        metrics.teacher = ModelSummary(
            architecture=model_name(cfg.model.teacher),
            test_acc=test.get("test/teacher_acc"),
            source=teacher_info.get("path"),
            weights_format=teacher_info.get("weights_format"),
            val_acc=teacher_info.get("val_acc"),
            **model_stats(teacher, datamodule.input_shape),
        )
    is_global_zero = trainer is None or trainer.is_global_zero
    if cfg.quantization.enabled and best_path and is_global_zero:
        metrics.quantization = quantize_student(cfg, datamodule, teacher, Path(best_path), loggers, resume_qat)
        shipped = metrics.quantization.shipped()
        metrics.student.int8_bytes, metrics.student.int8_test_acc = shipped.bytes, shipped.test_acc
        for path in {checkpoints.best, checkpoints.last} - {None, ""}:
            record_int8_path(path, metrics.quantization.path, shipped.recipe)
    if is_global_zero:
        metrics.verdict = tier_verdict(cfg, metrics, folder)
        if not metrics.verdict.passed:
            log.warning("tier %s: %s", cfg.tier.name, metrics.verdict.reason)
    metrics.train_seconds = round(time.perf_counter() - started, 1)
    if is_global_zero:
        folder.write_metrics(metrics)
        print_run_summary(metrics)
        log_run_results(loggers, metrics, folder)
    return metrics.to_dict()
