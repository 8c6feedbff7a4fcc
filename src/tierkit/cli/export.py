"""`python export.py`: turn finished runs into verified ONNX files (FP32, FP16, INT8), one folder per tier."""

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch import nn

from tierkit.errors import TierkitError
from tierkit.export import export_onnx, max_output_difference, onnx_accuracy
from tierkit.export.verify import float_compute_ops
from tierkit.models.checkpoint import load_student
from tierkit.profile import ort_session
from tierkit.quant import calibration_samples, convert_fp16, quantize_int8
from tierkit.quant.cpu import needs_reduced_range
from tierkit.quant.qat import float_copy, is_prepared, qat_settings
from tierkit.quant.qdq import export_qat_onnx
from tierkit.utils.files import write_json
from tierkit.utils.instantiate import instantiate
from tierkit.utils.model_stats import model_stats
from tierkit.utils.noise import silence_known_noise

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parents[3] / "conf")


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


PRECISIONS = ("fp32", "fp16", "int8")


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


def export_run(run: Path, cfg: DictConfig, out: Path) -> list[dict[str, Any]]:
    """Export one run's student in every requested precision; one row per ONNX file."""
    unknown = set(cfg.precisions) - set(PRECISIONS)
    if unknown:
        raise TierkitError(
            f"unknown precision(s) {sorted(unknown)}",
            where="precisions",
            fix=f"choose from {', '.join(PRECISIONS)}",
        )
    student, config = load_student(run / "checkpoints" / f"{cfg.checkpoint}.ckpt")
    qat_student = shipped_qat_student(run, student, cfg.checkpoint)
    if is_prepared(student):
        student = float_copy(student)
    shape = tuple(config.data.input_shape)
    tier = config.tier.name
    target = out / tier if not (out / tier).exists() else out / f"{tier}-{run.name}"
    datamodule = instantiate(config.data, where=f"{run} data config")
    paths = {"fp32": export_onnx(student, target / "fp32.onnx", shape)}
    sessions = {"fp32": ort_session(paths["fp32"])}
    difference = max_output_difference(student, sessions["fp32"], torch.randn(8, *shape))
    if difference > cfg.max_logit_difference:
        raise TierkitError(
            f"ONNX Runtime and PyTorch disagree on {paths['fp32']} (max logit difference {difference:.2e})",
            where=str(run),
            fix="report this model: an operator exported incorrectly",
        )
    reduce_range = needs_reduced_range() if cfg.reduce_range is None else bool(cfg.reduce_range)
    if "fp16" in cfg.precisions:
        paths["fp16"] = convert_fp16(paths["fp32"], target / "fp16.onnx")
    calibration = cfg.calibration
    if "int8" in cfg.precisions and qat_student is not None:
        paths["int8"] = export_qat_onnx(qat_student, target / "int8.onnx", shape)
        reduce_range = qat_settings(qat_student)["reduce_range"]
    elif "int8" in cfg.precisions:
        samples = calibration_samples(datamodule, calibration.samples, calibration.batch_size, calibration.seed)
        paths["int8"] = quantize_int8(
            paths["fp32"], target / "int8.onnx", samples, calibration.batch_size, calibration.method, reduce_range
        )
    stats = {k: v for k, v in model_stats(student, shape).items() if k != "size_bytes"}
    rows = []
    for precision in PRECISIONS:
        if precision not in paths or (precision == "fp32" and "fp32" not in cfg.precisions):
            continue
        path = paths[precision]
        row = {
            "run": str(run),
            "tier": tier,
            "precision": precision,
            "file": str(path.relative_to(out)),
            "bytes": path.stat().st_size,
            "onnx_test_acc": onnx_accuracy(sessions.get(precision) or ort_session(path), datamodule),
            **stats,
        }
        if precision == "fp32":
            row["max_logit_difference"] = difference
        if precision == "int8":
            row["int8_method"] = "qat" if qat_student is not None else "ptq"
            row["reduce_range"] = reduce_range
            if qat_student is None:
                row["calibration"] = OmegaConf.to_container(calibration)
            row["float_compute_ops"] = float_compute_ops(path)
        rows.append(row)
    return rows


def export(cfg: DictConfig) -> list[dict[str, Any]]:
    runs = find_runs(cfg)
    out = Path(cfg.output_dir)
    rows = [row for run in track(runs, description="Exporting to ONNX") for row in export_run(run, cfg, out)]
    write_json(out / "export.json", {"exports": rows})
    table = Table(title=f"ONNX exports in {out}")
    for column in ("tier", "precision", "file", "size", "params", "MACs", "ONNX Runtime test acc"):
        table.add_column(
            column, justify="left" if column in ("tier", "precision", "file") else "right", overflow="fold"
        )
    for row in rows:
        table.add_row(
            row["tier"],
            row["precision"],
            row["file"],
            f"{row['bytes'] / 1024:.1f} KiB",
            f"{row['params']:,}",
            f"{row['macs']:,}",
            f"{100 * row['onnx_test_acc']:.2f}%",
        )
    Console().print(table)
    return rows


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
