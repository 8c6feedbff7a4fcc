"""Per-layer INT8 sensitivity and the quantization stage's escalation steps, on a case where INT8 costs accuracy.

    python -m benchmarks.sensitivity [--seeds 0 1 2] [--skip-default]

1. The case: a residual SwiGLU MLP (benchmarks/own_models.py) trained alone on MNIST-1D, with a 1-point INT8
   budget against its FP32 model (quantization.max_drop_vs_fp32=0.01, on validation). Its gate products are
   heavy-tailed, so one uint8 scale per tensor rounds them coarsely. For each seed the run's own quantization stage
   decides; the table gives every step it measured (post-training, calibration, mixed precision) and, from a second
   run of the same seed with the cheaper steps off, what QAT makes of it. Then the mixed-precision step alone, from
   the run's own start and ranking, once giving layers float and once 16-bit activations
   (quantization.escalation.precisions), to compare the two on the same model. Each file's size and batch-1 p50
   latency on one thread are measured side by side here (interleaved, after warm-up). The first seed's sensitivity
   report is copied to results/sensitivity_swiglu.{md,png}.
2. The default data (mnist5k): the sensitivity report of the teacher and of each tier's student (default recipe,
   seed 1), with accuracy effects, to show what INT8 does to the models tierkit trains by default. --skip-default
   keeps the table of the last full run.

Writes benchmarks/results/sensitivity.{json,md}.
"""

import argparse
import json
import shutil
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

import hydra
import numpy as np
from hydra import compose, initialize_config_dir

from benchmarks.common import RESULTS, SCRATCH_STUDENT, TIERS, describe, save_results, train_with
from tierkit.conf import CONFIG_DIR
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.quant import calibration_samples
from tierkit.quant.escalation import Recipe, escalate_ptq
from tierkit.quant.layer_analysis import SensitivityReport, analyse_layers, quiet_session
from tierkit.quant.sensitivity_files import headline, sensitive_layers
from tierkit.run_folder import RunFolder
from tierkit.stages.teacher import obtain_teacher
from tierkit.utils.noise import silence_known_noise

CASE = [
    "data=mnist1d",
    "model=cnn1d",
    "experiment=no_kd",
    SCRATCH_STUDENT,
    "~model.student.base_channels",
    "~model.student.width_multiplier_arg",
    "model.student._target_=benchmarks.own_models.SwiGLUMLP",
    "~callbacks.pruning",
    "trainer.max_epochs=40",
    "tier=midrange",
    "quantization.max_drop_vs_fp32=0.01",
    "quantization.sensitivity.accuracy_effects=always",
]
QAT_ONLY = ["quantization.escalation.enabled=false"]
LABELS = {
    "fp32": "FP32",
    "ptq": "INT8 post-training",
    "tuned": "INT8 tuned",
    "qat": "INT8 QAT",
    "mixed_float": "INT8 mixed, float layers",
    "mixed_int16": "INT8 mixed, 16-bit activations",
}
MIXED_PRECISIONS = ("float", "int16")


def latencies(files: dict[str, Path], shape: list[int]) -> dict[str, float]:
    """Batch-1 p50 in ms on one thread, every file timed in the same rounds."""
    batch = np.zeros((1, *shape), dtype=np.float32)
    probes = {name: latency_probe(ort_session(path, threads=1), batch) for name, path in files.items()}
    samples = measure_latency(probes, repeats=500, warmup=100, rounds=10)
    return {name: statistics.median(values) for name, values in samples.items()}


def mixed_precision_only(seed: int, run: Path, report: dict) -> dict[str, dict]:
    """Step (b) alone from the run's configured recipe and its sensitivity ranking, once per precision: the same
    model, samples and budget, so float layers and 16-bit activations are compared like for like."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*CASE, f"seed={seed}"])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    calibration = report["calibration"]
    samples = calibration_samples(datamodule, calibration["samples"], calibration["batch_size"], calibration["seed"])
    folder = RunFolder(run).quantization
    ranking = json.loads((folder / "sensitivity.json").read_text())["ranking"]
    found = {}
    for precision in MIXED_PRECISIONS:
        escalation = escalate_ptq(
            folder / report["fp32"]["file"],
            folder / f"mixed_{precision}.onnx",
            samples,
            datamodule,
            Recipe(calibration["method"], report["per_channel"]),
            report["ptq"]["val_acc"],
            report["fp32"]["val_acc"],
            report["max_drop_vs_fp32"],
            report["reduce_range"],
            calibration["batch_size"],
            ranking,
            [],
            int(cfg.quantization.escalation.max_float_layers),
            (precision,),
        )
        if escalation.best is not None:
            found[f"mixed_{precision}"] = {
                "path": escalation.best.path,
                "val_acc": escalation.best.val_acc,
                "test_acc": onnx_accuracy(quiet_session(escalation.best.path), datamodule, "test"),
                "recipe": asdict(escalation.best.recipe),
                "met": escalation.met,
            }
    return found


def case_seed(seed: int, scratch: Path, keep_report: bool) -> dict:
    """One seed of the case: the escalating run, a QAT-only run, and every file's cost."""
    run = scratch / f"case{seed}"
    report = train_with([*CASE, f"seed={seed}"], run)["quantization"]
    qat_run = scratch / f"case{seed}-qat"
    qat_report = train_with([*CASE, *QAT_ONLY, f"seed={seed}"], qat_run)["quantization"]
    folder, qat_folder = RunFolder(run).quantization, RunFolder(qat_run).quantization
    files = {key: folder / report[key]["file"] for key in ("fp32", "ptq", "tuned") if report.get(key)}
    if qat_report.get("qat"):
        files["qat"] = qat_folder / qat_report["qat"]["file"]
    mixed = mixed_precision_only(seed, run, report)
    files.update({key: found["path"] for key, found in mixed.items()})
    p50 = latencies(files, [1, 40])
    rows = []
    for key, path in files.items():
        scores = mixed.get(key) or (qat_report if key == "qat" else report)[key]
        rows.append(
            {
                "file": key,
                "val_acc": scores["val_acc"],
                "test_acc": scores["test_acc"],
                "drop_val": report["fp32"]["val_acc"] - scores["val_acc"],
                "bytes": path.stat().st_size,
                "p50_ms": p50[key],
                "recipe": scores.get("recipe") or {},
            }
        )
    if keep_report:
        for suffix in ("md", "png"):
            shutil.copyfile(folder / f"sensitivity.{suffix}", RESULTS / f"sensitivity_swiglu.{suffix}")
    return {
        "seed": seed,
        "shipped": report["path"],
        "budget_met": report["budget_met"],
        "reason": report["reason"],
        "steps": report["steps"],
        "qat_run": {"path": qat_report["path"], "reason": qat_report["reason"]},
        "mixed_met": {key: found["met"] for key, found in mixed.items()},
        "files": rows,
        "ranking": json.loads((folder / "sensitivity.json").read_text())["ranking"][:3],
    }


def default_reports(scratch: Path) -> list[dict]:
    """Sensitivity of the default teacher and of each tier's default student, with accuracy effects."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={scratch / 'teacher'}", "~callbacks.progress"])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    teacher, _ = obtain_teacher(cfg, datamodule)
    fp32 = export_onnx(teacher.eval(), scratch / "teacher" / "fp32.onnx", tuple(cfg.data.input_shape))
    samples = calibration_samples(datamodule, 512, 64)
    reports = {"teacher": analyse_layers(fp32, datamodule, samples, 64, module=teacher)}
    for tier in TIERS:
        run = scratch / tier
        train_with([f"tier={tier}", SCRATCH_STUDENT, "seed=1", "quantization.sensitivity.accuracy_effects=always"], run)
        data = json.loads((RunFolder(run).quantization / "sensitivity.json").read_text())
        reports[f"{tier} student"] = SensitivityReport.from_dict(data)
    return [summary_row(name, report) for name, report in reports.items()]


def summary_row(name: str, report: SensitivityReport) -> dict:
    worst_alone = max(report.layers, key=lambda entry: entry.drop_alone or 0)
    worst_sqnr = min(report.layers, key=lambda entry: entry.output_sqnr_db or 1e9)
    return {
        "model": name,
        "layers": len(report.layers),
        "float_val_acc": report.float_val_acc,
        "int8_val_acc": report.int8_val_acc,
        "lowest_output_sqnr": f"{worst_sqnr.layer} {worst_sqnr.output_sqnr_db:.1f} dB",
        "largest_drop_alone": f"{worst_alone.layer} {100 * (worst_alone.drop_alone or 0):.2f} pt",
        "headline": headline(report),
        "sensitive": [entry.layer for entry in sensitive_layers(report)],
    }


def table(cases: list[dict], defaults: list[dict]) -> list[str]:
    lines = [f"Machine: {describe()}", "Command: python -m benchmarks.sensitivity", ""]
    lines += [
        "SwiGLU MLP on MNIST-1D, trained alone (`python train.py " + " ".join(CASE) + "`), INT8 budget 1 point "
        "against FP32 on validation. Latency: batch 1, one thread, p50 of 500 runs interleaved.",
        "",
        "| seed | file | recipe | val acc | drop vs FP32 (val) | test acc | size | p50 ms | ships |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        for row in case["files"]:
            recipe = row["recipe"]
            text = Recipe(**recipe).describe() if recipe else "-"
            ships = "yes" if row["file"] == case["shipped"] else ("QAT-only run" if row["file"] == "qat" else "")
            if row["file"].startswith("mixed_"):
                ships = "step (b) alone, " + ("meets" if case["mixed_met"][row["file"]] else "misses")
            lines.append(
                f"| {case['seed']} | {LABELS[row['file']]} | {text} | {100 * row['val_acc']:.1f}% | "
                f"{100 * row['drop_val']:+.1f} | {100 * row['test_acc']:.1f}% | {row['bytes'] / 1024:.0f} KiB | "
                f"{row['p50_ms']:.4f} | {ships} |"
            )
    lines += ["", "Steps each run measured (validation):", ""]
    for case in cases:
        steps = "; ".join(f"{s['step']} ({s['recipe']}): {100 * s['drop']:.1f} pt" for s in case["steps"])
        lines.append(
            f"- seed {case['seed']}: {steps}. Ships {case['shipped'].upper()}; most sensitive first: "
            f"{', '.join(case['ranking'])}."
        )
    if defaults:
        lines += [
            "",
            "Default data (mnist5k), default recipe, seed 1: what INT8 does to each model, layer by layer.",
            "",
            "| model | layers | val float | val INT8 | lowest output SQNR | largest drop, layer alone | verdict |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for row in defaults:
            lines.append(
                f"| {row['model']} | {row['layers']} | {100 * row['float_val_acc']:.2f}% | "
                f"{100 * row['int8_val_acc']:.2f}% | {row['lowest_output_sqnr']} | {row['largest_drop_alone']} | "
                f"{row['headline']} |"
            )
    return lines


def last_defaults() -> list[dict]:
    """The default-data table of the last full run, kept when only the case is rerun."""
    previous = RESULTS / "sensitivity.json"
    return json.loads(previous.read_text()).get("default_data", []) if previous.is_file() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--skip-default", action="store_true", help="only the SwiGLU case")
    args = parser.parse_args()
    silence_known_noise()
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory(prefix="tierkit-sensitivity-") as tmp:
        scratch = Path(tmp)
        cases = [case_seed(seed, scratch, keep_report=seed == args.seeds[0]) for seed in args.seeds]
        defaults = last_defaults() if args.skip_default else default_reports(scratch)
    save_results("sensitivity", {"cases": cases, "default_data": defaults}, table(cases, defaults))


if __name__ == "__main__":
    main()
