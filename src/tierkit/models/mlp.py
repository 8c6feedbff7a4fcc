"""A multilayer perceptron on flattened pixels: the simplest student, and the best case for INT8."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from tierkit.models.common import scaled_channels


class MLP(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.1,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        c_in = math.prod(input_shape)
        for size in hidden:
            c_out = scaled_channels(size, width, divisor=8)
            layers += [nn.Linear(c_in, c_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
