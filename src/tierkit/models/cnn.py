"""A plain VGG-style CNN: the default teacher and student family."""

from collections.abc import Sequence

import torch
from torch import nn

from tierkit.models.common import conv_bn_relu, require_rank, vgg_stages


class SmallCNN(nn.Module):
    """Three stages of two 3x3 convs (channels c, 2c, 4c), max-pooling between stages, global
    average pooling and a linear head. Widening late, at low resolution, keeps MACs small.

    ``width`` scales every channel count, so teacher and students share one definition.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        base_channels: int = 32,
        dropout: float = 0.0,
    ):
        super().__init__()
        require_rank("SmallCNN", input_shape, 3)
        layers, c_in = vgg_stages(
            input_shape[0], base_channels, width, conv_bn_relu, lambda: nn.MaxPool2d(2, ceil_mode=True)
        )
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))
