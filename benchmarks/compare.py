"""tierkit's headline figures side by side with what a user would otherwise do, on one machine in one run.

    python -m benchmarks.compare [--data NAME] [--quick] [--tiers SWEEP] [--tier-overrides [TIER:]KEY=VALUE ...]
                                 [--readme] [--out DIR] [--work DIR]

Rows: the teacher in FP32 (the reference); the teacher made smaller by the tools a user would pick instead, each
with its own recipe and defaults: ONNX Runtime's static INT8, Lightning's ModelPruning at 50%, torch-pruning at 50%
of channels fine-tuned for a tier's epochs then ONNX Runtime's INT8, and NNCF's INT8 (plain, and with accuracy
control at a 1-point budget) run in OpenVINO; the default student trained alone and with distillation (several
seeds); and the variant `python export.py` ships for each of the three tiers. Every file is measured in the same
run: test accuracy in its runtime, size, batch-1 latency (p50, p90) on one thread and on all threads, and
throughput at batch 32, all models timed interleaved after warm-up. Then the hardware's floor (the best MAC rate
of a large convolution and matrix product, FP32 and INT8), the pipeline's wall time per stage, the training loop's
cost, and each target printed as PASS or MISS.

The full mode trains everything on the default data (--data fashion_mnist: the full Fashion-MNIST, with that
dataset's targets) and writes benchmarks/results/compare[_<data>].{json,md,png}; --readme also puts the tables
into README.md. --quick runs the same steps on tiny synthetic data in a few minutes, as a smoke test, and writes
under --out. The full mode takes hours on two cores: with --work DIR every finished training stays in DIR, and
the same command started again reuses it (the timings are measured afresh every time).
"""

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from benchmarks.baselines import modelpruning_copy, ort_default_int8, torch_pruning_copy, zero_fraction
from benchmarks.common import (
    DATASET_TARGETS,
    FLOOR_MULTIPLE,
    RESULTS,
    SCRATCH_STUDENT,
    TIERS,
    describe,
    finished_or_train,
    override_name,
    save_results,
    spread,
    tier_run_folders,
)
from benchmarks.distill_settings import DISTILLATION_GAIN_POINTS
from benchmarks.latency_floor import floor_ms, mac_rates
from benchmarks.openvino_peers import (
    compiled_model,
    nncf_int8,
    nncf_int8_accuracy_control,
    openvino_accuracy,
    openvino_probe,
)
from benchmarks.train_loop import kd_epoch_seconds, lightning_steps_per_second, plain_steps_per_second
from tierkit.conf import CONFIG_DIR
from tierkit.distill.module import freeze
from tierkit.distill.teacher import teacher_cache_key
from tierkit.models.build import build_student
from tierkit.models.checkpoint import load_student
from tierkit.onnxio import export_onnx, onnx_accuracy
from tierkit.profile.latency import latency_probe, measure_latency, ort_session, setting_session
from tierkit.profile.settings import load_settings
from tierkit.profile.variants import latency_row
from tierkit.quant import calibration_samples
from tierkit.run_folder import RunFolder
from tierkit.stages.export import export
from tierkit.stages.teacher import obtain_teacher
from tierkit.utils.files import atomic_write
from tierkit.utils.instantiate import instantiate
from tierkit.utils.noise import silence_known_noise

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_START, README_END = "<!-- compare:start -->", "<!-- compare:end -->"
SETTINGS = ("cpu_1thread", "cpu_all")
THROUGHPUT_BATCH = 32
# What each row is, for the table's second column.
ROWS = {
    "teacher": "FP32, the reference",
    "teacher ORT INT8": "onnxruntime `quantize_static`, its defaults",
    "teacher ModelPruning 50%": "Lightning `ModelPruning`, L1 unstructured",
    "teacher torch-pruning 50% + ORT INT8": "torch-pruning, 50% of channels (group L2), fine-tuned, then "
    "`quantize_static`",
    "teacher NNCF INT8": "`nncf.quantize`, its defaults; OpenVINO runtime",
    "teacher NNCF INT8, accuracy control": "`nncf.quantize_with_accuracy_control`, at most 1 point lost on "
    "validation; OpenVINO runtime",
    "student alone": "default student, labels only, FP32",
    "student + KD": "default student distilled, FP32",
    **{f"tierkit {tier}": "" for tier in TIERS},
}
# The tools a user would pick instead: what lowend has to beat on accuracy, size and latency together.
PEERS = [name for name in ROWS if name.startswith("teacher ") and name != "teacher"]
OPENVINO_ROWS = {"teacher NNCF INT8", "teacher NNCF INT8, accuracy control"}
NNCF_MAX_DROP = 0.01


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
    seeds: tuple[int, ...]
    floor_repeats: int


FULL = Mode((), 3, 600, 100, 50, 100, 10, 3, 6, (1, 2, 3), 50)
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
        # A smoke test of the steps: batch-1 latencies of a few interleaved runs on a shared 2-core machine swing
        # by 100x, so export's latency budgets would decide at random whether a tier ships.
        "tier.budgets.max_latency_ms=1000",
    ),
    2,
    20,
    2,
    3,
    6,
    2,
    1,
    3,
    (1,),
    5,
)


def base_config(scratch: Path, overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={scratch / 'base'}", *overrides])


def student_file(metrics: dict, out: Path, shape: tuple[int, ...]) -> Path:
    student, _ = load_student(metrics["checkpoints"]["best"])
    return export_onnx(student, out, shape)


def best_effort(variants: list[dict]) -> dict:
    """The variant of a tier that ships nothing which comes closest to shipping: a precision the tier allows, the
    fewest budgets missed, then the most accurate, then the smallest."""
    allowed = [v for v in variants if v["precision"] in v["allowed_precisions"]] or variants
    return min(allowed, key=lambda v: (sum(not ok for ok in v["checks"].values()), -v["accuracy"], v["bytes"]))


def tier_files(tiers: Path, out: Path, mode: Mode) -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """`python export.py` over the tier runs (profiling only what choosing the shipped variant needs).

    Returns each tier's file, a note saying what it is, and the tiers that shipped nothing. A tier that ships
    nothing is still compared, by its best effort, so the table shows how far it is from its budgets.
    """
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
    files, notes, unshipped = {}, {}, []
    for tier in TIERS:
        variants = [v for v in manifest["variants"] if v["tier"] == tier]
        shipped = next((v for v in variants if v["ships"]), None)
        if shipped is None:
            unshipped.append(tier)
            shipped = best_effort(variants)
            notes[tier] = f"ships nothing; best effort {shipped['name']}, which {shipped['why']}"
        else:
            notes[tier] = f"ships {shipped['name']}"
        files[f"tierkit {tier}"] = out / shipped["file"]
    return files, notes, unshipped


@dataclass
class Built:
    """Everything the run made before timing: the files to compare and what the checks need besides them."""

    files: dict[str, Path]
    notes: dict[str, str]
    datamodule: object
    models: dict
    tier_metrics: dict[str, dict]
    student_accuracies: dict[str, list[float]]
    stages: dict[str, tuple[float | None, str]]
    unshipped: list[str]


def tier_runs(tiers: Path) -> dict[str, dict]:
    """metrics.json of each tier's run under ``tiers`` (a sweep or a folder of runs), by tier name."""
    return {tier: RunFolder(folder).read_metrics().to_dict() for tier, folder in tier_run_folders(tiers).items()}


class RowRecord:
    """``teacher_rows.json`` in the work folder: each teacher or peer row's file and note, recorded as soon as the
    row is made, so a comparison stopped part-way makes only the rows it lacks when it is started again."""

    def __init__(self, scratch: Path):
        self.path = scratch / "teacher_rows.json"
        made = json.loads(self.path.read_text()) if self.path.is_file() else {"files": {}, "notes": {}}
        self.files = {name: scratch / file for name, file in made["files"].items() if (scratch / file).is_file()}
        self.notes = {name: note for name, note in made["notes"].items() if name in self.files}

    def row(self, name: str, make: Callable[[], tuple[Path, str | None]]) -> Path:
        """The file of row ``name``: the recorded one, or ``make()``'s (a file and a note or None), then recorded."""
        if name in self.files:
            print(f"{name}: reusing {self.files[name].name}", flush=True)
            return self.files[name]
        print(f"{name}: making it", flush=True)
        path, note = make()
        self.files[name] = path
        if note is not None:
            self.notes[name] = note
        record = {"files": {n: p.name for n, p in self.files.items()}, "notes": self.notes}
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(record)))
        return path


def teacher_rows(teacher, datamodule, scratch: Path, mode: Mode, lowend_epochs: int) -> tuple[dict, dict]:
    """The teacher and what each peer tool makes of it, as files, with notes for the table."""
    record = RowRecord(scratch)
    shape = tuple(datamodule.input_shape)
    samples = calibration_samples(datamodule, 512, 64)

    def modelpruning() -> tuple[Path, str]:
        pruned = modelpruning_copy(teacher, datamodule, 0.5, mode.modelpruning_epochs, lr=1e-3)
        path = export_onnx(pruned, scratch / "teacher_modelpruning.onnx", shape)
        return path, f"{100 * zero_fraction(pruned):.0f}% zero weights"

    def torch_pruning() -> tuple[Path, str]:
        slim = torch_pruning_copy(teacher, datamodule, 0.5, lowend_epochs, lr=1e-3)
        slim_fp32 = export_onnx(slim, scratch / "teacher_torch_pruning_fp32.onnx", shape)
        path = ort_default_int8(slim_fp32, scratch / "teacher_torch_pruning_int8.onnx", samples)
        return path, f"{sum(p.numel() for p in slim.parameters()):,} parameters, {lowend_epochs} epochs"

    files = {
        "teacher": record.row("teacher", lambda: (export_onnx(teacher, scratch / "teacher_fp32.onnx", shape), None))
    }
    makers = {
        "teacher ORT INT8": lambda: (
            ort_default_int8(files["teacher"], scratch / "teacher_ort_int8.onnx", samples),
            None,
        ),
        "teacher ModelPruning 50%": modelpruning,
        "teacher torch-pruning 50% + ORT INT8": torch_pruning,
        "teacher NNCF INT8": lambda: (nncf_int8(files["teacher"], scratch / "teacher_nncf_int8.onnx", samples), None),
        "teacher NNCF INT8, accuracy control": lambda: (
            nncf_int8_accuracy_control(
                files["teacher"], scratch / "teacher_nncf_accuracy_control.onnx", samples, datamodule, NNCF_MAX_DROP
            ),
            None,
        ),
    }
    for name, make in makers.items():
        files[name] = record.row(name, make)
    return files, record.notes


def split_tier(override: str) -> tuple[str | None, str]:
    """``lowend:model=separable`` -> ("lowend", "model=separable"); an override without a tier prefix -> (None, it)."""
    tier, colon, rest = override.partition(":")
    return (tier, rest) if colon and tier in TIERS else (None, override)


def overrides_for_tier(tier: str, tier_overrides: list[str]) -> list[str]:
    """The ``--tier-overrides`` that reach ``tier``'s run: plain ones go to every tier, ``<tier>:...`` to that one."""
    return [rest for named, rest in map(split_tier, tier_overrides) if named in (None, tier)]


def tier_overrides_name(base: str, tier_overrides: list[str]) -> str:
    """``override_name`` for tier overrides; one meant for a single tier is named with it (``lowend-separable``)."""
    named = [f"{tier}-{rest.split('=', 1)[-1]}" if tier else rest for tier, rest in map(split_tier, tier_overrides)]
    return override_name(base, named)


def lowend_epochs(scratch: Path, overrides: list[str], tier_overrides: list[str]) -> int:
    """The epochs lowend's run trains for, its own tier overrides included: torch-pruning's fine-tune gets as many,
    so the peer is never given a shorter schedule than the tier it is compared with."""
    lowend = [*overrides, *overrides_for_tier("lowend", tier_overrides), "tier=lowend"]
    return int(base_config(scratch, lowend).trainer.max_epochs)


def build_files(
    scratch: Path, mode: Mode, tiers: Path | None, overrides: list[str], tier_overrides: list[str]
) -> Built:
    """Every model to compare as a file, and the per-seed accuracies, tier metrics and stage times the checks use.
    ``tier_overrides`` go to the tier runs only (``<tier>:`` ones to that tier), which then train in a folder named
    by their values."""
    cfg = base_config(scratch, overrides)
    datamodule = instantiate(cfg.data, where="data")
    datamodule.setup()
    shape = tuple(cfg.data.input_shape)
    cached = (Path(cfg.teacher.cache_dir) / teacher_cache_key(cfg) / "teacher.pt").is_file()
    began = time.perf_counter()
    teacher, info = obtain_teacher(cfg, datamodule)
    teacher = freeze(teacher)
    stages = {
        "teacher": (info.get("train_seconds"), "cached: the time recorded when it was trained")
        if cached
        else (time.perf_counter() - began, "trained in this run")
    }
    files, notes = teacher_rows(teacher, datamodule, scratch, mode, lowend_epochs(scratch, overrides, tier_overrides))
    unpruned_fp32 = [*overrides, SCRATCH_STUDENT, "~callbacks.pruning", "quantization=off"]
    accuracies = {}
    for name, extra in (("student alone", ["distill.alpha=0"]), ("student + KD", [])):
        slug = name.replace(" ", "_").replace("+", "kd")
        accuracies[name] = []
        for seed in mode.seeds:
            print(f"training {name}, seed {seed}", flush=True)
            metrics = finished_or_train([*unpruned_fp32, *extra, f"seed={seed}"], scratch / f"{slug}_{seed}")
            accuracies[name].append(metrics["student"]["test_acc"])
            if seed == mode.seeds[0]:
                files[name] = student_file(metrics, scratch / f"{slug}.onnx", shape)
        notes[name] = f"seed {mode.seeds[0]} (of {len(mode.seeds)} for the distillation check)"
    if tiers is None:
        tiers = scratch / tier_overrides_name("tiers", tier_overrides)
        for tier in TIERS:
            own = overrides_for_tier(tier, tier_overrides)
            print(f"training tier={tier}", " ".join(own), flush=True)
            finished_or_train([*overrides, *own, f"tier={tier}"], tiers / tier)
    tier_metrics = tier_runs(tiers)
    for tier in TIERS:
        stages[f"tier {tier}: distil, prune, quantize"] = (tier_metrics[tier]["train_seconds"], "")
    began = time.perf_counter()
    shutil.rmtree(scratch / "export", ignore_errors=True)
    tier_file, tier_note, unshipped = tier_files(tiers, scratch / "export", mode)
    files.update(tier_file)
    stages["export: three tiers, profiled"] = (time.perf_counter() - began, "")
    for tier in TIERS:
        notes[f"tierkit {tier}"] = f"{tier_note[tier]}; {tier_metrics[tier]['student']['params']:,} parameters"
    models = {"student": build_student(base_config(scratch, [*overrides, SCRATCH_STUDENT])), "teacher": teacher}
    return Built(files, notes, datamodule, models, tier_metrics, accuracies, stages, unshipped)


def opened(files: dict[str, Path], setting) -> dict[str, Callable[[np.ndarray], Callable[[], float]]]:
    """Each file opened once under ``setting``'s threads in its row's runtime; given a batch, a timing probe."""
    return {
        name: functools.partial(openvino_probe, compiled_model(path, setting.intra_op_num_threads))
        if name in OPENVINO_ROWS
        else functools.partial(latency_probe, setting_session(path, setting))
        for name, path in files.items()
    }


def measure_models(files: dict[str, Path], datamodule, mode: Mode) -> list[dict]:
    settings, _ = load_settings(CONFIG_DIR / "hardware", list(SETTINGS), ["ORT_ENABLE_ALL"])
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, *datamodule.input_shape)).astype(np.float32)
    many = rng.standard_normal((THROUGHPUT_BATCH, *datamodule.input_shape)).astype(np.float32)
    print(f"timing {len(files)} models interleaved under {', '.join(SETTINGS)}", flush=True)
    latency = {name: {} for name in files}
    for setting in settings:
        runners = opened(files, setting)
        single_ms = measure_latency({name: run(single) for name, run in runners.items()}, mode.repeats, mode.warmup)
        batch_ms = measure_latency(
            {name: run(many) for name, run in runners.items()}, mode.throughput_repeats, warmup=2
        )
        for name in files:
            latency[name][setting.hardware] = latency_row(setting, single_ms[name], batch_ms[name], THROUGHPUT_BATCH)
    rows = []
    for name, path in files.items():
        openvino = name in OPENVINO_ROWS
        rows.append(
            {
                "model": name,
                "file": path.name,
                "runtime": "OpenVINO" if openvino else "ONNX Runtime",
                "bytes": path.stat().st_size,
                "accuracy": openvino_accuracy(path, datamodule)
                if openvino
                else onnx_accuracy(ort_session(path), datamodule),
                **{f"{hw}_{key}": latency[name][hw][key] for hw in SETTINGS for key in ("p50_ms", "p90_ms")},
                **{f"{hw}_throughput_per_s": latency[name][hw]["throughput_per_s"] for hw in SETTINGS},
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
        # Augmented training batches are new every epoch, so distillation runs the teacher on each, cache or not.
        "cache_used": not getattr(datamodule, "augments", False),
    }


def check(name: str, passed: bool, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def pareto_check(lowend: dict, peer: dict) -> dict:
    """Does lowend match or beat ``peer`` on accuracy, file size and single-thread latency at once?"""
    losses = []
    if lowend["accuracy"] < peer["accuracy"]:
        losses.append(f"accuracy {100 * lowend['accuracy']:.2f}% vs {100 * peer['accuracy']:.2f}%")
    if lowend["bytes"] > peer["bytes"]:
        losses.append(f"size {lowend['bytes'] / 1024:.1f} vs {peer['bytes'] / 1024:.1f} KiB")
    if lowend["cpu_1thread_p50_ms"] > peer["cpu_1thread_p50_ms"]:
        losses.append(f"latency {lowend['cpu_1thread_p50_ms']:.4f} vs {peer['cpu_1thread_p50_ms']:.4f} ms")
    detail = "loses on " + "; ".join(losses) if losses else "at least as accurate, small and fast"
    return check(f"lowend Pareto-dominates {peer['model']}", not losses, detail)


def checks(rows: list[dict], built: Built, floor: dict, data: str | None) -> list[dict]:
    """Every target of the comparison, each one PASS or MISS with the figures behind it."""
    by_name = {row["model"]: row for row in rows}
    teacher, lowend = by_name["teacher"], by_name["tierkit lowend"]
    results = [
        check(
            "export ships a model for every tier",
            not built.unshipped,
            f"nothing for {', '.join(built.unshipped)}: their rows are the best effort"
            if built.unshipped
            else "all three ship",
        )
    ]
    results += [pareto_check(lowend, by_name[peer]) for peer in PEERS]
    results.append(
        check(
            "lowend within 1 point of the teacher",
            lowend["drop_points"] <= 1.0,
            f"{-lowend['drop_points']:+.2f} points against the teacher",
        )
    )
    alone, distilled = built.student_accuracies["student alone"], built.student_accuracies["student + KD"]
    gain = 100 * (statistics.mean(distilled) - statistics.mean(alone))
    results.append(
        check(
            f"distillation gain >= +{DISTILLATION_GAIN_POINTS} points (mean of {len(alone)} "
            f"seed{'s' if len(alone) > 1 else ''})",
            gain >= DISTILLATION_GAIN_POINTS,
            f"{gain:+.2f} points: alone {spread(alone)}%, distilled {spread(distilled)}%",
        )
    )
    multiple = lowend["cpu_1thread_p50_ms"] / floor["lowend_floor_ms"]
    results.append(
        check(
            f"lowend batch-1 latency within {FLOOR_MULTIPLE:g}x of the hardware floor",
            multiple <= FLOOR_MULTIPLE,
            f"{multiple:.1f}x ({lowend['cpu_1thread_p50_ms']:.4f} ms against {floor['lowend_floor_ms']:.5f} ms)",
        )
    )
    targets = DATASET_TARGETS.get(data or "")
    if targets:
        params = built.tier_metrics["lowend"]["student"]["params"]
        results += [
            check(
                f"teacher >= {100 * targets['teacher_acc']:.1f}% test accuracy",
                teacher["accuracy"] >= targets["teacher_acc"],
                f"{100 * teacher['accuracy']:.2f}%",
            ),
            check(
                f"lowend >= {100 * targets['lowend_acc']:.1f}% with <= {targets['lowend_params']:,} parameters",
                lowend["accuracy"] >= targets["lowend_acc"] and params <= targets["lowend_params"],
                f"{100 * lowend['accuracy']:.2f}% with {params:,} parameters",
            ),
            check(
                f"lowend >= {targets['smaller']}x smaller and >= {targets['faster']}x faster (1 thread) than the "
                "teacher's FP32 file",
                lowend["size_ratio"] >= targets["smaller"] and lowend["speedup_1thread"] >= targets["faster"],
                f"{lowend['size_ratio']:.1f}x smaller, {lowend['speedup_1thread']:.1f}x faster",
            ),
        ]
    return results


def measure_floor(scratch: Path, lowend_macs: int, mode: Mode) -> dict:
    """The best MAC rates here and the least time lowend's MACs could take at the best of them."""
    print("measuring the hardware floor (large convolution and matrix product, FP32 and INT8)", flush=True)
    folder = scratch / "floor"
    folder.mkdir(exist_ok=True)
    rates = mac_rates(folder, threads=1, repeats=mode.floor_repeats)
    return {
        "gmac_per_s": {k: v / 1e9 for k, v in rates.items()},
        "lowend_macs": lowend_macs,
        "lowend_floor_ms": floor_ms(lowend_macs, rates),
    }


def one_off_pass(loop: dict) -> str:
    """The teacher-logit cache's pass at fit start, in seconds; with the cache off both fits start alike and their
    difference is only timing noise (it printed -0.00), so the cell says so instead."""
    if not loop["cache_used"]:
        return "none (cache off)"
    return f"{loop['fit_start_s_cache'] - loop['fit_start_s_no_cache']:.2f}"


def table_lines(rows: list[dict], built: Built, loop: dict, results: list[dict], floor: dict, command: str):
    threads = f"all ({os.cpu_count()})"
    lightning, plain = loop["lightning_steps_per_s"], loop["plain_steps_per_s"]
    lines = [
        f"Machine: {describe()}",
        f"Command: `{command}`",
        "",
        "| model | what | runtime | test acc | vs teacher (points) | size | smaller | p50 / p90 1 thread (ms) "
        f"| speed-up | p50 / p90 {threads} threads (ms) | speed-up | batch-{THROUGHPUT_BATCH} /s, {threads} threads |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        what = "; ".join(part for part in (ROWS[row["model"]], built.notes.get(row["model"], "")) if part)
        lines.append(
            f"| {row['model']} | {what} | {row['runtime']} | {100 * row['accuracy']:.2f}% "
            f"| {0.0 - row['drop_points']:+.2f} | {row['bytes'] / 1024:.1f} KiB | {row['size_ratio']:.1f}x "
            f"| {row['cpu_1thread_p50_ms']:.4f} / {row['cpu_1thread_p90_ms']:.4f} | {row['speedup_1thread']:.1f}x "
            f"| {row['cpu_all_p50_ms']:.4f} / {row['cpu_all_p90_ms']:.4f} | {row['speedup_all']:.1f}x "
            f"| {row['cpu_all_throughput_per_s']:,.0f} |"
        )
    lines += ["", "| target | result | figures |", "|---|---|---|"]
    lines += [f"| {r['name']} | {'PASS' if r['passed'] else 'MISS'} | {r['detail']} |" for r in results]
    rates = ", ".join(f"{name} {rate:.0f}" for name, rate in floor["gmac_per_s"].items())
    lines += [
        "",
        f"Hardware floor, one thread (GMAC/s): {rates}. lowend's {floor['lowend_macs']:,} MACs at the best rate: "
        f"{floor['lowend_floor_ms']:.5f} ms.",
        "",
        "| pipeline stage (2 cores) | wall time | note |",
        "|---|---:|---|",
    ]
    for stage, (seconds, note) in built.stages.items():
        lines.append(f"| {stage} | {'-' if seconds is None else f'{seconds / 60:.1f} min'} | {note} |")
    total = [seconds for seconds, _ in built.stages.values()]
    if None not in total:
        lines.append(f"| **whole pipeline** | **{sum(total) / 60:.1f} min** | |")
    lines += [
        "",
        f"| training loop (default student, batch {loop['batch_size']}) | figure |",
        "|---|---:|",
        f"| Lightning distillation steps/s (teacher run every step) | {lightning:.1f} |",
        f"| plain PyTorch loop, same work, steps/s | {plain:.1f} |",
        f"| Lightning's extra time per step | {100 * (plain / lightning - 1):+.0f}% |",
        f"| KD epoch, teacher run every step (s) | {loop['kd_epoch_s_no_cache']:.2f} |",
        f"| KD epoch, teacher-logit cache (s){'' if loop['cache_used'] else ' (off: augmented batches)'} | "
        f"{loop['kd_epoch_s_cache']:.2f} |",
        f"| cache's one-off teacher pass at fit start (s) | {one_off_pass(loop)} |",
        "",
        f"Latency: medians and 90th percentiles of batch-1 runs (ONNX Runtime with all graph optimizations, or "
        f"OpenVINO in f32 with the latency hint), every model timed interleaved after warm-up; throughput at batch "
        f"{THROUGHPUT_BATCH}. Accuracy: the row's runtime on the test split. Steps/s: median of {loop['repeats']} "
        f"alternating runs of {loop['steps']} steps after warm-up. Epoch times: median of epochs "
        f"2-{loop['kd_epochs']} of one fit each.",
    ]
    return lines


def plain_log_axis(axis) -> None:
    """Log scale with 1-2-5 ticks written as plain numbers."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def row_colour(name: str) -> str:
    """tierkit's tiers green, the peer tools orange, the teacher and the plain students grey."""
    return "tab:green" if name.startswith("tierkit") else "tab:orange" if name in PEERS else "tab:gray"


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against single-thread latency (marker area ~ file size), and file sizes side by side.

    Points are numbered rather than named, because peers of the same size and speed sit on top of each other; the
    bar chart beside gives each number its row."""
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    scatter, bars = figure.subplots(1, 2, width_ratios=[3, 2])
    largest = max(row["bytes"] for row in rows)
    for number, row in enumerate(rows, 1):
        colour = row_colour(row["model"])
        area = 40 + 800 * row["bytes"] / largest
        scatter.scatter(row["cpu_1thread_p50_ms"], 100 * row["accuracy"], s=area, color=colour, alpha=0.6)
        scatter.annotate(
            str(number),
            (row["cpu_1thread_p50_ms"], 100 * row["accuracy"]),
            fontsize=8,
            xytext=(6, 3 if number % 2 else -10),
            textcoords="offset points",
        )
    scatter.set_xscale("log")
    plain_log_axis(scatter.xaxis)
    scatter.set_xlabel("batch-1 latency p50, 1 thread (ms, log)")
    scatter.set_ylabel("test accuracy, in the row's runtime (%)")
    scatter.set_title("accuracy against latency (marker area ~ file size)")
    names = [f"{number}  {row['model']}" for number, row in enumerate(rows, 1)]
    bars.barh(
        names,
        [row["bytes"] / 1024 for row in rows],
        color=[row_colour(row["model"]) for row in rows],
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
    parser.add_argument("--data", help="a data= option for every run (e.g. fashion_mnist); default: the default data")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic data and few repeats: a smoke test")
    parser.add_argument("--tiers", type=Path, help="an existing sweep of the three tiers to take instead of training")
    parser.add_argument(
        "--tier-overrides",
        nargs="+",
        default=[],
        metavar="OVERRIDE",
        help="Hydra overrides for the three tier runs only (e.g. student=from_teacher callbacks.pruning.mode=budget), "
        "or for one tier with its name in front (lowend:model=separable); results are named by their values",
    )
    parser.add_argument("--readme", action="store_true", help="also write the tables into README.md")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick needs one)")
    parser.add_argument(
        "--work",
        type=Path,
        help="keep every trained run and file here (default: a temporary folder); a rerun with the same folder and "
        "options reuses what a stopped run finished",
    )
    args = parser.parse_args()
    if args.quick and (args.out is None or args.readme):
        parser.error("--quick needs --out and cannot fill the README (its figures are not the real ones)")
    if args.quick and args.data:
        parser.error("--quick runs on tiny synthetic data; drop --data")
    silence_known_noise()
    print(describe(), flush=True)
    mode = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="tierkit-compare-") as tmp:
        scratch = args.work or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        cache = [f"paths.cache_dir={scratch / 'cache'}"] if args.quick else []
        overrides = [*cache, *mode.data, *([f"data={args.data}"] if args.data else [])]
        built = build_files(scratch, mode, args.tiers, overrides, args.tier_overrides)
        rows = measure_models(built.files, built.datamodule, mode)
        floor = measure_floor(scratch, built.tier_metrics["lowend"]["student"]["macs"], mode)
    loop = measure_loop(built.models, built.datamodule, mode)
    results = checks(rows, built, floor, args.data)
    command = "python -m benchmarks.compare" + (f" --data {args.data}" if args.data else "")
    command += " --quick" if args.quick else ""
    command += " --tier-overrides " + " ".join(args.tier_overrides) if args.tier_overrides else ""
    lines = table_lines(rows, built, loop, results, floor, command)
    folder = args.out or RESULTS
    name = tier_overrides_name(f"compare_{args.data}" if args.data else "compare", args.tier_overrides)
    payload = {
        "mode": "quick" if args.quick else "full",
        "data": args.data,
        "tier_overrides": args.tier_overrides,
        "rows": rows,
        "checks": results,
        "unshipped": built.unshipped,
        "floor": floor,
        "stages": {stage: {"seconds": seconds, "note": note} for stage, (seconds, note) in built.stages.items()},
        "student_accuracies": built.student_accuracies,
        "loop": loop,
    }
    written = save_results(name, payload, lines, folder)
    plot(rows, folder / f"{name}.png")
    if args.readme:
        update_readme([*written, "", f"![accuracy, latency and size of every row](benchmarks/results/{name}.png)"])


if __name__ == "__main__":
    main()
