"""Training-time augmentation: crops and flips per batch, training batches only, the teacher online when on."""

import logging

import pytest
import torch

from tierkit.cli.train import train
from tierkit.data import SyntheticDataModule
from tierkit.data.augment import BatchAugment
from tierkit.errors import TierkitError

from conftest import FAST, compose_train

GREY = {"mean": [0.5], "std": [0.25]}


def test_crops_shift_each_image_within_its_padding():
    torch.manual_seed(0)
    images = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    cropped = BatchAugment(crop_padding=1)(images)
    assert cropped.shape == images.shape
    for original, out in zip(images, cropped, strict=True):
        inner = out[0, 1:-1, 1:-1]  # away from the replicated edge, a crop is a shifted window of the original
        windows = [original[0, 1 + dy : 5 + dy, 1 + dx : 5 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(inner, window) for window in windows)


def test_flips_mirror_about_half_the_images():
    torch.manual_seed(0)
    images = torch.randn(400, 1, 4, 4)
    out = BatchAugment(hflip=True)(images)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    unchanged = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert 150 < sum(flipped) < 250


def test_only_training_batches_are_augmented():
    data = SyntheticDataModule(input_shape=[1, 8, 8], num_classes=3, augment={"hflip": True}, **GREY)
    batch = (torch.randn(64, 1, 8, 8), torch.zeros(64, dtype=torch.long), torch.arange(64))

    class Trainer:
        training = False

    data.trainer = Trainer()
    assert data.on_after_batch_transfer(batch, 0) is batch, "validation and test batches stay as they are"
    Trainer.training = True
    images, labels, index = data.on_after_batch_transfer(batch, 0)
    assert not torch.equal(images, batch[0]) and labels is batch[1] and index is batch[2]
    assert data.augments and not SyntheticDataModule(input_shape=[1, 8, 8], num_classes=3, **GREY).augments


@pytest.mark.parametrize(
    ("augment", "shape", "message"),
    [
        ({"rotate": 10}, [1, 8, 8], r"unknown augmentation setting\(s\) \['rotate'\]"),
        ({"crop_padding": -1}, [1, 8, 8], "is not a number of pixels"),
        ({"hflip": True}, [30], "crops and flips need image inputs"),
    ],
)
def test_augmentation_mistakes_are_explained(augment, shape, message):
    with pytest.raises(TierkitError, match=message):
        SyntheticDataModule(
            input_shape=shape, num_classes=3, mean=[0.5] * shape[0], std=[0.2] * shape[0], augment=augment
        )


def test_an_augmented_run_distils_with_the_teacher_online(tmp_path, caplog):
    cfg = compose_train(tmp_path, *FAST, "debug=tiny", "data.augment.crop_padding=2", "data.augment.hflip=true")
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert "the teacher runs on each one" in caplog.text
    assert 0 <= metrics["student"]["test_acc"] <= 1
