"""`python train.py stage=finetune from_run=<run> shift=camera`: the recipe's last step.

The student of a finished, compressed run is trained briefly on the target device's data. Its pruned
structure is rebuilt from the checkpoint and never changed; a QAT student keeps its frozen quantization
grids and batch-norm statistics. The result is a run folder like any other, so export.py takes it as is.
"""

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from tierkit.data.base import ArrayDataModule
from tierkit.distill.teacher import find_run_teacher, load_teacher
from tierkit.errors import TierkitError
from tierkit.models.build import build_model, build_student, model_name
from tierkit.models.checkpoint import load_student, record_int8_path, shipped_int8_path
from tierkit.models.qat import is_prepared, qat_settings
from tierkit.models.structure import describe_structure
from tierkit.quant.callback import QuantizationAwareTraining
from tierkit.run_folder import FinetuneReport, ModelSummary, RunFolder, RunMetrics
from tierkit.stages.evaluate import split_accuracy
from tierkit.stages.quantize import quantize_student
from tierkit.stages.summary import print_finetune_summary
from tierkit.stages.trainer import build_trainer, fit_checkpoints, recipe_module
from tierkit.stages.verdict import tier_verdict
from tierkit.tracking import log_run_results
from tierkit.utils.instantiate import instantiate, instantiate_callbacks, instantiate_loggers
from tierkit.utils.model_stats import model_stats

log = logging.getLogger(__name__)

# Sections that define the model being fine-tuned: taken from the source run, never from today's defaults.
SOURCE_SECTIONS = ("model", "student", "distill", "teacher", "tier")
# Callbacks that would change the structure or the quantization: the source run already applied them.
COMPRESSING_CALLBACKS = ("pruning", "qat")
# Quantization settings that shape the INT8 graph: the tuned student is quantized as the source was (a first
# layer the source kept in float stays float), while calibration and escalation follow today's command line.
INT8_LAYOUT = ("float_first_layer", "per_channel", "reduce_range")


def source_checkpoint(run: RunFolder, checkpoint: str) -> Path:
    """The checkpoint the run ships: its QAT model when the quantization stage chose QAT."""
    if not run.root.is_dir():
        raise TierkitError(
            f"run folder {run.root} does not exist",
            where="from_run",
            fix="pass a finished run folder such as outputs/<date>/<time> (python train.py tier=lowend makes one)",
        )
    path = run.checkpoint(checkpoint)
    if path.is_file() and shipped_int8_path(path, run) == "qat":
        path = run.checkpoint(checkpoint, qat=True)
    if not path.is_file():
        raise TierkitError(
            f"{run.root} has no {path.relative_to(run.root)}",
            where="from_run",
            fix="pass the folder of a run that finished training, or finetune.checkpoint=last",
        )
    return path


def check_compressed(student: nn.Module, config: DictConfig, path: Path) -> None:
    """Refuse a student with no compression to keep: as large as its teacher, never pruned nor trained with QAT.

    A small architecture distilled without pruning (lowend's ``model=separable`` on Fashion-MNIST) is compressed
    by its size alone, and fine-tuning it is as legitimate as fine-tuning a pruned one."""
    params = sum(p.numel() for p in student.parameters())
    unpruned = build_student(config, where=str(path))
    teacher = build_model(config.model.teacher, config.data.input_shape, config.data.num_classes, "model.teacher")
    pruned = params < sum(p.numel() for p in unpruned.parameters())
    smaller = params < sum(p.numel() for p in teacher.parameters())
    if not (pruned or smaller or is_prepared(student)):
        raise TierkitError(
            f"{path} holds a student as large as its teacher ({params:,} parameters), neither pruned nor trained "
            "with QAT",
            where="from_run",
            fix="fine-tune a compressed run (the default recipe prunes; check callbacks.pruning was not removed)",
        )


def check_target_data(target: ArrayDataModule, config: DictConfig) -> None:
    shape, classes = list(config.data.input_shape), int(config.data.num_classes)
    if list(target.input_shape) != shape or target.num_classes != classes:
        raise TierkitError(
            f"the target data gives inputs {list(target.input_shape)} with {target.num_classes} classes, but the "
            f"student was trained on {shape} with {classes}",
            where="data",
            fix="fine-tune on data with the source run's input shape and classes (the same data= plus shift=...)",
        )


def scores(model: nn.Module, target: ArrayDataModule, original: ArrayDataModule) -> dict[str, float]:
    return {"target_test_acc": split_accuracy(model, target), "original_test_acc": split_accuracy(model, original)}


def teacher_if_present(run: RunFolder, source: DictConfig) -> Path | None:
    """The source run's teacher when it is on this machine: without distillation it only scores the verdict."""
    try:
        return find_run_teacher(run.root, source)
    except TierkitError:
        log.info("%s's teacher is not here: the tier verdict will not judge accuracy", run.root)
        return None


def finetune_config(cfg: DictConfig, source: DictConfig) -> DictConfig:
    """Today's command line with the source run's model, distillation, teacher, tier and INT8 layout, minus
    compressing callbacks."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for section in SOURCE_SECTIONS:
            cfg[section] = source[section]
        for key in INT8_LAYOUT:
            if key in (source.get("quantization") or {}):
                cfg.quantization[key] = source.quantization[key]
        cfg.callbacks = {k: v for k, v in (cfg.get("callbacks") or {}).items() if k not in COMPRESSING_CALLBACKS}
        cfg.trainer.max_epochs = cfg.finetune.epochs
    return cfg


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune the student of ``cfg.from_run`` on ``cfg.data``; returns what it writes to metrics.json."""
    started = time.perf_counter()
    if not cfg.get("from_run"):
        raise TierkitError("stage=finetune needs the run to start from", where="from_run", fix="add from_run=<folder>")
    run = RunFolder(Path(cfg.from_run).expanduser())
    path = source_checkpoint(run, cfg.finetune.checkpoint)
    student, source = load_student(path)
    check_compressed(student, source, path)
    target: ArrayDataModule = instantiate(cfg.data, where="data")
    target.setup()
    check_target_data(target, source)
    original: ArrayDataModule = instantiate(source.data, where=f"{path} data config")
    original.setup()
    cfg = finetune_config(cfg, source)
    structure, quantization = describe_structure(student), qat_settings(student)
    before = scores(student, target, original)
    log.info("Before fine-tuning: %s", before)

    teacher_path = find_run_teacher(run.root, source) if cfg.finetune.alpha > 0 else teacher_if_present(run, source)
    teacher = None
    if teacher_path is not None:
        teacher, _ = load_teacher(
            teacher_path,
            source.model.teacher,
            list(target.input_shape),
            target.num_classes,
            prefix=source.teacher.get("state_dict_prefix"),
        )
    # Without distillation the teacher only scores the verdict: it trains nothing, here or in QAT.
    distiller = teacher if cfg.finetune.alpha > 0 else None
    L.seed_everything(cfg.seed, workers=True)
    module = recipe_module(
        student.train(),
        target.num_classes,
        cfg.finetune,
        where="finetune",
        teacher=distiller,
        temperature=source.distill.temperature,
        alpha=cfg.finetune.alpha,
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if quantization:  # keep the grids and batch-norm statistics the source run froze
        callbacks.append(
            QuantizationAwareTraining(
                0,
                0,
                0,
                reduce_range=quantization["reduce_range"],
                per_channel=quantization["per_channel"],
                float_first_layer=quantization["float_first_layer"],
            )
        )
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    for logger in trainer.loggers:
        logger.log_hyperparams(module.run_config)
    trainer.fit(module, datamodule=target)
    checkpoints = fit_checkpoints(trainer)
    best_path = checkpoints.best
    tuned, _ = load_student(best_path) if best_path else (module.student, None)
    after = scores(tuned, target, original)
    unchanged = describe_structure(tuned) == structure and qat_settings(tuned) == quantization
    if not unchanged:
        raise TierkitError(
            "fine-tuning changed the student's structure or quantization settings",
            where=str(best_path),
            fix="report this: stage=finetune must never prune or re-quantize",
        )
    shift_cost = before["original_test_acc"] - before["target_test_acc"]
    regained = after["target_test_acc"] - before["target_test_acc"]
    metrics = RunMetrics(
        stage="finetune",
        tier=cfg.tier.name,
        seed=cfg.seed,
        epochs=trainer.current_epoch,
        finetune=FinetuneReport(
            source_run=str(run.root),
            source_checkpoint=str(path),
            shift=OmegaConf.to_container(cfg.data.shift) if cfg.data.get("shift") else None,
            alpha=cfg.finetune.alpha,
            before=before,
            after=after,
            shift_cost_points=round(100 * shift_cost, 2),
            regained_points=round(100 * regained, 2),
            recovered_fraction=round(regained / shift_cost, 3) if shift_cost > 0 else None,
            structure_unchanged=unchanged,
        ),
        student=ModelSummary(
            architecture=model_name(cfg.model.student),
            test_acc=after["target_test_acc"],
            val_acc_best=checkpoints.best_score,
            **model_stats(tuned, target.input_shape),
        ),
        checkpoints={"best": best_path, "last": ""},
    )
    source_metrics = run.read_metrics()
    if source_metrics and source_metrics.teacher:
        # On this run's (target) data, so that the verdict compares student and teacher on the same images.
        on_target = {split: split_accuracy(teacher, target, split) if teacher else None for split in ("val", "test")}
        metrics.teacher = replace(
            source_metrics.teacher,
            source=str(teacher_path) if teacher_path else None,
            val_acc=on_target["val"],
            test_acc=on_target["test"],
        )
    folder = RunFolder(Path(cfg.paths.output_dir))
    if cfg.quantization.enabled and best_path and not quantization and trainer.is_global_zero:
        metrics.quantization = quantize_student(cfg, target, distiller, Path(best_path), loggers, None)
        record_int8_path(best_path, metrics.quantization.path, metrics.quantization.shipped().recipe)
    if trainer.is_global_zero:
        metrics.verdict = tier_verdict(cfg, metrics, folder)
        if not metrics.verdict.passed:
            log.warning("tier %s after fine-tuning: %s", cfg.tier.name, metrics.verdict.reason)
    metrics.train_seconds = round(time.perf_counter() - started, 1)
    if trainer.is_global_zero:
        folder.write_metrics(metrics)
        print_finetune_summary(metrics)
        log_run_results(loggers, metrics, folder)
    return metrics.to_dict()
