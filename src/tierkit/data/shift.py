"""Simulated device conditions: the same images as a different sensor, lens and pose would deliver them.

A shift is seeded and applied identically to every split, so fine-tuning on the shifted training split
and testing on the shifted test split measure one and the same device.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from tierkit.errors import TierkitError


@dataclass(frozen=True)
class DeviceShift:
    """How a target device's images differ from the training data (all zero: no shift).

    rotation_deg: each image turned by a random angle in [-rotation_deg, rotation_deg] (device held askew).
    downscale: the sensor resolves only 1/downscale of the pixels per side (1 = full resolution).
    blur_sigma: Gaussian blur in pixels (a soft lens or motion).
    contrast: images scaled towards their mean by this factor (1 = unchanged, < 1 = flatter).
    brightness: added to every pixel of the [0, 1] image (exposure).
    noise_std: Gaussian sensor noise on the [0, 1] image.
    seed: the random angles and noise; the same seed gives the same shifted images.
    """

    rotation_deg: float = 0.0
    downscale: int = 1
    blur_sigma: float = 0.0
    contrast: float = 1.0
    brightness: float = 0.0
    noise_std: float = 0.0
    seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping) -> "DeviceShift":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TierkitError(
                f"unknown shift setting(s) {unknown}", where="data.shift", fix=f"use only {sorted(known)}"
            )
        shift = cls(**dict(config))
        problems = [
            f"{name}={getattr(shift, name)} must be {rule}"
            for name, ok, rule in (
                ("rotation_deg", 0 <= shift.rotation_deg <= 180, "in [0, 180]"),
                ("downscale", isinstance(shift.downscale, int) and shift.downscale >= 1, "an integer >= 1"),
                ("blur_sigma", shift.blur_sigma >= 0, ">= 0"),
                ("contrast", shift.contrast > 0, "> 0"),
                ("brightness", -1 <= shift.brightness <= 1, "in [-1, 1]"),
                ("noise_std", shift.noise_std >= 0, ">= 0"),
            )
            if not ok
        ]
        if problems:
            raise TierkitError("; ".join(problems), where="data.shift", fix="see conf/shift/camera.yaml for an example")
        return shift

    def apply(self, images: torch.Tensor, stream: int = 0, item: int | None = None) -> torch.Tensor:
        """Shift a batch of [0, 1] images (N, C, H, W); ``stream`` keeps splits' random draws apart.

        ``item`` gives one image read on its own (a lazy dataset) random draws of its own, the same every epoch.
        """
        if item is None:
            seed = self.seed * 1000 + stream
        else:
            seed = int(np.random.SeedSequence([self.seed, stream, item]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        out = images.float()
        if self.rotation_deg:
            angles = (torch.rand(len(out), generator=generator) * 2 - 1) * math.radians(self.rotation_deg)
            cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
            grid = F.affine_grid(theta, list(out.shape), align_corners=False)
            out = F.grid_sample(out, grid, align_corners=False, padding_mode="border")
        if self.downscale > 1:
            size = out.shape[-2:]
            out = F.interpolate(F.avg_pool2d(out, self.downscale, ceil_mode=True), size=size, mode="nearest")
        if self.blur_sigma:
            out = _gaussian_blur(out, self.blur_sigma)
        if self.contrast != 1.0:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = mean + (out - mean) * self.contrast
        out = out + self.brightness
        if self.noise_std:
            out = out + torch.randn(out.shape, generator=generator) * self.noise_std
        return out.clamp(0, 1)


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    images = F.conv2d(padded, horizontal, groups=channels)
    padded = F.pad(images, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, vertical, groups=channels)
