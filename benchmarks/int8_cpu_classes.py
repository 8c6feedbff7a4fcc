"""Full-range (8-bit) against 7-bit INT8 weights on each CPU class: accuracy and latency.

    python -m benchmarks.int8_cpu_classes [--fashion-mnist-epochs 4] [--qemu-images 2000]

For the default teacher recipe trained on mnist5k and on Fashion-MNIST (when Debian's dataset-fashion-mnist is
installed), the FP32 model is quantized by ONNX Runtime's static PTQ twice: full-range and 7-bit weights. Each
file's test accuracy is measured in ONNX Runtime on this machine, and on the other CPU class through
tierkit.quant.kernel_emulation. Where qemu-user is installed, the INT8 files also run in ONNX Runtime on an
emulated Haswell (AVX2, no VNNI) on the first --qemu-images test images: a real non-VNNI kernel, compared image
by image with the emulation. Latency is batch 1, one thread, interleaved medians on this machine. Writes
benchmarks/results/int8_cpu_classes.{json,md}.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
from hydra import compose, initialize_config_dir

from benchmarks.common import describe, save_results
from tierkit.conf import CONFIG_DIR
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.quant import calibration_samples, quantize_int8
from tierkit.quant.kernel_emulation import EmulatedSession
from tierkit.runtime.cpu import FLAGS_VARIABLE, X86_NO_VNNI, X86_VNNI, cpu_class
from tierkit.stages.teacher import obtain_teacher
from tierkit.utils.noise import silence_known_noise

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
HASWELL_FLAGS = "sse sse2 sse4_1 sse4_2 avx avx2 fma"
# Runs inside qemu: ONNX Runtime's predictions for a file on saved inputs.
QEMU_PREDICT = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([session.run(None, {"input": x[i:i + 250]})[0] for i in range(0, len(x), 250)]))
"""


def datasets(epochs: int) -> dict[str, list[str]]:
    chosen = {"mnist5k": []}
    if (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        chosen["Fashion-MNIST"] = [
            "data=mnist",
            f"data.root={FASHION_MNIST}",
            "data.mean=[0.2860]",
            "data.std=[0.3530]",
            f"teacher.max_epochs={epochs}",
        ]
    else:
        print(f"Fashion-MNIST not found in {FASHION_MNIST} (apt-get install dataset-fashion-mnist): mnist5k only")
    return chosen


def teacher_and_data(overrides: list[str], scratch: Path):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={scratch}", "~callbacks.progress", *overrides])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    teacher, _ = obtain_teacher(cfg, datamodule)
    return teacher.eval(), datamodule, tuple(cfg.data.input_shape)


def qemu_predictions(path: Path, images: np.ndarray, scratch: Path) -> np.ndarray | None:
    """Logits ONNX Runtime computes for ``images`` on an emulated Haswell; None without qemu-user."""
    if shutil.which("qemu-x86_64") is None:
        return None
    inputs, outputs = scratch / "qemu_inputs.npy", scratch / "qemu_outputs.npy"
    np.save(inputs, images)
    env = {**os.environ, FLAGS_VARIABLE: HASWELL_FLAGS}
    subprocess.run(
        ["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", QEMU_PREDICT, str(path), str(inputs), str(outputs)],
        check=True,
        capture_output=True,
        env=env,
    )
    return np.load(outputs)


def measure(name: str, overrides: list[str], scratch: Path, qemu_images: int) -> tuple[list[dict], dict]:
    teacher, datamodule, shape = teacher_and_data(overrides, scratch)
    fp32 = export_onnx(teacher, scratch / "fp32.onnx", shape)
    samples = calibration_samples(datamodule, 512, 64)
    files = {
        "fp32": fp32,
        "int8, 8-bit weights": quantize_int8(fp32, scratch / "int8.onnx", samples, reduce_range=False),
        "int8, 7-bit weights": quantize_int8(fp32, scratch / "int8_w7.onnx", samples, reduce_range=True),
    }
    test = datamodule.splits["test"]
    here = cpu_class()
    other = X86_NO_VNNI if here != X86_NO_VNNI else X86_VNNI
    subset = test.images[:qemu_images].numpy()
    labels = test.labels[:qemu_images].numpy()
    rows = []
    probes = {
        label: latency_probe(ort_session(path, threads=1), test.images[:1].numpy()) for label, path in files.items()
    }
    latencies = measure_latency(probes, repeats=300, warmup=30)
    for label, path in files.items():
        row = {
            "data": name,
            "model": label,
            "kib": round(path.stat().st_size / 1024, 1),
            f"acc_{here}": onnx_accuracy(ort_session(path), datamodule),
            "p50_ms": float(np.median(latencies[label])),
        }
        if label != "fp32":
            started = time.perf_counter()
            emulated = EmulatedSession(path, other)
            row[f"acc_{other}"] = onnx_accuracy(emulated, datamodule)
            row["emulation_s"] = round(time.perf_counter() - started, 1)
            live = qemu_predictions(path, subset, scratch)
            if live is not None:
                mirrored = emulated.run(None, {"input": subset})[0]
                row["qemu_haswell_acc"] = float((live.argmax(1) == labels).mean())
                row["qemu_haswell_emulation_agree"] = float((live.argmax(1) == mirrored.argmax(1)).mean())
                row["qemu_images"] = len(subset)
        rows.append(row)
    return rows, {"data": name, "test_images": len(test), "this_cpu": here, "emulated_cpu": other}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion-mnist-epochs", type=int, default=4, help="teacher epochs on Fashion-MNIST")
    parser.add_argument("--qemu-images", type=int, default=2000, help="test images run under qemu (slow)")
    args = parser.parse_args()
    silence_known_noise()
    print(describe(), flush=True)
    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="tierkit-int8-cpu-") as tmp:
        for name, overrides in datasets(args.fashion_mnist_epochs).items():
            print(f"measuring the {name} teacher", flush=True)
            scratch = Path(tmp) / name
            scratch.mkdir()
            found, run = measure(name, overrides, scratch, args.qemu_images)
            rows += found
            runs.append(run)
    here, other = runs[0]["this_cpu"], runs[0]["emulated_cpu"]
    table = [
        f"| data | model | size (KiB) | test acc, {here} (ONNX Runtime here) | test acc, {other} (emulated) | "
        "qemu Haswell acc (first images) | qemu agrees with emulation | p50 1 thread here (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        other_acc = f"{100 * row[f'acc_{other}']:.2f}%" if f"acc_{other}" in row else "same as float"
        qemu = f"{100 * row['qemu_haswell_acc']:.2f}% of {row['qemu_images']}" if "qemu_haswell_acc" in row else "-"
        agree = f"{100 * row['qemu_haswell_emulation_agree']:.2f}%" if "qemu_haswell_emulation_agree" in row else "-"
        table.append(
            f"| {row['data']} | {row['model']} | {row['kib']} | {100 * row[f'acc_{here}']:.2f}% | {other_acc} | "
            f"{qemu} | {agree} | {row['p50_ms']:.4f} |"
        )
    save_results("int8_cpu_classes", {"runs": runs, "rows": rows, "args": vars(args)}, table)


if __name__ == "__main__":
    main()
