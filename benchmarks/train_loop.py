"""What the training loop costs: tierkit's Lightning distillation step against a plain PyTorch loop doing the
same work, and a distillation epoch with and without the teacher-logit cache."""

import copy
import functools
import statistics
import time

import lightning as L
import torch
from torch import nn

from tierkit.distill import DistillationModule
from tierkit.distill.losses import distillation_loss


class _Clock(L.Callback):
    """Timestamps of every finished training step, and of each training epoch's start and end."""

    def __init__(self):
        self.steps: list[float] = []
        self.epochs: list[tuple[float, float]] = []
        self.fit_started = self.train_started = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_started = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_started = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append((time.perf_counter(), 0.0))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs[-1] = (self.epochs[-1][0], time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(time.perf_counter())


def _steps_per_second(stamps: list[float], warmup: int) -> float:
    return (len(stamps) - warmup) / (stamps[-1] - stamps[warmup - 1])


def _fit(module: DistillationModule, datamodule, clock: _Clock, **limits) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **limits,
    )
    trainer.fit(module, datamodule=datamodule)


def _module(student: nn.Module, teacher: nn.Module, datamodule, cache: bool) -> DistillationModule:
    return DistillationModule(
        copy.deepcopy(student),
        datamodule.num_classes,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        teacher=teacher,
        temperature=4.0,
        alpha=0.5,
        cache_teacher_logits=cache,
    )


def lightning_steps_per_second(student: nn.Module, teacher: nn.Module, datamodule, steps: int, warmup: int) -> float:
    """Distillation steps per second through Lightning, the teacher run on every batch (no logit cache)."""
    clock = _Clock()
    _fit(_module(student, teacher, datamodule, cache=False), datamodule, clock, max_steps=warmup + steps)
    return _steps_per_second(clock.steps, warmup)


def plain_steps_per_second(student: nn.Module, teacher: nn.Module, datamodule, steps: int, warmup: int) -> float:
    """The same distillation steps in a hand-written PyTorch loop: same data loader, loss and optimizer."""
    model = copy.deepcopy(student).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stamps: list[float] = []
    while len(stamps) < warmup + steps:
        for x, y, *_ in datamodule.train_dataloader():
            with torch.no_grad():
                soft = teacher(x)
            loss = distillation_loss(model(x), soft, y, 4.0, 0.5)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
            if len(stamps) == warmup + steps:
                break
    return _steps_per_second(stamps, warmup)


def kd_epoch_seconds(student: nn.Module, teacher: nn.Module, datamodule, epochs: int, cache: bool) -> dict:
    """Median training-epoch time after the first epoch, and the time from fit start to the first step
    (where the cache, when on, runs the teacher over the training split once)."""
    clock = _Clock()
    _fit(_module(student, teacher, datamodule, cache=cache), datamodule, clock, max_epochs=epochs)
    durations = [end - start for start, end in clock.epochs[1:]]
    return {
        "epoch_s": statistics.median(durations),
        "fit_start_s": clock.train_started - clock.fit_started,
        "epochs": len(clock.epochs),
    }
