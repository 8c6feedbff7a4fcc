"""Checkpoint and teacher files truncated or with one bit flipped, fuzzed with hypothesis: each is read as it was
or refused with a TierkitError naming the file, never another exception.

A flipped bit inside a tensor's bytes loads without complaint: these files carry no digest of their own (export
records each ONNX file's sha256 in the manifest, and the runtime checks it). The statistics of a run with
--hypothesis-show-statistics count how often that happened.
"""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tierkit.errors import TierkitError
from tierkit.models.build import build_student
from tierkit.models.checkpoint import CHECKPOINT_FORMAT, load_student
from tierkit.models.structure import describe_structure
from tierkit.models.weights import read_weights_file

from conftest import FAST, compose_train

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Files(dict):
    """File contents by name, shown by name only when hypothesis reports an example."""

    def __repr__(self) -> str:
        return f"Files({sorted(self)})"


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Files:
    """A training checkpoint as DistillationModule writes its tierkit part, and a plain state_dict file."""
    folder = tmp_path_factory.mktemp("files")
    cfg = compose_train(folder, *FAST)
    student = build_student(cfg)
    checkpoint = {
        "state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
        "tierkit": {
            "format": CHECKPOINT_FORMAT,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "structure": describe_structure(student),
            "qat": None,
        },
    }
    torch.save(checkpoint, folder / "best.ckpt")
    torch.save(student.state_dict(), folder / "teacher.pt")
    return Files({name: (folder / name).read_bytes() for name in ("best.ckpt", "teacher.pt")})


def damaged(original: bytes, truncate: bool, position: int) -> bytes:
    """``original`` cut short at ``position`` (in bytes), or with bit ``position`` flipped (both wrapped around)."""
    if truncate:
        return original[: position % len(original)]
    position %= 8 * len(original)
    changed = bytearray(original)
    changed[position // 8] ^= 1 << (position % 8)
    return bytes(changed)


def test_the_intact_files_load(intact, tmp_path):
    for name, content in intact.items():
        (tmp_path / name).write_bytes(content)
    student, config = load_student(tmp_path / "best.ckpt")
    assert config.tier.name == "midrange" and sum(p.numel() for p in student.parameters()) > 0
    weights, _, kind = read_weights_file(tmp_path / "teacher.pt", where="teacher.ckpt_path")
    assert kind == "state_dict" and weights


DAMAGE = {"truncate": st.booleans(), "position": st.integers(min_value=0, max_value=2**40)}


@FUZZ
@given(**DAMAGE)
# Found by hypothesis: a flipped bit in a weight's name raised RuntimeError; in the config's "model" key,
# ConfigAttributeError.
@example(truncate=False, position=768)
@example(truncate=False, position=11118408)
def test_a_damaged_training_checkpoint_loads_or_is_refused(intact, tmp_path, truncate, position):
    path = tmp_path / "best.ckpt"
    path.write_bytes(damaged(intact["best.ckpt"], truncate, position))
    try:
        load_student(path)
        event("loaded (the change fell in tensor data or padding)")
    except TierkitError as exc:
        event("refused")
        assert str(path) in exc.render()


@FUZZ
@given(**DAMAGE)
def test_a_damaged_teacher_file_loads_or_is_refused(intact, tmp_path, truncate, position):
    path = tmp_path / "teacher.pt"
    path.write_bytes(damaged(intact["teacher.pt"], truncate, position))
    try:
        read_weights_file(path, where="teacher.ckpt_path")
        event("loaded (the change fell in tensor data or padding)")
    except TierkitError as exc:
        event("refused")
        assert exc.where == "teacher.ckpt_path" and str(Path(path)) in exc.what
