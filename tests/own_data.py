"""LightningDataModules as users write them, outside tierkit: no tierkit base class, their own batch formats."""

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def _blobs(count: int, seed: int, classes: int = 4, shape=(1, 16, 16)):
    """Noisy class prototypes: learnable in a few steps."""
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.rand((classes, *shape), generator=generator)
    generator.manual_seed(seed)
    labels = torch.arange(count) % classes
    return prototypes[labels] + 0.3 * torch.randn((count, *shape), generator=generator), labels


class PlainDataModule(L.LightningDataModule):
    """Batches of ``(x, y)``; the number of classes is an attribute, the input shape is not."""

    num_classes = 4

    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train, self.val = TensorDataset(*_blobs(192, 1)), TensorDataset(*_blobs(64, 2))
        if stage == "test":
            self.test = TensorDataset(*_blobs(64, 3))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=self.batch_size)


class _Named(Dataset):
    def __init__(self, images, labels, broken: bool):
        self.images, self.labels, self.broken = images, labels, broken

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if self.broken:
            return {"image": self.images[i]}
        return {"image": self.images[i], "label": self.labels[i], "path": f"img{i}.png"}


class DictDataModule(PlainDataModule):
    """Batches of dicts with the user's own key names (and, when ``broken``, no label at all)."""

    def __init__(self, batch_size: int = 32, broken: bool = False):
        super().__init__(batch_size)
        self.broken = broken

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train, self.val = _Named(*_blobs(192, 1), self.broken), _Named(*_blobs(64, 2), self.broken)
        if stage == "test":
            self.test = _Named(*_blobs(64, 3), self.broken)
