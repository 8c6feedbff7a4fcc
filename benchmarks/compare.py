"""tierkit's headline figures side by side with what a user would otherwise do, on one machine in one run.

    python -m benchmarks.compare [--quick] [--tiers SWEEP] [--readme] [--out DIR]

Rows: the teacher in FP32 (the reference), the teacher quantized by ONNX Runtime's own static INT8 recipe,
the teacher pruned by Lightning's ModelPruning at 50% (masks, then fine-tuned), the default student trained
alone and with distillation, and the variant `python export.py` ships for each of the three tiers. Every
ONNX file is measured in the same run: test accuracy in ONNX Runtime, size, batch-1 latency (p50, p90) on one
thread and on all threads, and throughput at batch 32, timed interleaved after warm-up. Then the training
loop's cost: Lightning distillation steps per second against a plain PyTorch loop doing the same work, and a
distillation epoch with and without the teacher-logit cache.

The full mode (default, about 15 minutes on 2 cores with the teacher cached) trains everything on mnist5k
and writes benchmarks/results/compare.{json,md,png}; --readme also puts the tables into README.md. --quick
runs the same steps on tiny synthetic data in about a minute, as a smoke test, and writes under --out.
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from benchmarks.baselines import modelpruning_copy, ort_default_int8, zero_fraction
from benchmarks.common import RESULTS, describe, save_results, train_with
from benchmarks.train_loop import kd_epoch_seconds, lightning_steps_per_second, plain_steps_per_second
from tierkit.conf import CONFIG_DIR
from tierkit.distill.module import freeze
from tierkit.models.build import build_student
from tierkit.models.checkpoint import load_student
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.profile.latency import ort_session
from tierkit.profile.settings import load_settings
from tierkit.profile.variants import profile_models
from tierkit.quant import calibration_samples
from tierkit.stages.export import export
from tierkit.stages.teacher import obtain_teacher
from tierkit.utils.instantiate import instantiate
from tierkit.utils.noise import silence_known_noise

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_START, README_END = "<!-- compare:start -->", "<!-- compare:end -->"
TIERS = ("highend", "midrange", "lowend")
SETTINGS = ("cpu_1thread", "cpu_all")
THROUGHPUT_BATCH = 32
# What each row is, for the table's second column.
ROWS = {
    "teacher": "FP32, the reference",
    "teacher ORT INT8": "onnxruntime `quantize_static`, its defaults",
    "teacher ModelPruning 50%": "Lightning `ModelPruning`, L1 unstructured",
    "student alone": "default student, labels only, FP32",
    "student + KD": "default student distilled, FP32",
    **{f"tierkit {tier}": "" for tier in TIERS},
}


@dataclass(frozen=True)
class Mode:
    """How much work each part does: the full mode makes the README's figures, the quick one smoke-tests."""

    data: tuple[str, ...]
    modelpruning_epochs: int
    repeats: int
    warmup: int
    throughput_repeats: int
    loop_steps: int
    loop_warmup: int
    loop_repeats: int
    kd_epochs: int


FULL = Mode((), 3, 600, 100, 50, 100, 10, 3, 6)
QUICK = Mode(
    (
        "data=synthetic",
        "model.teacher.base_channels=8",
        "model.student.base_channels=8",
        "teacher.max_epochs=1",
        "trainer.max_epochs=2",
        "callbacks.pruning.start_epoch=0",
        "callbacks.pruning.end_epoch=1",
        "callbacks.pruning.steps=2",
        "quantization=off",
    ),
    2,
    20,
    2,
    3,
    6,
    2,
    1,
    3,
)


def base_config(scratch: Path, mode: Mode, cache: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={scratch / 'base'}", *cache, *mode.data])


def student_file(metrics: dict, out: Path, shape: tuple[int, ...]) -> Path:
    student, _ = load_student(metrics["checkpoints"]["best"])
    return export_onnx(student, out, shape)


def tier_files(tiers: Path, out: Path, mode: Mode) -> dict[str, Path]:
    """`python export.py` over the tier runs (profiling only what choosing the shipped variant needs)."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "export",
            overrides=[
                f"run={tiers}",
                f"output_dir={out}",
                "profiling.hardware=[cpu_1thread,cpu_2thread,cpu_all]",
                "profiling.graph_optimization_levels=[ORT_ENABLE_ALL]",
                "profiling.memory=false",
                f"profiling.repeats={mode.repeats // 3}",
                f"profiling.warmup={mode.warmup}",
                f"profiling.throughput_repeats={mode.throughput_repeats}",
                "profiling.operator_runs=5",
            ],
        )
    manifest = export(cfg)
    shipped = {v["tier"]: v for v in manifest["variants"] if v["ships"]}
    missing = [tier for tier in TIERS if tier not in shipped]
    if missing:
        sys.exit(f"export shipped nothing for {missing}; see {out / 'report.md'}")
    return {f"tierkit {tier}": out / shipped[tier]["file"] for tier in TIERS}


def build_files(scratch: Path, mode: Mode, tiers: Path | None, cache: list[str]) -> tuple[dict, dict, object, dict]:
    """Every model to compare as an ONNX file, plus notes per row, the datamodule and what the loop needs."""
    cfg = base_config(scratch, mode, cache)
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    shape = tuple(cfg.data.input_shape)
    teacher = freeze(obtain_teacher(cfg, datamodule)[0])
    files, notes = {}, {}
    print("teacher: FP32 and ONNX Runtime INT8", flush=True)
    files["teacher"] = export_onnx(teacher, scratch / "teacher_fp32.onnx", shape)
    samples = calibration_samples(datamodule, 512, 64)
    files["teacher ORT INT8"] = ort_default_int8(files["teacher"], scratch / "teacher_ort_int8.onnx", samples)
    print(f"teacher: ModelPruning 50%, {mode.modelpruning_epochs} epochs", flush=True)
    pruned = modelpruning_copy(teacher, datamodule, 0.5, mode.modelpruning_epochs, lr=1e-3)
    notes["teacher ModelPruning 50%"] = f"{100 * zero_fraction(pruned):.0f}% zero weights"
    files["teacher ModelPruning 50%"] = export_onnx(pruned, scratch / "teacher_modelpruning.onnx", shape)
    unpruned_fp32 = [*cache, *mode.data, "~callbacks.pruning", "quantization=off"]
    for name, extra in (("student alone", ["distill.alpha=0"]), ("student + KD", [])):
        print(f"training {name}", flush=True)
        metrics = train_with([*unpruned_fp32, *extra], scratch / name.replace(" ", "_").replace("+", "kd"))
        files[name] = student_file(metrics, scratch / f"{name.replace(' ', '_').replace('+', 'kd')}.onnx", shape)
    if tiers is None:
        tiers = scratch / "tiers"
        for tier in TIERS:
            print(f"training tier={tier}", flush=True)
            train_with([*cache, *mode.data, f"tier={tier}"], tiers / tier)
    files.update(tier_files(tiers, scratch / "export", mode))
    for tier in TIERS:
        notes[f"tierkit {tier}"] = f"ships {files[f'tierkit {tier}'].stem}"
    student = build_student(cfg)
    return files, notes, datamodule, {"student": student, "teacher": teacher}


def measure_models(files: dict[str, Path], datamodule, mode: Mode) -> list[dict]:
    settings, _ = load_settings(CONFIG_DIR / "hardware", list(SETTINGS), ["ORT_ENABLE_ALL"])
    shape = list(datamodule.input_shape)
    print(f"timing {len(files)} models interleaved under {', '.join(SETTINGS)}", flush=True)
    latency = profile_models(
        files, shape, list(settings), mode.repeats, mode.warmup, THROUGHPUT_BATCH, mode.throughput_repeats
    )
    rows = []
    for name, path in files.items():
        by_setting = {row["hardware"]: row for row in latency[name]}
        rows.append(
            {
                "model": name,
                "file": path.name,
                "bytes": path.stat().st_size,
                "accuracy": onnx_accuracy(ort_session(path), datamodule),
                **{f"{hw}_{key}": by_setting[hw][key] for hw in SETTINGS for key in ("p50_ms", "p90_ms")},
                **{f"{hw}_throughput_per_s": by_setting[hw]["throughput_per_s"] for hw in SETTINGS},
            }
        )
    reference = rows[0]
    for row in rows:
        row["size_ratio"] = reference["bytes"] / row["bytes"]
        row["speedup_1thread"] = reference["cpu_1thread_p50_ms"] / row["cpu_1thread_p50_ms"]
        row["speedup_all"] = reference["cpu_all_p50_ms"] / row["cpu_all_p50_ms"]
        row["drop_points"] = 100 * (reference["accuracy"] - row["accuracy"])
    return rows


def measure_loop(models: dict, datamodule, mode: Mode) -> dict:
    """Training-loop figures: medians over repeats, Lightning and plain PyTorch alternating."""
    student, teacher = models["student"], models["teacher"]
    print("timing the training loop", flush=True)
    lightning, plain = [], []
    # Untimed first round: a process's first training steps pay one-off start-up costs (about a second each).
    lightning_steps_per_second(student, teacher, datamodule, mode.loop_steps, mode.loop_warmup)
    plain_steps_per_second(student, teacher, datamodule, mode.loop_steps, mode.loop_warmup)
    for _ in range(mode.loop_repeats):
        lightning.append(lightning_steps_per_second(student, teacher, datamodule, mode.loop_steps, mode.loop_warmup))
        plain.append(plain_steps_per_second(student, teacher, datamodule, mode.loop_steps, mode.loop_warmup))
    epochs = {cache: kd_epoch_seconds(student, teacher, datamodule, mode.kd_epochs, cache) for cache in (False, True)}
    return {
        "lightning_steps_per_s": statistics.median(lightning),
        "plain_steps_per_s": statistics.median(plain),
        "steps": mode.loop_steps,
        "repeats": mode.loop_repeats,
        "batch_size": datamodule.batch_size,
        "kd_epoch_s_no_cache": epochs[False]["epoch_s"],
        "kd_epoch_s_cache": epochs[True]["epoch_s"],
        "fit_start_s_no_cache": epochs[False]["fit_start_s"],
        "fit_start_s_cache": epochs[True]["fit_start_s"],
        "kd_epochs": mode.kd_epochs,
    }


def verdict(rows: list[dict]) -> dict:
    """The issue's bar: lowend beats both teacher baselines on size and latency, within 1 point of the teacher."""
    by_name = {row["model"]: row for row in rows}
    lowend = by_name["tierkit lowend"]
    baselines = [by_name["teacher ORT INT8"], by_name["teacher ModelPruning 50%"]]
    checks = {f"smaller than {b['model']}": lowend["bytes"] < b["bytes"] for b in baselines} | {
        f"faster than {b['model']} ({hw})": lowend[f"{hw}_p50_ms"] < b[f"{hw}_p50_ms"]
        for b in baselines
        for hw in SETTINGS
    }
    checks["within 1 point of the teacher"] = lowend["drop_points"] <= 1.0
    return checks


def table_lines(rows: list[dict], notes: dict, loop: dict, checks: dict, command: str) -> list[str]:
    threads = f"all ({os.cpu_count()})"
    lightning, plain = loop["lightning_steps_per_s"], loop["plain_steps_per_s"]
    lines = [
        f"Machine: {describe()}",
        f"Command: `{command}`",
        "",
        "| model | what | test acc | vs teacher (points) | size | smaller | p50 / p90 1 thread (ms) | speed-up "
        f"| p50 / p90 {threads} threads (ms) | speed-up | batch-{THROUGHPUT_BATCH} /s, {threads} threads |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        what = "; ".join(part for part in (ROWS[row["model"]], notes.get(row["model"], "")) if part)
        lines.append(
            f"| {row['model']} | {what} | {100 * row['accuracy']:.2f}% | {0.0 - row['drop_points']:+.2f} "
            f"| {row['bytes'] / 1024:.1f} KiB | {row['size_ratio']:.1f}x "
            f"| {row['cpu_1thread_p50_ms']:.4f} / {row['cpu_1thread_p90_ms']:.4f} | {row['speedup_1thread']:.1f}x "
            f"| {row['cpu_all_p50_ms']:.4f} / {row['cpu_all_p90_ms']:.4f} | {row['speedup_all']:.1f}x "
            f"| {row['cpu_all_throughput_per_s']:,.0f} |"
        )
    passed = all(checks.values())
    failed = [name for name, ok in checks.items() if not ok]
    lines += [
        "",
        "lowend against the teacher baselines: "
        + ("**all checks pass**" if passed else "**fails: " + "; ".join(failed) + "**")
        + f" ({', '.join(checks)}).",
        "",
        f"| training loop (default student, batch {loop['batch_size']}) | figure |",
        "|---|---:|",
        f"| Lightning distillation steps/s (teacher run every step) | {lightning:.1f} |",
        f"| plain PyTorch loop, same work, steps/s | {plain:.1f} |",
        f"| Lightning's extra time per step | {100 * (plain / lightning - 1):+.0f}% |",
        f"| KD epoch, teacher run every step (s) | {loop['kd_epoch_s_no_cache']:.2f} |",
        f"| KD epoch, teacher-logit cache (s) | {loop['kd_epoch_s_cache']:.2f} |",
        f"| cache's one-off teacher pass at fit start (s) | "
        f"{loop['fit_start_s_cache'] - loop['fit_start_s_no_cache']:.2f} |",
        "",
        f"Latency: medians and 90th percentiles of batch-1 runs in ONNX Runtime (all graph optimizations), every "
        f"model timed interleaved after warm-up; throughput at batch {THROUGHPUT_BATCH}. Accuracy: ONNX Runtime on "
        f"the test split. Steps/s: median of {loop['repeats']} alternating runs of {loop['steps']} steps after "
        f"warm-up. Epoch times: median of epochs 2-{loop['kd_epochs']} of one fit each.",
    ]
    return lines


def plain_log_axis(axis) -> None:
    """Log scale with 1-2-5 ticks written as plain numbers."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against single-thread latency (marker area ~ file size), and file sizes side by side."""
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    scatter, bars = figure.subplots(1, 2, width_ratios=[3, 2])
    largest = max(row["bytes"] for row in rows)
    for row in rows:
        colour = "tab:green" if row["model"].startswith("tierkit") else "tab:gray"
        area = 40 + 800 * row["bytes"] / largest
        scatter.scatter(row["cpu_1thread_p50_ms"], 100 * row["accuracy"], s=area, color=colour, alpha=0.6)
        scatter.annotate(
            row["model"],
            (row["cpu_1thread_p50_ms"], 100 * row["accuracy"]),
            fontsize=8,
            xytext=(6, 4),
            textcoords="offset points",
        )
    scatter.set_xscale("log")
    plain_log_axis(scatter.xaxis)
    scatter.set_xlabel("batch-1 latency p50, 1 thread (ms, log)")
    scatter.set_ylabel("test accuracy in ONNX Runtime (%)")
    scatter.set_title("accuracy against latency (marker area ~ file size)")
    names = [row["model"] for row in rows]
    bars.barh(
        names,
        [row["bytes"] / 1024 for row in rows],
        color=["tab:green" if name.startswith("tierkit") else "tab:gray" for name in names],
    )
    bars.set_xscale("log")
    plain_log_axis(bars.xaxis)
    bars.invert_yaxis()
    bars.set_xlabel("ONNX file size (KiB, log)")
    figure.savefig(path, dpi=120)


def update_readme(lines: list[str]) -> None:
    """Replace the README's generated comparison block with this run's tables."""
    text = README.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        sys.exit(f"README.md has no {README_START} ... {README_END} block to fill; add one where the table goes")
    block = "\n".join([README_START, *lines, README_END])
    README.write_text(pattern.sub(lambda _: block, text))
    print(f"updated {README}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic data and few repeats: a smoke test")
    parser.add_argument("--tiers", type=Path, help="an existing sweep of the three tiers to take instead of training")
    parser.add_argument("--readme", action="store_true", help="also write the tables into README.md")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick needs one)")
    args = parser.parse_args()
    if args.quick and (args.out is None or args.readme):
        parser.error("--quick needs --out and cannot fill the README (its figures are not the real ones)")
    silence_known_noise()
    print(describe(), flush=True)
    mode = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="tierkit-compare-") as tmp:
        scratch = Path(tmp)
        cache = [f"paths.cache_dir={scratch / 'cache'}"] if args.quick else []
        files, notes, datamodule, models = build_files(scratch, mode, args.tiers, cache)
        rows = measure_models(files, datamodule, mode)
    loop = measure_loop(models, datamodule, mode)
    checks = verdict(rows)
    command = "python -m benchmarks.compare" + (" --quick" if args.quick else "")
    lines = table_lines(rows, notes, loop, checks, command)
    folder = args.out or RESULTS
    save_results(
        "compare",
        {"mode": "quick" if args.quick else "full", "rows": rows, "loop": loop, "checks": checks},
        lines,
        folder,
    )
    plot(rows, folder / "compare.png")
    if args.readme:
        update_readme([*lines, "", "![accuracy, latency and size of every row](benchmarks/results/compare.png)"])


if __name__ == "__main__":
    main()
