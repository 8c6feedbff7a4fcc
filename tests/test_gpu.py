"""The recipes on a CUDA GPU, run where one is present (skipped elsewhere, as in CI).

Each covers a path that once failed only on a GPU: pruning traced before Lightning moved the student, QAT
quantizers created on the CPU beside a student already on the GPU, and DDP with the NCCL backend.
"""

import json

import pytest
import torch
from test_qat import QUANT

from conftest import FAST, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ON_GPU = ["trainer=gpu", "trainer.max_epochs=2", "teacher.max_epochs=1"]


def test_the_teacher_pruned_to_lowend_trains_and_quantizes_on_the_gpu(tmp_path):
    run = tmp_path / "outputs" / "pruned"
    overrides = [o for o in FAST if o not in ("student=scratch", "model.student.base_channels=8", "quantization=off")]
    result = run_cli(tmp_path, *overrides, *ON_GPU, "tier=lowend", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student"]["params"] < metrics["teacher"]["params"], "pruned while training on the GPU"
    assert (run / "quantization" / "int8_ptq.onnx").is_file()


def test_qat_inside_the_fit_runs_on_the_gpu(tmp_path):
    run = tmp_path / "outputs" / "qat"
    qat = ["callbacks=qat", "callbacks.qat.start_epoch=1", "callbacks.qat.activations_epoch=2"]
    result = run_cli(tmp_path, *QUANT, *qat, "callbacks.qat.freeze_epoch=3", "trainer=gpu", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["quantization"]["path"] == "qat"


def test_ddp_trains_on_the_gpu_with_nccl(tmp_path):
    run = tmp_path / "outputs" / "ddp"
    result = run_cli(tmp_path, *FAST, *ON_GPU, "trainer=ddp", "trainer.devices=1", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "metrics.json").is_file()
