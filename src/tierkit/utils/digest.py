"""A sha256 over weights and the plain data that rebuilds their model, stored inside the file that holds them.

torch's zip container does not check its records' CRCs on load, so a flipped bit in a tensor's bytes loads
without complaint; recomputing this digest on load catches it. It covers content (names, dtypes, shapes, bytes
and canonical JSON of the metadata), not the file's bytes, so a file re-saved with the same content keeps it.
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch


def content_digest(tensors: Mapping[str, Any], metadata: Any) -> str:
    """Hex sha256 of ``tensors`` (in key order; anything else found among them by its repr) and of ``metadata``
    written as sorted-key JSON."""
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True, default=repr).encode())
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            header, data = f"{value.dtype}{tuple(value.shape)}", value.reshape(-1).view(torch.uint8).numpy().tobytes()
        else:
            header, data = type(value).__name__, repr(value).encode()
        digest.update(f"\0{name}\0{header}\0".encode())
        digest.update(data)
    return digest.hexdigest()
