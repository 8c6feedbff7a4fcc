"""A CNN whose late stages are depthwise-separable: the shape for students under about 20,000 parameters."""

from collections.abc import Sequence

import torch
from torch import nn

from tierkit.errors import TierkitError
from tierkit.models.common import conv_bn_relu, require_rank, scaled_channels


def separable_conv(c_in: int, c_out: int) -> nn.Sequential:
    """A 3x3 depthwise conv, then a 1x1 pointwise one: 1/c_out + 1/9 of a full 3x3 conv's weights."""
    return nn.Sequential(conv_bn_relu(c_in, c_in, groups=c_in), conv_bn_relu(c_in, c_out, kernel=1))


class SeparableCNN(nn.Module):
    """SmallCNN's layout (stages of two 3x3 convs, max-pooling between, global average pooling) with the stages
    from ``full_conv_stages`` on depthwise-separable.

    A small CNN keeps most of its weights in the last, widest stage; making that stage separable buys it several
    times the channels for the same parameters, while the early stages, few channels at full resolution, stay
    full convs (a depthwise conv there saves little and trains slowly on CPUs).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        channels: Sequence[int] = (40, 64, 168),
        full_conv_stages: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        require_rank("SeparableCNN", input_shape, 3)
        if not 0 <= full_conv_stages <= len(channels):
            raise TierkitError(
                f"full_conv_stages={full_conv_stages} is not a number of stages of this {len(channels)}-stage model",
                where="model.*.full_conv_stages",
                fix=f"use 0 (every stage separable after the first conv) to {len(channels)} (no separable stage)",
            )
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for stage, base in enumerate(channels):
            c_out = scaled_channels(base, width)
            if stage:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            block = conv_bn_relu if stage < full_conv_stages else separable_conv
            # The input layer is always a full conv: a depthwise conv over a few image channels learns almost nothing.
            layers += [conv_bn_relu(c_in, c_out) if not layers else block(c_in, c_out), block(c_out, c_out)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))
