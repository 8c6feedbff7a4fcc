"""Is the first layer worth quantizing? Each model of a three-tier sweep, and their teacher, quantized to INT8 as
tierkit's post-training quantization does (every layer), and again with the first layer (the one that reads the
image, with one input channel on Fashion-MNIST) left in float. Size, test accuracy in ONNX Runtime, and batch-1
latency on one thread, all interleaved in one run.

    python -m benchmarks.float_stem --sweep SWEEP

A convolution with one or three input channels gives ONNX Runtime's INT8 kernels a tiny reduction depth (9 or 27
values), so they may spend more time converting and packing than multiplying; this measures whether keeping it in
float pays. Writes benchmarks/results/float_stem[_<data>].{json,md}.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
from hydra import compose, initialize_config_dir

from benchmarks.common import TIERS, data_overrides_of, describe, results_name, save_results, tier_run_folders
from benchmarks.quantization import teacher_fp32
from tierkit.conf import CONFIG_DIR
from tierkit.onnxio import onnx_accuracy
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.quant import calibration_samples, quantize_int8
from tierkit.quant.ptq import WEIGHTED_OPS, first_layer
from tierkit.run_folder import RunFolder
from tierkit.runtime.cpu import needs_reduced_range
from tierkit.utils.noise import silence_known_noise

VARIANTS = ("fp32", "int8, every layer", "int8, first layer float")


def first_layer_inputs(fp32: Path) -> int:
    """How many input channels (features) the weight of the model's first weighted layer has."""
    graph = onnx.load(str(fp32)).graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    node = next(node for node in graph.node if node.op_type in WEIGHTED_OPS)
    return weights[node.input[1]][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, required=True, help="a finished three-tier sweep (train.py --multirun)")
    args = parser.parse_args()
    runs = tier_run_folders(args.sweep)
    overrides = data_overrides_of(runs["lowend"])
    silence_known_noise()
    print(describe(), flush=True)
    reduced = needs_reduced_range()
    rows, probes = [], {}
    with tempfile.TemporaryDirectory(prefix="tierkit-float-stem-") as tmp:
        scratch = Path(tmp)
        teacher, datamodule = teacher_fp32(scratch / "teacher", overrides)
        models = {
            "teacher": teacher,
            **{tier: RunFolder(runs[tier]).quantization / "fp32.onnx" for tier in TIERS},
        }
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            calibration = compose("train", overrides=overrides).quantization.calibration
        samples = calibration_samples(datamodule, calibration.samples, calibration.batch_size, calibration.seed)
        for model, fp32 in models.items():
            (layer,), channels = first_layer(fp32), first_layer_inputs(fp32)
            files = {"fp32": fp32}
            for variant, float_layers in ((VARIANTS[1], []), (VARIANTS[2], [layer])):
                path = scratch / f"{model}-{len(float_layers)}.onnx"
                files[variant] = quantize_int8(
                    fp32, path, samples, calibration.batch_size, calibration.method, reduced, True, float_layers
                )
            for variant, path in files.items():
                session = ort_session(path, threads=1)
                rows.append(
                    {
                        "model": model,
                        "variant": variant,
                        "first_layer": layer,
                        "first_layer_in_channels": channels,
                        "bytes": path.stat().st_size,
                        "onnx_test_acc": onnx_accuracy(session, datamodule),
                    }
                )
                shape = session.get_inputs()[0].shape[1:]
                probes[(model, variant)] = latency_probe(session, np.zeros((1, *shape), dtype=np.float32))
            print(f"{model}: quantized, first layer {layer} with {channels} input channel(s)", flush=True)
        samples_ms = measure_latency(probes, repeats=600, warmup=100, rounds=10)
    for row in rows:
        row["latency_ms_p50"] = statistics.median(samples_ms[(row["model"], row["variant"])])
    save_results(
        results_name("float_stem", overrides),
        {"sweep": str(args.sweep), "reduce_range": reduced, "rows": rows},
        table(args, rows, reduced),
    )


def table(args: argparse.Namespace, rows: list[dict], reduced: bool) -> list[str]:
    by_key = {(row["model"], row["variant"]): row for row in rows}
    lines = [
        f"Machine: {describe()}",
        f"Command: python -m benchmarks.float_stem --sweep {args.sweep}",
        "",
        "| model | variant | size | test acc in ORT | latency p50, 1 thread (ms) | speed-up over INT8, every layer |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        every = by_key[(row["model"], VARIANTS[1])]["latency_ms_p50"]
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['bytes'] / 1024:.1f} KiB | {100 * row['onnx_test_acc']:.2f}% "
            f"| {row['latency_ms_p50']:.4f} | {every / row['latency_ms_p50']:.2f}x |"
        )
    first = rows[0]
    lines += [
        "",
        f"First layer: {first['first_layer']} ({first['first_layer_in_channels']} input channel(s)). INT8 as tierkit's "
        f"post-training quantization makes it: QDQ, per-channel {'7' if reduced else '8'}-bit weights (this CPU), "
        "calibrated on the run's calibration sample of the training split. Latency: medians of interleaved batch-1 "
        "runs, one thread, all graph optimizations, 600 per file after 100 warm-up.",
    ]
    return lines


if __name__ == "__main__":
    main()
