"""Any LightningDataModule of yours, as tierkit's stages need it: batches as ``(inputs, labels)``, with the input
shape and the number of classes known, and every batch checked on the way.

Your module stays as it is. Its batches may be ``(x, y)``, ``(x, y, *extra)`` or dicts (``keys`` names the
entries). tierkit's own data modules add each sample's index so a teacher's logits can be cached; a module of
yours does not, so the teacher runs on every batch.
"""

from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch

from tierkit.errors import TierkitError

DEFAULT_KEYS = {"input": "input", "target": "target"}


class CheckedBatches:
    """An iterable over a loader of the user's module that yields checked ``(inputs, labels)`` tuples."""

    def __init__(self, loader: Any, split: str, module: "ForeignDataModule"):
        self.loader, self.split, self.module = loader, split, module

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index, batch in enumerate(self.loader):
            yield self.module.unpack(batch, self.split, index)


class ForeignDataModule(L.LightningDataModule):
    """Wraps ``module`` (an instantiated LightningDataModule); ``input_shape`` and ``num_classes`` default to the
    module's own attributes, and the input shape to the first training batch's."""

    def __init__(
        self,
        module: L.LightningDataModule,
        num_classes: int | None = None,
        input_shape: list[int] | None = None,
        keys: Mapping[str, str] | None = None,
    ):
        super().__init__()
        if not isinstance(module, L.LightningDataModule):
            raise TierkitError(
                f"data.module built a {type(module).__name__}, not a LightningDataModule",
                where="data.module._target_",
                fix="point data.module._target_ at your LightningDataModule class",
            )
        self.module = module
        self.keys = {**DEFAULT_KEYS, **(keys or {})}
        classes = num_classes if num_classes is not None else getattr(module, "num_classes", None)
        if classes is None:
            raise TierkitError(
                f"{type(module).__name__} has no num_classes attribute and data.num_classes is not set",
                where="data.num_classes",
                fix="set data.num_classes to the number of classes your labels run over",
            )
        self.num_classes = int(classes)
        shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
        self._input_shape = tuple(int(d) for d in shape) if shape is not None else None
        self._stages_set_up: set[str] = set()

    @property
    def source(self) -> str:
        return type(self.module).__name__

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: configured, the module's own, or that of the first training batch."""
        if self._input_shape is None:
            inputs, _ = next(iter(self.train_dataloader()))
            self._input_shape = tuple(inputs.shape[1:])
        return self._input_shape

    def prepare_data(self) -> None:
        self.module.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Your module's setup, once per stage ("fit" gives train and val, "test" the test split)."""
        stage = stage or "fit"
        if stage not in self._stages_set_up:
            self.module.setup(stage)
            self._stages_set_up.add(stage)

    def unpack(self, batch: Any, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of one batch of the user's module, refusing batches tierkit cannot train on."""
        where = f"{self.source} {split} batch {index}"
        if isinstance(batch, Mapping):
            missing = [key for key in self.keys.values() if key not in batch]
            if missing:
                raise TierkitError(
                    f"{where} is a dict without {missing} (it has {sorted(batch)})",
                    where="data.keys",
                    fix="name the entries that hold inputs and labels: data.keys={input: <key>, target: <key>}",
                )
            inputs, labels = batch[self.keys["input"]], batch[self.keys["target"]]
        elif isinstance(batch, list | tuple) and len(batch) >= 2:
            inputs, labels = batch[0], batch[1]
        else:
            raise TierkitError(
                f"{where} holds no label: tierkit needs (inputs, labels, ...) tuples or dicts",
                where="data.module",
                fix="return (x, y) from your dataset, or dicts with the keys named in data.keys",
            )
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.dtype.is_floating_point:
            raise TierkitError(
                f"{where} has labels of shape {tuple(labels.shape)} and type {labels.dtype}; "
                "tierkit needs one class index per input",
                where="data.module",
                fix="give each input an integer class label",
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise TierkitError(
                f"{where} has labels {int(labels.min())}..{int(labels.max())}, outside data.num_classes="
                f"{self.num_classes}",
                where="data.num_classes",
                fix="set data.num_classes to the number of classes in the data",
            )
        if not bool(torch.isfinite(inputs).all()):
            sample = int((~torch.isfinite(inputs.reshape(len(inputs), -1))).any(dim=1).nonzero()[0])
            raise TierkitError(
                f"{where} holds NaN or infinite inputs (sample {sample} of the batch)",
                where=self.source,
                fix="clean or drop those samples in your data module",
            )
        return inputs.float(), labels.long()

    def train_dataloader(self) -> CheckedBatches:
        self.setup("fit")
        return CheckedBatches(self.module.train_dataloader(), "train", self)

    def val_dataloader(self) -> CheckedBatches:
        self.setup("fit")
        return CheckedBatches(self.module.val_dataloader(), "val", self)

    def test_dataloader(self) -> CheckedBatches:
        self.setup("test")
        return CheckedBatches(self.module.test_dataloader(), "test", self)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.module.load_state_dict(state_dict)
