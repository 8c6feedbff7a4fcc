"""The teacher stage: train a teacher once per (data, teacher config), cache it, and reuse it.

Parallel multirun jobs that need the same teacher serialise on a file lock: the first trains and
writes the cache atomically, the others wait and load it.
"""

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tierkit.distill.teacher import TEACHER_FORMAT, load_teacher, teacher_cache_key
from tierkit.models.build import build_model, model_name
from tierkit.models.weights import teacher_digest
from tierkit.run_folder import RunFolder
from tierkit.stages.evaluate import split_accuracy
from tierkit.stages.trainer import build_trainer, recipe_module
from tierkit.utils.files import save_torch, write_json
from tierkit.utils.instantiate import instantiate

log = logging.getLogger(__name__)


def train_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, key: str) -> dict[str, Any]:
    """Fit the teacher with plain cross-entropy and return the cache payload (weights + metrics)."""
    started = time.perf_counter()
    L.seed_everything(cfg.teacher.seed, workers=True)
    shape, classes = datamodule.input_shape, datamodule.num_classes
    model = build_model(cfg.model.teacher, shape, classes, where="model.teacher")
    module = recipe_module(model, classes, cfg.teacher, where="teacher", alpha=0.0)
    progress = cfg.get("callbacks", {}).get("progress")
    # In the run folder, not a temporary one: a requeued SLURM job resumes the teacher from Lightning's
    # hpc_ckpt_<n>.ckpt here with its best-checkpoint record intact. Removed once the teacher is cached.
    run = RunFolder(Path(cfg.paths.output_dir))
    folder = run.teacher_work
    checkpoint = ModelCheckpoint(dirpath=folder / "checkpoints", filename="teacher", monitor="val/acc", mode="max")
    callbacks = [checkpoint] + ([instantiate(progress, where="callbacks.progress")] if progress else [])
    # One process: under DDP the student's ranks start only after the teacher is cached, so no rank
    # waits on the cache lock while another waits for it to join the process group.
    trainer = build_trainer(
        cfg,
        callbacks,
        CSVLogger(run.logs, name="teacher", version=""),
        one_process=True,
        root_dir=folder,
        max_epochs=cfg.teacher.max_epochs,
        min_epochs=1,
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
    payload = {
        "format": TEACHER_FORMAT,
        "key": key,
        "model_config": OmegaConf.to_container(cfg.model.teacher, resolve=True),
        "input_shape": list(shape),
        "num_classes": classes,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "metrics": {
            "val_acc": val_acc,
            "test_acc": float(test["test/acc"]),
            "epochs": int(cfg.teacher.max_epochs),
            "train_seconds": round(time.perf_counter() - started, 1),
        },
    }
    return {**payload, "digest": teacher_digest(payload)}


def check_loaded_teacher(teacher: nn.Module, datamodule: L.LightningDataModule, path: str) -> dict[str, float]:
    """A teacher brought from outside, scored on validation and test before it distils; near chance, a warning."""
    scores = {split + "_acc": split_accuracy(teacher, datamodule, split) for split in ("val", "test")}
    chance = 1 / datamodule.num_classes
    log.info(
        "Loaded teacher %s: %.2f%% on validation, %.2f%% on test",
        path,
        100 * scores["val_acc"],
        100 * scores["test_acc"],
    )
    if scores["val_acc"] < 1.5 * chance:
        log.warning(
            "The teacher %s scores %.2f%% on validation, near chance (%.2f%%): is this the right checkpoint, "
            "trained on this data with these classes and this normalisation?",
            path,
            100 * scores["val_acc"],
            100 * chance,
        )
    return scores


def obtain_teacher(cfg: DictConfig, datamodule: L.LightningDataModule) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher named by ``teacher.ckpt_path``, else the cached one, training it first if needed."""
    shape, classes = datamodule.input_shape, datamodule.num_classes
    if cfg.teacher.get("ckpt_path"):
        prefix = cfg.teacher.get("state_dict_prefix")
        teacher, info = load_teacher(cfg.teacher.ckpt_path, cfg.model.teacher, shape, classes, prefix=prefix)
        return teacher, {**info, **check_loaded_teacher(teacher, datamodule, info["path"])}
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
            shutil.rmtree(RunFolder(Path(cfg.paths.output_dir)).teacher_work, ignore_errors=True)
    finally:
        lock.release()
    return load_teacher(path, cfg.model.teacher, shape, classes)
