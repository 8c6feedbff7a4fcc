"""`python train.py`: config, dispatch and exit codes for one Hydra run.

It resolves what to resume from, checks the settings, and hands over to the recipe (tierkit.stages.run) or to
device fine-tuning (tierkit.stages.finetune); the value it returns is what sweepers optimize. Lightning and the
stages are imported once Hydra has composed the config, so a mistyped key or option is reported in about a second
instead of after the ten that importing them takes on a small CPU (the settings check itself imports the classes
the config names).
"""

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

import tierkit.utils.resolvers  # noqa: F401  (registers the config resolvers)
from tierkit.cli import finishing_wandb_run, import_from_working_folder
from tierkit.cli.deprecated import apply_renamed_keys, checkpoint_student
from tierkit.conf import CONFIG_DIR
from tierkit.conf.validate import validate_train_config
from tierkit.errors import TierkitError
from tierkit.run_folder import RunFolder
from tierkit.utils.files import load_torch
from tierkit.utils.noise import silence_known_noise
from tierkit.utils.slurm import job_id, requeued_checkpoint

log = logging.getLogger(__name__)

# What a checkpoint was trained on; resuming takes these from the checkpoint, the rest from the command line.
MODEL_DEFINING_SECTIONS = ("data", "model", "student", "distill", "teacher", "tier")


def find_last_checkpoint(cfg: DictConfig) -> Path:
    """The newest last.ckpt (QAT stage included) under the run and sweep folders, other than this run's own."""
    root = Path(cfg.paths.root_dir)
    own = Path(cfg.paths.output_dir).resolve()
    candidates = [
        p
        for folder in ("outputs", "multirun")
        for pattern in ("**/checkpoints/last.ckpt", "**/checkpoints/qat/last.ckpt")
        for p in (root / folder).glob(pattern)
        if own not in p.resolve().parents
    ]
    if not candidates:
        raise TierkitError(
            f"ckpt_path=last, but no checkpoints/last.ckpt exists under {root / 'outputs'} or {root / 'multirun'}",
            where="ckpt_path",
            fix="train a run first, or pass the path of a checkpoint file",
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def resolve_resume(cfg: DictConfig) -> tuple[str | None, dict[str, Any], DictConfig]:
    """Turn ``ckpt_path`` into a file and rebuild the model-defining config from that checkpoint.

    A requeued SLURM job with no ``ckpt_path`` resumes from the newest checkpoint in its own run folder.

    Returns the path, the checkpoint's tierkit metadata and the updated config.
    """
    if not cfg.get("ckpt_path"):
        requeued = requeued_checkpoint(RunFolder(Path(cfg.paths.output_dir)).requeue_checkpoints())
        if requeued is None:
            return None, {}, cfg
        with open_dict(cfg):
            cfg.ckpt_path = str(requeued)
    path = find_last_checkpoint(cfg) if cfg.ckpt_path == "last" else Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise TierkitError(f"checkpoint {path} does not exist", where="ckpt_path", fix="pass an existing .ckpt file")
    try:
        checkpoint = load_torch(path)
        saved = checkpoint["tierkit"]
        config = saved["config"]
    except Exception as exc:
        raise TierkitError(
            f"{path} is not a tierkit training checkpoint ({type(exc).__name__}: {exc})",
            where="ckpt_path",
            fix="pass checkpoints/last.ckpt or best.ckpt from a tierkit run folder",
        ) from exc
    from tierkit.models.checkpoint import verify_checkpoint

    verify_checkpoint(checkpoint, path, where="ckpt_path")
    with open_dict(cfg):
        for section in MODEL_DEFINING_SECTIONS:
            if section in config:
                cfg[section] = config[section]
        cfg.student = checkpoint_student(config.get("student"))
        cfg.ckpt_path = str(path)
    log.info("Resuming from %s (data, model, distillation and tier settings taken from it)", path)
    return str(path), saved, cfg


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole recipe for one config (or fine-tune a finished run) and return metrics.json's content."""
    apply_renamed_keys(cfg)
    validate_train_config(cfg)
    from tierkit.stages.finetune import finetune
    from tierkit.stages.run import run_recipe

    if cfg.get("stage", "train") == "finetune":
        return finetune(cfg)
    if cfg.get("from_run"):
        raise TierkitError(
            "from_run is set, but stage=train trains from scratch", where="from_run", fix="add stage=finetune"
        )
    started = time.perf_counter()
    ckpt_path, saved, cfg = resolve_resume(cfg)
    if ckpt_path:
        apply_renamed_keys(cfg)  # a checkpoint from before the rename brings the old keys back
        validate_train_config(cfg)
    return run_recipe(cfg, ckpt_path, saved, started)


def resume_hint(output_dir: Path) -> str:
    """How to go on after the run was stopped: from its newest last.ckpt (the QAT stage's, once it has started)."""
    found = RunFolder(output_dir).resumable_checkpoints()
    if not found:
        return "No checkpoint was written yet: run the command again."
    hint = f"To go on, resume with ckpt_path={max(found, key=lambda path: path.stat().st_mtime)}"
    return f"{hint} (a requeued SLURM job does so by itself)" if job_id() else hint


def objective(metrics: dict[str, Any], names: str | list[str] | None) -> float | list[float] | None:
    """The value(s) a sweeper optimizes: one metric path, or a list of them for a multi-objective search."""
    if not names:
        return None
    found = OmegaConf.create(metrics)
    if isinstance(names, str):
        return OmegaConf.select(found, names)
    values = [OmegaConf.select(found, name) for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if value is None]
    if missing:
        raise TierkitError(
            f"optimized_metric names {missing}, which this run's metrics.json does not have",
            where="optimized_metric",
            fix="use metrics.json paths such as student.val_acc_best or student.int8_bytes (needs quantization on)",
        )
    return values


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | list[float] | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers."""
    silence_known_noise()
    import_from_working_folder()
    with finishing_wandb_run():
        try:
            metrics = train(cfg)
            names = cfg.get("optimized_metric")
            return objective(metrics, list(names) if isinstance(names, ListConfig) else names)
        except TierkitError as exc:
            log.error("%s", exc.render())
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise  # the sweeper records the job (an Optuna trial) as failed and goes on with the others
            sys.exit(2)
        except SystemExit as exc:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if not isinstance(exc, SIGTERMException):
                raise
            log.error("Stopped by SIGTERM. %s", resume_hint(Path(cfg.paths.output_dir)))
            sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
