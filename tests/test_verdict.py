"""The tier verdict every run ends with: the best candidate against the tier's accuracy, size and latency budgets."""

import numpy as np
import pytest
from omegaconf import open_dict

from tests.conftest import compose_train
from tierkit.export.tiers import budget_checks
from tierkit.models import SmallCNN
from tierkit.onnxio import export_onnx
from tierkit.quant import convert_fp16
from tierkit.run_folder import ModelSummary, OnnxScores, QuantizationReport, RunFolder, RunMetrics
from tierkit.stages.verdict import tier_verdict

SHAPE = (1, 16, 16)


def _metrics(folder: RunFolder, teacher_acc: float | None, student_acc: float, quantized: bool) -> RunMetrics:
    student = ModelSummary("SmallCNN", student_acc, params=1000, macs=10_000, size_bytes=40_000)
    metrics = RunMetrics(tier="lowend", seed=0, epochs=1, student=student, checkpoints={})
    if teacher_acc is not None:
        metrics.teacher = ModelSummary("SmallCNN", teacher_acc, params=9000, macs=90_000, size_bytes=360_000)
    if quantized:
        fp32 = export_onnx(SmallCNN(SHAPE, 4, width=0.25), folder.quantization / "fp32.onnx", SHAPE)
        fp16 = convert_fp16(fp32, folder.quantization / "fp16.onnx")
        report = QuantizationReport(max_drop_vs_fp32=0.02, reduce_range=False, per_channel=True)
        for key, path in (("fp32", fp32), ("fp16", fp16)):
            setattr(report, key, OnnxScores(path.name, path.stat().st_size, student_acc, student_acc))
        # The "INT8" file is the FP16 one, a bit less accurate: the verdict reads files, not what made them.
        report.ptq = OnnxScores(fp16.name, fp16.stat().st_size, student_acc - 0.05, student_acc - 0.05)
        metrics.quantization = report
    return metrics


def _cfg(tmp_path, *overrides):
    cfg = compose_train(tmp_path, "tier=lowend", *overrides)
    with open_dict(cfg):
        cfg.data.input_shape = list(SHAPE)
    return cfg


def test_the_fastest_passing_candidate_is_the_verdict(tmp_path):
    folder = RunFolder(tmp_path / "run")
    cfg = _cfg(tmp_path, "tier.budgets.max_latency_ms=1000", "tier.budgets.max_size_kib=1000")
    verdict = tier_verdict(cfg, _metrics(folder, 0.90, 0.89, quantized=True), folder)
    assert verdict.passed and verdict.reason.startswith("PASS")
    # lowend ships fp32 or int8: the "int8" file here misses the 2-point budget, so fp32 is the one that passes.
    assert verdict.candidate == "fp32"
    assert verdict.checks["accuracy"]["passed"] and verdict.checks["accuracy"]["value"] == pytest.approx(0.01)
    assert verdict.checks["latency"]["value"] > 0 and "cpu_1thread" in verdict.checks["latency"]["says"]


def test_a_miss_names_the_budget_and_the_candidate_that_came_closest(tmp_path):
    folder = RunFolder(tmp_path / "run")
    cfg = _cfg(tmp_path, "tier.budgets.max_latency_ms=1000", "tier.budgets.max_size_kib=1")
    verdict = tier_verdict(cfg, _metrics(folder, 0.90, 0.89, quantized=True), folder)
    assert not verdict.passed and verdict.checks["size"]["passed"] is False
    assert verdict.candidate == "fp32" and "MISS" in verdict.reason and "> 1 KiB" in verdict.reason


def test_without_onnx_files_or_teacher_the_unmeasured_budgets_say_so(tmp_path):
    folder = RunFolder(tmp_path / "run")
    verdict = tier_verdict(_cfg(tmp_path), _metrics(folder, None, 0.89, quantized=False), folder)
    assert verdict.candidate == "fp32 (PyTorch)" and verdict.passed
    assert verdict.checks["accuracy"]["passed"] is None and verdict.checks["latency"]["passed"] is None
    assert "quantization.enabled=false" in verdict.reason and "no teacher" in verdict.reason


def test_latency_on_hardware_this_machine_lacks_is_not_measured(tmp_path):
    folder = RunFolder(tmp_path / "run")
    cfg = _cfg(tmp_path, "tier.budget_hardware=no_such_hardware")
    verdict = tier_verdict(cfg, _metrics(folder, 0.90, 0.89, quantized=True), folder)
    assert verdict.checks["latency"]["passed"] is None and "no_such_hardware" in verdict.checks["latency"]["says"]


def test_the_verdict_round_trips_through_metrics_json(tmp_path):
    folder = RunFolder(tmp_path / "run")
    metrics = _metrics(folder, 0.90, 0.89, quantized=True)
    metrics.verdict = tier_verdict(_cfg(tmp_path), metrics, folder)
    folder.write_metrics(metrics)
    assert folder.read_metrics().verdict == metrics.verdict


BUDGETS = {"max_drop_vs_teacher": 0.01, "max_size_kib": 256, "max_latency_ms": 0.3}


def test_a_drop_of_exactly_the_budget_passes_whether_accuracies_are_float32_metrics_or_counts():
    # 99.0% against 98.0% on a 1,000-image split and a 1-point budget: the teacher's accuracy as a float32 metric
    # is 0.99000000954, which once failed the run's verdict while export, with exact counts, shipped the model.
    teacher = float(np.float32(0.99))
    for student in (float(np.float32(0.98)), 980 / 1000):
        passed, words = budget_checks(BUDGETS, teacher - student, 10.0, None, "cpu_1thread")["accuracy"]
        assert passed, words
    passed, _ = budget_checks(BUDGETS, teacher - 979 / 1000, 10.0, None, "cpu_1thread")["accuracy"]
    assert not passed, "one image more is a miss"
