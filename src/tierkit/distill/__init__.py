"""Teacher-to-student distillation: the loss, the LightningModule and the teacher cache."""

from tierkit.distill.losses import distillation_loss
from tierkit.distill.module import DistillationModule, freeze

__all__ = ["DistillationModule", "distillation_loss", "freeze"]
