"""Shared building blocks for the model zoo."""

from torch import nn


def scaled_channels(base: int, width: float, divisor: int = 4) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of ``divisor`` (never below it)."""
    return max(divisor, int(base * width + divisor / 2) // divisor * divisor)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )
