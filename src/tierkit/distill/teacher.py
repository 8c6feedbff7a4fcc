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
from tierkit.models.weights import load_weights_strictly, read_weights_file, strip_prefix
from tierkit.run_folder import RunFolder

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
        "teacher": {
            k: v for k, v in container["teacher"].items() if k not in ("ckpt_path", "state_dict_prefix", "cache_dir")
        },
        "trainer": {k: v for k, v in container["trainer"].items() if k not in _TRAINER_KEYS_IGNORED_BY_CACHE},
        "format": TEACHER_FORMAT,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_teacher(
    path: str | Path,
    model_config: DictConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    prefix: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``model_config`` and load a teacher's weights into it, strictly.

    ``path`` is a tierkit teacher file, a plain state_dict (.pt/.pth), a safetensors file or a Lightning checkpoint
    (keys under ``prefix``, found automatically when None). Returns the model and what is known of it.
    """
    path = Path(path).expanduser()
    where = "teacher.ckpt_path"
    weights, metadata, kind = read_weights_file(path, where)
    if kind == "tierkit teacher":
        if metadata.get("format") != TEACHER_FORMAT:
            raise TierkitError(
                f"{path} is tierkit teacher format {metadata.get('format')!r}; this tierkit reads {TEACHER_FORMAT}",
                where=where,
                fix="retrain the teacher (drop teacher.ckpt_path) or use the tierkit release that wrote it",
            )
        if list(metadata["input_shape"]) != list(input_shape) or metadata["num_classes"] != num_classes:
            raise TierkitError(
                f"teacher {path} was trained on inputs {metadata['input_shape']} with {metadata['num_classes']} "
                f"classes, but the data gives {list(input_shape)} with {num_classes}",
                where=where,
                fix="use a teacher trained on this data, or drop teacher.ckpt_path to train one",
            )
    model = build_model(model_config, input_shape, num_classes, where="model.teacher")
    weights = strip_prefix(weights, set(model.state_dict()), prefix, where="teacher.state_dict_prefix")
    load_weights_strictly(model, weights, f"teacher {path} ({kind})", where="teacher.ckpt_path / model.teacher")
    return model.eval(), {"path": str(path), "weights_format": kind, **metadata.get("metrics", {})}


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
