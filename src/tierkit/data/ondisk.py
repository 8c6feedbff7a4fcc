"""Readers for the standard on-disk formats users already have: MNIST IDX, CIFAR-10 python, image folders."""

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tierkit.data.base import ArrayDataModule, Arrays
from tierkit.data.fetch import dataset_files
from tierkit.errors import TierkitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def existing_dir(root: str | Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise TierkitError(
            f"{what} folder {root} does not exist",
            where="data.root",
            fix=f"point data.root at the folder that holds the {what} files",
        )
    return root


def find_file(root: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise TierkitError(
        f"no {what} in {root} (looked for {', '.join(names)})",
        where="data.root",
        fix="point data.root at the folder that holds the dataset's original files",
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): 2 zero bytes, a type byte, a rank byte, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise TierkitError(
            f"{path} is not an unsigned-byte IDX file (bad magic number)",
            where=str(path),
            fix="use the original MNIST files (train-images-idx3-ubyte and friends), gzipped or not",
        )
    rank = raw[3]
    header = 4 + 4 * rank
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise TierkitError(
            f"{path} is truncated or padded: {len(raw)} bytes, its header promises {expected}",
            where=str(path),
            fix="download the file again",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def idx_split(images_path: Path, labels_path: Path) -> Arrays:
    """One split from an IDX images file and its labels file."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise TierkitError(
            f"images {images.shape} ({images_path.name}) and labels {labels.shape} ({labels_path.name}) do not pair up",
            where=str(images_path.parent),
            fix="use matching images and labels files",
        )
    tensor = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    return Arrays(tensor, torch.from_numpy(labels.astype(np.int64)))


class MNISTDataModule(ArrayDataModule):
    """MNIST from the four original IDX files in ``root``."""

    def __init__(self, root: str, **kwargs):
        super().__init__(**kwargs)
        self.root = root

    @property
    def source(self) -> str:
        return f"MNIST IDX files in {self.root}"

    def _split(self, root: Path, prefix: str) -> Arrays:
        def names(kind: str) -> list[str]:
            return [f"{prefix}-{kind}", f"{prefix}-{kind}.gz"]

        return idx_split(
            find_file(root, names("images-idx3-ubyte"), f"{prefix} images"),
            find_file(root, names("labels-idx1-ubyte"), f"{prefix} labels"),
        )

    def load(self) -> dict[str, Arrays]:
        root = existing_dir(self.root, "MNIST")
        return {"train": self._split(root, "train"), "test": self._split(root, "t10k")}


# Content sha256 of the four Fashion-MNIST IDX files (decompressed), as Zalando Research published them.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class FashionMNISTDataModule(ArrayDataModule):
    """Fashion-MNIST in full (60,000 train, 10,000 test): found on the machine, or downloaded once, and verified.

    ``root`` names the folder; null looks in ``search_dirs`` (Debian's dataset-fashion-mnist package), then in
    ``download_dir``, downloading from ``url`` what is missing.
    """

    def __init__(
        self,
        root: str | None = None,
        search_dirs: list[str] | tuple[str, ...] = (),
        download_dir: str = "data/fashion-mnist",
        url: str | None = None,
        checksums: dict[str, str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root, self.search_dirs, self.download_dir, self.url = root, list(search_dirs), download_dir, url
        self.checksums = dict(checksums or FASHION_MNIST_SHA256)
        self.found_in: Path | None = None

    @property
    def source(self) -> str:
        return f"Fashion-MNIST IDX files in {self.found_in or self.root or self.download_dir}"

    def load(self) -> dict[str, Arrays]:
        files = dataset_files("Fashion-MNIST", self.checksums, self.root, self.search_dirs, self.download_dir, self.url)
        self.found_in = next(iter(files.values())).parent
        return {
            "train": idx_split(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"]),
            "test": idx_split(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]),
        }


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow numpy arrays and plain containers, refuse any other object."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path) -> Arrays:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise TierkitError(
            f"{path} is not a CIFAR-10 python batch ({exc})",
            where=str(path),
            fix="use the files from cifar-10-python.tar.gz (data_batch_1..5, test_batch)",
        ) from exc
    return Arrays(torch.from_numpy(data).float().div_(255.0), torch.from_numpy(labels))


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10 from the python-pickle batches (the cifar-10-batches-py folder)."""

    def __init__(self, root: str, **kwargs):
        super().__init__(**kwargs)
        self.root = root

    @property
    def source(self) -> str:
        return f"CIFAR-10 batches in {self.root}"

    def load(self) -> dict[str, Arrays]:
        root = existing_dir(self.root, "CIFAR-10")
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        train_files = sorted(root.glob("data_batch_*"))
        if not train_files:
            raise TierkitError(
                f"no data_batch_* files in {root}",
                where="data.root",
                fix="point data.root at the extracted cifar-10-batches-py folder",
            )
        train = [read_cifar_batch(p) for p in train_files]
        test = read_cifar_batch(find_file(root, ["test_batch"], "CIFAR-10 test batch"))
        images = torch.cat([b.images for b in train])
        return {"train": Arrays(images, torch.cat([b.labels for b in train])), "test": test}


@dataclass
class ImageFiles:
    """An image folder as file paths and labels: what a lazy split holds instead of decoded pixels."""

    paths: list[Path]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in index.tolist()], self.labels[index])


def decode_image(path: Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """One image file as a float (C, H, W) tensor in [0, 1], converted to the channels and resized to the size of
    ``input_shape``."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = input_shape
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert({1: "L", 3: "RGB"}[channels]).resize((width, height)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        message = f"cannot read image {path}: {exc}"
        raise TierkitError(message, where=str(path), fix="remove or replace the file") from exc
    return torch.from_numpy(array.reshape(height, width, channels).copy()).permute(2, 0, 1).float().div_(255.0)


class ImageFileDataset(Dataset):
    """Decodes each image when it is asked for (in DataLoader workers when ``data.num_workers`` > 0), then shifts
    and normalises it as the in-memory path does; yields (image, label, index) like IndexedTensorDataset."""

    def __init__(self, files: ImageFiles, module: "ImageFolderDataModule", stream: int):
        self.files, self.stream = files, stream
        self.input_shape, self.mean, self.std, self.shift = module.input_shape, module.mean, module.std, module.shift

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = decode_image(self.files.paths[i], self.input_shape)
        if self.shift is not None:
            image = self.shift.apply(image[None], self.stream, item=i)[0]
        return (image - self.mean) / self.std, self.files.labels[i], i


class ImageFolderDataModule(ArrayDataModule):
    """One sub-folder per class (sorted names give the label order); images resized to input_shape.

    ``lazy=True`` keeps only the file list in memory and decodes images as batches are drawn (in DataLoader
    workers), so memory stays flat however large the folder; the default decodes everything once, which is
    faster for folders that fit in memory. Splits, shifts and augmentation are the same either way.
    """

    def __init__(self, root: str, test_root: str | None = None, lazy: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.root, self.test_root, self.lazy = root, test_root, lazy
        self.class_names: list[str] = []

    @property
    def source(self) -> str:
        return f"image folder {self.root}"

    def _files(self, root: str, class_names: list[str] | None) -> tuple[ImageFiles, list[str]]:
        folder = existing_dir(root, "image")
        found = sorted(d.name for d in folder.iterdir() if d.is_dir())
        class_names = class_names or found
        if not found or found != class_names:
            raise TierkitError(
                f"{folder} has class folders {found}, expected {class_names}",
                where="data.root" if class_names is found else "data.test_root",
                fix="give every class its own sub-folder, with the same names in train and test roots",
            )
        paths, labels = [], []
        for label, name in enumerate(class_names):
            for path in sorted((folder / name).iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(path)
                    labels.append(label)
        if not paths:
            raise TierkitError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}",
                where="data.root",
                fix="put image files in one sub-folder per class",
            )
        return ImageFiles(paths, torch.tensor(labels)), class_names

    def _read(self, root: str, class_names: list[str] | None) -> tuple[Arrays | ImageFiles, list[str]]:
        files, class_names = self._files(root, class_names)
        if self.lazy:
            return files, class_names
        images = torch.stack([decode_image(path, self.input_shape) for path in files.paths])
        return Arrays(images, files.labels), class_names

    def _checked(self, part: Arrays | ImageFiles, split: str) -> Arrays | ImageFiles:
        if isinstance(part, Arrays):
            return super()._checked(part, split)
        self._check_labels(part.labels)  # decoded images are resized to input_shape and always finite
        return part

    def dataset(self, part: Arrays | ImageFiles, stream: int) -> Dataset:
        return ImageFileDataset(part, self, stream) if isinstance(part, ImageFiles) else super().dataset(part, stream)

    def load(self) -> dict[str, Arrays | ImageFiles]:
        if self.input_shape[0] not in (1, 3):
            raise TierkitError(
                f"image folders need 1 or 3 channels, data.input_shape has {self.input_shape[0]}",
                where="data.input_shape",
                fix="use [1, H, W] for greyscale or [3, H, W] for colour",
            )
        arrays, self.class_names = self._read(self.root, None)
        if self.test_root is None:
            return {"all": arrays}
        test, _ = self._read(self.test_root, self.class_names)
        return {"train": arrays, "test": test}
