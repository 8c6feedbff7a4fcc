"""Dataset files found on the machine or downloaded once, and always checked against known checksums.

A checksum is of a file's decompressed content, so the same data gzipped by another packager (Debian's
dataset-fashion-mnist, say) verifies too. A download goes to a temporary file next to its destination and is
renamed into place only once its checksum matches: a failed or interrupted download leaves nothing behind.
"""

import gzip
import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tierkit.errors import TierkitError
from tierkit.utils.files import atomic_write

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60


def content_sha256(path: Path, gzipped: bool | None = None) -> str:
    """sha256 of the file's content, decompressed when it is gzipped (by default: when it is named .gz)."""
    digest = hashlib.sha256()
    opener = gzip.open if (path.suffix == ".gz" if gzipped is None else gzipped) else open
    with opener(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str, gzipped: bool | None = None) -> None:
    try:
        actual = content_sha256(path, gzipped)
    except (OSError, EOFError) as exc:
        raise TierkitError(
            f"{path} cannot be read in full ({type(exc).__name__}: {exc}): truncated or corrupt",
            where=str(path),
            fix="delete it and let tierkit download it again, or copy the original file there",
        ) from exc
    if actual != expected:
        raise TierkitError(
            f"{path} fails its checksum (content sha256 {actual[:16]}…, expected {expected[:16]}…): corrupt, "
            "truncated or another dataset's file",
            where=str(path),
            fix="delete it and let tierkit download it again, or copy the original file there",
        )


def _present(folder: Path, name: str) -> Path | None:
    """``name`` or its gzipped form in ``folder``."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(url: str, destination: Path, expected: str) -> Path:
    log.info("Downloading %s", url)

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, tmp.open("wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        verify(tmp, expected, gzipped=destination.suffix == ".gz")

    try:
        return atomic_write(destination, fetch)
    except (urllib.error.URLError, OSError) as exc:
        raise TierkitError(
            f"could not download {url} ({type(exc).__name__}: {exc})",
            where="data.url",
            fix=f"without network, put the files in {destination.parent} (or point data.root at them)",
        ) from exc


def dataset_files(
    name: str,
    checksums: Mapping[str, str],
    root: str | None,
    search_dirs: Sequence[str],
    download_dir: str,
    url: str | None,
) -> dict[str, Path]:
    """The verified files of a dataset, by name: from ``root`` when given, else from the first of ``search_dirs``
    that holds them all, else from ``download_dir``, downloading (``url`` + name + ``.gz``) what is missing."""
    if root is not None:
        folders = [Path(root).expanduser()]
        if not folders[0].is_dir():
            raise TierkitError(
                f"{name} folder {folders[0]} does not exist",
                where="data.root",
                fix=f"point data.root at the folder with the {name} files, or set data.root=null to find or "
                "download them",
            )
    else:
        folders = [Path(d).expanduser() for d in search_dirs]
    for folder in folders:
        found = {file: _present(folder, file) for file in checksums}
        if all(found.values()):
            for file, path in found.items():
                verify(path, checksums[file])
            return found
    if root is not None:
        missing = [file for file in checksums if _present(folders[0], file) is None]
        raise TierkitError(
            f"{folders[0]} lacks {', '.join(missing)} (plain or .gz)",
            where="data.root",
            fix=f"put the four original {name} files there, or set data.root=null to find or download them",
        )
    target = Path(download_dir).expanduser()
    files = {}
    for file, expected in checksums.items():
        present = _present(target, file)
        if present is None:
            if not url:
                raise TierkitError(
                    f"{name} files are not on this machine (looked in {', '.join(map(str, [*folders, target]))})",
                    where="data.url",
                    fix=f"put the files in {target}, or give data.url to download them",
                )
            present = _download(f"{url.rstrip('/')}/{file}.gz", target / f"{file}.gz", expected)
        verify(present, expected)
        files[file] = present
    return files
