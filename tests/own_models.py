"""Models as users write them, outside tierkit: their own constructors, argument names and layers.

Nothing here knows tierkit: no ``input_shape``, no width multiplier, names of the authors' choosing.
"""

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Conv + BatchNorm + ReLU blocks; ``width`` is a channel count, ``n_classes`` the number of outputs."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SeparableNet(nn.Module):
    """Depthwise-separable convolutions with GELU and a hidden linear layer; sized by ``channels``."""

    def __init__(self, image_shape: tuple[int, int, int], classes: int, channels: tuple[int, ...] = (12, 24)):
        super().__init__()
        layers, previous = [], image_shape[0]
        for out in channels:
            layers += [
                nn.Conv2d(previous, previous, 3, padding=1, groups=previous),
                nn.Conv2d(previous, out, 1),
                nn.BatchNorm2d(out),
                nn.GELU(),
                nn.MaxPool2d(2),
            ]
            previous = out
        self.body = nn.Sequential(*layers)
        side = image_shape[1] // 2 ** len(channels)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(previous * side * side, 32), nn.GELU(), nn.Linear(32, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class KeywordNet(nn.Module):
    """A model configured through ``**options``, as some codebases build theirs."""

    def __init__(self, **options):
        super().__init__()
        hidden = options.get("hidden", 32)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(options["in_features"], hidden), nn.ReLU(), nn.Linear(hidden, options["classes"])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Payload:
    """Pickled into a file, it would create ``marker`` when unpickled: tierkit must refuse it unread."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class FixedFlatten(nn.Module):
    """Flattens with a hard-coded feature count, as much user code does: pruning the conv breaks that view."""

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3)
        self.head = nn.Linear(16 * 14 * 14, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).view(len(x), 16 * 14 * 14))
