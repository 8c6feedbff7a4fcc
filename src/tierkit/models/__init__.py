"""The model zoo. Every model takes ``input_shape`` and ``num_classes`` from the data and a ``width``."""

from tierkit.models.cnn import SmallCNN
from tierkit.models.cnn1d import SmallCNN1d
from tierkit.models.mlp import MLP
from tierkit.models.mobilenetv2 import MobileNetV2
from tierkit.models.resnet import CifarResNet
from tierkit.models.separable import SeparableCNN

__all__ = ["MLP", "CifarResNet", "MobileNetV2", "SeparableCNN", "SmallCNN", "SmallCNN1d"]
