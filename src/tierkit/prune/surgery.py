"""Helpers for callbacks that change the model's architecture during training."""

import hashlib
import json

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from tierkit.errors import TierkitError
from tierkit.models.structure import describe_structure


def forget_best_checkpoints(trainer: L.Trainer) -> None:
    """Make ModelCheckpoint pick "best" again from now on.

    After a structural change (a pruning step) the earlier, larger model would otherwise keep the title
    of best checkpoint, and test and export would ship a model of the wrong architecture.
    """
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor:
            callback.best_k_models = {}
            callback.kth_best_model_path = ""
            callback.kth_value = callback.best_model_score = None
            callback.best_model_path = ""


def rewrap_distributed(trainer: L.Trainer) -> None:
    """DDP registers parameters when it wraps the model: after a structural change it must wrap again."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        strategy.model = strategy._setup_model(strategy.lightning_module)
        strategy._register_ddp_hooks()


def check_same_structure_on_all_ranks(trainer: L.Trainer, model: nn.Module) -> None:
    """Every rank prunes from identical (DDP-synchronised) weights; verify they reached identical shapes."""
    if trainer.world_size == 1:
        return
    digest = hashlib.sha256(json.dumps(describe_structure(model), sort_keys=True).encode()).digest()[:8]
    local = torch.tensor(int.from_bytes(digest, "big") >> 1, dtype=torch.long, device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(local)
    if not bool((gathered == local).all()):
        raise TierkitError(
            "ranks disagree on the pruned architecture",
            where="callbacks.pruning under DDP",
            fix="report this: weights were not synchronised across processes before pruning",
        )


def rebuild_optimizers(trainer: L.Trainer) -> None:
    """Re-run ``configure_optimizers`` on the current parameters, continuing each LR schedule where it was.

    Optimizer state (momenta) refers to removed parameters and is dropped; the learning rate and the
    schedule's position carry over.
    """
    schedules = [
        (config.scheduler.state_dict(), config.scheduler.get_last_lr()) for config in trainer.lr_scheduler_configs
    ]
    trainer.strategy.setup_optimizers(trainer)
    for config, (state, last_lr) in zip(trainer.lr_scheduler_configs, schedules, strict=True):
        config.scheduler.load_state_dict(state)
        for group, lr in zip(config.scheduler.optimizer.param_groups, last_lr, strict=True):
            group["lr"] = lr


def leave_distributed(trainer: L.Trainer) -> None:
    """End the DDP process group once every rank has finished, so rank 0 can go on alone (quantization stage)."""
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        trainer.strategy.barrier("tierkit-fit-done")
        torch.distributed.destroy_process_group()
