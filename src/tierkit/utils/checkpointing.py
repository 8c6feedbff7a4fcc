"""Helpers for callbacks that change the model's architecture during training."""

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


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
