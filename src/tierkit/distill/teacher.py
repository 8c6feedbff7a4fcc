"""Teachers as files: the cache key of a teacher recipe, loading a teacher file, and finding the teacher of a run.

Training a teacher and filling the cache is the teacher stage (tierkit.stages.teacher).
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from tierkit.errors import TierkitError
from tierkit.models.build import build_model
from tierkit.run_folder import RunFolder
from tierkit.utils.files import load_torch

TEACHER_FORMAT = 1
# Trainer keys that change where or how loudly a run goes, not the teacher it produces.
_TRAINER_KEYS_IGNORED_BY_CACHE = {
    "default_root_dir",
    "log_every_n_steps",
    "enable_progress_bar",
    "enable_model_summary",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "sync_batchnorm",
    "max_epochs",
    "min_epochs",
}
_DATA_KEYS_IGNORED_BY_CACHE = {"num_workers", "eval_batch_size", "root"}


def teacher_cache_key(cfg: DictConfig) -> str:
    """A hash of everything that decides the teacher's weights: data, architecture, training recipe."""
    container = OmegaConf.to_container(cfg, resolve=True)
    recipe = {
        "data": {k: v for k, v in container["data"].items() if k not in _DATA_KEYS_IGNORED_BY_CACHE},
        "model": container["model"]["teacher"],
        "teacher": {k: v for k, v in container["teacher"].items() if k not in ("ckpt_path", "cache_dir")},
        "trainer": {k: v for k, v in container["trainer"].items() if k not in _TRAINER_KEYS_IGNORED_BY_CACHE},
        "format": TEACHER_FORMAT,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_teacher(
    path: str | Path, model_config: DictConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild ``model_config`` and load the teacher file's weights into it, refusing any mismatch."""
    path = Path(path).expanduser()
    fix = "pass a teacher file written by tierkit (.cache/tierkit/teachers/*/teacher.pt) or drop teacher.ckpt_path"
    if not path.is_file():
        raise TierkitError(f"teacher checkpoint {path} does not exist", where="teacher.ckpt_path", fix=fix)
    try:
        payload = load_torch(path)
    except Exception as exc:
        raise TierkitError(f"cannot read teacher checkpoint {path}: {exc}", where="teacher.ckpt_path", fix=fix) from exc
    if not isinstance(payload, dict) or payload.get("format") != TEACHER_FORMAT or "state_dict" not in payload:
        raise TierkitError(f"{path} is not a tierkit teacher file", where="teacher.ckpt_path", fix=fix)
    if list(payload["input_shape"]) != list(input_shape) or payload["num_classes"] != num_classes:
        raise TierkitError(
            f"teacher {path} was trained on inputs {payload['input_shape']} with {payload['num_classes']} "
            f"classes, but the data gives {list(input_shape)} with {num_classes}",
            where="teacher.ckpt_path",
            fix="use a teacher trained on this data, or drop teacher.ckpt_path to train one",
        )
    model = build_model(model_config, input_shape, num_classes, where="model.teacher")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        saved = payload.get("model_config", {})
        raise TierkitError(
            f"teacher {path} holds a different architecture ({saved}) than model.teacher "
            f"({OmegaConf.to_container(model_config, resolve=True)}): {str(exc).splitlines()[0]}",
            where="teacher.ckpt_path / model.teacher",
            fix="set model.teacher to the architecture the checkpoint was trained with, or use a matching checkpoint",
        ) from exc
    return model, {"path": str(path), **payload.get("metrics", {})}


def find_run_teacher(run: Path, config: DictConfig) -> Path:
    """The teacher a finished run distilled from: its recorded source, its ckpt_path, or its cache entry."""
    metrics = RunFolder(run).read_metrics()
    recorded = metrics.teacher.source if metrics and metrics.teacher else None
    candidates = [Path(p).expanduser() for p in (recorded, config.teacher.get("ckpt_path")) if p]
    candidates.append(Path(config.teacher.cache_dir).expanduser() / teacher_cache_key(config) / "teacher.pt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise TierkitError(
        f"the teacher of {run} is not on this machine (looked for {', '.join(map(str, candidates))})",
        where=str(run),
        fix="run from the folder you trained in, or set TIERKIT_CACHE_DIR to the teacher cache the run used",
    )
