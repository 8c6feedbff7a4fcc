"""Device fine-tuning: adapt a compressed run's student to a target device's data without undoing its compression."""

from tierkit.finetune.stage import finetune

__all__ = ["finetune"]
