"""In-memory LightningDataModule: the datasets tierkit targets fit in RAM, so load once, split once."""

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from tierkit.data.augment import BatchAugment
from tierkit.data.shift import DeviceShift
from tierkit.errors import TierkitError
from tierkit.utils.resume import interrupted_epoch


@dataclass
class Arrays:
    """Images as float in [0, 1] with shape (N, C, H, W) and integer labels with shape (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Arrays":
        return Arrays(self.images[index], self.labels[index])


class IndexedTensorDataset(Dataset):
    """Yields (image, label, index); the index lets distillation look up cached teacher logits."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[i], self.labels[i], i


class EpochShuffle(RandomSampler):
    """A shuffle drawn from (seed, epoch) alone, so a run resumed at epoch k sees the order an uninterrupted run saw.

    Lightning calls ``set_epoch`` before every epoch; under DDP it swaps in DistributedSampler, epoch-seeded too.
    """

    def __init__(self, data_source, seed: int, resume: tuple[int, int] | None = None):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        # (epoch, samples): a run resumed mid-epoch leaves out that epoch's samples already trained on.
        self.resume = resume
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))

    def __iter__(self) -> Iterator[int]:
        order = super().__iter__()
        if self.resume is not None and self.epoch >= self.resume[0]:
            epoch, skipped = self.resume
            self.resume = None
            if epoch == self.epoch:
                return itertools.islice(order, skipped, None)
        return order


def _count(size: float, total: int, name: str) -> int:
    n = round(size * total) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < n < total:
        raise TierkitError(
            f"data.{name}={size} leaves no room for the other splits of {total} samples",
            where=f"data.{name}",
            fix="use a count smaller than the dataset or a fraction in (0, 1)",
        )
    return n


class ArrayDataModule(L.LightningDataModule):
    """Loads arrays (subclasses say how), normalises them and makes a seeded train/val/test split.

    Subclasses implement ``load()`` returning ``{"all": Arrays}`` (split three ways here) or
    ``{"train": Arrays, "test": Arrays}`` (the dataset's own test split; val comes out of train).
    ``shift`` (see DeviceShift) turns every split into what a target device would see.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        val_size: float = 0.1,
        test_size: float = 0.2,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        split_seed: int = 0,
        num_workers: int = 0,
        shift: Mapping | None = None,
        augment: Mapping | None = None,
    ):
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        channels = self.input_shape[0]
        mean, std = ([0.0] * channels, [1.0] * channels) if mean is None and std is None else (mean, std)
        if mean is None or std is None or len(mean) != channels or len(std) != channels:
            counts = [None if v is None else len(v) for v in (mean, std)]
            raise TierkitError(
                f"data.mean and data.std need one value per channel ({channels}), got {counts[0]} and {counts[1]}",
                where="data config",
                fix="list one mean and one std per input channel (per feature for a table), or null for both to "
                "leave the inputs as they are",
            )
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TierkitError(
                    f"data.{name}={value!r} is not a positive number of samples",
                    where=f"data.{name}",
                    fix=f"set data.{name} to a whole number of at least 1 (e.g. 128)",
                )
        # One value per entry of the first axis: image channels, sequence channels, or a table's features.
        broadcast = (-1, *[1] * (len(self.input_shape) - 1))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(broadcast)
        self.std = torch.tensor(std, dtype=torch.float32).view(broadcast)
        self.val_size, self.test_size = val_size, test_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.split_seed, self.num_workers = split_seed, num_workers
        self.shift = DeviceShift.from_config(shift) if shift else None
        self.augment = BatchAugment.from_config(augment)
        self.augment.check_shape(self.input_shape)
        self.splits: dict[str, IndexedTensorDataset] = {}
        self.resume: tuple[int, int] | None = None

    def load(self) -> dict[str, Arrays]:
        raise NotImplementedError

    @property
    def augments(self) -> bool:
        """Whether training batches are augmented (so a teacher must see each batch, not cached logits)."""
        return self.augment.active

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches where they now are, on the device the model trains on."""
        trainer = self.trainer
        if not self.augment.active or trainer is None or not trainer.training:
            return batch
        images, *rest = batch
        return (self.augment(images), *rest)

    @property
    def source(self) -> str:
        """Where the data comes from, for error messages."""
        return type(self).__name__

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = {name: self._checked(part, name) for name, part in self.load().items()}
        generator = torch.Generator().manual_seed(self.split_seed)
        if "all" in arrays:
            pool = arrays["all"]
            order = torch.randperm(len(pool), generator=generator)
            n_test = _count(self.test_size, len(pool), "test_size")
            n_val = _count(self.val_size, len(pool) - n_test, "val_size")
            parts = {
                "test": pool.subset(order[:n_test]),
                "val": pool.subset(order[n_test : n_test + n_val]),
                "train": pool.subset(order[n_test + n_val :]),
            }
        else:
            train = arrays["train"]
            order = torch.randperm(len(train), generator=generator)
            n_val = _count(self.val_size, len(train), "val_size")
            parts = {
                "val": train.subset(order[:n_val]),
                "train": train.subset(order[n_val:]),
                "test": arrays["test"],
            }
        streams = {"train": 0, "val": 1, "test": 2}
        self.splits = {name: self.dataset(part, streams[name]) for name, part in parts.items()}

    def dataset(self, part: Arrays, stream: int) -> Dataset:
        """One split as a Dataset: in memory, shifted (``stream`` keeps the splits' random draws apart) and
        normalised once."""
        images = part.images if self.shift is None else self.shift.apply(part.images, stream)
        return IndexedTensorDataset((images - self.mean) / self.std, part.labels)

    def _checked(self, arrays: Arrays, split: str) -> Arrays:
        shape = tuple(arrays.images.shape[1:])
        if shape != self.input_shape:
            raise TierkitError(
                f"images have shape {list(shape)} but data.input_shape is {list(self.input_shape)}",
                where=self.source,
                fix="set data.input_shape to the images' (channels, height, width)",
            )
        finite = torch.isfinite(arrays.images.reshape(len(arrays.images), -1)).all(dim=1)
        if not bool(finite.all()):
            index = int((~finite).nonzero()[0])
            raise TierkitError(
                f"{split} input {index} holds NaN or infinite values ({int((~finite).sum())} such inputs in {split})",
                where=self.source,
                fix="clean or drop those samples before training",
            )
        self._check_labels(arrays.labels)
        return Arrays(arrays.images.float(), arrays.labels.long())

    def _check_labels(self, labels: torch.Tensor) -> None:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise TierkitError(
                f"labels span {int(labels.min())}..{int(labels.max())} but data.num_classes is {self.num_classes}",
                where=self.source,
                fix="set data.num_classes to the number of classes in the data",
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        dataset = self.splits[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            # The run's seed (set by seed_everything before training) and the epoch decide the order.
            sampler=EpochShuffle(dataset, torch.initial_seed(), self.resume) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        self.resume = None
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: how far into its epoch training was (see tierkit.utils.resume)."""
        return interrupted_epoch(self.trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.resume = (state_dict["epoch"], state_dict["batches"] * self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def ordered_train_dataloader(self) -> DataLoader:
        """The training split in index order, for one-off passes such as caching teacher logits."""
        return self._loader("train", shuffle=False)
