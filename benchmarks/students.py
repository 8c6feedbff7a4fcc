"""Finished runs' students side by side, against their teacher and the comparison's lowend targets: parameters,
validation and test accuracy, size, and batch-1 latency on one thread of each run's FP32 and shipped INT8 files,
timed interleaved with the teacher's FP32 file, with each file's latency as a multiple of the hardware floor.

    python -m benchmarks.students RUN [RUN ...] [--float-first-layer] [--name NAME] [--teacher-overrides SETTING ...]

It answers "which student for this tier?" without rerunning the whole comparison: choose on the validation
column; the test column and the PASS/MISS lines then say how the choice does. The runs must share one teacher:
the one composed from their data (plus any --teacher-overrides) is exported and checked against the test accuracy
the runs recorded for theirs. --float-first-layer adds a third file per run: its FP32 file quantized as its run
did, with the first layer left in float (quantization.float_first_layer). Writes
benchmarks/results/<NAME>[_<data>].{json,md} (NAME: students).
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import (
    DATASET_TARGETS,
    FLOOR_MULTIPLE,
    data_option,
    data_overrides_of,
    describe,
    results_name,
    save_results,
)
from benchmarks.latency_floor import floor_ms, mac_rates
from benchmarks.quantization import teacher_fp32
from tierkit.onnxio import onnx_accuracy
from tierkit.profile.latency import latency_probe, measure_latency, ort_session
from tierkit.quant import calibration_samples, quantize_int8
from tierkit.quant.ptq import first_layer
from tierkit.run_folder import RunFolder
from tierkit.utils.noise import silence_known_noise

# The teacher recomposed here must score what the runs recorded for theirs, to within two test images in 10,000.
SAME_TEACHER_POINTS = 0.02


def run_rows(runs: list[Path]) -> tuple[list[dict], float]:
    """An FP32 and a shipped-INT8 row for each run, and the teacher test accuracy the runs share."""
    rows, teacher_accuracies = [], set()
    for run in runs:
        folder = RunFolder(run)
        metrics = folder.read_metrics()
        if metrics is None or metrics.quantization is None or metrics.teacher is None:
            raise SystemExit(f"{run}: no finished, quantized run of train.py there (metrics.json); give a run folder")
        teacher_accuracies.add(round(metrics.teacher.test_acc, 4))
        quantization = metrics.quantization
        for precision, scores in (("fp32", quantization.fp32), (f"int8 ({quantization.path})", quantization.shipped())):
            rows.append(
                {
                    "run": str(run),
                    "student": f"{run.parent.name}/{run.name}: {metrics.student.architecture}",
                    "precision": precision,
                    "params": metrics.student.params,
                    "macs": metrics.student.macs,
                    "file": str(folder.quantization / scores.file),
                    "bytes": scores.bytes,
                    "val_acc": scores.val_acc,
                    "test_acc": scores.test_acc,
                    "quantization": {
                        **(quantization.calibration or {}),
                        "reduce_range": quantization.reduce_range,
                        "per_channel": quantization.per_channel,
                    },
                }
            )
    if len(teacher_accuracies) > 1:
        raise SystemExit(
            f"the runs were distilled from different teachers (test accuracies {sorted(teacher_accuracies)}); "
            "compare runs of one teacher"
        )
    return rows, teacher_accuracies.pop()


def float_first_layer_row(fp32_row: dict, datamodule, out: Path) -> dict:
    """The run's FP32 file quantized with its own calibration and weight settings, the first layer left in float."""
    settings = fp32_row["quantization"]
    if "samples" not in settings:
        raise SystemExit(f"{fp32_row['run']}: its metrics.json records no calibration settings to quantize with")
    samples = calibration_samples(datamodule, settings["samples"], settings["batch_size"], settings["seed"])
    path = quantize_int8(
        fp32_row["file"],
        out,
        samples,
        settings["batch_size"],
        settings["method"],
        settings["reduce_range"],
        settings["per_channel"],
        first_layer(fp32_row["file"]),
    )
    session = ort_session(path, threads=1)
    return {
        **fp32_row,
        "precision": "int8 (ptq, first layer float)",
        "file": str(path),
        "bytes": path.stat().st_size,
        "val_acc": onnx_accuracy(session, datamodule, "val"),
        "test_acc": onnx_accuracy(session, datamodule),
    }


def target_checks(row: dict, targets: dict | None) -> list[str]:
    """One file against the comparison's lowend targets: PASS or MISS with the figure behind each."""

    def line(name: str, passed: bool, figure: str) -> str:
        return f"{name}: {'PASS' if passed else 'MISS'} ({figure})"

    lines = []
    if targets:
        lines += [
            line(
                f">= {100 * targets['lowend_acc']:.1f}% with <= {targets['lowend_params']:,} parameters",
                row["test_acc"] >= targets["lowend_acc"] and row["params"] <= targets["lowend_params"],
                f"{100 * row['test_acc']:.2f}% with {row['params']:,}",
            ),
            line(f">= {targets['smaller']}x smaller", row["smaller"] >= targets["smaller"], f"{row['smaller']:.1f}x"),
            line(f">= {targets['faster']}x faster", row["speedup"] >= targets["faster"], f"{row['speedup']:.1f}x"),
        ]
    lines.append(
        line(
            f"within {FLOOR_MULTIPLE:g}x of the hardware floor",
            row["floor_multiple"] <= FLOOR_MULTIPLE,
            f"{row['floor_multiple']:.1f}x",
        )
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders of train.py (one teacher)")
    parser.add_argument(
        "--float-first-layer", action="store_true", help="add each run's INT8 file with the first layer in float"
    )
    parser.add_argument("--name", default="students", help="the results files' name (before _<data>)")
    parser.add_argument(
        "--teacher-overrides", nargs="+", default=[], metavar="SETTING", help="overrides of the teacher's recipe"
    )
    args = parser.parse_args()
    extra = args.teacher_overrides
    rows, recorded_teacher = run_rows(args.runs)
    overrides = data_overrides_of(args.runs[0]) + extra
    silence_known_noise()
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory(prefix="tierkit-students-") as tmp:
        scratch = Path(tmp)
        teacher, datamodule = teacher_fp32(scratch / "teacher", overrides)
        session = ort_session(teacher, threads=1)
        reference = {
            "student": "teacher",
            "precision": "fp32",
            "file": str(teacher),
            "bytes": teacher.stat().st_size,
            "test_acc": onnx_accuracy(session, datamodule),
        }
        if abs(reference["test_acc"] - recorded_teacher) * 100 > SAME_TEACHER_POINTS:
            raise SystemExit(
                f"the teacher composed from {overrides or 'the defaults'} scores {100 * reference['test_acc']:.2f}% "
                f"on test, the runs' {100 * recorded_teacher:.2f}%: not their teacher. Give the overrides the runs "
                "were trained with as --teacher-overrides (model=..., teacher.ckpt_path=...)"
            )
        if args.float_first_layer:
            print("quantizing each run with its first layer in float", flush=True)
            fp32_rows = [row for row in rows if row["precision"] == "fp32"]
            rows += [
                float_first_layer_row(row, datamodule, scratch / f"{i}-float-first-layer.onnx")
                for i, row in enumerate(fp32_rows)
            ]
            order = {str(run): i for i, run in enumerate(args.runs)}
            rows.sort(key=lambda row: order[row["run"]])
        print("timing every file, interleaved (one thread, batch 1)", flush=True)
        shape = session.get_inputs()[0].shape[1:]
        batch = np.zeros((1, *shape), dtype=np.float32)
        files = [reference, *rows]
        probes = {i: latency_probe(ort_session(row["file"], threads=1), batch) for i, row in enumerate(files)}
        samples_ms = measure_latency(probes, repeats=3000, warmup=300, rounds=10)
        print("measuring the hardware floor (large convolution and matrix product, FP32 and INT8)", flush=True)
        (scratch / "floor").mkdir()
        rates = mac_rates(scratch / "floor", threads=1)
    for i, row in enumerate(files):
        row["latency_ms_p50"] = statistics.median(samples_ms[i])
        row["smaller"] = reference["bytes"] / row["bytes"]
        row["speedup"] = reference["latency_ms_p50"] / row["latency_ms_p50"]
        if "macs" in row:
            row["floor_multiple"] = row["latency_ms_p50"] / floor_ms(row["macs"], rates)
    targets = DATASET_TARGETS.get(data_option(overrides) or "")
    for row in rows:
        row["targets"] = target_checks(row, targets)
    save_results(
        results_name(args.name, overrides),
        {"rows": files, "gmac_per_s": {k: v / 1e9 for k, v in rates.items()}},
        table(files, rates, [str(run) for run in args.runs], args, extra),
    )


def table(files: list[dict], rates: dict, runs: list[str], args: argparse.Namespace, extra: list[str]) -> list[str]:
    options = [
        *(["--float-first-layer"] if args.float_first_layer else []),
        *([f"--name {args.name}"] if args.name != "students" else []),
        *(["--teacher-overrides", *extra] if extra else []),
    ]
    lines = [
        f"Machine: {describe()}",
        f"Command: `python -m benchmarks.students {' '.join([*runs, *options])}`",
        "",
        "| student | precision | params | MACs | val acc | test acc | size | smaller | p50, 1 thread (ms) | faster "
        "| vs floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in files:
        params = f"{row['params']:,}" if "params" in row else "-"
        macs = f"{row['macs'] / 1e6:.2f}M" if "macs" in row else "-"
        val = f"{100 * row['val_acc']:.2f}%" if "val_acc" in row else "-"
        floor = f"{row['floor_multiple']:.1f}x" if "floor_multiple" in row else "-"
        lines.append(
            f"| {row['student']} | {row['precision']} | {params} | {macs} | {val} | {100 * row['test_acc']:.2f}% "
            f"| {row['bytes'] / 1024:.1f} KiB | {row['smaller']:.1f}x | {row['latency_ms_p50']:.4f} "
            f"| {row['speedup']:.1f}x | {floor} |"
        )
    rates_text = ", ".join(f"{kind} {rate / 1e9:.0f}" for kind, rate in rates.items())
    lines += [
        "",
        f"Hardware floor, one thread (GMAC/s): {rates_text}. Latency: medians of interleaved batch-1 runs, one "
        "thread, all graph optimizations, 3,000 per file after 300 warm-up; the teacher's FP32 file is the reference.",
        "",
    ]
    lines += [
        f"- {row['student']}, {row['precision']}: " + " · ".join(row["targets"]) for row in files if "targets" in row
    ]
    return lines


if __name__ == "__main__":
    main()
