"""The tier verdict at the end of a run: does the run's best candidate meet the tier's budgets?

Candidates are the ONNX files the quantization stage wrote, in the precisions the tier allows (FP32, FP16 and the
INT8 model the stage chose). Each is checked as export checks it: test accuracy against the teacher's, file size,
and batch-1 p50 latency under the tier's budget hardware on this machine. The fastest candidate that passes is the
verdict; when none passes, the one that misses least is named, with what it misses.
"""

import logging
from pathlib import Path

from omegaconf import DictConfig

from tierkit.conf import CONFIG_DIR
from tierkit.errors import TierkitError
from tierkit.export.tiers import budget_checks
from tierkit.export.variants import tier_budgets
from tierkit.profile.settings import load_settings
from tierkit.profile.variants import profile_models
from tierkit.run_folder import RunFolder, RunMetrics, TierVerdict

log = logging.getLogger(__name__)

LATENCY_REPEATS = 100
INT8_LABEL = {"ptq": "int8 (post-training)", "tuned": "int8 (tuned post-training)", "qat": "int8 (QAT)"}


def candidates(metrics: RunMetrics, folder: RunFolder, allowed: list[str]) -> dict[str, tuple[Path, float]]:
    """The run's ONNX files the tier may ship: label -> (file, test accuracy in ONNX Runtime)."""
    report = metrics.quantization
    if report is None:
        return {}
    found = {}
    for key, precision, label in (("fp32", "fp32", "fp32"), ("fp16", "fp16", "fp16")):
        scores = getattr(report, key)
        if precision in allowed and scores is not None:
            found[label] = (folder.quantization / scores.file, scores.test_acc)
    shipped = report.shipped()
    if "int8" in allowed and shipped is not None:
        found[INT8_LABEL[report.path]] = (folder.quantization / shipped.file, shipped.test_acc)
    return found


def latencies(files: dict[str, Path], shape: list[int], hardware: str) -> tuple[dict[str, float], str]:
    """Batch-1 p50 of each file under ``hardware``, interleaved; empty with the reason when it cannot run here."""
    try:
        settings, skipped = load_settings(CONFIG_DIR / "hardware", [hardware], None)
    except TierkitError as exc:
        return {}, exc.what
    if not settings:
        return {}, "; ".join(skipped)
    rows = profile_models(files, shape, settings, LATENCY_REPEATS, 10, throughput_batch=1, throughput_repeats=1)
    return {name: rows[name][0]["p50_ms"] for name in files}, ""


def tier_verdict(cfg: DictConfig, metrics: RunMetrics, folder: RunFolder) -> TierVerdict:
    tier = cfg.tier
    budgets = tier_budgets(tier)
    hardware = tier.budget_hardware
    reference = metrics.teacher.test_acc if metrics.teacher else None
    found = candidates(metrics, folder, list(tier.precisions))
    if not found:  # no ONNX files (quantization off): the PyTorch student, without a latency
        found = {"fp32 (PyTorch)": (None, metrics.student.test_acc)}
        p50s, why_not = {}, "quantization.enabled=false, so no ONNX file was made to time"
    else:
        files = {label: path for label, (path, _) in found.items()}
        p50s, why_not = latencies(files, list(cfg.data.input_shape), hardware)
    judged = {}
    for label, (path, test_acc) in found.items():
        values = {
            "accuracy": None if reference is None else reference - test_acc,
            "size": (metrics.student.size_bytes if path is None else path.stat().st_size) / 1024,
            "latency": p50s.get(label),
        }
        where = hardware if not why_not else f"{hardware} ({why_not})"
        checks = budget_checks(budgets, values["accuracy"], values["size"], values["latency"], where)
        judged[label] = (values, checks)

    def rank(label: str) -> tuple[int, float]:
        """Fewest misses first; then the fastest of those that pass, or the most accurate of those that miss."""
        misses = sum(passed is False for passed, _ in judged[label][1].values())
        return misses, p50s.get(label, 0.0) if misses == 0 else -found[label][1]

    best = min(judged, key=rank)
    return verdict_of(best, *judged[best], budgets)


def verdict_of(
    label: str, values: dict[str, float | None], checks: dict[str, tuple[bool | None, str]], budgets: dict
) -> TierVerdict:
    misses = [words for passed, words in checks.values() if passed is False]
    unmeasured = [words for passed, words in checks.values() if passed is None]
    if misses:
        reason = f"MISS: the best candidate, {label}, misses " + "; ".join(misses)
    else:
        reason = f"PASS: {label} meets every measured budget"
    if unmeasured:
        reason += " (" + "; ".join(unmeasured) + ")"
    budget_keys = {"accuracy": "max_drop_vs_teacher", "size": "max_size_kib", "latency": "max_latency_ms"}
    table = {
        name: {"value": values[name], "budget": budgets[budget_keys[name]], "passed": passed, "says": words}
        for name, (passed, words) in checks.items()
    }
    return TierVerdict(candidate=label, passed=not misses, checks=table, reason=reason)
