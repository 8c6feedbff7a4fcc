"""`python export.py`: turn finished runs into a deployable set.

One verified ONNX variant per tier and precision, profiled under every hardware setting, checked against the
tier's budgets, and described in manifest.json (with report.md and pareto.png) for `tierkit.runtime`.
"""

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

import tierkit.utils.resolvers  # noqa: F401  (registers the config resolvers)
from tierkit.distill.teacher import find_run_teacher, load_teacher
from tierkit.errors import TierkitError
from tierkit.export.cpu_classes import float_cpu_facts, int8_cpu_facts
from tierkit.export.manifest import complete_manifest, provenance
from tierkit.export.report import write_report
from tierkit.export.tiers import PRECISIONS, budget_latency, choose_shipping
from tierkit.models.checkpoint import load_student
from tierkit.models.qat import float_copy, is_prepared, qat_settings
from tierkit.onnxio import export_onnx, max_output_difference, onnx_accuracy
from tierkit.onnxio.verify import check_onnx, float_compute_ops
from tierkit.profile import load_settings, ort_session
from tierkit.profile.memory import peak_memory_mib
from tierkit.profile.operators import operator_profile
from tierkit.profile.variants import fastest, profile_models
from tierkit.quant import calibration_samples, convert_fp16, quantize_int8
from tierkit.quant.qdq import export_qat_onnx
from tierkit.runtime import sha256_of
from tierkit.runtime.cpu import REDUCED_WEIGHT_BITS, TARGET_NAMES
from tierkit.tracking import log_export, runs_group
from tierkit.utils.files import write_json
from tierkit.utils.instantiate import instantiate
from tierkit.utils.model_stats import model_stats
from tierkit.utils.noise import silence_known_noise

log = logging.getLogger(__name__)

# Where the code came from, for the manifest's git commit (an installed copy has none).
REPO_DIR = Path(__file__).resolve().parents[3]
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
HARDWARE_DIR = Path(CONFIG_DIR) / "hardware"
# Runs trained before tiers named these keys get what the tier configs say today.
DEFAULT_BUDGET_HARDWARE = "cpu_1thread"
DEFAULT_DEVICE = {"min_cores": 1, "min_memory_mib": 0}


def find_runs(cfg: DictConfig) -> list[Path]:
    """Run folders to export: the one named, every job of a sweep folder, or the newest of either."""
    root = Path(cfg.paths.root_dir)
    checkpoint = f"checkpoints/{cfg.checkpoint}.ckpt"
    if cfg.run == "latest":
        candidates = [p for folder in ("outputs", "multirun") for p in (root / folder).glob("*/*") if p.is_dir()]
        runs_by_folder = {c: sorted(p.parent.parent for p in c.glob(f"**/{checkpoint}")) for c in candidates}
        runs_by_folder = {c: runs for c, runs in runs_by_folder.items() if runs}
        if not runs_by_folder:
            raise TierkitError(
                f"no run with a {checkpoint} under {root / 'outputs'} or {root / 'multirun'}",
                where="run",
                fix="train first (python train.py), or pass run=<folder>",
            )
        return runs_by_folder[max(runs_by_folder, key=lambda c: c.stat().st_mtime)]
    folder = Path(cfg.run).expanduser()
    runs = sorted(p.parent.parent for p in folder.glob(f"**/{checkpoint}")) if folder.is_dir() else []
    if not runs:
        raise TierkitError(
            f"{folder} holds no {checkpoint}" if folder.is_dir() else f"run folder {folder} does not exist",
            where="run",
            fix="pass a run folder (outputs/<date>/<time>) or a sweep folder (multirun/<date>/<time>)",
        )
    return runs


def shipped_qat_student(run: Path, student: nn.Module, checkpoint: str) -> nn.Module | None:
    """The QAT model that a run ships as its INT8 variant, if its quantization stage chose QAT."""
    if is_prepared(student):
        return student
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if metrics.get("quantization", {}).get("path") != "qat":
        return None
    qat_checkpoint = run / "checkpoints" / "qat" / f"{checkpoint}.ckpt"
    if not qat_checkpoint.is_file():
        raise TierkitError(
            f"{metrics_path} says QAT shipped, but {qat_checkpoint} is missing",
            where=str(run),
            fix="re-run training for this run, or export with checkpoint=last if qat/last.ckpt exists",
        )
    return load_student(qat_checkpoint)[0]


@dataclass
class Run:
    """A run folder with the student and config its checkpoint holds."""

    folder: Path
    student: nn.Module
    config: DictConfig
    name: str = ""
    variants: list[dict] = field(default_factory=list)


def check_precisions(cfg: DictConfig) -> None:
    unknown = set(cfg.precisions) - set(PRECISIONS)
    if unknown or not cfg.precisions:
        raise TierkitError(
            f"unknown precision(s) {sorted(unknown)}" if unknown else "precisions is empty",
            where="precisions",
            fix=f"choose from {', '.join(PRECISIONS)}",
        )


def int8_weight_bits(cfg: DictConfig) -> list[int]:
    """The INT8 weight ranges to export: ``int8_weight_bits``, or the one the deprecated ``reduce_range`` names."""
    if cfg.get("reduce_range") is not None:
        bits = [REDUCED_WEIGHT_BITS if cfg.reduce_range else 8]
        log.warning(
            "export's reduce_range is deprecated and will be removed: use int8_weight_bits=%s (default [8,7]: "
            "both ranges, so x86 CPUs without VNNI get an exact file)",
            bits,
        )
        return bits
    raw = cfg.int8_weight_bits
    bits = list(raw) if isinstance(raw, ListConfig | list) else [raw]
    if not bits or len(set(bits)) != len(bits) or not set(bits) <= {8, REDUCED_WEIGHT_BITS}:
        raise TierkitError(
            f"int8_weight_bits must list 8, 7 or both, once each; got {bits}",
            where="int8_weight_bits",
            fix="use int8_weight_bits=[8,7] (both), [8] (full range) or [7] (exact on x86 without VNNI)",
        )
    return bits


def int8_key(bits: int) -> str:
    """The variant key of an INT8 file: 'int8' for full-range weights, 'int8_w7' for 7-bit ones."""
    return "int8" if bits == 8 else f"int8_w{bits}"


def variant_files(
    run: Run, student: nn.Module, cfg: DictConfig, target: Path, datamodule
) -> tuple[dict[str, Path], dict[str, dict]]:
    """Write the run's FP32 (and FP16) files from the float ``student``, and one INT8 file per weight range.

    Keys are variant keys (fp32, fp16, int8, int8_w7); the second value holds per-file facts worth recording.
    A run whose QAT model shipped exports that model in the range it was trained in; another range it is asked
    for comes from post-training quantization of its float student.
    """
    qat_student = shipped_qat_student(run.folder, run.student, cfg.checkpoint)
    shape = tuple(run.config.data.input_shape)
    paths = {"fp32": export_onnx(student, target / "fp32.onnx", shape)}
    difference = max_output_difference(student, ort_session(paths["fp32"]), torch.randn(8, *shape))
    if difference > cfg.max_logit_difference:
        raise TierkitError(
            f"ONNX Runtime and PyTorch disagree on {paths['fp32']} (max logit difference {difference:.2e})",
            where=str(run.folder),
            fix="report this model: an operator exported incorrectly",
        )
    facts: dict[str, dict] = {"fp32": {"max_logit_difference": difference}, "fp16": {}}
    if "fp16" in cfg.precisions:
        paths["fp16"] = convert_fp16(paths["fp32"], target / "fp16.onnx")
    if "int8" in cfg.precisions:
        qat_bits = None
        if qat_student is not None:
            settings = qat_settings(qat_student)
            qat_bits = REDUCED_WEIGHT_BITS if settings["reduce_range"] else 8
        per_channel = run_per_channel(run.config) if cfg.per_channel is None else bool(cfg.per_channel)
        samples = None
        for bits in cfg.int8_weight_bits:
            key = int8_key(bits)
            if bits == qat_bits:
                paths[key] = export_qat_onnx(qat_student, target / f"{key}.onnx", shape)
                facts[key] = {"int8_method": "qat", "reduce_range": bits < 8, "per_channel": settings["per_channel"]}
                continue
            calibration = cfg.calibration
            if samples is None:
                samples = calibration_samples(datamodule, calibration.samples, calibration.batch_size, calibration.seed)
            paths[key] = quantize_int8(
                paths["fp32"],
                target / f"{key}.onnx",
                samples,
                calibration.batch_size,
                calibration.method,
                bits < 8,
                per_channel=per_channel,
            )
            facts[key] = {
                "int8_method": "ptq",
                "reduce_range": bits < 8,
                "per_channel": per_channel,
                "calibration": {**OmegaConf.to_container(calibration), "sha256": sha256_of_array(samples)},
            }
        for key in facts:
            if key.startswith("int8"):
                facts[key]["float_compute_ops"] = float_compute_ops(paths[key])
    for path in paths.values():
        check_onnx(path)
    return paths, facts


def run_per_channel(config: DictConfig) -> bool:
    """Whether the run quantized weights per channel; runs from before the setting existed did."""
    return bool(OmegaConf.select(config, "quantization.per_channel", default=True))


def sha256_of_array(samples: np.ndarray) -> str:
    """Digest of the calibration inputs, so two exports can tell whether they calibrated on the same data."""
    return hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()


def describe_file(path: Path, out: Path, datamodule, stats: dict[str, int]) -> dict:
    """What the manifest says of every model file: where it is, its digest and size, its accuracy and cost."""
    return {
        "file": path.relative_to(out).as_posix(),
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "accuracy": onnx_accuracy(ort_session(path), datamodule),
        "params": stats["params"],
        "macs": stats["macs"],
    }


def export_variants(run: Run, cfg: DictConfig, out: Path, folder_name: str) -> list[dict]:
    """Every file of one run as manifest variants (measurements other than accuracy come later)."""
    config = run.config
    tier = config.tier
    datamodule = instantiate(config.data, where=f"{run.folder} data config")
    student = float_copy(run.student) if is_prepared(run.student) else run.student
    paths, facts = variant_files(run, student, cfg, out / folder_name, datamodule)
    stats = model_stats(student, config.data.input_shape)
    variants = []
    for key, path in paths.items():
        precision = "int8" if key.startswith("int8") else key
        if precision not in cfg.precisions:
            continue
        described = describe_file(path, out, datamodule, stats)
        if precision == "int8":
            described.update(int8_cpu_facts(path, datamodule, described["accuracy"]))
        else:
            described.update(float_cpu_facts(described["accuracy"]))
        variants.append(
            {
                "name": f"{folder_name}-{key.replace('_', '-')}",
                "tier": tier.name,
                "precision": precision,
                **described,
                "run": str(run.folder),
                "seed": config.get("seed"),
                "budgets": tier_budgets(tier),
                "budget_hardware": tier.get("budget_hardware", DEFAULT_BUDGET_HARDWARE),
                "allowed_precisions": list(tier.get("precisions", PRECISIONS)),
                "device": OmegaConf.to_container(tier.device) if "device" in tier else dict(DEFAULT_DEVICE),
                **facts.get(key, {}),
            }
        )
    return variants


def tier_budgets(tier: DictConfig) -> dict:
    """A run's tier budgets under today's names: runs trained before the rename call the accuracy budget
    max_accuracy_drop."""
    budgets = OmegaConf.to_container(tier.budgets)
    old = budgets.pop("max_accuracy_drop", None)
    if budgets.get("max_drop_vs_teacher") is None:
        budgets["max_drop_vs_teacher"] = old
    return budgets


def export_teacher(runs: list[Run], out: Path) -> dict:
    """The teacher every run distilled from, as FP32 ONNX: the reference the tiers' accuracy budgets count from."""
    sources = {find_run_teacher(run.folder, run.config): run for run in runs}
    if len(sources) > 1:
        raise TierkitError(
            f"the runs distilled from {len(sources)} different teachers ({', '.join(map(str, sources))})",
            where="run",
            fix="export runs that share one teacher together (one sweep), and the others separately",
        )
    datas = {json.dumps(OmegaConf.to_container(run.config.data, resolve=True), sort_keys=True) for run in runs}
    if len(datas) > 1:
        raise TierkitError(
            "the runs were trained on different data configs, so their accuracies cannot be compared",
            where="run",
            fix="export runs trained on the same data together, and the others separately",
        )
    (source, run), config = next(iter(sources.items())), runs[0].config
    shape = list(config.data.input_shape)
    teacher, _ = load_teacher(source, config.model.teacher, shape, config.data.num_classes)
    path = export_onnx(teacher, out / "teacher" / "fp32.onnx", tuple(shape))
    stats = model_stats(teacher, shape)
    datamodule = instantiate(config.data, where=f"{run.folder} data config")
    entry = {"name": "teacher", "precision": "fp32", **describe_file(path, out, datamodule, stats)}
    return {**entry, "source": str(source)}


def load_runs(folders: list[Path], checkpoint: str) -> list[Run]:
    """Load every run's student and config; a tier with several runs names their folders after the run."""
    runs = []
    for folder in folders:
        student, config = load_student(folder / "checkpoints" / f"{checkpoint}.ckpt")
        runs.append(Run(folder=folder, student=student, config=config))
    tiers = [run.config.tier.name for run in runs]
    for run in runs:
        tier = run.config.tier.name
        run.name = tier if tiers.count(tier) == 1 else f"{tier}-{run.folder.name}"
    return runs


def measure(files: dict[str, Path], entries: dict[str, dict], shape: list[int], cfg: DictConfig, progress) -> list:
    """Latency rows, best setting, peak memory and operator profile for every model; returns skipped settings."""
    profiling = cfg.profiling
    levels = list(profiling.graph_optimization_levels) if profiling.graph_optimization_levels else None
    settings, skipped = load_settings(HARDWARE_DIR, list(profiling.hardware), levels)
    measured = {s.hardware for s in settings}
    for name, entry in entries.items():
        if entry.get("budget_hardware", next(iter(measured))) not in measured:
            raise TierkitError(
                f"{name}'s tier checks latency on {entry['budget_hardware']}, which is not measured here",
                where="profiling.hardware",
                fix=f"add {entry['budget_hardware']} to profiling.hardware (measured now: {sorted(measured)})",
            )
    task = progress.add_task("Profiling latency", total=len(settings))
    rows = profile_models(
        files,
        shape,
        settings,
        profiling.repeats,
        profiling.warmup,
        profiling.throughput_batch,
        profiling.throughput_repeats,
        advance=lambda label: progress.update(task, advance=1, description=f"Profiling latency ({label})"),
    )
    by_row = {(s.hardware, s.graph_optimization_level): s for s in settings}
    batch = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    task = progress.add_task("Memory and operator profiles", total=len(files))
    for name, path in files.items():
        entry = entries[name]
        entry["latency"] = rows[name]
        best = fastest(rows[name])
        setting = by_row[(best["hardware"], best["graph_optimization_level"])]
        entry["setting"] = setting.as_row()
        entry["peak_memory_mib"] = peak_memory_mib(path, setting, shape) if profiling.memory else None
        entry["operators"] = operator_profile(
            path, setting, batch, runs=profiling.operator_runs, top=profiling.top_operators
        )
        progress.advance(task)
    return skipped


def print_summary(manifest: dict, out: Path) -> None:
    """The variants against their budgets as a table, then one line per tier saying what ships and why."""
    table = Table(title=f"tierkit export in {out}")
    for column in ("variant", "ships", "accuracy", "drop (points)", "size", "budget p50", "budgets"):
        table.add_column(column, justify="left" if column in ("variant", "ships", "budgets") else "right")
    teacher, variants = manifest["teacher"], manifest["variants"]
    for v in [teacher, *variants]:
        failed = [name for name, passed in v.get("checks", {}).items() if not passed]
        verdict = "[green]pass[/]" if not failed else f"[red]fail: {', '.join(failed)}[/]"
        table.add_row(
            v["name"],
            "[green]yes[/]" if v.get("ships") else "no",
            f"{100 * v['accuracy']:.2f}%",
            f"{-100 * v.get('accuracy_drop', 0):+.2f}",
            f"{v['bytes'] / 1024:.1f} KiB",
            f"{budget_latency(v)['p50_ms']:.4f} ms on {v['budget_hardware']}" if "budget_hardware" in v else "",
            verdict if "checks" in v else "reference",
        )
    console = Console()
    console.print(table)
    for tier in dict.fromkeys(v["tier"] for v in variants):
        shipped = [v for v in variants if v["tier"] == tier and v["ships"]]
        if shipped:
            console.print(f"[bold]{tier}[/] ships {shipped[0]['name']}: {shipped[0]['why']}")
            for stand_in in (v for v in variants if v["tier"] == tier and v["ships_for"] and not v["ships"]):
                targets = ", ".join(TARGET_NAMES[t] for t in stand_in["ships_for"])
                console.print(f"  and {stand_in['name']} on {targets}: {shipped[0]['name']} is not exact there")
        else:
            reasons = "; ".join(f"{v['name']} {v['why']}" for v in variants if v["tier"] == tier)
            console.print(f"[red][bold]{tier}[/] ships nothing: {reasons}[/]")
    for note in manifest["profiling"]["skipped"]:
        console.print(f"Not measured: {note}")
    console.print(f"Wrote {out / 'manifest.json'}, {out / 'report.md'} and {out / 'pareto.png'}")


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export, measure and describe every run; returns the manifest that was written."""
    out = Path(cfg.output_dir)
    if (out / "manifest.json").exists():
        raise TierkitError(
            f"{out} already holds an export (manifest.json); writing into it would change files it describes",
            where="output_dir",
            fix="pass a new output_dir, or delete the old export first",
        )
    check_precisions(cfg)
    cfg.int8_weight_bits, cfg.reduce_range = int8_weight_bits(cfg), None
    runs = load_runs(find_runs(cfg), cfg.checkpoint)
    shape = list(runs[0].config.data.input_shape)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )
    with progress:
        task = progress.add_task("Exporting runs to ONNX", total=len(runs) + 1)
        teacher = export_teacher(runs, out)
        progress.advance(task)
        variants = []
        for run in runs:
            variants += export_variants(run, cfg, out, run.name)
            progress.advance(task)
        entries = {"teacher": teacher, **{v["name"]: v for v in variants}}
        files = {name: out / entry["file"] for name, entry in entries.items()}
        skipped = measure(files, entries, shape, cfg, progress)
    choose_shipping(variants, teacher["accuracy"])
    input_name = ort_session(files["teacher"]).get_inputs()[0].name
    measured_hardware = [row["hardware"] for row in teacher["latency"]]
    plot_hardware = cfg.profiling.plot_hardware
    body = {
        "provenance": provenance(REPO_DIR, [run.config.get("seed") for run in runs]),
        "input": {"name": input_name, "shape": shape, "dtype": "float32"},
        "num_classes": int(runs[0].config.data.num_classes),
        "teacher": teacher,
        "variants": variants,
        "profiling": {
            **OmegaConf.to_container(cfg.profiling),
            "skipped": skipped,
            "plot_hardware": plot_hardware if plot_hardware in measured_hardware else measured_hardware[0],
            "accuracy_reference": "teacher fp32 in ONNX Runtime, test split",
        },
    }
    manifest = complete_manifest(body, out / "manifest.json")
    write_report(manifest, out)
    write_json(out / "manifest.json", manifest)
    print_summary(manifest, out)
    if cfg.wandb.enabled:
        config = OmegaConf.to_container(cfg, resolve=True)
        log_export(manifest, out, cfg.wandb, config, runs_group([run.config for run in runs]))
    return manifest


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    silence_known_noise()
    try:
        export(cfg)
    except TierkitError as exc:
        log.error("%s", exc.render())
        sys.exit(2)


if __name__ == "__main__":
    main()
