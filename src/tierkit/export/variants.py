"""The runs an export covers and the files it makes of each: FP32, FP16 and one INT8 file per weight range,
verified against PyTorch and described for the manifest (digest, size, accuracy, cost, CPU-class facts)."""

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from tierkit.distill.teacher import find_run_teacher, load_teacher
from tierkit.errors import TierkitError
from tierkit.export.cpu_classes import float_cpu_facts, int8_cpu_facts
from tierkit.models.checkpoint import load_student, shipped_int8_path, shipped_int8_recipe
from tierkit.models.qat import float_copy, is_prepared, qat_settings
from tierkit.onnxio import export_onnx, max_output_difference, onnx_accuracy
from tierkit.onnxio.verify import check_onnx, float_compute_ops
from tierkit.profile import ort_session
from tierkit.quant import calibration_samples, convert_fp16, quantize_int8
from tierkit.quant.ptq import first_layer, samples_digest
from tierkit.quant.qdq import export_qat_onnx
from tierkit.run_folder import QuantizationReport, RunFolder
from tierkit.runtime import sha256_of
from tierkit.runtime.cpu import REDUCED_WEIGHT_BITS
from tierkit.utils.files import atomic_write
from tierkit.utils.instantiate import instantiate
from tierkit.utils.model_stats import model_stats

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A run folder with the student and config its checkpoint holds."""

    folder: Path
    student: nn.Module
    config: DictConfig
    name: str = ""
    # The INT8 model the run's quantization stage chose to ship: "ptq", "tuned", "qat", or None (not quantized).
    int8_path: str | None = None


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


def load_runs(folders: list[Path], checkpoint: str) -> list[Run]:
    """Load every run's student and config; a tier with several runs names their folders after the run."""
    runs = []
    for folder in folders:
        run_folder = RunFolder(folder)
        student, config = load_student(run_folder.checkpoint(checkpoint))
        int8_path = shipped_int8_path(run_folder.checkpoint(checkpoint), run_folder)
        runs.append(Run(folder=folder, student=student, config=config, int8_path=int8_path))
    tiers = [run.config.tier.name for run in runs]
    for run in runs:
        tier = run.config.tier.name
        run.name = tier if tiers.count(tier) == 1 else f"{tier}-{run.folder.name}"
    return runs


def shipped_qat_checkpoint(run: Run, checkpoint: str) -> Path | None:
    """The checkpoint of the QAT model a run ships as its INT8 variant, if its quantization stage chose QAT."""
    folder = RunFolder(run.folder)
    if is_prepared(run.student):
        return folder.checkpoint(checkpoint)
    if run.int8_path != "qat":
        return None
    qat_checkpoint = folder.checkpoint(checkpoint, qat=True)
    if not qat_checkpoint.is_file():
        raise TierkitError(
            f"{folder.checkpoint(checkpoint)} says QAT shipped, but {qat_checkpoint} is missing",
            where=str(run.folder),
            fix="re-run training for this run, or export with checkpoint=last if qat/last.ckpt exists",
        )
    return qat_checkpoint


@dataclass
class TrainedFiles:
    """The ONNX files a run's quantization stage wrote and judged; export ships them as they are when it would
    make the same file, so the file that ships is the file whose accuracy decided PTQ or QAT."""

    folder: RunFolder
    report: QuantizationReport | None

    def same_checkpoint(self, recorded: str | None, loaded: Path) -> bool:
        return recorded is not None and (self.folder.root / recorded).resolve() == loaded.resolve()

    def find(self, key: str, loaded: Path, settings: dict | None = None) -> tuple[Path | None, str]:
        """Training's file for variant ``key`` (``fp32``, ``fp16``, ``ptq``, ``tuned`` or ``qat``) made from checkpoint
        ``loaded`` with ``settings``, or None and why export makes its own."""
        report = self.report
        if report is None:
            return None, "the run's metrics.json records no quantization stage"
        scores = getattr(report, key)
        if scores is None or scores.sha256 is None:
            return None, f"training recorded no {key} file"
        made_from = scores.checkpoint if key == "qat" else report.source_checkpoint
        if not self.same_checkpoint(made_from, loaded):
            return None, f"training made its {key} file from {made_from}, export loads {loaded.name}"
        if settings is not None:
            recorded = {"reduce_range": report.reduce_range, "per_channel": report.per_channel}
            recorded["calibration"], recorded["int16_layers"] = report.calibration, []
            recorded["float_layers"] = list(report.float_layers)
            if scores.recipe is not None:  # a tuned file: its own calibration method, scales and mixed precision
                recorded["calibration"] = {**(report.calibration or {}), "method": scores.recipe["method"]}
                recorded["per_channel"] = scores.recipe["per_channel"]
                recorded["float_layers"] = scores.recipe["float_layers"]
                recorded["int16_layers"] = scores.recipe.get("int16_layers", [])
            differing = sorted(name for name in settings if settings[name] != recorded[name])
            if differing:
                return None, f"export's settings differ from training's: {', '.join(differing)}"
        path = self.folder.quantization / scores.file
        if not path.is_file() or sha256_of(path) != scores.sha256:
            return None, f"{path} is missing or changed since training measured it"
        return path, ""


def reuse_or_make(key: str, found: tuple[Path | None, str], target: Path, make) -> tuple[Path, dict]:
    """Copy training's file into the export, or make it with ``make(path)``; the facts say which, and why."""
    source, why = found
    path = target / f"{key}.onnx"
    if source is not None:
        target.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))
        return path, {"made_by": "training", "training_file": source.name}
    log.info("%s: export makes %s itself (%s)", target.name, path.name, why)
    return make(path), {"made_by": "export", "remade_because": why}


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
    """The run's FP32 (and FP16) files of the float ``student``, and one INT8 file per weight range.

    Keys are variant keys (fp32, fp16, int8, int8_w7); the second value holds per-file facts worth recording.
    Each file is the one training's quantization stage judged when export would make the same file (same
    checkpoint, weight range, per-channel setting and calibration); otherwise export makes it and says why.
    A run whose QAT model shipped exports that model in the range it was trained in; another range it is asked
    for comes from post-training quantization of its float student.
    """
    folder = RunFolder(run.folder)
    metrics = folder.read_metrics()
    trained = TrainedFiles(folder, metrics.quantization if metrics else None)
    loaded = folder.checkpoint(cfg.checkpoint)
    shape = tuple(run.config.data.input_shape)
    paths, facts = {}, {}
    paths["fp32"], facts["fp32"] = reuse_or_make(
        "fp32", trained.find("fp32", loaded), target, lambda path: export_onnx(student, path, shape)
    )
    difference = max_output_difference(student, ort_session(paths["fp32"]), torch.randn(8, *shape))
    if difference > cfg.max_logit_difference:
        raise TierkitError(
            f"ONNX Runtime and PyTorch disagree on {paths['fp32']} (max logit difference {difference:.2e})",
            where=str(run.folder),
            fix="report this model: an operator exported incorrectly",
        )
    facts["fp32"]["max_logit_difference"] = difference
    if "fp16" in cfg.precisions:
        paths["fp16"], facts["fp16"] = reuse_or_make(
            "fp16", trained.find("fp16", loaded), target, lambda path: convert_fp16(paths["fp32"], path)
        )
    if "int8" in cfg.precisions:
        paths.update(int8_files(run, cfg, trained, paths["fp32"], target, datamodule, facts))
    for path in paths.values():
        check_onnx(path)
    return paths, facts


def export_calibration(asked: DictConfig, trained: DictConfig) -> DictConfig:
    """Export's calibration settings: each one given to export, else the run's own."""
    return OmegaConf.create({key: trained[key] if asked.get(key) is None else asked[key] for key in trained})


def export_float_layers(run: Run, cfg: DictConfig, tuned: dict | None, first: list[str]) -> list[str]:
    """The layers post-training INT8 leaves in float: the shipped tuned recipe's, or the first layer (``first``)
    when the run kept it in float; export's ``float_first_layer``, when given, adds or removes the first layer."""
    trained_first = bool(run.config.quantization.get("float_first_layer", False))
    wanted_first = trained_first if cfg.get("float_first_layer") is None else bool(cfg.float_first_layer)
    layers = list(tuned["float_layers"]) if tuned is not None else (first if trained_first else [])
    if wanted_first and not trained_first:
        return [*first, *(layer for layer in layers if layer not in first)]
    if trained_first and not wanted_first:
        return [layer for layer in layers if layer not in first]
    return layers


def int8_files(
    run: Run, cfg: DictConfig, trained: TrainedFiles, fp32: Path, target: Path, datamodule, facts: dict
) -> dict[str, Path]:
    """One INT8 file per weight range in ``cfg.int8_weight_bits``; their facts are added to ``facts``."""
    qat_checkpoint = shipped_qat_checkpoint(run, cfg.checkpoint)
    qat_bits, qat_student = None, None
    if qat_checkpoint is not None:
        qat_student = run.student if is_prepared(run.student) else load_student(qat_checkpoint)[0]
        qat_settings_used = qat_settings(qat_student)
        qat_bits = REDUCED_WEIGHT_BITS if qat_settings_used["reduce_range"] else 8
    # A run that shipped a tuned post-training model is quantized with that model's recipe.
    tuned = shipped_int8_recipe(trained.folder.checkpoint(cfg.checkpoint)) if run.int8_path == "tuned" else None
    run_calibration = run.config.quantization.calibration
    run_per_channel = run.config.quantization.per_channel
    if tuned is not None:
        run_calibration = OmegaConf.merge(run_calibration, {"method": tuned["method"]})
        run_per_channel = tuned["per_channel"]
    first = first_layer(fp32)
    float_layers = export_float_layers(run, cfg, tuned, first)
    int16_layers = list(tuned.get("int16_layers", [])) if tuned is not None else []
    per_channel = bool(run_per_channel if cfg.per_channel is None else cfg.per_channel)
    calibration = export_calibration(cfg.calibration, run_calibration)
    samples, recorded_calibration = None, None
    if any(bits != qat_bits for bits in cfg.int8_weight_bits):  # some range comes from post-training INT8
        samples = calibration_samples(datamodule, calibration.samples, calibration.batch_size, calibration.seed)
        recorded_calibration = {**calibration, "sha256": samples_digest(samples)}
    shape = tuple(run.config.data.input_shape)
    paths = {}
    for bits in cfg.int8_weight_bits:
        key = int8_key(bits)
        if bits == qat_bits:
            paths[key], facts[key] = reuse_or_make(
                key,
                trained.find("qat", qat_checkpoint),
                target,
                lambda path: export_qat_onnx(qat_student, path, shape),
            )
            facts[key].update(
                int8_method="qat",
                reduce_range=bits < 8,
                per_channel=qat_settings_used["per_channel"],
                float_layers=first if qat_settings_used["float_first_layer"] else [],
            )
        else:
            settings = {"reduce_range": bits < 8, "per_channel": per_channel, "calibration": recorded_calibration}
            settings["float_layers"], settings["int16_layers"] = float_layers, int16_layers
            paths[key], facts[key] = reuse_or_make(
                key,
                trained.find("tuned" if tuned else "ptq", trained.folder.checkpoint(cfg.checkpoint), settings),
                target,
                lambda path, reduced=bits < 8: quantize_int8(
                    fp32,
                    path,
                    samples,
                    calibration.batch_size,
                    calibration.method,
                    reduced,
                    per_channel,
                    float_layers,
                    int16_layers,
                ),
            )
            facts[key].update(int8_method="tuned" if tuned else "ptq", **settings)
        facts[key]["float_compute_ops"] = float_compute_ops(paths[key])
    return paths


def describe_file(path: Path, out: Path, datamodule, stats: dict[str, int]) -> dict:
    """What the manifest says of every model file: where it is, its digest and size, its accuracy and cost."""
    session = ort_session(path)
    return {
        "file": path.relative_to(out).as_posix(),
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "accuracy": onnx_accuracy(session, datamodule),
        # What decides between variants that time alike: choosing on test would flatter the accuracy reported.
        "val_accuracy": onnx_accuracy(session, datamodule, "val"),
        "params": stats["params"],
        "macs": stats["macs"],
    }


def tier_budgets(tier: DictConfig) -> dict:
    """A run's tier budgets under today's names: runs trained before the rename call the accuracy budget
    max_accuracy_drop."""
    budgets = OmegaConf.to_container(tier.budgets)
    old = budgets.pop("max_accuracy_drop", None)
    if budgets.get("max_drop_vs_teacher") is None:
        budgets["max_drop_vs_teacher"] = old
    return budgets


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
                "budget_hardware": tier.budget_hardware,
                "allowed_precisions": list(tier.precisions),
                "device": OmegaConf.to_container(tier.device),
                **facts.get(key, {}),
            }
        )
    return variants


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
    teacher, _ = load_teacher(
        source, config.model.teacher, shape, config.data.num_classes, prefix=config.teacher.get("state_dict_prefix")
    )
    path = export_onnx(teacher, out / "teacher" / "fp32.onnx", tuple(shape))
    stats = model_stats(teacher, shape)
    datamodule = instantiate(config.data, where=f"{run.folder} data config")
    entry = {"name": "teacher", "precision": "fp32", **describe_file(path, out, datamodule, stats)}
    return {**entry, "source": str(source)}
