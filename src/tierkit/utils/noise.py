"""Filters for library messages that say nothing actionable to a tierkit user."""

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_known_noise() -> None:
    """Hide Lightning's litlogger advert, the pytree deprecation it triggers in torch 2.13, and the ONNX
    exporter's notes about torchvision ops (tierkit has no torchvision), onnxscript's per-node optimizer notes, and
    ONNX Runtime's note that 16-bit activations move a model to opset 21 (tierkit asks for them knowing that)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropMessages("litlogger"))
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)
    logging.getLogger().addFilter(_DropMessages("does not support 16-bit integer quantization natively"))
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
