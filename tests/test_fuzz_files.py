"""Checkpoint and teacher files truncated or with one bit flipped, fuzzed with hypothesis: each is refused with a
TierkitError naming the file, or it loads exactly what was saved, never another exception.

tierkit's own files (training checkpoints, cached teachers) carry a sha256 of their weights and of the config
that rebuilds them, so a flipped bit in a tensor's bytes is refused too; a plain state_dict has no digest and
such a change loads unnoticed. The statistics of a run with --hypothesis-show-statistics count each outcome.
"""

import io
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tierkit.distill.teacher import TEACHER_FORMAT
from tierkit.errors import TierkitError
from tierkit.models.build import build_student
from tierkit.models.checkpoint import CHECKPOINT_FORMAT, checkpoint_digest, load_student
from tierkit.models.structure import describe_structure
from tierkit.models.weights import read_weights_file, teacher_digest

from conftest import FAST, compose_train

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Files(dict):
    """File contents by name, shown by name only when hypothesis reports an example."""

    def __repr__(self) -> str:
        return f"Files({sorted(self)})"


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Files:
    """A training checkpoint as DistillationModule writes its tierkit part, a cached teacher file as the teacher
    stage writes it, and a plain state_dict file."""
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
    checkpoint["tierkit"]["digest"] = checkpoint_digest(checkpoint)
    torch.save(checkpoint, folder / "best.ckpt")
    cached = {"format": TEACHER_FORMAT, "input_shape": [1, 28, 28], "num_classes": 10, "metrics": {"val_acc": 0.9}}
    cached["state_dict"] = student.state_dict()
    torch.save({**cached, "digest": teacher_digest(cached)}, folder / "cached_teacher.pt")
    torch.save(student.state_dict(), folder / "teacher.pt")
    return Files({name: (folder / name).read_bytes() for name in ("best.ckpt", "cached_teacher.pt", "teacher.pt")})


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


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
    cached, metadata, kind = read_weights_file(tmp_path / "cached_teacher.pt", where="teacher.ckpt_path")
    assert kind == "tierkit teacher" and same_tensors(cached, weights) and len(metadata["digest"]) == 64


def test_a_changed_weight_or_config_in_tierkits_own_files_is_refused(intact, tmp_path):
    path = tmp_path / "best.ckpt"
    path.write_bytes(intact["best.ckpt"])
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"][next(iter(checkpoint["state_dict"]))].view(-1)[0] += 1e-3
    torch.save(checkpoint, path)
    with pytest.raises(TierkitError, match="changed after it was saved"):
        load_student(path)
    checkpoint = torch.load(io.BytesIO(intact["best.ckpt"]), weights_only=True)
    checkpoint["tierkit"]["config"]["model"]["student"]["width"] = 0.5
    torch.save(checkpoint, path)
    with pytest.raises(TierkitError, match="changed after it was saved"):
        load_student(path)
    teacher = tmp_path / "cached_teacher.pt"
    payload = torch.load(io.BytesIO(intact["cached_teacher.pt"]), weights_only=True)
    payload["metrics"]["val_acc"] = 0.99
    torch.save(payload, teacher)
    with pytest.raises(TierkitError, match="changed after tierkit saved it"):
        read_weights_file(teacher, where="teacher.ckpt_path")


DAMAGE = {"truncate": st.booleans(), "position": st.integers(min_value=0, max_value=2**40)}


@FUZZ
@given(**DAMAGE)
# Found by hypothesis: a flipped bit in a weight's name raised RuntimeError; in the config's "model" key,
# ConfigAttributeError.
@example(truncate=False, position=768)
@example(truncate=False, position=11118408)
def test_a_damaged_training_checkpoint_is_refused_or_loads_unchanged(intact, tmp_path, truncate, position):
    path = tmp_path / "best.ckpt"
    path.write_bytes(intact["best.ckpt"])
    original, original_config = load_student(path)
    path.write_bytes(damaged(intact["best.ckpt"], truncate, position))
    try:
        student, config = load_student(path)
    except TierkitError as exc:
        event("refused")
        assert str(path) in exc.render()
        return
    event("loaded unchanged (the change fell outside what the digest covers)")
    assert same_tensors(student.state_dict(), original.state_dict()) and config == original_config


@FUZZ
@given(name=st.sampled_from(["cached_teacher.pt", "teacher.pt"]), **DAMAGE)
def test_a_damaged_teacher_file_is_refused_or_loads(intact, tmp_path, name, truncate, position):
    """A cached teacher (with its digest) loads only unchanged; a plain state_dict may load changed data."""
    path = tmp_path / name
    path.write_bytes(intact["teacher.pt"])
    original, _, _ = read_weights_file(path, where="teacher.ckpt_path")
    path.write_bytes(damaged(intact[name], truncate, position))
    try:
        weights, _, _ = read_weights_file(path, where="teacher.ckpt_path")
    except TierkitError as exc:
        event(f"{name}: refused")
        assert exc.where == "teacher.ckpt_path" and str(Path(path)) in exc.what
        return
    unchanged = same_tensors(weights, original)
    event(f"{name}: loaded {'unchanged' if unchanged else 'changed data'}")
    assert unchanged or name == "teacher.pt"
