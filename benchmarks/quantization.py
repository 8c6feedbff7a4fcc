"""FP32 vs FP16 vs INT8 (post-training and quantization-aware) in ONNX Runtime: size, test accuracy and
batch-1 single-thread latency, for the default teacher and a freshly trained student per tier, plus one run
whose INT8 budget forces escalation from post-training quantization to QAT.

    python benchmarks/quantization.py [--escalation OVERRIDE ...]

Trains 4 students (about 10 minutes on 2 cores). Writes benchmarks/results/quantization.{json,md}.
PTQ loses almost nothing on mnist5k, so the escalation run asks for what it cannot give: by default a
MobileNetV2 student with percentile calibration and a zero-loss INT8 budget.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import hydra
import numpy as np
from hydra import compose, initialize_config_dir

from tierkit.cli.train import CONFIG_DIR
from tierkit.distill.teacher import obtain_teacher
from tierkit.export import export_onnx, onnx_accuracy
from tierkit.export.verify import float_compute_ops
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.quant import calibration_samples, convert_fp16, quantize_int8
from tierkit.utils.noise import silence_known_noise

from machine import describe, save_results
from runs import train_with

TIERS = ("highend", "midrange", "lowend")
ESCALATION = (
    "tier=lowend",
    "model.student._target_=tierkit.models.MobileNetV2",
    "~model.student.base_channels",
    "quantization.calibration.method=percentile",
    "quantization.max_accuracy_drop=0.0",
)
FILES = {"fp32": "fp32.onnx", "fp16": "fp16.onnx", "int8 PTQ": "int8_ptq.onnx", "int8 QAT": "int8_qat.onnx"}


def teacher_files(scratch: Path) -> tuple[dict[str, Path], object]:
    """The default teacher exported in FP32, FP16 and post-training INT8, and its datamodule."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={scratch}", "~callbacks.progress"])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    teacher, _ = obtain_teacher(cfg, datamodule)
    shape = tuple(cfg.data.input_shape)
    files = {"fp32": export_onnx(teacher.eval(), scratch / "fp32.onnx", shape)}
    files["fp16"] = convert_fp16(files["fp32"], scratch / "fp16.onnx")
    samples = calibration_samples(datamodule, 512, 64)
    files["int8 PTQ"] = quantize_int8(files["fp32"], scratch / "int8_ptq.onnx", samples)
    return files, datamodule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--escalation", nargs="*", default=list(ESCALATION), help="overrides of the escalation run")
    args = parser.parse_args()
    silence_known_noise()
    print(describe(), flush=True)
    rows, probes, decisions = [], {}, []
    with tempfile.TemporaryDirectory(prefix="tierkit-quant-") as tmp:
        scratch = Path(tmp)
        files, datamodule = teacher_files(scratch / "teacher")
        models = [("teacher", files, None)]
        runs = [(f"{tier} student", [f"tier={tier}"]) for tier in TIERS]
        runs.append(("escalation run", args.escalation))
        for index, (name, overrides) in enumerate(runs):
            print(f"training {name}", flush=True)
            metrics = train_with(overrides, scratch / f"run{index}")
            report = metrics["quantization"]
            folder = scratch / f"run{index}" / "quantization"
            found = {k: folder / f for k, f in FILES.items() if (folder / f).is_file()}
            models.append((name, found, report))
            decisions.append({"model": name, **{k: report.get(k) for k in ("path", "budget_met", "reason")}})
        for name, paths, report in models:
            for precision, path in paths.items():
                session = ort_session(path, threads=1)
                shipped = report is not None and precision.endswith(report["path"].upper())
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "ships": shipped,
                        "bytes": path.stat().st_size,
                        "onnx_test_acc": onnx_accuracy(session, datamodule),
                        "float_compute_ops": len(float_compute_ops(path)),
                    }
                )
                shape = session.get_inputs()[0].shape[1:]
                probes[(name, precision)] = latency_probe(session, np.zeros((1, *shape), dtype=np.float32))
        samples = measure_latency(probes, repeats=600, warmup=100, rounds=10)
    for row in rows:
        row["latency_ms_p50"] = statistics.median(samples[(row["model"], row["precision"])])
    reference = {r["model"]: r for r in rows if r["precision"] == "fp32"}
    command = "python benchmarks/quantization.py"
    if args.escalation != list(ESCALATION):
        command += " --escalation " + " ".join(args.escalation)
    lines = [
        f"Machine: {describe()}",
        f"Command: {command}",
        "",
        "| model | precision | size | size vs FP32 | test acc in ORT | vs FP32 (points) | latency p50 (ms) "
        "| latency vs FP32 | float Conv/Gemm left |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = reference[row["model"]]
        label = row["precision"] + (" (ships)" if row["ships"] else "")
        lines.append(
            f"| {row['model']} | {label} | {row['bytes'] / 1024:.1f} KiB "
            f"| {row['bytes'] / base['bytes']:.2f}x "
            f"| {100 * row['onnx_test_acc']:.2f}% | {100 * (row['onnx_test_acc'] - base['onnx_test_acc']):+.2f} "
            f"| {row['latency_ms_p50']:.4f} | {row['latency_ms_p50'] / base['latency_ms_p50']:.2f}x "
            f"| {row['float_compute_ops']} |"
        )
    lines += ["", f"Escalation run: `python train.py {' '.join(args.escalation)}`", ""]
    lines += ["Which INT8 path each training run shipped:", ""]
    lines += [f"- {d['model']}: **{str(d['path']).upper()}**: {d['reason']}" for d in decisions]
    lines += [
        "",
        "Students: `python train.py tier=<tier>` (default data mnist5k, seed 42). INT8 PTQ: ONNX Runtime static "
        "quantization, QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on 512 training "
        "images. INT8 QAT: tierkit's QDQ export after quantization-aware training (only where PTQ missed the "
        "budget). Latency: median of interleaved runs at batch 1 on one thread after warm-up; below 1.00x is "
        "faster than FP32.",
    ]
    save_results("quantization", {"rows": rows, "decisions": decisions}, lines)


if __name__ == "__main__":
    main()
