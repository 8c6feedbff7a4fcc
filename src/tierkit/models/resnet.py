"""CIFAR-style ResNet (He et al. 2016, section 4.2): three stages, depth = 6n + 2."""

from collections.abc import Sequence

import torch
from torch import nn

from tierkit.errors import TierkitError
from tierkit.models.common import scaled_channels


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-20/32/44/56/110 with a width multiplier; projection shortcuts keep it prunable."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 20, width: float = 1.0):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise TierkitError(
                f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 44, 56, 110...), got {depth}",
                where="model.*.depth",
                fix="choose a depth such as 20 or 56",
            )
        blocks_per_stage = (depth - 2) // 6
        channels = [scaled_channels(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], channels[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        layers, c_in = [], channels[0]
        for stage, c_out in enumerate(channels):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.layers(self.stem(x))))
