"""Rebuild a trained student from a tierkit checkpoint alone, whatever today's configs say."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from tierkit.errors import TierkitError
from tierkit.models.build import build_student
from tierkit.models.qat import prepare_qat
from tierkit.models.structure import apply_structure
from tierkit.run_folder import RunFolder
from tierkit.utils.digest import content_digest
from tierkit.utils.files import load_torch, save_torch

# Bumped whenever the "tierkit" entry of a checkpoint changes meaning; readers refuse other formats.
CHECKPOINT_FORMAT = 1
# What rebuilding the student reads from the "tierkit" entry, besides its weights: what the digest covers.
DIGESTED = ("format", "config", "structure", "qat")


def checkpoint_digest(checkpoint: dict) -> str:
    """The digest of the student's weights and of what rebuilds it, as stored under ``tierkit.digest``."""
    saved, state = checkpoint["tierkit"], checkpoint.get("state_dict")
    weights = {k: v for k, v in state.items() if str(k).startswith("student.")} if isinstance(state, dict) else {}
    return content_digest(weights, {key: saved.get(key) for key in DIGESTED})


def verify_checkpoint(checkpoint: dict, path: str | Path, where: str) -> None:
    """Refuse a checkpoint whose content no longer matches the digest written with it (damaged after saving).

    Checkpoints written before tierkit stored a digest have none and are read as they are.
    """
    recorded = checkpoint["tierkit"].get("digest")
    if recorded is not None and recorded != checkpoint_digest(checkpoint):
        raise TierkitError(
            f"{path} changed after it was saved: its weights or run config no longer match the sha256 "
            "recorded in it (damaged on disk or in transfer)",
            where=where,
            fix="use another checkpoint of the run (last.ckpt or best.ckpt), copy it again, or retrain",
        )


def load_student(path: str | Path) -> tuple[nn.Module, DictConfig]:
    """The student in ``path`` (eval mode, pruned shapes and QAT quantizers included) and its run config."""
    try:
        checkpoint = load_torch(path)
        saved = checkpoint["tierkit"]
    except Exception as exc:
        raise TierkitError(
            f"{path} is not a readable tierkit checkpoint ({type(exc).__name__}: {exc})",
            where=str(path),
            fix="use checkpoints/best.ckpt or last.ckpt from a tierkit run folder",
        ) from exc
    if not isinstance(saved, dict) or not saved.get("config"):
        raise TierkitError(
            f"{path} holds no run config, so the model it was trained as cannot be rebuilt",
            where=str(path),
            fix="export checkpoints written by tierkit's train.py (checkpoints/best.ckpt or last.ckpt)",
        )
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise TierkitError(
            f"{path} is in checkpoint format {saved.get('format')!r}; this tierkit reads format {CHECKPOINT_FORMAT}",
            where=str(path),
            fix="export it with the tierkit release that trained it, or retrain with this one",
        )
    verify_checkpoint(checkpoint, path, where=str(path))
    try:
        config = OmegaConf.create(saved["config"])
        student = build_student(config, where=str(path))
        weights = {k.removeprefix("student."): v for k, v in checkpoint["state_dict"].items() if k[:8] == "student."}
        apply_structure(student, saved.get("structure", {}), weights)
        if saved.get("qat"):
            student = prepare_qat(student, **saved["qat"])
        student.load_state_dict(weights)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError, OmegaConfBaseException) as exc:
        raise TierkitError(
            f"{path} holds a config or weights that do not fit together ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0]})",
            where=str(path),
            fix="the file is damaged or was changed after training: use another checkpoint of the run, or retrain",
        ) from exc
    return student.eval(), config


def record_int8_path(path: str | Path, int8_path: str, recipe: dict | None = None) -> None:
    """Write the quantization stage's choice ("ptq", "tuned" or "qat") into an FP32 checkpoint, so whoever loads the
    checkpoint (export, fine-tuning) knows which INT8 model the run ships without reading metrics.json. A tuned
    post-training model also records its recipe (calibration method, per-channel, layers left in float)."""
    checkpoint = load_torch(path)
    checkpoint["tierkit"]["int8_path"] = int8_path
    checkpoint["tierkit"]["int8_recipe"] = recipe
    save_torch(path, checkpoint)


def shipped_int8_path(path: str | Path, folder: RunFolder) -> str | None:
    """The INT8 path recorded in a checkpoint of ``folder`` by ``record_int8_path`` (or, for runs trained before
    checkpoints recorded it, in its metrics.json); None when the run never quantized."""
    recorded = load_torch(path).get("tierkit", {}).get("int8_path")
    if recorded is None:
        metrics = folder.read_metrics()
        recorded = metrics.quantization.path if metrics and metrics.quantization else None
    return recorded


def shipped_int8_recipe(path: str | Path) -> dict | None:
    """The recipe of the tuned post-training INT8 model a checkpoint's run ships (None for any other path)."""
    return load_torch(path).get("tierkit", {}).get("int8_recipe")
