"""DistillationModule: the LightningModule that trains a student, with or without a frozen teacher."""

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from tierkit.distill.losses import distillation_loss
from tierkit.errors import TierkitError
from tierkit.models.checkpoint import CHECKPOINT_FORMAT, checkpoint_digest
from tierkit.models.qat import prepare_qat, qat_settings
from tierkit.models.structure import apply_structure, describe_structure
from tierkit.utils.resume import restart_epoch_at_its_start

log = logging.getLogger(__name__)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher's BN statistics and weights must never move."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_distill_settings(temperature: float, alpha: float, **_: object) -> None:
    if not 0 <= alpha <= 1:
        raise TierkitError(
            f"distill.alpha={alpha} is outside [0, 1]",
            where="distill.alpha",
            fix="use 0 for no distillation, 1 for soft targets only",
        )
    if temperature <= 0:
        raise TierkitError(
            f"distill.temperature={temperature} must be positive",
            where="distill.temperature",
            fix="use a temperature such as 1, 2 or 4",
        )


class DistillationModule(L.LightningModule):
    """Trains ``student`` on ``alpha`` * soft teacher targets + (1 - alpha) * labels.

    The teacher is held outside the module's registered children: it never enters the optimizer,
    DDP's gradient sync or the checkpoint (the teacher cache already holds it), and Lightning's
    ``train()`` calls cannot switch it out of eval mode.
    """

    def __init__(
        self,
        student: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        teacher: nn.Module | None = None,
        temperature: float = 4.0,
        alpha: float = 0.5,
        cache_teacher_logits: bool = True,
    ):
        super().__init__()
        check_distill_settings(temperature, alpha)
        self.student = student
        self.num_classes = num_classes
        # object.__setattr__ bypasses nn.Module's registration of child modules (see class docstring).
        object.__setattr__(self, "_teacher", freeze(teacher) if teacher is not None else None)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.temperature, self.alpha = temperature, alpha
        self.cache_teacher_logits = cache_teacher_logits
        self.cached_teacher_logits: torch.Tensor | None = None
        self.run_config: dict | None = None
        # Set for the QAT stage: the FP32 checkpoint it started from (resume and export compare against it).
        self.fp32_checkpoint: str | None = None
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("val", "test")
                for name in ("acc", "teacher_acc", "agreement")
            }
        )

    @property
    def teacher(self) -> nn.Module | None:
        if self._teacher is not None and next(self._teacher.parameters()).device != self.device:
            self._teacher.to(self.device)
        return self._teacher

    @property
    def distilling(self) -> bool:
        return self._teacher is not None and self.alpha > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if index is not None and self.cached_teacher_logits is not None:
            return self.cached_teacher_logits[index.to(self.cached_teacher_logits.device)]
        return self.teacher(x)

    def on_fit_start(self) -> None:
        """Run the frozen teacher over the (un-augmented) training split once instead of every epoch."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not (self.distilling and self.cache_teacher_logits and hasattr(datamodule, "ordered_train_dataloader")):
            return
        if getattr(datamodule, "augments", False):
            log.info("Training batches are augmented: the teacher runs on each one (cached logits would be stale)")
            return
        teacher = self.teacher
        with torch.no_grad():
            logits = [teacher(x.to(self.device)) for x, *_ in datamodule.ordered_train_dataloader()]
        self.cached_teacher_logits = torch.cat(logits)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        x, y, *rest = batch
        logits = self.student(x)
        teacher_logits = self.teacher_logits(x, rest[0] if rest else None) if self.distilling else None
        terms = distillation_loss(logits, teacher_logits, y, self.temperature, self.alpha)
        if not torch.isfinite(terms["loss"]):
            raise TierkitError(
                f"the training loss became {terms['loss'].item()} "
                f"at epoch {self.current_epoch}, step {self.global_step}",
                where="training_step (loss terms: " + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()) + ")",
                fix="lower optimizer.lr, or check the data for NaN/inf values",
            )
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss", sync_dist=True)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True, sync_dist=True)
        return terms["loss"]

    def _evaluate(self, batch: tuple, stage: str) -> None:
        x, y, *_ = batch
        logits = self.student(x)
        self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.metrics[f"{stage}_acc"](logits, y)
        self.log(f"{stage}/acc", self.metrics[f"{stage}_acc"], on_epoch=True, prog_bar=True)
        if self._teacher is not None:
            teacher_logits = self.teacher(x)
            self.metrics[f"{stage}_teacher_acc"](teacher_logits, y)
            self.metrics[f"{stage}_agreement"](logits, teacher_logits.argmax(-1))
            self.log(f"{stage}/teacher_acc", self.metrics[f"{stage}_teacher_acc"], on_epoch=True)
            self.log(f"{stage}/agreement", self.metrics[f"{stage}_agreement"], on_epoch=True)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.student.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the composed config and the layer shapes (pruning changes them), so export and resume
        rebuild this exact model rather than today's defaults, and a digest that catches later damage."""
        checkpoint["tierkit"] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.run_config,
            "structure": describe_structure(self.student),
            "qat": qat_settings(self.student),
            "fp32_checkpoint": self.fp32_checkpoint,
        }
        checkpoint["tierkit"]["digest"] = checkpoint_digest(checkpoint)
        restart_epoch_at_its_start(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Reshape the student to the checkpoint's (possibly pruned) layers, and insert its fake quantizers
        if it was saved during QAT, before Lightning loads the weights."""
        saved = checkpoint.get("tierkit", {})
        if saved.get("structure"):
            weights = {k.removeprefix("student."): v for k, v in checkpoint["state_dict"].items()}
            apply_structure(self.student, saved["structure"], weights)
        if saved.get("qat"):
            self.student = prepare_qat(self.student, **saved["qat"])
