"""LightningDataModules: bundled data (mnist5k, digits, synthetic) and on-disk formats."""

from tierkit.data.base import ArrayDataModule, Arrays
from tierkit.data.bundled import DigitsDataModule, MNIST1DDataModule, MNIST5kDataModule, SyntheticDataModule
from tierkit.data.foreign import ForeignDataModule
from tierkit.data.ondisk import CIFAR10DataModule, FashionMNISTDataModule, ImageFolderDataModule, MNISTDataModule

__all__ = [
    "ArrayDataModule",
    "Arrays",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ForeignDataModule",
    "ImageFolderDataModule",
    "MNIST1DDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
]
