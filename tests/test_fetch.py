"""Dataset files found on the machine or downloaded once, always verified: tiny IDX fixtures and a local HTTP
server stand in for Fashion-MNIST and its canonical source (the tests never touch the network)."""

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from tierkit.data import FashionMNISTDataModule
from tierkit.errors import TierkitError

SIZES = {"train": 40, "t10k": 20}


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The four IDX files of a tiny 8x8 Fashion-MNIST, gzipped as the canonical source serves them."""
    folder = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    checksums = {}
    for prefix, count in SIZES.items():
        for kind, array in (
            ("images-idx3-ubyte", rng.integers(0, 256, (count, 8, 8))),
            ("labels-idx1-ubyte", np.arange(count) % 10),
        ):
            name, raw = f"{prefix}-{kind}", _idx(array)
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            checksums[name] = hashlib.sha256(raw).hexdigest()
    return folder, checksums


@pytest.fixture
def server(originals):
    """An HTTP server for the fixture folder; yields its URL and the paths it was asked for."""
    folder, _ = originals
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    handler = functools.partial(Handler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()


def _module(checksums, **kwargs):
    settings = {"input_shape": [1, 8, 8], "num_classes": 10, "mean": [0.5], "std": [0.25], "val_size": 8}
    return FashionMNISTDataModule(checksums=checksums, **settings, **kwargs)


def test_files_found_on_the_machine_are_verified_and_used(originals, tmp_path):
    folder, checksums = originals
    data = _module(checksums, search_dirs=[str(tmp_path / "absent"), str(folder)], download_dir=str(tmp_path / "d"))
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 32, "val": 8, "test": 20}
    assert data.found_in == folder and not (tmp_path / "d").exists(), "nothing downloaded"


def test_missing_files_are_downloaded_once_and_verified(originals, server, tmp_path):
    _, checksums = originals
    url, requests = server
    target = tmp_path / "downloads"
    _module(checksums, download_dir=str(target), url=url).setup()
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{name}.gz" for name in checksums)
    assert len(requests) == 4
    _module(checksums, download_dir=str(target), url=url).setup()
    assert len(requests) == 4, "the second run reads the downloaded files"


def test_a_corrupt_download_fails_its_checksum_and_leaves_nothing(originals, server, tmp_path):
    _, checksums = originals
    url, _ = server
    wrong = {**checksums, "t10k-labels-idx1-ubyte": "0" * 64}
    target = tmp_path / "downloads"
    with pytest.raises(TierkitError, match="fails its checksum"):
        _module(wrong, download_dir=str(target), url=url).setup()
    assert not (target / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list(target.glob("*.part")), "no half-written file"


def test_offline_says_where_to_put_the_files(originals, tmp_path):
    _, checksums = originals
    target = tmp_path / "downloads"
    with pytest.raises(TierkitError, match="could not download") as err:
        _module(checksums, download_dir=str(target), url="http://127.0.0.1:9").setup()
    assert f"put the files in {target}" in err.value.render()
    assert not target.exists() or not list(target.iterdir())


def test_a_truncated_file_is_refused(originals, tmp_path):
    folder, checksums = originals
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    broken = copy / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-40])
    with pytest.raises(TierkitError, match="truncated or corrupt"):
        _module(checksums, root=str(copy)).setup()


def test_a_root_without_the_files_names_what_is_missing(originals, tmp_path):
    _, checksums = originals
    (tmp_path / "partial").mkdir()
    with pytest.raises(TierkitError, match="lacks train-images-idx3-ubyte"):
        _module(checksums, root=str(tmp_path / "partial")).setup()
