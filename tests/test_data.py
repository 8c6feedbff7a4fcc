import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tierkit.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MNIST5kDataModule,
    MNISTDataModule,
    SyntheticDataModule,
)
from tierkit.errors import TierkitError
from tierkit.quant import calibration_samples

GREY = {"mean": [0.5], "std": [0.25]}
RGB = {"mean": [0.5] * 3, "std": [0.25] * 3}


def write_idx(path, array: np.ndarray, gz: bool = False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", 60, True), ("t10k", 20, False)):
        suffix = ".gz" if gz else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz)
    return tmp_path


def test_mnist_idx_files_load_gzipped_or_raw(mnist_dir):
    dm = MNISTDataModule(root=str(mnist_dir), input_shape=[1, 28, 28], num_classes=10, val_size=10, **GREY)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [50, 10, 20]
    x, y, i = dm.splits["test"][3]
    assert x.shape == (1, 28, 28) and y.item() == 3 and i == 3


def test_mnist_missing_folder_names_the_path(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "nope"), input_shape=[1, 28, 28], num_classes=10, **GREY)
    with pytest.raises(TierkitError, match="does not exist") as err:
        dm.setup()
    assert "data.root" in str(err.value)


def test_mnist_wrong_format_is_refused(mnist_dir):
    (mnist_dir / "t10k-images-idx3-ubyte").write_bytes(b"PNG not an idx file")
    dm = MNISTDataModule(root=str(mnist_dir), input_shape=[1, 28, 28], num_classes=10, val_size=10, **GREY)
    with pytest.raises(TierkitError, match="not an unsigned-byte IDX"):
        dm.setup()


def test_mnist_truncated_file_is_refused(mnist_dir):
    path = mnist_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    dm = MNISTDataModule(root=str(mnist_dir), input_shape=[1, 28, 28], num_classes=10, val_size=10, **GREY)
    with pytest.raises(TierkitError, match="truncated"):
        dm.setup()


def write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
    path.write_bytes(pickle.dumps(batch))


@pytest.fixture
def cifar_dir(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in (1, 2):
        write_cifar_batch(folder / f"data_batch_{i}", 20, i)
    write_cifar_batch(folder / "test_batch", 10, 9)
    return tmp_path


def test_cifar_batches_load_from_parent_or_batch_folder(cifar_dir):
    for root in (cifar_dir, cifar_dir / "cifar-10-batches-py"):
        dm = CIFAR10DataModule(root=str(root), input_shape=[3, 32, 32], num_classes=10, val_size=5, **RGB)
        dm.setup()
        assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [35, 5, 10]


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_with_code_is_refused(cifar_dir):
    folder = cifar_dir / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    dm = CIFAR10DataModule(root=str(folder), input_shape=[3, 32, 32], num_classes=10, val_size=5, **RGB)
    with pytest.raises(TierkitError, match=r"refusing to load builtins\.print"):
        dm.setup()


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "owl"):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("ignored: not an image")
    return tmp_path


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_resizes_and_labels_by_sorted_folder(image_dir, channels):
    stats = GREY if channels == 1 else RGB
    dm = ImageFolderDataModule(
        root=str(image_dir), input_shape=[channels, 16, 16], num_classes=3, val_size=3, test_size=3, **stats
    )
    dm.setup()
    assert dm.class_names == ["cat", "dog", "owl"]
    assert sum(len(s) for s in dm.splits.values()) == 18
    assert dm.splits["train"][0][0].shape == (channels, 16, 16)


def _folder(image_dir, lazy, **kwargs):
    dm = ImageFolderDataModule(
        root=str(image_dir), input_shape=[3, 16, 16], num_classes=3, val_size=3, test_size=3, lazy=lazy, **RGB, **kwargs
    )
    dm.setup()
    return dm


def test_a_lazy_image_folder_gives_the_splits_and_pixels_of_the_in_memory_one(image_dir):
    eager, lazy = _folder(image_dir, lazy=False), _folder(image_dir, lazy=True)
    for split in ("train", "val", "test"):
        assert len(lazy.splits[split]) == len(eager.splits[split])
        for i in range(len(eager.splits[split])):
            lazy_image, lazy_label, index = lazy.splits[split][i]
            eager_image, eager_label, _ = eager.splits[split][i]
            assert index == i and int(lazy_label) == int(eager_label)
            torch.testing.assert_close(lazy_image, eager_image)
    assert not hasattr(lazy.splits["train"], "images"), "a lazy split holds file paths, not pixels"
    np.testing.assert_array_equal(calibration_samples(lazy, 8, 4), calibration_samples(eager, 8, 4))


def test_a_lazy_image_folder_decodes_in_workers_with_shift_and_augmentation(image_dir):
    shift = {"rotation_deg": 30, "noise_std": 0.05, "seed": 3}
    augment = {"crop_padding": 2, "hflip": True}
    dm = _folder(image_dir, lazy=True, shift=shift, augment=augment, num_workers=2, batch_size=4)
    batches = [batch for batch in dm.train_dataloader()]
    assert sum(len(batch[1]) for batch in batches) == len(dm.splits["train"])
    first, again = dm.splits["val"][0][0], dm.splits["val"][0][0]
    torch.testing.assert_close(first, again)  # one image's shift is the same every time it is read
    unshifted = _folder(image_dir, lazy=True).splits["val"][0][0]
    assert not torch.allclose(first, unshifted)
    assert dm.augments


def test_image_folder_unreadable_image_names_the_file(image_dir):
    (image_dir / "dog" / "broken.png").write_bytes(b"not a png")
    dm = ImageFolderDataModule(root=str(image_dir), input_shape=[3, 16, 16], num_classes=3, **RGB)
    with pytest.raises(TierkitError, match=r"broken\.png"):
        dm.setup()


def test_image_folder_too_few_classes_configured(image_dir):
    dm = ImageFolderDataModule(root=str(image_dir), input_shape=[3, 16, 16], num_classes=2, **RGB)
    with pytest.raises(TierkitError, match="num_classes"):
        dm.setup()


def test_shape_mismatch_with_config_is_explained():
    dm = DigitsDataModule(input_shape=[1, 28, 28], num_classes=10, **GREY)
    with pytest.raises(TierkitError, match=r"images have shape \[1, 8, 8\]"):
        dm.setup()


def test_mean_std_must_match_channels():
    with pytest.raises(TierkitError, match="one value per channel"):
        SyntheticDataModule(input_shape=[3, 8, 8], num_classes=2, **GREY)


def test_mnist5k_split_is_fixed_and_disjoint():
    def split(seed):
        dm = MNIST5kDataModule(
            input_shape=[1, 28, 28],
            num_classes=10,
            mean=[0.1307],
            std=[0.3081],
            val_size=500,
            test_size=1000,
            split_seed=seed,
        )
        dm.setup()
        return dm

    a, b = split(0), split(0)
    assert [len(a.splits[s]) for s in ("train", "val", "test")] == [3500, 500, 1000]
    assert torch.equal(a.splits["test"].images, b.splits["test"].images)
    assert not torch.equal(a.splits["test"].images, split(1).splits["test"].images)
    flat = {s: {x.numpy().tobytes() for x in a.splits[s].images} for s in ("train", "test")}
    assert not flat["train"] & flat["test"]
    assert torch.bincount(a.splits["test"].labels).min() > 50


def test_digits_normalisation_uses_config_statistics():
    dm = DigitsDataModule(input_shape=[1, 8, 8], num_classes=10, mean=[0.305], std=[0.382], val_size=180, test_size=360)
    dm.setup()
    images = dm.splits["train"].images
    assert abs(images.mean().item()) < 0.1 and abs(images.std().item() - 1) < 0.1


def test_split_sizes_that_leave_nothing_are_refused():
    dm = SyntheticDataModule(input_shape=[1, 8, 8], num_classes=2, num_samples=10, test_size=10, **GREY)
    with pytest.raises(TierkitError, match="test_size"):
        dm.setup()


class _HolesDataModule(SyntheticDataModule):
    """Synthetic data with one NaN pixel in training image 5."""

    def load(self):
        arrays = super().load()
        arrays["all"].images[5, 0, 0, 0] = float("nan")
        return arrays


def test_nan_inputs_are_named_by_split_and_index():
    data = _HolesDataModule(input_shape=[1, 8, 8], num_classes=3, num_samples=30, **GREY)
    with pytest.raises(TierkitError, match=r"all input 5 holds NaN or infinite values \(1 such inputs in all\)"):
        data.setup()


@pytest.mark.parametrize("size", [0, -4, 2.5])
def test_batch_sizes_that_are_not_counts_are_refused(size):
    with pytest.raises(TierkitError, match=rf"data.batch_size={size} is not a positive number"):
        SyntheticDataModule(input_shape=[1, 8, 8], num_classes=3, batch_size=size, **GREY)
