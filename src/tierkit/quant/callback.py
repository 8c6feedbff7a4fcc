"""QuantizationAwareTraining: a Lightning callback that turns fake quantization on in stages."""

import logging
from typing import Any

import lightning as L
from lightning import Callback

from tierkit.errors import TierkitError
from tierkit.models.qat import (
    STAGES,
    activation_quantizers,
    freeze_batch_norm,
    is_prepared,
    prepare_qat,
    qat_stage,
    set_qat_stage,
)
from tierkit.prune import StructuredPruning
from tierkit.prune.surgery import forget_best_checkpoints, rewrap_distributed
from tierkit.runtime.cpu import needs_reduced_range

log = logging.getLogger(__name__)


def require_observed_ranges(student) -> None:
    """Frozen activation quantizers must have seen data: a range never observed has nothing to export."""
    unobserved = sum(not quantizer.initialised for quantizer in activation_quantizers(student))
    if unobserved:
        raise TierkitError(
            f"QAT froze {unobserved} activation quantizer(s) that never observed a batch",
            where="callbacks.qat (or quantization.qat.callback)",
            fix="let at least one epoch pass between activations_epoch and freeze_epoch",
        )


class QuantizationAwareTraining(Callback):
    """Fine-tune the student through simulated INT8 so it ships with little or no accuracy lost.

    Stages switch at the start of the configured epochs: ``start_epoch`` rounds the weights, from
    ``activations_epoch`` activations are rounded too (their ranges tracked as training goes), and from
    ``freeze_epoch`` the ranges and the batch-norm statistics stop moving, so the last epochs train against
    exactly the grids and folded weights that the exported model uses. The distillation loss stays on.
    """

    def __init__(
        self,
        start_epoch: int = 0,
        activations_epoch: int = 1,
        freeze_epoch: int = 2,
        reduce_range: bool | None = None,
        observer_momentum: float = 0.01,
        per_channel: bool = True,
        float_first_layer: bool = False,
    ):
        super().__init__()
        if not 0 <= start_epoch <= activations_epoch <= freeze_epoch:
            raise TierkitError(
                f"QAT stages must come in order: start_epoch={start_epoch} <= activations_epoch="
                f"{activations_epoch} <= freeze_epoch={freeze_epoch}",
                where="callbacks.qat",
                fix="e.g. start_epoch=10 activations_epoch=11 freeze_epoch=13",
            )
        if 0 < activations_epoch == freeze_epoch:
            raise TierkitError(
                f"activations_epoch={activations_epoch} equals freeze_epoch: activation ranges would be frozen "
                "before any batch was observed, and the model could not be exported",
                where="callbacks.qat",
                fix=f"set freeze_epoch to at least {activations_epoch + 1}",
            )
        if not 0 < observer_momentum <= 1:
            raise TierkitError(
                f"observer_momentum={observer_momentum} is outside (0, 1]",
                where="callbacks.qat.observer_momentum",
                fix="use a small value such as 0.01",
            )
        self.start_epoch, self.activations_epoch, self.freeze_epoch = start_epoch, activations_epoch, freeze_epoch
        self.reduce_range = needs_reduced_range() if reduce_range is None else bool(reduce_range)
        self.observer_momentum = observer_momentum
        self.per_channel = per_channel
        self.float_first_layer = float_first_layer
        self.stage = "float"
        self.history: list[dict[str, Any]] = []

    def stage_at(self, epoch: int) -> str:
        if epoch >= self.freeze_epoch:
            return "frozen"
        if epoch >= self.activations_epoch:
            return "activations"
        return "weights" if epoch >= self.start_epoch else "float"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse a schedule that would prune a model that already carries quantizers."""
        if stage != "fit":
            return
        for callback in trainer.callbacks:
            if isinstance(callback, StructuredPruning) and callback.epochs[-1] >= self.start_epoch:
                raise TierkitError(
                    f"pruning's last step (epoch {callback.epochs[-1]}) is not before QAT starts "
                    f"(epoch {self.start_epoch})",
                    where="callbacks.pruning.end_epoch / callbacks.qat.start_epoch",
                    fix="finish pruning first: lower callbacks.pruning.end_epoch or raise callbacks.qat.start_epoch",
                )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = self.stage_at(trainer.current_epoch)
        if stage != "float" and not is_prepared(pl_module.student):
            # The quantized layers share the float layers' parameters, so the optimizer and its state carry on.
            pl_module.student = prepare_qat(
                pl_module.student, self.reduce_range, self.observer_momentum, self.per_channel, self.float_first_layer
            )
            rewrap_distributed(trainer)
        if is_prepared(pl_module.student) and qat_stage(pl_module.student) != stage:
            set_qat_stage(pl_module.student, stage)
            if stage == "frozen":
                require_observed_ranges(pl_module.student)
            # Accuracy before this switch measured a different model than the one that will ship.
            forget_best_checkpoints(trainer)
            self.history.append({"epoch": trainer.current_epoch, "stage": stage})
            if trainer.is_global_zero:
                log.info("QAT: stage %r from epoch %d", stage, trainer.current_epoch)
        self.stage = stage
        self._hold_frozen_batch_norm(pl_module)
        pl_module.log("qat/stage", float(STAGES.index(stage)), on_epoch=True, on_step=False)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning puts the whole model back in train mode after every validation run.
        self._hold_frozen_batch_norm(pl_module)

    def _hold_frozen_batch_norm(self, pl_module: L.LightningModule) -> None:
        if self.stage == "frozen":
            freeze_batch_norm(pl_module.student)

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage = state_dict.get("stage", "float")
        self.history = state_dict.get("history", [])
