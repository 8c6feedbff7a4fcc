"""The quantization stage of a training run: FP32 -> FP16 -> INT8, escalating from PTQ to QAT when needed.

Decisions use the validation split (the test split only reports), so choosing a path never peeks at test data.
"""

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tierkit.conf.validate import check_qat_stage
from tierkit.errors import TierkitError
from tierkit.models.checkpoint import load_student
from tierkit.models.qat import is_prepared
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.onnxio.verify import float_compute_ops
from tierkit.profile import ort_session
from tierkit.prune import StructuredPruning
from tierkit.quant.callback import QuantizationAwareTraining
from tierkit.quant.escalation import Recipe, escalate_ptq, step_record, within_budget
from tierkit.quant.layer_analysis import SensitivityReport, analyse_layers
from tierkit.quant.ptq import calibration_samples, convert_fp16, first_layer, quantize_int8, samples_digest
from tierkit.quant.qdq import export_qat_onnx
from tierkit.quant.sensitivity_files import headline, sensitive_layers, write_sensitivity
from tierkit.run_folder import OnnxScores, QuantizationReport, RunFolder
from tierkit.runtime import sha256_of
from tierkit.runtime.cpu import needs_reduced_range
from tierkit.stages.trainer import build_trainer, fit_checkpoints, recipe_module
from tierkit.utils.instantiate import instantiate, instantiate_callbacks

log = logging.getLogger(__name__)

ACCURACY_EFFECTS = ("when_missed", "always", "never")


def onnx_scores(path: Path, datamodule: L.LightningDataModule, reference: OnnxScores | None = None) -> OnnxScores:
    """A file's accuracy on validation and test; with a ``reference``, its validation drop against it."""
    session = ort_session(path)
    scores = OnnxScores(
        file=path.name,
        bytes=path.stat().st_size,
        val_acc=onnx_accuracy(session, datamodule, "val"),
        test_acc=onnx_accuracy(session, datamodule, "test"),
        sha256=sha256_of(path),
    )
    if reference is not None:
        scores.drop = reference.val_acc - scores.val_acc
    return scores


def run_qat(
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    teacher: nn.Module | None,
    fp32_checkpoint: Path,
    loggers: Sequence[Logger],
    ckpt_path: str | None = None,
) -> tuple[Path, float]:
    """Fine-tune the FP32 student through fake quantization; returns the best QAT checkpoint and its
    PyTorch test accuracy. Checkpoints go to ``checkpoints/qat/``; ``ckpt_path`` resumes one."""
    qat = cfg.quantization.qat
    # Seeded here too: a resumed QAT stage skips the FP32 fit, and the shuffle of each epoch follows the seed.
    L.seed_everything(cfg.seed, workers=True)
    student, _ = load_student(fp32_checkpoint)
    module = recipe_module(
        student.train(), datamodule.num_classes, qat, where="quantization.qat", teacher=teacher, **cfg.distill
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    module.fp32_checkpoint = str(fp32_checkpoint)
    stage_free = (StructuredPruning, QuantizationAwareTraining)
    callbacks = [c for c in instantiate_callbacks(cfg.get("callbacks")) if not isinstance(c, stage_free)]
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint):
            callback.dirpath = str(Path(callback.dirpath) / "qat")
    callbacks.append(instantiate(qat.callback, where="quantization.qat.callback"))
    # One process: the quantization stage runs on rank 0 only, after the (possibly DDP) FP32 fit has ended.
    # Its own root folder keeps a requeue checkpoint (hpc_ckpt_<n>.ckpt) apart from the FP32 fit's.
    trainer = build_trainer(
        cfg,
        callbacks,
        list(loggers),
        one_process=True,
        root_dir=RunFolder(Path(cfg.paths.output_dir)).qat_checkpoints,
        max_epochs=qat.epochs,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    best_path = Path(fit_checkpoints(trainer).best)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=str(best_path), verbose=False)[0]
    return best_path, float(test["test/acc"])


def quantize_student(
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    teacher: nn.Module | None,
    fp32_checkpoint: Path,
    loggers: Sequence[Logger] = (),
    resume_qat: str | None = None,
) -> QuantizationReport:
    """Write fp32/fp16/int8 ONNX files under ``<run>/quantization`` and report which INT8 path shipped, and why.

    The report names the checkpoint and calibration the files came from, so export can ship these very files.
    """
    settings = cfg.quantization
    check_qat_stage(settings)
    folder = RunFolder(Path(cfg.paths.output_dir))
    out = folder.quantization
    student, config = load_student(fp32_checkpoint)
    shape = tuple(config.data.input_shape)
    budget = float(settings.max_drop_vs_fp32)
    reduce_range = needs_reduced_range() if settings.reduce_range is None else bool(settings.reduce_range)
    report = QuantizationReport(
        max_drop_vs_fp32=budget,
        reduce_range=reduce_range,
        per_channel=bool(settings.per_channel),
        source_checkpoint=run_relative(fp32_checkpoint, folder),
    )

    if is_prepared(student):
        # QAT ran inside the main fit (callbacks=qat): its checkpoint is already the INT8 candidate.
        report.qat = onnx_scores(export_qat_onnx(student, out / "int8_qat.onnx", shape), datamodule)
        report.qat.checkpoint = report.source_checkpoint
        report.path, report.reason = "qat", "QAT ran during training (callbacks.qat)"
        return report

    fp32 = export_onnx(student, out / "fp32.onnx", shape)
    report.fp32 = onnx_scores(fp32, datamodule)
    report.fp16 = onnx_scores(convert_fp16(fp32, out / "fp16.onnx"), datamodule)
    calibration = settings.calibration
    samples = calibration_samples(datamodule, calibration.samples, calibration.batch_size, calibration.seed)
    report.calibration = {**OmegaConf.to_container(calibration), "sha256": samples_digest(samples)}
    report.float_layers = first_layer(fp32) if settings.get("float_first_layer") else []
    ptq = quantize_int8(
        fp32,
        out / "int8_ptq.onnx",
        samples,
        calibration.batch_size,
        calibration.method,
        reduce_range,
        per_channel=settings.per_channel,
        float_layers=report.float_layers,
    )
    report.ptq = onnx_scores(ptq, datamodule, reference=report.fp32)
    report.ptq.float_compute_ops = float_compute_ops(ptq)
    ptq_drop = report.ptq.drop
    configured = Recipe(calibration.method, bool(settings.per_channel), list(report.float_layers))
    report.steps.append(scores_step("post-training", configured.describe(), report.ptq, budget))
    ptq_missed = not within_budget(ptq_drop, budget)
    missed = resume_qat is not None or ptq_missed
    escalates = ptq_missed and resume_qat is None and settings.escalation.enabled
    analysis = layer_sensitivity(
        settings, fp32, datamodule, samples, reduce_range, student, folder, report, ptq_missed, escalates
    )

    if not missed:
        report.budget_met = True
        report.reason = (
            f"post-training INT8 lost {100 * ptq_drop:.2f} points on validation, "
            f"within the {100 * budget:.2f}-point budget"
        )
        return report
    if escalates:
        escalation = escalate_ptq(
            fp32,
            out / "int8_tuned.onnx",
            samples,
            datamodule,
            configured,
            report.ptq.val_acc,
            report.fp32.val_acc,
            budget,
            reduce_range,
            calibration.batch_size,
            [entry.layer for entry in analysis.ranked()] if analysis else [],
            list(settings.escalation.calibration_methods),
            int(settings.escalation.max_float_layers),
            tuple(settings.escalation.precisions),
        )
        report.steps.extend(escalation.steps)
        if escalation.best is not None:
            report.tuned = onnx_scores(escalation.best.path, datamodule, reference=report.fp32)
            report.tuned.float_compute_ops = float_compute_ops(escalation.best.path)
            report.tuned.recipe = asdict(escalation.best.recipe)
        if escalation.met:
            report.path, report.budget_met = "tuned", True
            report.reason = (
                f"post-training INT8 lost {100 * ptq_drop:.2f} points on validation (budget {100 * budget:.2f}); "
                f"with {escalation.best.recipe.describe()} it loses {100 * report.tuned.drop:.2f}"
            )
            return report
    best_ptq = "tuned" if report.tuned is not None else "ptq"
    best_drop = getattr(report, best_ptq).drop
    if not settings.qat.enabled:
        report.path, report.budget_met = best_ptq, False
        report.reason = (
            f"BUDGET MISSED: post-training INT8 lost {100 * best_drop:.2f} points on validation at best "
            f"(budget {100 * budget:.2f}) and QAT is disabled (quantization.qat.enabled=false)"
        )
        log.warning("%s", report.reason)
        return report

    log.info(
        "Post-training INT8 lost %.2f points at best (budget %.2f): quantization-aware training for %d epochs",
        100 * best_drop,
        100 * budget,
        settings.qat.epochs,
    )
    best_qat, pytorch_test_acc = run_qat(cfg, datamodule, teacher, fp32_checkpoint, loggers, resume_qat)
    qat_student, _ = load_student(best_qat)
    qat_file = export_qat_onnx(qat_student, out / "int8_qat.onnx", shape)
    report.qat = onnx_scores(qat_file, datamodule, reference=report.fp32)
    report.qat.float_compute_ops = float_compute_ops(qat_file)
    report.qat.pytorch_test_acc = pytorch_test_acc
    report.qat.checkpoint = run_relative(best_qat, folder)
    report.steps.append(scores_step("QAT", f"{settings.qat.epochs} epochs", report.qat, budget))
    report.path = max(
        ("qat", "tuned", "ptq"), key=lambda key: getattr(report, key).val_acc if getattr(report, key) else -1
    )
    report.budget_met = within_budget(report.shipped().drop, budget)
    missed_text = "" if report.budget_met else "BUDGET MISSED: "
    tuned = f", {100 * best_drop:.2f} after calibration and mixed precision" if report.tuned is not None else ""
    report.reason = (
        f"{missed_text}post-training INT8 lost {100 * ptq_drop:.2f} points on validation "
        f"(budget {100 * budget:.2f}){tuned}; after QAT the drop is {100 * report.qat.drop:.2f} points, "
        f"so {report.path.upper()} ships"
    )
    if not report.budget_met:
        log.warning("%s", report.reason)
    return report


def scores_step(step: str, recipe: str, scores: OnnxScores, budget: float) -> dict:
    return step_record(step, recipe, scores.val_acc, scores.drop, scores.bytes, budget)


def layer_sensitivity(
    settings: DictConfig,
    fp32: Path,
    datamodule: L.LightningDataModule,
    samples,
    reduce_range: bool,
    student: nn.Module,
    folder: RunFolder,
    report: QuantizationReport,
    missed: bool,
    escalates: bool,
) -> SensitivityReport | None:
    """The per-layer report, written to ``quantization/sensitivity.*`` when enabled; with accuracy effects when
    post-training INT8 ``missed`` its budget or when asked for, and whenever the run ``escalates`` to mixed precision
    (which ranks layers by them)."""
    wanted = settings.sensitivity.accuracy_effects
    if wanted not in ACCURACY_EFFECTS:
        raise TierkitError(
            f"quantization.sensitivity.accuracy_effects is {wanted!r}",
            where="quantization.sensitivity.accuracy_effects",
            fix=f"use one of {', '.join(ACCURACY_EFFECTS)}",
        )
    effects = wanted == "always" or (wanted == "when_missed" and missed)
    for_mixed = escalates and settings.escalation.max_float_layers > 0 and len(settings.escalation.precisions) > 0
    if not settings.sensitivity.enabled and not for_mixed:
        return None
    calibration = settings.calibration
    analysis = analyse_layers(
        fp32,
        datamodule,
        samples,
        calibration.batch_size,
        calibration.method,
        reduce_range,
        bool(settings.per_channel),
        accuracy_effects=effects or for_mixed,
        module=student,
    )
    if settings.sensitivity.enabled:
        paths = write_sensitivity(analysis, folder.quantization)
        report.sensitivity = run_relative(paths["md"], folder)
        report.sensitive_layers = [entry.layer for entry in sensitive_layers(analysis)]
        log.info("INT8 sensitivity: %s (%s)", headline(analysis), paths["md"])
    return analysis


def run_relative(path: Path, folder: RunFolder) -> str:
    """A checkpoint's path inside its run folder, so the record holds when the folder moves."""
    path = Path(path).resolve()
    root = folder.root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
