"""A 1-D CNN for sequences (MNIST-1D, signals): the SmallCNN recipe with 1-D convolutions."""

from collections.abc import Sequence

import torch
from torch import nn

from tierkit.models.common import require_rank, vgg_stages


def conv1d_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)
    )


class SmallCNN1d(nn.Module):
    """Three stages of two width-``kernel`` convs (channels c, 2c, 4c) on (channels, length) inputs, max-pooling
    between stages, global average pooling and a linear head; ``width`` scales every channel count."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        base_channels: int = 32,
        kernel: int = 5,
    ):
        super().__init__()
        require_rank("SmallCNN1d", input_shape, 2)
        layers, c_in = vgg_stages(
            input_shape[0],
            base_channels,
            width,
            lambda c, out: conv1d_bn_relu(c, out, kernel),
            lambda: nn.MaxPool1d(2, ceil_mode=True),
        )
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
