"""Trained weights from the files people have: a plain ``state_dict``, a safetensors file, a Lightning checkpoint
of their own LightningModule, or tierkit's teacher file. Always read as tensors and plain data (never unpickled
code), and loaded strictly: a mismatch names the missing and unexpected keys and the first shape that differs.
"""

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tierkit.errors import TierkitError
from tierkit.utils.digest import content_digest
from tierkit.utils.files import load_torch

SAFETENSORS_SUFFIXES = (".safetensors",)
SHOWN_KEYS = 5


def teacher_digest(payload: dict[str, Any]) -> str:
    """The digest of a tierkit teacher file: its weights and every other entry but the digest itself."""
    metadata = {key: value for key, value in payload.items() if key not in ("state_dict", "digest")}
    return content_digest(payload["state_dict"], metadata)


def read_weights_file(path: Path, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """The tensors in ``path``, the plain data around them (a tierkit file's metadata) and the format's name."""
    if not path.is_file():
        raise TierkitError(f"weights file {path} does not exist", where=where, fix="pass the path of an existing file")
    fix = "save weights with torch.save(model.state_dict(), path) or safetensors, or pass a Lightning .ckpt"
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return load_file(str(path)), {}, "safetensors"
        payload = load_torch(path)
    except Exception as exc:
        raise TierkitError(f"cannot read {path}: {exc}", where=where, fix=fix) from exc
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        kind = "tierkit teacher" if "format" in payload and "input_shape" in payload else "Lightning checkpoint"
        recorded = payload.get("digest") if kind == "tierkit teacher" else None
        if recorded is not None and recorded != teacher_digest(payload):
            raise TierkitError(
                f"{path} changed after tierkit saved it: its content no longer matches the sha256 recorded in it",
                where=where,
                fix="delete the file (a cached teacher is retrained on the next run) or copy it again",
            )
        return payload["state_dict"], {k: v for k, v in payload.items() if k != "state_dict"}, kind
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, {}, "state_dict"
    raise TierkitError(
        f"{path} holds a {type(payload).__name__} without a state_dict of tensors",
        where=where,
        fix=fix,
    )


def _candidate_prefixes(keys: list[str]) -> list[str]:
    """Every leading run of dotted names in the file's keys ("model.", "model.backbone.", ...), shortest first."""
    found = {key[: i + 1] for key in keys for i, char in enumerate(key) if char == "."}
    return sorted(found, key=len)


def strip_prefix(
    weights: dict[str, torch.Tensor], expected: set[str], prefix: str | None, where: str
) -> dict[str, torch.Tensor]:
    """``weights`` keyed as the model names them: ``prefix`` removed (found automatically when None)."""
    if prefix is None:
        if set(weights) == expected:
            return weights
        for candidate in _candidate_prefixes(list(weights)):
            stripped = {k[len(candidate) :]: v for k, v in weights.items() if k.startswith(candidate)}
            if set(stripped) == expected:
                return stripped
        return weights
    stripped = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not stripped:
        shown = ", ".join(sorted(weights)[:SHOWN_KEYS])
        raise TierkitError(
            f"no key of the weights file starts with {prefix!r} (its keys begin: {shown})",
            where=where,
            fix="set the prefix its keys start with, or null to find it automatically",
        )
    return stripped


def load_weights_strictly(model: nn.Module, weights: dict[str, torch.Tensor], source: str, where: str) -> None:
    """Load every tensor or none: a mismatch lists missing and unexpected keys and the first differing shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{key}: file {tuple(weights[key].shape)}, model {tuple(expected[key].shape)}"
        for key in expected
        if key in weights and weights[key].shape != expected[key].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:SHOWN_KEYS])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:SHOWN_KEYS])})")
        if shapes:
            parts.append(f"first differing shape {shapes[0]}")
        raise TierkitError(
            f"{source} does not fit {type(model).__name__}: " + "; ".join(parts),
            where=where,
            fix="set the model config to the architecture the weights were trained with, or use matching weights "
            "(a Lightning checkpoint's key prefix is found automatically, or set teacher.state_dict_prefix)",
        )
    model.load_state_dict(weights)
