"""Per-layer INT8 sensitivity and the quantization stage's escalation steps, on a case where INT8 costs accuracy.

    python -m benchmarks.sensitivity [--seeds 0 1 2] [--skip-default]

1. The case: a residual SwiGLU MLP (benchmarks/own_models.py) trained alone on MNIST-1D, with a 1-point INT8
   budget against its FP32 model (quantization.max_drop_vs_fp32=0.01, on validation). Its gate products are
   heavy-tailed, so one uint8 scale per tensor rounds them coarsely. For each seed the run's own quantization stage
   decides; the table gives every step it measured (post-training, calibration, mixed precision) and, from a second
   run of the same seed with the cheaper steps off, what QAT makes of it. Each file's size and batch-1 p50 latency
   on one thread are measured side by side here (interleaved, after warm-up). The first seed's sensitivity report is
   copied to results/sensitivity_swiglu.{md,png}.
2. The default data (mnist5k): the sensitivity report of the teacher and of each tier's student (default recipe,
   seed 1), with accuracy effects, to show what INT8 does to the models tierkit trains by default.

Writes benchmarks/results/sensitivity.{json,md}.
"""

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import hydra
import numpy as np
from hydra import compose, initialize_config_dir

from benchmarks.common import RESULTS, describe, save_results, train_with
from tierkit.conf import CONFIG_DIR
from tierkit.onnxio import export_onnx
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.quant import calibration_samples
from tierkit.quant.layer_analysis import SensitivityReport, analyse_layers
from tierkit.quant.sensitivity_files import headline, sensitive_layers
from tierkit.run_folder import RunFolder
from tierkit.stages.teacher import obtain_teacher
from tierkit.utils.noise import silence_known_noise

CASE = [
    "data=mnist1d",
    "model=cnn1d",
    "experiment=no_kd",
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
LABELS = {"fp32": "FP32", "ptq": "INT8 post-training", "tuned": "INT8 tuned", "qat": "INT8 QAT"}


def latencies(files: dict[str, Path], shape: list[int]) -> dict[str, float]:
    """Batch-1 p50 in ms on one thread, every file timed in the same rounds."""
    batch = np.zeros((1, *shape), dtype=np.float32)
    probes = {name: latency_probe(ort_session(path, threads=1), batch) for name, path in files.items()}
    samples = measure_latency(probes, repeats=500, warmup=100, rounds=10)
    return {name: statistics.median(values) for name, values in samples.items()}


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
    p50 = latencies(files, [1, 40])
    rows = []
    for key, path in files.items():
        scores = (qat_report if key == "qat" else report)[key]
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
    for tier in ("highend", "midrange", "lowend"):
        run = scratch / tier
        train_with([f"tier={tier}", "seed=1", "quantization.sensitivity.accuracy_effects=always"], run)
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
            text = (
                f"{recipe['method']}, {'per-channel' if recipe['per_channel'] else 'per-tensor'}, "
                f"float: {' '.join(recipe['float_layers']) or '-'}"
                if recipe
                else "-"
            )
            ships = "yes" if row["file"] == case["shipped"] else ("QAT-only run" if row["file"] == "qat" else "")
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
        defaults = [] if args.skip_default else default_reports(scratch)
    save_results("sensitivity", {"cases": cases, "default_data": defaults}, table(cases, defaults))


if __name__ == "__main__":
    main()
