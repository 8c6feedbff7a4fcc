"""Instantiate a model config against the data it will see, with a clear error when that fails."""

from collections.abc import Sequence

from omegaconf import DictConfig
from torch import nn

from tierkit.errors import TierkitError
from tierkit.utils.instantiate import instantiate


def build_model(config: DictConfig, input_shape: Sequence[int], num_classes: int, where: str) -> nn.Module:
    """``config`` names a ``_target_`` nn.Module class accepting ``input_shape`` and ``num_classes``."""
    model = instantiate(config, where=where, input_shape=list(input_shape), num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise TierkitError(
            f"{config.get('_target_')} built a {type(model).__name__}, not a torch.nn.Module",
            where=where,
            fix="point _target_ at an nn.Module class",
        )
    return model


def model_name(config: DictConfig) -> str:
    """The class name a model config builds, for tables and logs."""
    return str(config.get("_target_", "?")).rsplit(".", 1)[-1]
