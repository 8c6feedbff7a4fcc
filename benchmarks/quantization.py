"""FP32 vs FP16 vs post-training static INT8 in ONNX Runtime: size, test accuracy and batch-1 latency
on one thread, for the default teacher and for trained students.

    python benchmarks/quantization.py [--runs outputs/<date>/<time> ...]

With no --runs, the newest run under outputs/ is used. Writes benchmarks/results/quantization.{json,md}.
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
from tierkit.export import export_onnx, onnx_test_accuracy
from tierkit.export.verify import float_compute_ops
from tierkit.models.checkpoint import load_student
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.quant import calibration_samples, convert_fp16, quantize_int8
from tierkit.utils.noise import silence_known_noise

from machine import describe, save_results

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "int8")


def default_teacher(scratch: Path):
    """The teacher `python train.py` uses (trained now if the cache lacks it) and its data config."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={scratch}", "~callbacks.progress"])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    teacher, _ = obtain_teacher(cfg, datamodule)
    return teacher.eval(), cfg.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, help="run folders whose best student to include")
    args = parser.parse_args()
    silence_known_noise()
    print(describe(), flush=True)
    runs = args.runs or sorted((REPO / "outputs").glob("*/*/checkpoints/best.ckpt"))[-1:]
    runs = [r if r.suffix == ".ckpt" else r / "checkpoints" / "best.ckpt" for r in runs]
    rows, probes = [], {}
    with tempfile.TemporaryDirectory(prefix="tierkit-quant-") as tmp:
        scratch = Path(tmp)
        teacher, data_config = default_teacher(scratch / "teacher-run")
        models = [("teacher", teacher, data_config)]
        for path in runs:
            student, config = load_student(path)
            models.append((f"{config.tier.name} student", student, config.data))
        for name, model, data_config in models:
            datamodule = hydra.utils.instantiate(data_config)
            shape = tuple(data_config.input_shape)
            folder = scratch / name.replace(" ", "_")
            paths = {"fp32": export_onnx(model, folder / "fp32.onnx", shape)}
            paths["fp16"] = convert_fp16(paths["fp32"], folder / "fp16.onnx")
            paths["int8"] = quantize_int8(paths["fp32"], folder / "int8.onnx", calibration_samples(datamodule, 512, 64))
            for precision, path in paths.items():
                session = ort_session(path, threads=1)
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "bytes": path.stat().st_size,
                        "onnx_test_acc": onnx_test_accuracy(session, datamodule),
                        "float_compute_ops": len(float_compute_ops(path)),
                    }
                )
                probes[(name, precision)] = latency_probe(session, np.zeros((1, *shape), dtype=np.float32))
                print(f"{name} {precision}: {100 * rows[-1]['onnx_test_acc']:.2f}%", flush=True)
        samples = measure_latency(probes, repeats=600, warmup=100, rounds=10)
    for row in rows:
        row["latency_ms_p50"] = statistics.median(samples[(row["model"], row["precision"])])
    reference = {r["model"]: r for r in rows if r["precision"] == "fp32"}
    lines = [
        f"Machine: {describe()}",
        "Command: python benchmarks/quantization.py " + " ".join(str(r) for r in args.runs or []),
        "",
        "| model | precision | size | size vs FP32 | test acc in ORT | vs FP32 (points) | latency p50 (ms) "
        "| latency vs FP32 | float Conv/Gemm left |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = reference[row["model"]]
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['bytes'] / 1024:.1f} KiB "
            f"| {row['bytes'] / base['bytes']:.2f}x "
            f"| {100 * row['onnx_test_acc']:.2f}% | {100 * (row['onnx_test_acc'] - base['onnx_test_acc']):+.2f} "
            f"| {row['latency_ms_p50']:.4f} | {row['latency_ms_p50'] / base['latency_ms_p50']:.2f}x "
            f"| {row['float_compute_ops']} |"
        )
    lines += [
        "",
        "INT8: ONNX Runtime static quantization, QDQ, per-channel int8 weights, uint8 activations, MinMax "
        "calibration on 512 training images. FP16 keeps float32 inputs and outputs. Latency: median of "
        "interleaved runs at batch 1 on one thread after warm-up. Below 1.00x means faster than FP32.",
    ]
    save_results("quantization", {"rows": rows}, lines)


if __name__ == "__main__":
    main()
