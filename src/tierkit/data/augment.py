"""Training-time augmentation as config, applied to whole batches on the device the model trains on.

Only training batches are augmented; validation, test, calibration and the teacher-logit cache see the data as it
is. A run that augments therefore runs its teacher on every augmented batch instead of reading cached logits.
"""

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch.nn import functional

from tierkit.errors import TierkitError


@dataclass(frozen=True)
class BatchAugment:
    """Random crop after ``crop_padding`` pixels of edge padding, and a random horizontal flip (``hflip``)."""

    crop_padding: int = 0
    hflip: bool = False

    @classmethod
    def from_config(cls, config: Mapping | None) -> "BatchAugment":
        config = dict(config or {})
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TierkitError(
                f"unknown augmentation setting(s) {unknown}",
                where="data.augment",
                fix=f"use {', '.join(sorted(known))}",
            )
        augment = cls(**config)
        if not isinstance(augment.crop_padding, int) or augment.crop_padding < 0:
            raise TierkitError(
                f"data.augment.crop_padding={augment.crop_padding!r} is not a number of pixels",
                where="data.augment.crop_padding",
                fix="use 0 (off) or a small whole number such as 2 or 4",
            )
        return augment

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def check_shape(self, input_shape: tuple[int, ...]) -> None:
        if self.active and len(input_shape) != 3:
            raise TierkitError(
                f"crops and flips need image inputs (channels, height, width); data.input_shape is {list(input_shape)}",
                where="data.augment",
                fix="turn augmentation off for this data (data.augment.crop_padding=0 data.augment.hflip=false)",
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop_padding:
            images = self._random_crop(images)
        if self.hflip:
            flip = torch.rand(len(images), device=images.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        return images

    def _random_crop(self, images: torch.Tensor) -> torch.Tensor:
        pad = self.crop_padding
        height, width = images.shape[-2:]
        padded = functional.pad(images, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (len(images), 2), device=images.device)
        rows = (offsets[:, 0, None] + torch.arange(height, device=images.device)).view(-1, 1, height, 1)
        cols = (offsets[:, 1, None] + torch.arange(width, device=images.device)).view(-1, 1, 1, width)
        batch = torch.arange(len(images), device=images.device).view(-1, 1, 1, 1)
        channel = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        return padded[batch, channel, rows, cols]
