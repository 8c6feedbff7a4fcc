"""MobileNetV2 (Sandler et al. 2018) adapted to small inputs: early strides of 1 keep spatial detail."""

from collections.abc import Sequence

import torch
from torch import nn

from tierkit.models.common import conv_bn_relu, scaled_channels

# (expansion, channels, repeats, stride) per stage; strides suited to 28-32 px inputs.
SMALL_INPUT_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers = [] if expansion == 1 else [conv_bn_relu(c_in, hidden, kernel=1)]
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Depthwise-separable inverted residuals with a width multiplier."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        last_channels: int = 640,
        dropout: float = 0.1,
    ):
        super().__init__()
        c_in = scaled_channels(32, width, divisor=8)
        layers = [conv_bn_relu(input_shape[0], c_in)]
        for expansion, channels, repeats, stride in SMALL_INPUT_STAGES:
            c_out = scaled_channels(channels, width, divisor=8)
            for i in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expansion))
                c_in = c_out
        c_last = scaled_channels(last_channels, max(width, 1.0), divisor=8)
        layers.append(conv_bn_relu(c_in, c_last, kernel=1))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))
