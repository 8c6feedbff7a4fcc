"""The teacher stage: train a teacher once per (data, teacher config), cache it, and reuse it.

Parallel multirun jobs that need the same teacher serialise on a file lock: the first trains and
writes the cache atomically, the others wait and load it.
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tierkit.distill.module import DistillationModule
from tierkit.errors import TierkitError
from tierkit.models.build import build_model, model_name
from tierkit.utils.files import load_torch, save_torch, write_json
from tierkit.utils.instantiate import instantiate
from tierkit.utils.slurm import single_process_plugins

log = logging.getLogger(__name__)

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


def teacher_work_folder(cfg: DictConfig) -> Path:
    """Where the teacher trains inside the run folder; removed once the teacher is cached."""
    return Path(cfg.paths.output_dir) / "teacher"


def train_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, key: str) -> dict[str, Any]:
    """Fit the teacher with plain cross-entropy and return the cache payload (weights + metrics)."""
    L.seed_everything(cfg.teacher.seed, workers=True)
    shape, classes = datamodule.input_shape, datamodule.num_classes
    model = build_model(cfg.model.teacher, shape, classes, where="model.teacher")
    module = DistillationModule(
        student=model,
        num_classes=classes,
        optimizer=instantiate(cfg.teacher.optimizer, where="teacher.optimizer"),
        scheduler=(
            instantiate(cfg.teacher.scheduler, where="teacher.scheduler") if cfg.teacher.get("scheduler") else None
        ),
        alpha=0.0,
    )
    progress = cfg.get("callbacks", {}).get("progress")
    # In the run folder, not a temporary one: a requeued SLURM job resumes the teacher from Lightning's
    # hpc_ckpt_<n>.ckpt here with its best-checkpoint record intact. Removed once the teacher is cached.
    folder = teacher_work_folder(cfg)
    checkpoint = ModelCheckpoint(dirpath=folder / "checkpoints", filename="teacher", monitor="val/acc", mode="max")
    callbacks = [checkpoint] + ([instantiate(progress, where="callbacks.progress")] if progress else [])
    # One process: under DDP the student's ranks start only after the teacher is cached, so no rank
    # waits on the cache lock while another waits for it to join the process group.
    trainer = instantiate(
        cfg.trainer,
        where="trainer",
        default_root_dir=str(folder),
        plugins=single_process_plugins(),
        max_epochs=cfg.teacher.max_epochs,
        min_epochs=1,
        devices=1,
        num_nodes=1,
        strategy="auto",
        callbacks=callbacks,
        logger=CSVLogger(Path(cfg.paths.output_dir) / "logs", name="teacher", version=""),
    )
    log.info(
        "Training teacher %s for %d epochs (cache key %s)",
        model_name(cfg.model.teacher),
        cfg.teacher.max_epochs,
        key,
    )
    trainer.fit(module, datamodule=datamodule)
    if checkpoint.best_model_path:
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
    val_acc = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return {
        "format": TEACHER_FORMAT,
        "key": key,
        "model_config": OmegaConf.to_container(cfg.model.teacher, resolve=True),
        "input_shape": list(shape),
        "num_classes": classes,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "metrics": {"val_acc": val_acc, "test_acc": float(test["test/acc"]), "epochs": int(cfg.teacher.max_epochs)},
    }


def obtain_teacher(cfg: DictConfig, datamodule: L.LightningDataModule) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher named by ``teacher.ckpt_path``, else the cached one, training it first if needed."""
    shape, classes = datamodule.input_shape, datamodule.num_classes
    if cfg.teacher.get("ckpt_path"):
        return load_teacher(cfg.teacher.ckpt_path, cfg.model.teacher, shape, classes)
    key = teacher_cache_key(cfg)
    path = Path(cfg.teacher.cache_dir) / key / "teacher.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / "train.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Another job is training this teacher (%s); waiting for it", path.parent)
        lock.acquire()
    try:
        if path.is_file():
            log.info("Using cached teacher %s", path)
        else:
            payload = train_teacher(cfg, datamodule, key)
            save_torch(path, payload)
            write_json(path.parent / "teacher.json", {k: v for k, v in payload.items() if k != "state_dict"})
            shutil.rmtree(teacher_work_folder(cfg), ignore_errors=True)
    finally:
        lock.release()
    return load_teacher(path, cfg.model.teacher, shape, classes)


def find_run_teacher(run: Path, config: DictConfig) -> Path:
    """The teacher a finished run distilled from: its recorded source, its ckpt_path, or its cache entry."""
    metrics_path = run / "metrics.json"
    recorded = json.loads(metrics_path.read_text()).get("teacher", {}).get("source") if metrics_path.is_file() else None
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
