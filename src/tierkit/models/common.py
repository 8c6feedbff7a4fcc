"""Shared building blocks for the model zoo."""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tierkit.errors import TierkitError


def scaled_channels(base: int, width: float, divisor: int = 4) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of ``divisor`` (never below it)."""
    if not (isinstance(width, int | float) and 0 < width < float("inf")):
        raise TierkitError(
            f"width={width} is not a positive channel multiplier: a zoo model scales every layer by it",
            where="model.teacher.width, model.student.width or tier.student_width",
            fix="use a positive number (1.0 is the full model, 0.5 half the channels)",
        )
    return max(divisor, int(base * width + divisor / 2) // divisor * divisor)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def vgg_stages(
    c_in: int, base_channels: int, width: float, block: Callable[[int, int], nn.Module], pool: Callable[[], nn.Module]
) -> tuple[list[nn.Module], int]:
    """Three stages of two ``block``s (channels c, 2c, 4c, scaled by ``width``) with a ``pool`` between stages;
    returns the layers and the last stage's channel count."""
    layers: list[nn.Module] = []
    for stage in range(3):
        c_out = scaled_channels(base_channels * 2**stage, width)
        if stage:
            layers.append(pool())
        layers += [block(c_in, c_out), block(c_out, c_out)]
        c_in = c_out
    return layers, c_in


# What each input rank is, and the zoo model that takes it.
INPUT_KINDS = {
    1: ("tables (features,)", "mlp"),
    2: ("sequences (channels, length)", "cnn1d"),
    3: ("images (channels, height, width)", "cnn"),
}


def require_rank(model: str, input_shape: Sequence[int], rank: int) -> None:
    """Refuse data of another rank than ``model`` takes, naming the zoo model that suits the data."""
    if len(input_shape) == rank:
        return
    kind, _ = INPUT_KINDS[rank]
    _, suited = INPUT_KINDS.get(len(input_shape), ("", "mlp"))
    raise TierkitError(
        f"{model} takes {kind}; the data gives inputs of shape {list(input_shape)}",
        where="model",
        fix=f"use model={suited} for this data (or your own model)",
    )


def weights_device(module: nn.Module) -> torch.device | None:
    """Where ``module``'s parameters are (None without any): where a tensor made for it, or a module added to it,
    must go, which can differ from the device Lightning names before it has moved the module."""
    weights = next(module.parameters(), None)
    return weights.device if weights is not None else None
