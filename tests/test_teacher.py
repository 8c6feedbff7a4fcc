import os
import subprocess
import sys

import pytest
import torch

from tierkit.data import SyntheticDataModule
from tierkit.distill import teacher as teacher_files
from tierkit.errors import TierkitError
from tierkit.stages import teacher as teacher_stage

from conftest import FAST, REPO, compose_train

FDR = [*FAST, "debug=fdr"]


def _datamodule(cfg):
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup()
    return dm


def test_cache_key_tracks_what_shapes_the_teacher(tmp_path):
    def key(*overrides):
        return teacher_files.teacher_cache_key(compose_train(tmp_path, *overrides))

    base = key()
    assert key("seed=7") == base, "the student's seed must not retrain the teacher"
    assert key("tier=lowend") == base, "every tier shares one teacher"
    assert key("data.num_workers=2") == base
    assert key("optimizer.lr=0.1") == base, "sweeping the student optimizer must not retrain the teacher"
    assert key("model.teacher.width=0.5") != base
    assert key("teacher.seed=1") != base
    assert key("data=digits") != base
    assert key("debug=fdr") != base, "a debug teacher must never be reused by real runs"


def test_teacher_is_trained_once_then_loaded_from_cache(tmp_path, monkeypatch):
    cfg = compose_train(tmp_path, *FDR)
    dm = _datamodule(cfg)
    first, info = teacher_stage.obtain_teacher(cfg, dm)
    assert (tmp_path / "cache" / "teachers").exists()

    def fail(*args, **kwargs):
        raise AssertionError("the cached teacher should have been used")

    monkeypatch.setattr(teacher_stage, "train_teacher", fail)
    second, info2 = teacher_stage.obtain_teacher(cfg, dm)
    assert info2["path"] == info["path"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_given_teacher_checkpoint_for_another_architecture_is_refused(tmp_path):
    cfg = compose_train(tmp_path, *FDR)
    _, info = teacher_stage.obtain_teacher(cfg, _datamodule(cfg))
    other = compose_train(tmp_path, "data=synthetic", "debug=fdr", "model=mlp", f"teacher.ckpt_path={info['path']}")
    with pytest.raises(TierkitError, match=r"does not fit MLP: 4 missing") as err:
        teacher_stage.obtain_teacher(other, _datamodule(other))
    assert "teacher.ckpt_path" in str(err.value)


def test_given_teacher_checkpoint_for_other_data_is_refused(tmp_path):
    cfg = compose_train(tmp_path, *FDR)
    _, info = teacher_stage.obtain_teacher(cfg, _datamodule(cfg))
    other = compose_train(tmp_path, *FDR, "data.num_classes=3", f"teacher.ckpt_path={info['path']}")
    with pytest.raises(TierkitError, match="3"):
        teacher_stage.obtain_teacher(other, _datamodule(other))


@pytest.mark.parametrize("content", [None, b"garbage", "lightning"])
def test_bad_teacher_files_are_refused(tmp_path, content):
    path = tmp_path / "teacher.pt"
    if content == "lightning":
        torch.save({"state_dict": {}, "epoch": 3}, path)
    elif content is not None:
        path.write_bytes(content)
    dm = SyntheticDataModule(input_shape=[1, 16, 16], num_classes=4, mean=[0.5], std=[0.3])
    cfg = compose_train(tmp_path, *FDR, f"teacher.ckpt_path={path}")
    with pytest.raises(TierkitError, match="teacher"):
        teacher_stage.obtain_teacher(cfg, dm)


@pytest.mark.slow
def test_parallel_jobs_train_the_shared_teacher_once(tmp_path):
    args = [*FAST, "debug=tiny"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={tmp_path / f'job{i}'}"],
            cwd=tmp_path,
            env={**os.environ, "TIERKIT_CACHE_DIR": str(tmp_path / "cache")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    trained = [(tmp_path / f"job{i}" / "logs" / "teacher").exists() for i in range(2)]
    assert sorted(trained) == [False, True]
    assert len(list((tmp_path / "cache" / "teachers").glob("*/teacher.pt"))) == 1
    assert not list((tmp_path / "cache").rglob("*.part"))
