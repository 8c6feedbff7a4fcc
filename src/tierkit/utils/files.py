"""Atomic file writes (other runs read these files, so a crash must never leave a half-written one) and safe reads.

torch is imported by the two functions that need it, so that reading a run folder or a config costs no torch import.
"""

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def dated_folder(parent: str | Path) -> str:
    """Create ``<date>/<time>`` under ``parent`` now and return that name, so that runs or sweeps started in the same
    second (a script that starts two in the background) each own one: the later ones get ``_2``, ``_3``, ...."""
    started = datetime.now()
    day = Path(parent) / started.strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    name, count = started.strftime("%H-%M-%S"), 1
    while True:
        try:
            (day / name).mkdir()
            return f"{day.name}/{name}"
        except FileExistsError:
            count += 1
            name = f"{started:%H-%M-%S}_{count}"


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | Path) -> Any:
    """torch.load limited to tensors and plain data (weights_only): unpickling anything else could run code.

    A refused file raises UnpicklingError with one short line instead of torch's page of advice.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise pickle.UnpicklingError(
            "it holds pickled objects other than tensors and plain data, which tierkit refuses to load "
            "because unpickling them could run code"
        ) from None
